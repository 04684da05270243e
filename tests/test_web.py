"""The web client, driven in headless Chromium (Debian's) through Playwright."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.browsing import SCREENSHOTS, WAIT_MS, enter_room, fill_room, mark_read, open_page, say, texts
from tests.conftest import RunningServer, free_port, make_config, start_server

pytestmark = pytest.mark.asyncio


async def test_two_users_chat_and_own_messages_are_confirmed(browser: Any, chat_server: RunningServer) -> None:
    """Two browsers chat in a room; the sender's message turns from sending to confirmed."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1, 2])
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    await enter_room(alice, "general")
    await enter_room(bob, "general")
    await say(alice, "hello bob")
    await expect(bob.locator("#message-list .message", has_text="hello bob")).to_be_visible(timeout=WAIT_MS)
    await expect(alice.locator("#message-list .message.sending")).to_have_count(0, timeout=WAIT_MS)
    await expect(alice.locator("#message-list .message.mine", has_text="hello bob")).to_have_count(1)
    await say(bob, "hi alice\nsecond line")  # Enter sends; the text keeps its newline
    await expect(alice.locator("#message-list .message", has_text="second line")).to_be_visible(timeout=WAIT_MS)
    # The room list follows live through room_updated (no polling).
    preview = alice.locator("#room-list li", has_text="general").locator(".room-preview")
    await expect(preview).to_have_text("hi alice\nsecond line", timeout=WAIT_MS)
    await alice.screenshot(path=str(SCREENSHOTS / "chat.png"))


async def test_replies_quote_and_read_receipts_show(browser: Any, chat_server: RunningServer) -> None:
    """A reply shows the quoted message; the author sees who has read up to their message."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1, 2])
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    await enter_room(alice, "general")
    await say(alice, "lunch at noon?")
    await bob.bring_to_front()  # bob reads: his page is visible and focused
    await enter_room(bob, "general")
    original = bob.locator("#message-list .message", has_text="lunch at noon?")
    await original.hover()  # a message's actions show while it is hovered or focused
    await original.get_by_role("button", name="Reply to alice").click()
    await expect(bob.locator("#reply-bar")).to_be_visible()
    await say(bob, "yes!")
    reply = alice.locator("#message-list .message", has_text="yes!")
    await expect(reply.locator(".quote")).to_have_text("alice: lunch at noon?", timeout=WAIT_MS)
    mine = alice.locator("#message-list .message.mine", has_text="lunch at noon?")
    await expect(mine.locator(".receipt")).to_have_text("read by bob", timeout=WAIT_MS)


async def test_unread_badge_appears_and_clears(browser: Any, chat_server: RunningServer) -> None:
    """A message in a room bob is not viewing shows a badge, which clears when he opens it."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1, 2])
    await chat_server.create_room("random", [1, 2])
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    await enter_room(bob, "general")
    await enter_room(alice, "random")
    await say(alice, "over here")
    await say(alice, "and again")
    badge = bob.locator("#room-list li", has_text="random").locator(".badge")
    await expect(badge).to_have_text("2", timeout=WAIT_MS)
    await bob.screenshot(path=str(SCREENSHOTS / "room-list.png"))
    await bob.bring_to_front()  # marking read waits until the page is visible and focused
    await enter_room(bob, "random")
    await expect(badge).to_have_count(0, timeout=WAIT_MS)
    await chat_server.wait_for(lambda: chat_server.server.chat.directory.unread(2, 2) == 0)
    reader = await chat_server.connect(2)
    rooms = (await reader.request({"type": "get_room_list"}, "room_list"))["rooms"]
    await reader.close()
    assert {r["name"]: r["unread_count"] for r in rooms}["random"] == 0  # marked read on the server


