"""The web client's message features (protocol.md §6.1) with two users on two pages:
reactions, threads, edit and delete, mentions, and search — each live on the other page
within a second."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browsing import SCREENSHOTS, WAIT_MS, enter_room, open_page, say
from tests.conftest import RunningServer

pytestmark = pytest.mark.asyncio

LIVE_MS = 1000
"""What one user does shows on the other's page within this."""


def message(page: Any, text: str) -> Any:
    return page.locator("#message-list .message", has_text=text)


async def two_in_a_room(browser: Any, server: RunningServer) -> tuple[Any, Any]:
    await server.create_room("general", [1, 2])
    for user_id, name in ((1, "alice"), (2, "bob")):  # both known by name before either page opens
        await (await server.connect(user_id, name)).close()
    alice = await open_page(browser, server, 1, "alice")
    bob = await open_page(browser, server, 2, "bob")
    for page in (alice, bob):
        await enter_room(page, "general")
    return alice, bob


async def test_reactions_show_counts_and_mine_live(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    alice, bob = await two_in_a_room(browser, chat_server)
    await say(alice, "ship it?")
    target = message(bob, "ship it?")
    await expect(target).to_be_visible(timeout=WAIT_MS)
    await target.hover()
    await target.get_by_role("button", name="React to alice").click()
    await target.get_by_role("button", name="React with 👍").click()
    chip = target.locator(".reaction", has_text="👍")
    await expect(chip).to_have_text("👍 1", timeout=WAIT_MS)
    await expect(chip).to_have_attribute("aria-pressed", "true")  # mine: highlighted
    on_alice = message(alice, "ship it?").locator(".reaction", has_text="👍")
    await expect(on_alice).to_have_text("👍 1", timeout=LIVE_MS)
    await expect(on_alice).to_have_attribute("aria-pressed", "false")
    await on_alice.focus()
    await alice.keyboard.press("Enter")  # alice adds hers from the keyboard: the chip keeps the focus
    await expect(chip).to_have_text("👍 2", timeout=LIVE_MS)
    await expect(alice.locator(":focus")).to_have_text("👍 2", timeout=WAIT_MS)
    await chip.click()  # bob takes his back
    await expect(on_alice).to_have_text("👍 1", timeout=LIVE_MS)
    await expect(on_alice).to_have_attribute("aria-pressed", "true")
    await target.get_by_role("button", name="React to alice").click()
    await target.get_by_role("button", name="React with 🎉").click()
    await expect(message(alice, "ship it?").locator(".reaction", has_text="🎉")).to_have_text("🎉 1",
                                                                                            timeout=LIVE_MS)
    await alice.mouse.move(1, 1)  # (no hover toolbar in the picture)
    await alice.screenshot(path=str(SCREENSHOTS / "reactions.png"))


async def test_thread_panel_replies_and_counts_live(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    alice, bob = await two_in_a_room(browser, chat_server)
    await say(alice, "Release plan for Friday")
    root = message(bob, "Release plan for Friday")
    await expect(root).to_be_visible(timeout=WAIT_MS)
    await root.hover()
    await root.get_by_role("button", name="Reply in thread to alice").click()
    panel = bob.locator("#thread")
    await expect(panel).to_be_visible()
    await expect(panel.locator(".message.root")).to_contain_text("Release plan for Friday")
    await bob.locator("#thread-input").fill("I can take the changelog")
    await bob.locator("#thread-input").press("Enter")
    await expect(panel.locator(".message", has_text="I can take the changelog")).to_be_visible(timeout=WAIT_MS)
    # Alice sees the reply count under the root, live, and opens the thread from it.
    count = message(alice, "Release plan for Friday").locator(".replies")
    await expect(count).to_have_text("1 reply", timeout=LIVE_MS)
    await count.click()
    await expect(alice.locator("#thread .message", has_text="I can take the changelog")).to_be_visible(
        timeout=WAIT_MS)
    await alice.locator("#thread-input").fill("Thanks, I'll do the tag")
    await alice.locator("#thread-input").press("Enter")
    await expect(panel.locator(".message", has_text="I'll do the tag")).to_be_visible(timeout=LIVE_MS)
    await expect(message(bob, "Release plan for Friday").locator(".replies")).to_have_text("2 replies",
                                                                                           timeout=LIVE_MS)
    await alice.screenshot(path=str(SCREENSHOTS / "thread.png"))


async def test_edit_and_delete_own_messages_live(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    alice, bob = await two_in_a_room(browser, chat_server)
    await say(alice, "teh meeting is at 3")
    mine = message(alice, "teh meeting is at 3")
    await expect(mine).to_have_class("message mine", timeout=WAIT_MS)
    # Only one's own messages offer edit and delete.
    theirs = message(bob, "teh meeting is at 3")
    await theirs.hover()
    await expect(theirs.get_by_role("button", name="Edit your message")).to_have_count(0)
    await mine.hover()
    await mine.get_by_role("button", name="Edit your message").click()
    await expect(alice.locator("#input")).to_have_value("teh meeting is at 3")
    await alice.locator("#input").fill("the meeting is at 3")
    await alice.locator("#input").press("Enter")
    edited = message(bob, "the meeting is at 3")
    await expect(edited).to_be_visible(timeout=LIVE_MS)
    await expect(edited.locator(".edited")).to_have_text("(edited)")
    await expect(message(alice, "the meeting is at 3").locator(".edited")).to_be_visible(timeout=WAIT_MS)
    # Bob answers it; once it is deleted his quote of it no longer shows its text.
    await edited.hover()
    await edited.get_by_role("button", name="Reply to alice").click()
    await say(bob, "see you there")
    answer = message(bob, "see you there")
    await expect(answer.locator(".quote")).to_have_text("alice: the meeting is at 3", timeout=WAIT_MS)
    alice.on("dialog", lambda dialog: dialog.accept())
    target = message(alice, "the meeting is at 3").first
    await target.hover()
    await target.get_by_role("button", name="Delete your message").click()
    await expect(bob.locator("#message-list .message.deleted .text")).to_have_text("message deleted",
                                                                                   timeout=LIVE_MS)
    await expect(answer.locator(".quote")).to_have_text("alice: message deleted", timeout=LIVE_MS)
    await expect(alice.locator("#message-list .message.deleted")).to_have_count(1, timeout=WAIT_MS)


async def test_mentions_offer_participants_and_highlight(browser: Any, chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    await chat_server.rooms(("general", [1, 2]), ("random", [1, 2]))
    # (bob first: alice's room list then names him; a user never seen has a placeholder name)
    bob = await open_page(browser, chat_server, 2, "bob")
    alice = await open_page(browser, chat_server, 1, "alice")
    await enter_room(alice, "general")
    await enter_room(bob, "random")
    box = alice.locator("#input")
    await box.fill("ping @b")
    options = alice.locator("#mention-list [role=option]")
    await expect(options).to_have_text(["@bob"], timeout=WAIT_MS)
    await box.press("Enter")  # picks, does not send
    await expect(box).to_have_value("ping @bob ")
    await box.type("see the doc")
    await box.press("Enter")
    # Bob, in another room, sees a mention badge on general at once.
    general = bob.locator("#room-list li", has_text="general")
    await expect(general.locator(".mention-badge")).to_be_visible(timeout=LIVE_MS)
    await expect(general.locator("button.room")).to_have_attribute(
        "aria-label", "general, 1 unread, 1 mention of you")
    await enter_room(bob, "general")
    await expect(bob.locator("#message-list .message.mentioned", has_text="ping @bob")).to_be_visible(
        timeout=WAIT_MS)
    await expect(general.locator(".mention-badge")).to_have_count(0, timeout=WAIT_MS)
    await expect(alice.locator("#message-list .message.mentioned")).to_have_count(0)  # not a mention of alice
    # Reading the room reset the count on the server: back in random, general has no badge.
    await bob.locator("#room-list li", has_text="random").click()
    await expect(general.locator("button.room")).to_have_attribute("aria-label", "general", timeout=WAIT_MS)


async def test_search_marks_matches_and_opens_the_room_at_the_message(browser: Any,
                                                                       chat_server: RunningServer) -> None:
    from playwright.async_api import expect

    from tests.browsing import fill_room

    general, random_room = await chat_server.rooms(("general", [1, 2]), ("random", [1, 2]))
    await fill_room(chat_server, general, 1, "alice",
                    ["the quarterly numbers are in"] + [f"filler {n}" for n in range(120)])
    await fill_room(chat_server, random_room, 2, "bob", ["lunch?"])
    bob = await open_page(browser, chat_server, 2, "bob")
    await enter_room(bob, "random")
    await bob.locator("#search-input").fill("quarterly")
    await bob.locator("#search-input").press("Enter")
    result = bob.locator("#search-list .result")
    await expect(result).to_have_count(1, timeout=WAIT_MS)
    await expect(result.locator("mark")).to_have_text("quarterly")
    await expect(result).to_contain_text("general")
    await result.click()
    await expect(bob.locator("#room-title")).to_have_text("general", timeout=WAIT_MS)
    found = bob.locator("#message-list .message.found", has_text="the quarterly numbers are in")
    await expect(found).to_be_visible(timeout=WAIT_MS)
    await expect(found).to_be_focused()
    await expect(found).to_be_in_viewport()
    # New words are searchable at once: what alice says now, bob finds.
    alice = await open_page(browser, chat_server, 1, "alice")
    await enter_room(alice, "random")
    await say(alice, "zebra crossing ahead")
    await expect(bob.locator("#message-list .message", has_text="filler 0")).to_have_count(1, timeout=WAIT_MS)
    await bob.locator("#search-input").fill("zeb*")
    await bob.locator("#search-input").press("Enter")
    await expect(result.locator("mark")).to_have_text("zebra", timeout=LIVE_MS)
    await bob.locator("#search-input").fill('"open quote')
    await bob.locator("#search-input").press("Enter")
    await expect(bob.locator("#search-summary")).to_contain_text("not closed", timeout=WAIT_MS)


async def test_changes_made_while_offline_show_after_reconnecting(browser: Any, tmp_path: Any) -> None:
    """A room opened at a search result (a window away from the live end): edits and
    reactions made while the page was disconnected show once it is back."""
    from playwright.async_api import expect

    from tests.browsing import fill_room
    from tests.conftest import free_port, make_config, start_server

    config = make_config(tmp_path, server={"port": free_port()},
                         limits={"messages_per_second": 10_000, "message_burst": 10_000})
    running = await start_server(config)
    try:
        room = await running.create_room("general", [1, 2])
        await fill_room(running, room, 1, "alice", ["the budget draft"] + [f"filler {n}" for n in range(120)])
        bob = await open_page(browser, running, 2, "bob")
        await bob.locator("#search-input").fill("budget")
        await bob.locator("#search-input").press("Enter")
        await bob.locator("#search-list .result").click()
        found = bob.locator("#message-list .message.found")
        await expect(found).to_contain_text("the budget draft", timeout=WAIT_MS)
        await running.server.stop()
        await expect(bob.locator("#conn-state")).not_to_have_attribute("data-state", "online", timeout=WAIT_MS)
        running = await start_server(config)
        alice = await running.connect(1, "alice")
        await alice.request({"type": "edit_message", "room_id": room, "message_id": 1,
                             "content": "the budget, final"}, "message_updated")
        await alice.request({"type": "add_reaction", "room_id": room, "message_id": 1, "emoji": "✅"},
                            "reactions_updated")
        await alice.close()
        await expect(bob.locator("#conn-state")).to_have_attribute("data-state", "online", timeout=20_000)
        shown = bob.locator('#message-list li[data-message-id="1"]')
        await expect(shown.locator(".text")).to_have_text("the budget, final", timeout=WAIT_MS)
        await expect(shown.locator(".reaction")).to_have_text("✅ 1")
    finally:
        await running.server.stop()
