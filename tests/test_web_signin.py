"""Sign-in links in the browser (operations.md): the link signs in, the token leaves the
address bar, the session renews itself before the token expires (downloads included) and
survives a reload; where renewal is refused, the sign-in screen comes at expiry.  And a
system message from the host application shows in the room."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browsing import WAIT_MS, enter_room
from tests.conftest import SIGNING_KEY, free_port, make_config, run_cli, start_server, wait_until
from unichatd.auth import verify_token
from unichatd.client import ChatClient

pytestmark = pytest.mark.asyncio

TOKEN_KEY = "unichat_token"
API_KEY = "d" * 40


async def stored_token(page: Any) -> Any:
    return await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")


async def test_an_invite_link_signs_in_and_the_session_renews_itself(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    port = free_port()
    server = await start_server(make_config(tmp_path, server={"port": port}, auth={"token_ttl": 30}))
    try:
        await server.create_room("general", [1])
        config = tmp_path / "unichatd.toml"
        config.write_text(f'[server]\nport = {port}\n[auth]\nsigning_key = "{SIGNING_KEY}"\n'
                          f'[storage]\ndatabase = "{server.config.database_path}"\n')
        invited = await asyncio.to_thread(run_cli, "--config", str(config), "invite", "1", "--name", "alice",
                                          "--ttl", "8", cwd=tmp_path)
        link = invited.stdout.strip()
        assert link.startswith(f"http://127.0.0.1:{port}/#token="), invited.stderr
        link_token = link.partition("#token=")[2]
        link_expiry = verify_token(link_token, server.key).expires_at
        picture = tmp_path / "dot.png"
        picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
        async with ChatClient(server.url, server.token(1, "alice")) as chat:
            stored = await chat.upload(picture)
        page = await (await browser.new_context()).new_page()
        await page.goto(link)
        await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
        assert "token" not in page.url
        assert await page.evaluate("location.hash") == ""
        assert await stored_token(page) == link_token

        async def renewed_yet() -> bool:
            return bool(await stored_token(page) != link_token)

        # Renewed before the link's token expires, and kept for the next load.
        await wait_until(renewed_yet, timeout=link_expiry - time.time())
        renewed = await stored_token(page)
        assert verify_token(renewed, server.key).expires_at > link_expiry
        await asyncio.sleep(max(0.0, link_expiry + 1 - time.time()))  # past the link token's expiry
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "online")
        await expect(page.locator("#signin")).to_be_hidden()
        # The download cookie was renewed too.
        assert await page.evaluate(f"fetch({stored['url']!r}).then(r => r.status)") == 200
        await page.reload()
        await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
        await expect(page.locator("#room-list li", has_text="general")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#signin")).to_be_hidden()
    finally:
        await server.server.stop()


async def test_where_renewal_is_refused_the_sign_in_screen_comes_at_expiry(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    server = await start_server(make_config(tmp_path, server={"port": free_port()}, auth={"renewable": False}))
    try:
        token = server.token(1, "alice", ttl=5)
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{server.http_url}/#token={token}")
        await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
        await expect(page.locator("#signin")).to_be_hidden()
        wait_ms = (verify_token(token, server.key).expires_at - time.time()) * 1000 + WAIT_MS
        await expect(page.locator("#signin")).to_be_visible(timeout=wait_ms)
        await expect(page.locator("#signin-message")).to_contain_text("expired")
    finally:
        await server.server.stop()


async def test_a_system_message_shows_in_the_room(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    server = await start_server(make_config(tmp_path, server={"port": free_port()},
                                            api={"api_key": API_KEY, "port": 0}))
    try:
        room_id = await server.create_room("general", [1])
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{server.http_url}/#token={server.token(1, 'alice')}")
        await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
        await enter_room(page, "general")
        assert server.server.api is not None
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{server.server.api.port}/api/rooms/{room_id}/messages",
            json={"content": "Job 12 was approved"}, headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 201
        shown = page.locator("#message-list .message", has_text="Job 12 was approved")
        await expect(shown).to_be_visible(timeout=WAIT_MS)
        await expect(shown).to_contain_text("system")
        await page.reload()  # from history too
        await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
        await enter_room(page, "general")
        await expect(page.locator("#message-list .message", has_text="Job 12 was approved")).to_be_visible(
            timeout=WAIT_MS)
    finally:
        await server.server.stop()