async def test_typing_indicator_shows_and_expires(browser: Any, chat_server: RunningServer) -> None:
    """Typing in one browser shows "alice is typing…" in the other, and it goes away."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1, 2])
    alice = await open_page(browser, chat_server, 1, "alice")
    bob = await open_page(browser, chat_server, 2, "bob")
    await enter_room(alice, "general")
    await enter_room(bob, "general")
    await alice.locator("#input").press_sequentially("typing here", delay=20)
    await expect(bob.locator("#typing")).to_have_text("alice is typing…", timeout=WAIT_MS)
    await bob.screenshot(path=str(SCREENSHOTS / "typing.png"))
    # No stop_typing is sent (alice keeps focus): the server's 6 s expiry clears it.
    await expect(bob.locator("#typing")).to_have_text("", timeout=10_000)


async def test_reconnects_after_restart_and_shows_missed_messages_once(browser: Any, tmp_path: Path) -> None:
    """The server restarts mid-conversation; the page reconnects and shows what was sent meanwhile, once."""
    from playwright.async_api import expect

    config = make_config(tmp_path, server={"port": free_port()})
    running = await start_server(config)
    try:
        await running.create_room("general", [1, 2])
        bob = await open_page(browser, running, 2, "bob")
        await enter_room(bob, "general")
        sender = await running.connect(1, "alice")
        await sender.request({"type": "send_message", "room_id": 1, "content": "before restart"}, "message_ack")
        await expect(texts(bob)).to_have_text(["before restart"], timeout=WAIT_MS)
        await sender.close()
        await running.server.stop()
        await expect(bob.locator("#conn-state")).not_to_have_attribute("data-state", "online", timeout=WAIT_MS)
        running = await start_server(config)
        sender = await running.connect(1, "alice")
        for text in ("missed one", "missed two"):
            await sender.request({"type": "send_message", "room_id": 1, "content": text}, "message_ack")
        await sender.close()
        await expect(bob.locator("#conn-state")).to_have_attribute("data-state", "online", timeout=20_000)
        await expect(texts(bob)).to_have_text(["before restart", "missed one", "missed two"], timeout=WAIT_MS)
        await asyncio.sleep(0.5)
        await expect(texts(bob)).to_have_count(3)
    finally:
        await running.server.stop()


async def test_message_text_is_never_html(browser: Any, chat_server: RunningServer) -> None:
    """Markup in a message shows as text: no element is created and no script runs."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1, 2])
    bob = await open_page(browser, chat_server, 2, "bob")
    dialogs: list[str] = []
    bob.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await enter_room(bob, "general")
    sender = await chat_server.connect(1, "mallory")
    payloads = ['<img src=x onerror="alert(1)">', "<script>alert(2)</script>", "<b>bold</b>"]
    for payload in payloads:
        await sender.request({"type": "send_message", "room_id": 1, "content": payload}, "message_ack")
    await sender.close()
    await expect(texts(bob)).to_have_text(payloads, timeout=WAIT_MS)
    assert await bob.locator("#message-list img, #message-list script, #message-list b").count() == 0
    await asyncio.sleep(0.3)
    assert dialogs == []


async def test_expired_token_returns_to_sign_in(browser: Any, chat_server: RunningServer) -> None:
    """A 4001 close sends the user back to the sign-in form with a clear message."""
    from playwright.async_api import expect

    context = await browser.new_context()
    page = await context.new_page()
    expired = chat_server.token(1, "alice", ttl=-10)
    await page.goto(f"{chat_server.http_url}/#token={expired}")
    await expect(page.locator("#signin")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#signin-message")).to_contain_text("expired", timeout=WAIT_MS)
    assert "token=" not in page.url  # the fragment was taken out of the address bar
    await page.screenshot(path=str(SCREENSHOTS / "sign-in.png"))
    await page.locator("#token-input").fill(chat_server.token(1, "alice"))
    await page.locator("#signin-form button").click()
    await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)


@pytest.mark.socket
async def test_page_has_a_content_security_policy(chat_server: RunningServer) -> None:
    """GET / carries a CSP limiting the page to its own origin and its WebSocket."""

    def fetch() -> tuple[str, str]:
        with urllib.request.urlopen(f"{chat_server.http_url}/", timeout=5) as response:
            return response.headers["Content-Security-Policy"], response.read().decode()

    csp, body = await asyncio.to_thread(fetch)
    assert "default-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert "ws://127.0.0.1:" in csp
    assert 'content="/ws/chat/"' in body


