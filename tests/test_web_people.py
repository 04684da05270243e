"""The web client's people, rooms and files (protocol.md §6.2–§6.3) with two users on two
pages: a new room from the dialog, a direct conversation, the members panel with online
dots, owner changes, leaving, and files attached, uploaded and shown — live on the
other page."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.browsing import SCREENSHOTS, WAIT_MS, enter_room, open_page, say
from tests.conftest import RunningServer

pytestmark = pytest.mark.asyncio

LIVE_MS = 2000


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A plain PNG of one colour (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


async def known(server: RunningServer, *people: tuple[int, str]) -> None:
    for user_id, name in people:  # known by name before any page opens
        await (await server.connect(user_id, name)).close()


async def test_new_room_dialog_creates_a_room_with_members_live(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    await known(chat_server, (1, "alice"), (2, "bob"), (3, "carol"))
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    await alice.get_by_role("button", name="New room or message").click()
    dialog = alice.get_by_role("dialog", name="New room")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Name")).to_be_focused()
    await dialog.get_by_label("Name").fill("launch")
    await dialog.get_by_label("Members").fill("bo")
    await dialog.get_by_role("checkbox", name="bob").check()
    await expect(dialog.get_by_role("checkbox", name="carol")).to_have_count(0)
    await dialog.get_by_role("button", name="Create room").click()
    await expect(dialog).to_be_hidden(timeout=WAIT_MS)
    await expect(alice.locator("#room-title")).to_have_text("launch")
    await expect(bob.locator("#room-list li", has_text="launch")).to_be_visible(timeout=LIVE_MS)
    await say(alice, "welcome aboard")
    await enter_room(bob, "launch")
    await expect(bob.locator("#message-list .message", has_text="welcome aboard")).to_be_visible(timeout=WAIT_MS)


async def test_message_a_person_opens_the_direct_room_with_presence(browser: Any,
                                                                    chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    await chat_server.create_room("general", [1, 2])
    await known(chat_server, (1, "alice"), (2, "bob"))
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    await enter_room(alice, "general")
    await alice.get_by_role("button", name="Members: 2").click()
    panel = alice.locator("#members")
    await expect(panel.locator("[data-user-id='2'] .dot")).to_have_attribute("aria-label", "online")
    await panel.get_by_role("button", name="Message bob").click()
    await expect(alice.locator("#room-title")).to_have_text("bob", timeout=WAIT_MS)
    await say(alice, "a word in private?")
    direct = bob.locator("#room-list li", has_text="alice")
    await expect(direct).to_be_visible(timeout=LIVE_MS)
    await expect(direct.locator("button")).to_have_attribute("aria-label", "alice, 1 unread, online", timeout=LIVE_MS)
    await enter_room(bob, "alice")
    await expect(bob.locator("#message-list .message", has_text="a word in private?")).to_be_visible()
    if SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await bob.get_by_role("button", name="Members: 2").click()
        await bob.screenshot(path=str(SCREENSHOTS / "direct-presence.png"))
    # bob's page goes away: past the grace, alice sees him offline with a last-seen time
    await bob.context.close()
    dot = alice.locator("#members [data-user-id='2'] .dot")
    await expect(dot).to_have_attribute("aria-label", "online")
    await expect(dot).to_have_attribute("aria-label", lambda_offline(), timeout=9000)
    # the direct room in alice's list says so too
    await expect(alice.locator("#room-list li", has_text="bob").locator("button")).to_have_attribute(
        "aria-label", "bob, offline", timeout=WAIT_MS)
    # "Message" again (from the dialog this time) opens the same room, not a second one
    await alice.get_by_role("button", name="New room or message").click()
    await alice.get_by_role("dialog").get_by_label("Members").fill("bob")
    await alice.get_by_role("dialog").get_by_role("button", name="Message bob").click()
    await expect(alice.get_by_role("dialog")).to_be_hidden(timeout=WAIT_MS)
    await expect(alice.locator("#room-list li", has_text="bob")).to_have_count(1)
    await expect(alice.locator("#message-list .message", has_text="a word in private?")).to_be_visible()


def lambda_offline() -> Any:
    import re

    return re.compile(r"^offline, last seen .+")


async def test_owner_renames_adds_and_removes_and_anyone_leaves(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    await known(chat_server, (1, "alice"), (2, "bob"), (3, "carol"))
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    carol = await open_page(browser, chat_server, 3, "carol")
    await alice.get_by_role("button", name="New room or message").click()
    await alice.get_by_role("dialog").get_by_label("Name").fill("crew")
    await alice.get_by_role("dialog").get_by_label("Members").fill("bob")
    await alice.get_by_role("checkbox", name="bob").check()
    await alice.get_by_role("button", name="Create room").click()
    await expect(alice.locator("#room-title")).to_have_text("crew", timeout=WAIT_MS)
    await alice.get_by_role("button", name="Members: 2").click()
    panel = alice.locator("#members")
    await panel.get_by_label("Room name").fill("the crew")
    await panel.get_by_role("button", name="Rename").click()
    await expect(bob.locator("#room-list li", has_text="the crew")).to_be_visible(timeout=LIVE_MS)
    await expect(alice.locator("#room-title")).to_have_text("the crew", timeout=LIVE_MS)
    await panel.get_by_label("Add people").fill("car")
    await panel.get_by_role("button", name="Add carol to the room").click()
    await expect(carol.locator("#room-list li", has_text="the crew")).to_be_visible(timeout=LIVE_MS)
    await expect(alice.get_by_role("button", name="Members: 3")).to_be_visible(timeout=LIVE_MS)
    await expect(panel.locator("[data-user-id='3']")).to_contain_text("carol")
    await panel.get_by_role("button", name="Remove carol from the room").click()
    await expect(carol.locator("#room-list li", has_text="the crew")).to_have_count(0, timeout=LIVE_MS)
    # bob is no owner: no rename or add, but he may leave
    await enter_room(bob, "the crew")
    await bob.get_by_role("button", name="Members: 2").click()
    await expect(bob.locator("#owner-tools")).to_be_hidden()
    bob.once("dialog", lambda confirm: confirm.accept())
    await bob.get_by_role("button", name="Leave room").click()
    await expect(bob.locator("#room-list li", has_text="the crew")).to_have_count(0, timeout=LIVE_MS)
    await expect(alice.get_by_role("button", name="Members: 1")).to_be_visible(timeout=LIVE_MS)


async def test_image_upload_shows_inline_on_the_other_page(browser: Any, chat_server: RunningServer,
                                                          tmp_path: Path) -> None:
    from playwright.async_api import expect

    await chat_server.create_room("design", [1, 2])
    await known(chat_server, (1, "alice"), (2, "bob"))
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    for page in (alice, bob):
        await enter_room(page, "design")
    image = tmp_path / "mockup.png"
    image.write_bytes(png(320, 200, (31, 90, 209)))
    report = tmp_path / "notes.txt"
    report.write_bytes(b"x" * 300_000)
    await alice.locator("#file-input").set_input_files([str(image), str(report)])
    tray = alice.locator("#attachment-tray")
    await expect(tray.locator(".upload", has_text="mockup.png")).to_contain_text("ready", timeout=WAIT_MS)
    await expect(tray.locator(".upload", has_text="notes.txt")).to_contain_text("ready", timeout=WAIT_MS)
    await alice.locator("#input").fill("first draft")
    await alice.locator("#input").press("Enter")
    await expect(tray).to_be_hidden()
    posted = bob.locator("#message-list .message", has_text="first draft")
    thumbnail = posted.locator(".thumb img")
    await expect(thumbnail).to_be_visible(timeout=LIVE_MS)
    await expect(thumbnail).to_have_attribute("alt", "mockup.png")
    # the image really loaded (the session cookie reached /files)
    await thumbnail.evaluate("img => img.decode()")  # rejects when the image did not load
    assert await thumbnail.evaluate("img => img.naturalWidth") == 320
    chip = posted.locator(".file-chip")
    await expect(chip).to_contain_text("notes.txt")
    await expect(chip).to_contain_text("293 KB")
    assert await chip.get_attribute("download") == "notes.txt"
    if SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await bob.screenshot(path=str(SCREENSHOTS / "image-attachment.png"))
    async with bob.expect_popup() as popup_info:
        await posted.locator(".thumb").click()
    full = await popup_info.value
    assert full.url.endswith("/mockup.png")


async def test_drop_a_file_with_a_progress_bar_and_send_it_alone(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    await chat_server.create_room("drop", [1, 2])
    await known(chat_server, (1, "alice"), (2, "bob"))
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    for page in (alice, bob):
        await enter_room(page, "drop")
    # A large file dropped on the room: the progress bar moves, then it is ready.
    transfer = await alice.evaluate_handle("""() => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(6 * 1024 * 1024)], "big.bin", { type: "application/octet-stream" }));
        return data;
    }""")
    await alice.locator("#room-view").dispatch_event("dragover", {"dataTransfer": transfer})
    await alice.locator("#room-view").dispatch_event("drop", {"dataTransfer": transfer})
    upload = alice.locator("#attachment-tray .upload", has_text="big.bin")
    await expect(upload.locator("progress")).to_be_visible()
    await expect(upload).to_contain_text("ready", timeout=20_000)
    await alice.locator("#input").press("Enter")  # no text: the file alone
    await expect(bob.locator("#message-list .message .file-chip", has_text="big.bin")).to_be_visible(timeout=LIVE_MS)
