"""The web client works for everyone: no axe-core WCAG 2.1 A/AA violation in any view, light or
dark, desktop or phone; everything reachable by keyboard with focus never lost; right-to-left
text, phone widths and long drafts handled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.browsing import SCREENSHOTS, WAIT_MS, enter_room, fill_room, mark_read, open_page, say, texts
from tests.conftest import RunningServer, free_port, make_config, start_server
from tests.test_web_people import png

pytestmark = pytest.mark.asyncio

AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
DESKTOP = {"width": 1000, "height": 700}
PHONE = {"width": 390, "height": 760}


async def axe_violations(page: Any) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is now, one line each."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page, options={"runOnly": {"type": "tag", "values": AXE_TAGS}})
    return [f"{v['id']}: {v['help']} — {[n['target'] for n in v['nodes']][:5]}"
            for v in results.response["violations"]]


async def _furnished_room(server: RunningServer) -> None:
    """A room with what a room shows: others' messages, a reply, own messages with a read
    receipt, and a second room with unread messages (a badge)."""
    general, _ = await server.rooms(("general", [1, 2, 3]), ("random", [1, 2]))
    bob = await server.connect(2, "bob")
    first = await bob.request({"type": "send_message", "room_id": general, "content": "morning all"}, "message_ack")
    await bob.request({"type": "send_message", "room_id": general, "content": "standup at ten",
                       "reply_to": first["message"]["id"]}, "message_ack")
    alice = await server.connect(1, "alice")
    await alice.request({"type": "send_message", "room_id": general, "content": "on my way"}, "message_ack")
    files = []
    for name, data, kind in (("plan.png", png(120, 80, (31, 90, 209)), "image/png"), ("notes.txt", b"x" * 2048,
                                                                                    "text/plain")):
        ready = await bob.request({"type": "upload_file", "name": name, "size": len(data), "content_type": kind},
                                  "upload_ready")
        await bob.send(data)
        files.append((await bob.request({"type": "upload_done", "upload_id": ready["upload_id"]},
                                        "file_stored"))["file"]["id"])
    await bob.request({"type": "send_message", "room_id": general, "content": "the plan", "attachments": files},
                      "message_ack")
    await bob.request({"type": "send_message", "room_id": general, "content": "see you"}, "message_ack")
    for text in ("lunch?", "anyone?"):
        await bob.request({"type": "send_message", "room_id": 2, "content": text}, "message_ack")
    await bob.close()
    await alice.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_no_axe_violations_in_any_view(browser: Any, chat_server: RunningServer, scheme: str, size: str) -> None:
    """Sign-in, the room list and a furnished room pass axe-core's WCAG 2.1 A/AA rules."""
    viewport = DESKTOP if size == "desktop" else PHONE
    context = await browser.new_context(viewport=viewport, color_scheme=scheme)
    page = await context.new_page()
    await page.goto(f"{chat_server.http_url}/")
    await page.locator("#token-input").wait_for(timeout=WAIT_MS)
    await page.locator("#signin-message").evaluate("node => { node.textContent = 'Signed out.'; }")
    found = {"sign-in": await axe_violations(page)}

    await _furnished_room(chat_server)
    page = await open_page(browser, chat_server, 1, "alice", viewport=viewport, color_scheme=scheme)
    await page.locator("#room-list .badge").first.wait_for(timeout=WAIT_MS)
    found["room list"] = await axe_violations(page)
    await enter_room(page, "general")
    await page.locator("#message-list .message", has_text="see you").wait_for(timeout=WAIT_MS)
    carol = await chat_server.connect(3, "carol")  # reads while alice looks: a read receipt
    await carol.request({"type": "mark_read", "room_id": 1}, "read_marked")
    await carol.close()
    await page.locator("#message-list .receipt").wait_for(timeout=WAIT_MS)
    see_you = page.locator("#message-list .message", has_text="see you")
    await see_you.hover()
    await see_you.get_by_role("button", name="Reply to bob").click()
    await page.locator("#input").fill("x" * 3700)  # the counter shows
    await page.locator("#counter").wait_for(timeout=WAIT_MS)
    found["room"] = await axe_violations(page)
    await page.screenshot(path=str(SCREENSHOTS / f"room-{scheme}-{size}.png"))
    # The message features: its actions with the emoji palette open, reactions under it,
    # the thread panel, the @ list, search results.
    await page.locator("#input").fill("")
    await see_you.hover()
    await see_you.get_by_role("button", name="React to bob").click()
    await see_you.get_by_role("button", name="React with 🎉").wait_for(timeout=WAIT_MS)
    found["actions"] = await axe_violations(page)
    await see_you.get_by_role("button", name="React with 🎉").click()
    await see_you.locator(".reaction").wait_for(timeout=WAIT_MS)
    await see_you.hover()
    await see_you.get_by_role("button", name="Reply in thread to bob").click()
    await page.locator("#thread .message.root").wait_for(timeout=WAIT_MS)
    await page.locator("#thread-input").fill("@")
    await page.locator("#thread-mention-list [role=option]").first.wait_for(timeout=WAIT_MS)
    found["thread"] = await axe_violations(page)
    await page.locator("#thread-input").press("Escape")
    await page.locator("#thread-close").click()
    if size == "phone":
        await page.locator("#back").click()
    await page.locator("#search-input").fill("see")
    await page.locator("#search-input").press("Enter")
    await page.locator("#search-list mark").first.wait_for(timeout=WAIT_MS)
    found["search"] = await axe_violations(page)
    # People and files: the members panel, the new-room dialog with people listed, the
    # upload tray.
    await page.locator("#search-close").click()
    await page.get_by_role("button", name="New room or message").click()
    await page.get_by_role("dialog").get_by_role("checkbox").first.wait_for(timeout=WAIT_MS)
    found["new room"] = await axe_violations(page)
    await page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    await enter_room(page, "general")
    await page.locator("#file-input").set_input_files(files=[{"name": "a.txt", "mimeType": "text/plain",
                                                              "buffer": b"hello"}])
    await page.locator("#attachment-tray .upload", has_text="ready").wait_for(timeout=WAIT_MS)
    await page.get_by_role("button", name="Members: 3").click()
    await page.locator("#member-list .person").first.wait_for(timeout=WAIT_MS)
    found["members"] = await axe_violations(page)
    assert found == {"sign-in": [], "room list": [], "room": [], "actions": [], "thread": [], "search": [],
                     "new room": [], "members": []}