async def test_works_with_allowed_origins_set_to_its_own_origin(browser: Any, tmp_path: Path) -> None:
    """With allowed_origins listing the page's origin, the page connects and chats."""
    from playwright.async_api import expect

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    running = await start_server(make_config(tmp_path, server={"port": port, "allowed_origins": [origin]}))
    try:
        await running.create_room("general", [1])
        page = await open_page(browser, running, 1, "alice")
        await enter_room(page, "general")
        await say(page, "same origin works")
        await expect(page.locator("#message-list .message.mine")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#message-list .message.sending")).to_have_count(0, timeout=WAIT_MS)
    finally:
        await running.server.stop()


async def test_phone_width_shows_one_pane_at_a_time(browser: Any, chat_server: RunningServer) -> None:
    """On a phone-width screen the room list and the room view take turns; Back returns."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1])
    page = await open_page(browser, chat_server, 1, "alice", viewport={"width": 390, "height": 760})
    await expect(page.locator(".room-view")).to_be_hidden()
    await enter_room(page, "general")
    await expect(page.locator(".sidebar")).to_be_hidden()
    await say(page, "from my phone")
    await expect(page.locator("#message-list .message.mine")).to_have_count(1, timeout=WAIT_MS)
    await page.screenshot(path=str(SCREENSHOTS / "phone.png"))
    await page.locator("#back").click()
    await expect(page.locator(".sidebar")).to_be_visible()


async def test_shift_enter_starts_a_new_line(browser: Any, chat_server: RunningServer) -> None:
    """Shift+Enter adds a line break to the draft; Enter then sends both lines as one message."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1])
    page = await open_page(browser, chat_server, 1, "alice")
    await enter_room(page, "general")
    composer = page.locator("#input")
    await composer.press_sequentially("first line")
    await composer.press("Shift+Enter")
    await composer.press_sequentially("second line")
    await expect(page.locator("#message-list .message")).to_have_count(0)
    await composer.press("Enter")
    await expect(texts(page)).to_have_text(["first line\nsecond line"], timeout=WAIT_MS)


async def test_older_history_loads_on_scroll_up(browser: Any, tmp_path: Path) -> None:
    """Opening a long room shows the latest page; scrolling to the top loads the page before it."""
    from playwright.async_api import expect

    limits = {"messages_per_second": 10_000, "message_burst": 10_000}
    running = await start_server(make_config(tmp_path, server={"port": free_port()}, limits=limits))
    try:
        room = await running.create_room("archive", [1, 2])
        sender = await running.connect(2, "bob")
        for index in range(120):
            await sender.request({"type": "send_message", "room_id": room, "content": f"note {index}"}, "message_ack")
        await sender.close()
        await mark_read(running, 1, "alice", room)
        page = await open_page(browser, running, 1, "alice", viewport={"width": 1000, "height": 500})
        await enter_room(page, "archive")
        await expect(texts(page)).to_have_count(50, timeout=WAIT_MS)
        await expect(texts(page).last).to_have_text("note 119")
        await page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
        await expect(texts(page)).to_have_count(100, timeout=WAIT_MS)
        await expect(texts(page).first).to_have_text("note 20")
        await page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
        await expect(texts(page)).to_have_count(120, timeout=WAIT_MS)
        await expect(texts(page).first).to_have_text("note 0")
    finally:
        await running.server.stop()


async def test_dark_mode_follows_the_system(browser: Any, chat_server: RunningServer) -> None:
    """With a dark colour scheme the page uses the dark palette."""
    from playwright.async_api import expect

    await chat_server.create_room("general", [1])
    context = await browser.new_context(color_scheme="dark", viewport={"width": 1000, "height": 600})
    page = await context.new_page()
    await page.goto(f"{chat_server.http_url}/#token={chat_server.token(1, 'alice')}")
    await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
    await enter_room(page, "general")
    await say(page, "late night message")
    await page.locator("#message-list .message.mine").wait_for(timeout=WAIT_MS)
    preview = page.locator("#room-list li", has_text="general").locator(".room-preview")
    await expect(preview).to_have_text("late night message", timeout=WAIT_MS)
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 23, 28)"
    await page.screenshot(path=str(SCREENSHOTS / "dark.png"))


