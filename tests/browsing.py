"""Browser test helpers: where Chromium is and how it starts, and the few steps every web
client test takes (open a signed-in page, enter a room, say something).  The `browser`
and `chat_server` fixtures that use them are in conftest."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent
# The screenshots in docs/ are refreshed with UNICHATD_SCREENSHOTS=1; other runs keep theirs
# out of the work tree.
SCREENSHOTS = (
    ROOT / "docs" / "screenshots" if os.environ.get("UNICHATD_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "unichatd-screenshots"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
]
WAIT_MS = 8000


def require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is missing in CI: .ci/run installs Debian's chromium package")
    pytest.skip("Chromium not installed: `apt-get install chromium` to run the browser tests")


async def open_page(browser: Any, server: RunningServer, user_id: int, name: str,
                    viewport: dict[str, int] | None = None, **context: Any) -> Any:
    """A signed-in page in a new browser context (``context`` as Playwright's new_context takes it)."""
    made = await browser.new_context(viewport=viewport or {"width": 1000, "height": 700}, **context)
    page = await made.new_page()
    await page.goto(f"{server.http_url}/#token={server.token(user_id, name)}")
    await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
    return page


async def enter_room(page: Any, name: str) -> None:
    await page.locator("#room-list li", has_text=name).click()
    await page.locator("#composer").wait_for(state="visible", timeout=WAIT_MS)


async def say(page: Any, text: str) -> None:
    await page.locator("#input").fill(text)
    await page.locator("#input").press("Enter")


def texts(page: Any) -> Any:
    return page.locator("#message-list .message .text")


async def fill_room(server: RunningServer, room_id: int, user_id: int, name: str, contents: list[str]) -> None:
    """Send ``contents`` as ``user_id``, pipelined, and wait for every ack."""
    sender = await server.connect(user_id, name)
    try:
        for content in contents:
            await sender.send({"type": "send_message", "room_id": room_id, "content": content})
        acked = 0
        while acked < len(contents):
            frame = await sender.recv_type("message_ack", "error", timeout=30)
            assert frame["type"] == "message_ack", frame
            acked += 1
    finally:
        await sender.close()


async def mark_read(server: RunningServer, user_id: int, name: str, *room_ids: int) -> None:
    """``user_id`` has read ``room_ids`` up to now (so a page opens them at their latest)."""
    reader = await server.connect(user_id, name)
    try:
        for room_id in room_ids:
            await reader.request({"type": "mark_read", "room_id": room_id}, "read_marked")
    finally:
        await reader.close()