async def test_the_axe_check_sees_a_contrast_failure(browser: Any, chat_server: RunningServer) -> None:
    """The checker is live: a pale notice on the sign-in screen is reported."""
    page = await browser.new_page()
    await page.goto(f"{chat_server.http_url}/")
    await page.locator("#signin-message").evaluate("node => { node.textContent = 'pale'; node.style.color = '#bbb'; }")
    assert [line.split(":")[0] for line in await axe_violations(page)] == ["color-contrast"]


async def test_keyboard_only_sign_in_rooms_reply_and_escape(browser: Any, chat_server: RunningServer) -> None:
    """Sign in, move through the rooms, open one, reach a message's reply and back out with
    Escape, all from the keyboard; focus lands somewhere sensible after each step."""
    from playwright.async_api import expect

    general, random = await chat_server.rooms(("general", [1, 2]), ("random", [1, 2]))
    await fill_room(chat_server, random, 2, "bob", [f"note {n}" for n in range(200)])
    await fill_room(chat_server, general, 2, "bob", ["hello"])  # general: most recent, listed first
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    await page.goto(f"{chat_server.http_url}/")
    focused = page.locator(":focus")
    await expect(focused).to_have_id("token-input", timeout=WAIT_MS)
    await page.keyboard.insert_text(chat_server.token(1, "alice"))
    await page.keyboard.press("Tab")
    await expect(focused).to_have_text("Sign in")
    await page.keyboard.press("Enter")
    # Signed in: focus goes to the first room, not to <body>.
    await expect(focused).to_have_attribute("aria-label", "general, 1 unread", timeout=WAIT_MS)
    await page.keyboard.press("ArrowDown")
    await expect(focused).to_have_attribute("aria-label", "random, 200 unread")
    await page.keyboard.press("Enter")
    await expect(focused).to_have_id("input", timeout=WAIT_MS)
    await expect(texts(page).last).to_have_text("note 199", timeout=WAIT_MS)
    assert await page.locator("#input").input_value() == ""  # Enter on the room typed nothing

    # From the room list to the composer: the room's members button, the message list (one
    # stop, however many messages), the jump to the first of the 200 unread, the attach
    # button, the composer.
    await page.locator("#room-list button[aria-current=true]").focus()
    visited: list[str] = []
    while len(visited) < 8 and (not visited or visited[-1] != "input"):
        await page.keyboard.press("Tab")
        visited.append(await page.evaluate("document.activeElement.id"))
    assert visited == ["members-toggle", "messages", "jump-unread", "attach", "input"]

    # Shift+Tab into the list, arrows to a message, Tab to its reply button.
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Shift+Tab")  # past the attach button and the jump control
    await expect(focused).to_have_id("messages")
    await page.keyboard.press("ArrowUp")
    await page.keyboard.press("ArrowUp")
    await expect(focused).to_contain_text("note 198")
    await page.keyboard.press("Tab")
    await expect(focused).to_have_attribute("aria-label", "React to bob")
    await page.keyboard.press("Tab")
    await expect(focused).to_have_attribute("aria-label", "Reply to bob")
    await page.keyboard.press("Enter")
    await expect(page.locator("#reply-bar")).to_contain_text("note 198")
    await expect(focused).to_have_id("input")
    await page.keyboard.press("Escape")
    await expect(page.locator("#reply-bar")).to_be_hidden()
    await expect(focused).to_have_id("input")
    await page.keyboard.press("Escape")  # nothing to cancel: back to the room list
    await expect(focused).to_have_attribute("aria-current", "true")