async def test_token_cookie_is_httponly_and_other_origins_cannot_use_it(browser: Any, tmp_path: Path) -> None:
    """The signed-in page's cookie is invisible to scripts, and a page on another port of the
    same host cannot open a socket as the signed-in user (issue 9, item 5)."""
    (tmp_path / "own").mkdir()
    (tmp_path / "other").mkdir()
    own = await start_server(make_config(tmp_path / "own", server={"port": free_port()}))
    other = await start_server(make_config(tmp_path / "other", server={"port": free_port()}))
    try:
        await own.create_room("general", [1])
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{own.http_url}/#token={own.token(1, 'alice')}")
        await page.locator("#conn-state[data-state=online]").wait_for(timeout=WAIT_MS)
        assert await page.evaluate("document.cookie") == ""
        cookies = await context.cookies(own.http_url)
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("unichat_token", True, "Strict")]
        # The same browser, on a page of another origin of the same site (another port: the
        # cookie goes along, SameSite does not look at ports):
        intruder = await context.new_page()
        await intruder.goto(f"{other.http_url}/healthz")
        outcome = await intruder.evaluate("""(url) => new Promise((resolve) => {
            const ws = new WebSocket(url);
            ws.onmessage = (event) => resolve("message: " + event.data);
            ws.onclose = (event) => resolve("closed " + event.code);
        })""", own.url)
        assert outcome == "closed 1006"  # the handshake was refused (HTTP 403)
        await context.close()
    finally:
        await own.server.stop()
        await other.server.stop()


async def test_reopening_a_room_puts_the_new_messages_line_before_what_came_meanwhile(
        browser: Any, chat_server: RunningServer) -> None:
    """alice reads general, looks at random, three messages arrive in general: back in general,
    the line sits before the first of those three, not among what she had read."""
    from playwright.async_api import expect

    general, random = await chat_server.rooms(("general", [1, 2]), ("random", [1, 2]))
    await fill_room(chat_server, general, 2, "bob", [f"read {n}" for n in range(60)])
    page = await open_page(browser, chat_server, 1, "alice")
    await page.bring_to_front()
    await enter_room(page, "general")
    await expect(texts(page).last).to_have_text("read 59", timeout=WAIT_MS)
    await chat_server.wait_for(lambda: chat_server.server.chat.directory.unread(1, general) == 0)
    await enter_room(page, "random")
    await fill_room(chat_server, general, 2, "bob", ["after 0", "after 1", "after 2"])
    badge = page.locator("#room-list li", has_text="general").locator(".badge")
    await expect(badge).to_have_text("3", timeout=WAIT_MS)
    await enter_room(page, "general")
    await expect(texts(page).last).to_have_text("after 2", timeout=WAIT_MS)
    divider = page.locator("#message-list .divider")
    await expect(divider).to_be_visible(timeout=WAIT_MS)
    assert await divider.evaluate("node => node.nextElementSibling.querySelector('.text').textContent") == "after 0"


async def test_older_pages_still_load_after_a_reconnect(browser: Any, tmp_path: Path) -> None:
    """Scrolling up while the server is away asks for nothing (and leaves nothing pending);
    once back online, scrolling up loads the page before."""
    from playwright.async_api import expect

    config = make_config(tmp_path, server={"port": free_port()},
                         limits={"messages_per_second": 10_000, "message_burst": 10_000})
    running = await start_server(config)
    try:
        room = await running.create_room("archive", [1, 2])
        await fill_room(running, room, 2, "bob", [f"note {n}" for n in range(200)])
        await mark_read(running, 1, "alice", room)
        page = await open_page(browser, running, 1, "alice")
        await enter_room(page, "archive")
        await expect(texts(page).first).to_have_text("note 150", timeout=WAIT_MS)
        await running.server.stop()
        await expect(page.locator("#conn-state")).not_to_have_attribute("data-state", "online", timeout=WAIT_MS)
        await page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
        await page.wait_for_timeout(300)
        running = await start_server(config)
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "online", timeout=20_000)
        await page.locator("#messages").evaluate("box => { box.scrollTop = 10; box.scrollTop = 0; }")
        await expect(texts(page).first).to_have_text("note 100", timeout=WAIT_MS)
        await expect(page.locator("#older")).to_be_hidden()
    finally:
        await running.server.stop()