async def test_focus_stays_put_while_messages_arrive(browser: Any, chat_server: RunningServer) -> None:
    """A focused button or message keeps focus while new messages come in and the list and
    the room list change around it."""
    from playwright.async_api import expect

    general, _ = await chat_server.rooms(("general", [1, 2]), ("random", [1, 2]))
    await fill_room(chat_server, general, 2, "bob", ["first"])
    page = await open_page(browser, chat_server, 1, "alice")
    await enter_room(page, "general")
    first = page.locator("#message-list .message", has_text="first")
    await first.focus()  # (its actions show while it holds the focus)
    reply = first.get_by_role("button", name="Reply to bob")
    await reply.focus()
    await fill_room(chat_server, general, 2, "bob", [f"more {n}" for n in range(5)])
    await fill_room(chat_server, 2, 2, "bob", ["elsewhere"])  # the room list reorders
    await expect(texts(page).last).to_have_text("more 4", timeout=WAIT_MS)
    await expect(page.locator("#room-list li").first).to_contain_text("random", timeout=WAIT_MS)
    assert await reply.evaluate("node => node === document.activeElement")
    room_button = page.locator("#room-list button", has_text="general")
    await room_button.focus()
    await fill_room(chat_server, 2, 2, "bob", ["and again"])
    await expect(page.locator("#room-list button", has_text="random")).to_contain_text("and again", timeout=WAIT_MS)
    assert await room_button.evaluate("node => node === document.activeElement")


async def test_phone_back_and_escape_return_focus_to_the_room(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    await chat_server.rooms(("general", [1]), ("random", [1]))
    page = await open_page(browser, chat_server, 1, "alice", viewport=PHONE)
    await enter_room(page, "random")
    await expect(page.locator("#room-conn")).to_have_text("online")  # the state shows inside the room too
    await page.locator("#back").click()
    await expect(page.locator(":focus")).to_have_attribute("aria-label", "random")
    await page.keyboard.press("Space")  # a room is a button: Space opens it as Enter does
    await expect(page.locator(":focus")).to_have_id("input", timeout=WAIT_MS)
    await page.keyboard.press("Escape")
    await expect(page.locator(".sidebar")).to_be_visible()
    await expect(page.locator(":focus")).to_have_attribute("aria-label", "random")


async def test_a_new_message_is_announced_alone(browser: Any, chat_server: RunningServer) -> None:
    """The messages are a log (role="log") and nothing else large is live: a new message adds
    one item to the log, so a screen reader reads that message, not the whole room."""
    room = await chat_server.create_room("general", [1, 2])
    await fill_room(chat_server, room, 2, "bob", [f"earlier {n}" for n in range(200)])
    page = await open_page(browser, chat_server, 1, "alice")
    await enter_room(page, "general")
    await page.locator("#message-list .message", has_text="earlier 199").wait_for(timeout=WAIT_MS)
    live = await page.locator("[aria-live], [role=log], [role=status], [role=alert]").evaluate_all(
        "nodes => nodes.map((n) => n.id)")
    assert live == ["signin-message", "conn-state", "search-summary", "room-conn", "messages", "typing",
                    "room-notice", "attachment-tray", "counter", "new-room-error"]
    # One connection state is rendered at a time (the room's own copy on a phone only).
    assert await page.locator("#room-conn").is_hidden()
    # What is rendered (innerText): a message's actions are hidden until it is hovered or
    # focused, and hidden content is not in the accessibility tree either.
    await page.evaluate("""() => {
        window.added = [];
        new MutationObserver((records) => { for (const r of records) for (const n of r.addedNodes) {
            window.added.push(n.innerText ?? n.textContent); } })
          .observe(document.getElementById('messages'), { childList: true, subtree: true, characterData: true });
    }""")
    await fill_room(chat_server, room, 2, "bob", ["just now"])
    await page.locator("#message-list .message", has_text="just now").wait_for(timeout=WAIT_MS)
    await page.wait_for_timeout(300)
    added = await page.evaluate("window.added")
    assert len(added) == 1
    assert "just now" in added[0]
    assert len(added[0]) < 40


async def test_right_to_left_and_mixed_text_read_in_their_own_direction(
        browser: Any, chat_server: RunningServer) -> None:
    """Each message, preview and name takes its direction from its own text (dir=auto)."""
    from playwright.async_api import expect

    room = await chat_server.create_room("general", [1, 2])
    arabic, hebrew = "مرحبا بالجميع، كيف حالكم اليوم؟", "שלום Alice, see you at 10"
    await fill_room(chat_server, room, 2, "bob", [arabic, hebrew, "plain English"])
    page = await open_page(browser, chat_server, 1, "alice")
    await enter_room(page, "general")
    await expect(texts(page)).to_have_count(3, timeout=WAIT_MS)
    directions = await texts(page).evaluate_all("nodes => nodes.map((n) => getComputedStyle(n).direction)")
    assert directions == ["rtl", "rtl", "ltr"]
    box = await page.locator("#messages").bounding_box()
    first = await texts(page).first.bounding_box()
    # Right-aligned within the bubble: the Arabic line ends at the bubble's right edge.
    bubble = await page.locator("#message-list .message").first.bounding_box()
    assert first["x"] + first["width"] > bubble["x"] + bubble["width"] - 16
    assert box is not None
    await page.screenshot(path=str(SCREENSHOTS / "rtl.png"))


async def test_phone_width_fits_long_replies_and_keeps_the_last_message_visible(
        browser: Any, chat_server: RunningServer) -> None:
    """At 390 px a reply to a long message stays on screen, and opening the reply bar does not
    cover the last message."""
    from playwright.async_api import expect

    room = await chat_server.create_room("general", [1, 2])
    long_text = "This is a rather long message that goes on " * 6
    bob = await chat_server.connect(2, "bob")
    first = await bob.request({"type": "send_message", "room_id": room, "content": long_text}, "message_ack")
    await bob.request({"type": "send_message", "room_id": room, "content": "replying to that",
                       "reply_to": first["message"]["id"]}, "message_ack")
    await bob.close()
    await fill_room(chat_server, room, 2, "bob", [f"filler {n}" for n in range(20)])
    page = await open_page(browser, chat_server, 1, "alice", viewport=PHONE)
    await enter_room(page, "general")
    await expect(texts(page).last).to_have_text("filler 19", timeout=WAIT_MS)
    boxes = await page.locator("#message-list .message").evaluate_all(
        "nodes => nodes.map((n) => { const r = n.getBoundingClientRect(); return [r.left, r.right]; })")
    assert all(left >= 0 and right <= PHONE["width"] for left, right in boxes), boxes
    last = page.locator("#message-list .message").last
    await last.hover()
    await last.get_by_role("button", name="Reply to bob").click()
    await expect(page.locator("#reply-bar")).to_be_visible()
    await page.wait_for_timeout(200)
    message_box, list_box = await last.bounding_box(), await page.locator("#messages").bounding_box()
    assert message_box["y"] + message_box["height"] <= list_box["y"] + list_box["height"] + 1
    await page.screenshot(path=str(SCREENSHOTS / "phone-reply.png"))


async def test_unread_line_and_the_jump_to_it(browser: Any, chat_server: RunningServer) -> None:
    """A room opened with 134 unread shows a control that brings the first unread message into
    view under a "New messages" line; a few unread show the line at once."""
    from playwright.async_api import expect

    room, small = await chat_server.rooms(("busy", [1, 2]), ("quiet", [1, 2]))
    await fill_room(chat_server, room, 2, "bob", [f"old {n}" for n in range(66)])
    await fill_room(chat_server, small, 2, "bob", [f"q {n}" for n in range(40)])
    await mark_read(chat_server, 1, "alice", room, small)
    await fill_room(chat_server, room, 2, "bob", [f"new {n}" for n in range(134)])
    await fill_room(chat_server, small, 2, "bob", ["q new 0", "q new 1", "q new 2"])
    page = await open_page(browser, chat_server, 1, "alice")
    await enter_room(page, "quiet")
    divider = page.locator("#message-list .divider")
    await expect(divider).to_be_in_viewport(timeout=WAIT_MS)
    after = await divider.evaluate("node => node.nextElementSibling.querySelector('.text').textContent")
    assert after == "q new 0"
    await enter_room(page, "busy")
    jump = page.locator("#jump-unread")
    await expect(jump).to_have_text("134 unread — jump to the first", timeout=WAIT_MS)
    await jump.click()
    await expect(divider).to_be_in_viewport(timeout=WAIT_MS)
    after = await divider.evaluate("node => node.nextElementSibling.querySelector('.text').textContent")
    assert after == "new 0"
    await expect(jump).to_be_hidden()
    await page.screenshot(path=str(SCREENSHOTS / "unread-line.png"))


async def test_the_composer_counts_down_to_the_limit_and_refuses_more(browser: Any, tmp_path: Path) -> None:
    """Past 90 % of limits.max_content_chars a counter shows; over it the draft cannot be sent."""
    from playwright.async_api import expect

    running = await start_server(make_config(tmp_path, server={"port": free_port()}, limits={"max_content_chars": 100}))
    try:
        await running.create_room("general", [1])
        page = await open_page(browser, running, 1, "alice")
        await enter_room(page, "general")
        counter = page.locator("#counter")
        await page.locator("#input").fill("é" * 89)
        await expect(counter).to_be_hidden()
        await page.locator("#input").fill("é" * 95)
        await expect(counter).to_have_text("95 / 100 characters")
        await page.locator("#input").fill("😀" * 101)  # code points, as the server counts
        await expect(counter).to_have_text("101 / 100 characters: 1 too many")
        await expect(page.locator("#send")).to_be_disabled()
        await page.locator("#input").press("Enter")
        await asyncio.sleep(0.3)
        await expect(page.locator("#message-list .message")).to_have_count(0)
        await page.locator("#input").press("Backspace")
        await page.locator("#input").press("Enter")
        await expect(page.locator("#message-list .message.mine")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#message-list .message.sending")).to_have_count(0, timeout=WAIT_MS)
    finally:
        await running.server.stop()


async def test_the_tab_title_counts_unread_messages(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    general, random = await chat_server.rooms(("general", [1, 2]), ("random", [1, 2]))
    page = await open_page(browser, chat_server, 1, "alice")
    await enter_room(page, "general")
    await expect(page).to_have_title("general · unichat")
    await fill_room(chat_server, random, 2, "bob", ["one", "two"])
    await expect(page).to_have_title("(2) general · unichat", timeout=WAIT_MS)


async def test_buttons_are_big_enough_to_hit(browser: Any, chat_server: RunningServer) -> None:
    """Every visible button is at least 24×24 px with a mouse and 44×44 px on a touch screen."""
    room = await chat_server.create_room("general", [1, 2])
    await fill_room(chat_server, room, 2, "bob", ["tap me"])
    for minimum, context in ((24, {}), (44, {"has_touch": True, "is_mobile": True})):
        page = await open_page(browser, chat_server, 1, "alice", viewport=PHONE, **context)
        await enter_room(page, "general")
        await page.locator("#message-list .message").first.wait_for(timeout=WAIT_MS)
        tap_me = page.locator("#message-list .message", has_text="tap me")
        await tap_me.focus()  # its actions show
        await tap_me.get_by_role("button", name="React to bob").click()  # and the emoji palette
        sizes = await page.locator("button:visible").evaluate_all(
            "nodes => nodes.map((n) => [n.textContent || n.getAttribute('aria-label'), n.offsetWidth, n.offsetHeight])")
        small = [size for size in sizes if size[1] < minimum or size[2] < minimum]
        assert sizes
        assert not small, (minimum, small)
        await say(page, "done")
