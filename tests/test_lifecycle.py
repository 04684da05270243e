"""Protocol §6.1 over real sockets: edits, tombstones, reactions, threads, mentions,
search, and the catch-up of changes — each rule and each failure branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, RunningServer, make_config, start_server

pytestmark = pytest.mark.asyncio

async def team(chat: RunningServer, *, subscribe: bool = True) -> tuple[int, int, Client, Client]:
    """Room ``team`` with alice (1) and bob (2), a foreign room of carol (3), both connected."""
    room, foreign = await chat.rooms(("team", [1, 2]), ("carol's", [3]))
    alice = await chat.connect(1, "alice")
    bob = await chat.connect(2, "bob")
    if subscribe:
        for client in (alice, bob):
            await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
    return room, foreign, alice, bob


async def say(client: Client, room: int, content: str, **fields: Any) -> dict[str, Any]:
    ack = await client.request({"type": "send_message", "room_id": room, "content": content, **fields},
                               "message_ack")
    assert ack["type"] == "message_ack", ack
    message: dict[str, Any] = ack["message"]
    return message


_request_ids = iter(range(1, 10**9))


async def answer(client: Client, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """The direct reply to ``frame`` (matched by request_id), skipping broadcasts."""
    request_id = f"q{next(_request_ids)}"
    await client.send({**frame, "request_id": request_id})
    async with asyncio.timeout(timeout):
        while True:
            reply = await client.recv(timeout)
            if reply.get("request_id") == request_id:
                return reply


async def error_of(client: Client, frame: dict[str, Any]) -> dict[str, Any]:
    reply = await answer(client, frame)
    assert reply["type"] == "error", reply
    return reply


def db(chat: RunningServer) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(chat.config.database_path))


# -- edit ------------------------------------------------------------------------------


async def test_edit_answers_broadcasts_and_commits(chat: RunningServer) -> None:
    room, _, alice, bob = await team(chat)
    sent = await say(alice, room, "helo")
    await bob.recv_type("new_message")
    reply = await alice.request({"type": "edit_message", "room_id": room, "message_id": sent["id"],
                                 "content": "hello", "request_id": 7}, "message_updated")
    assert reply["type"] == "message_updated"
    assert reply["request_id"] == 7
    edited = reply["message"]
    assert (edited["id"], edited["content"], edited["room_id"]) == (sent["id"], "hello", room)
    assert edited["edited_at"] is not None
    assert edited["revision"] > sent["revision"]
    seen = await bob.recv_type("message_updated")
    assert seen["message"] == edited
    with db(chat) as conn:  # committed before the reply
        assert conn.execute("SELECT content FROM messages WHERE id = ?", (sent["id"],)).fetchone() == ("hello",)
    page = await bob.request({"type": "get_history", "room_id": room}, "history")
    assert page["messages"][-1]["content"] == "hello"
    assert page["messages"][-1]["edited_at"] == edited["edited_at"]


async def test_edit_refusals(chat: RunningServer) -> None:
    room, foreign, alice, bob = await team(chat)
    mine = await say(alice, room, "mine")
    carol = await chat.connect(3, "carol")
    elsewhere = await say(carol, foreign, "carol's own")
    edit = {"type": "edit_message", "room_id": room, "message_id": mine["id"], "content": "x"}
    assert (await error_of(bob, edit))["code"] == "forbidden"
    assert (await error_of(alice, {**edit, "room_id": foreign}))["code"] == "access_denied"
    assert (await error_of(alice, {**edit, "room_id": 999}))["code"] == "access_denied"
    assert (await error_of(alice, {**edit, "message_id": elsewhere["id"]}))["code"] == "not_found"
    assert (await error_of(alice, {**edit, "message_id": 10**9}))["code"] == "not_found"
    assert (await error_of(alice, {**edit, "content": "   "}))["code"] == "invalid_message"
    assert (await error_of(alice, {**edit, "content": "x" * 4001}))["code"] == "invalid_message"
    assert (await error_of(alice, {**edit, "message_id": "1"}))["code"] == "invalid_message"
    await alice.request({"type": "delete_message", "room_id": room, "message_id": mine["id"]}, "message_deleted")
    assert (await error_of(alice, edit))["code"] == "not_found"
    with db(chat) as conn:
        assert conn.execute("SELECT content FROM messages WHERE id = ?", (elsewhere["id"],)).fetchone() == (
            "carol's own",)


async def test_editing_the_latest_message_updates_the_preview(chat: RunningServer) -> None:
    room, _, alice, _ = await team(chat, subscribe=False)
    await say(alice, room, "first")
    last = await say(alice, room, "second")
    bob = await chat.connect(2, "bob2")
    await alice.request({"type": "edit_message", "room_id": room, "message_id": last["id"],
                         "content": "second, edited"}, "message_updated")
    update = await bob.recv_type("room_updated")
    assert update["updates"]["last_message_content"] == "second, edited"


# -- delete ----------------------------------------------------------------------------


async def test_delete_leaves_a_tombstone_and_is_idempotent(chat: RunningServer) -> None:
    room, _, alice, bob = await team(chat)
    root = await say(alice, room, "root with a secretword")
    await alice.request({"type": "add_reaction", "room_id": room, "message_id": root["id"], "emoji": "👍"},
                        "reactions_updated")
    reply_msg = await say(bob, room, "a reply", reply_to=root["id"])
    delete = {"type": "delete_message", "room_id": room, "message_id": root["id"], "request_id": "d"}
    answer = await alice.request(delete, "message_deleted")
    assert (answer["room_id"], answer["message_id"], answer["request_id"]) == (room, root["id"], "d")
    assert (await bob.recv_type("message_deleted"))["message_id"] == root["id"]
    again = await alice.request(delete, "message_deleted")
    assert again["type"] == "message_deleted"
    assert again["message_id"] == root["id"]
    await bob.no_frame(0.3, ignore=("room_updated", "new_message", "reactions_updated", "thread_updated"))
    page = await alice.request({"type": "get_history", "room_id": room}, "history")
    tomb = next(m for m in page["messages"] if m["id"] == root["id"])
    assert tomb["deleted"] is True
    assert tomb["content"] == ""
    assert tomb["reactions"] == []
    assert tomb["attachments"] == []
    assert tomb["reply_count"] == 1
    thread = await alice.request({"type": "get_thread", "room_id": room, "message_id": root["id"]}, "thread")
    assert [m["id"] for m in thread["messages"]] == [reply_msg["id"]]
    found = await alice.request({"type": "search_messages", "query": "secretword"}, "search_results")
    assert found["messages"] == []
    with db(chat) as conn:
        assert conn.execute("SELECT content, deleted FROM messages WHERE id = ?", (root["id"],)).fetchone() == (
            "", 1)
        assert conn.execute("SELECT COUNT(*) FROM reactions WHERE message_id = ?", (root["id"],)).fetchone() == (0,)


async def test_delete_refusals_and_the_owner(chat: RunningServer, tmp_path: Path) -> None:
    room, foreign = await chat.rooms(("team", [1, 2, 3]), ("other", [1]))
    with db(chat) as conn:  # the owner is named the way the CLI and the server API will (§6.2)
        conn.execute("UPDATE rooms SET owner_id = 3 WHERE id = ?", (room,))
        conn.commit()
    alice = await chat.connect(1, "alice")
    bob = await chat.connect(2, "bob")
    owner = await chat.connect(3, "olga")
    sent = await say(alice, room, "by alice")
    other_room = await say(alice, foreign, "elsewhere")
    delete = {"type": "delete_message", "room_id": room, "message_id": sent["id"]}
    assert (await error_of(bob, delete))["code"] == "forbidden"
    assert (await error_of(bob, {**delete, "room_id": foreign}))["code"] == "access_denied"
    assert (await error_of(alice, {**delete, "message_id": other_room["id"]}))["code"] == "not_found"
    answer = await owner.request(delete, "message_deleted")
    assert answer["type"] == "message_deleted"


async def test_delete_keeps_unread_counts_and_previews_exact(chat: RunningServer) -> None:
    room, _, alice, _ = await team(chat, subscribe=False)
    kept = await say(alice, room, "kept")
    gone = await say(alice, room, "the deleted text")
    bob = await chat.connect(2, "bob2")
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert listed["rooms"][0]["unread_count"] == 2
    await alice.request({"type": "delete_message", "room_id": room, "message_id": gone["id"]}, "message_deleted")
    update = await bob.recv_type("room_updated")
    assert update["updates"]["unread_count"] == 1
    assert update["updates"]["last_message_content"] == "kept"
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert (listed["rooms"][0]["unread_count"], listed["rooms"][0]["last_message_content"]) == (1, "kept")
    read = await bob.request({"type": "mark_read", "room_id": room, "message_ids": [kept["id"]]}, "read_marked")
    assert read["unread_count"] == 0  # the database agrees with memory
    # After a restart the counts come from the database alone.
    await chat.server.stop()
    chat._server = None
    bob = await chat.connect(2, "bob3")
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert (listed["rooms"][0]["unread_count"], listed["rooms"][0]["last_message_content"]) == (0, "kept")


# -- reactions -------------------------------------------------------------------------


async def test_reactions_counts_order_and_removal(chat: RunningServer) -> None:
    room, _, alice, bob = await team(chat)
    sent = await say(alice, room, "react to me")
    await bob.recv_type("new_message")

    async def react(client: Client, kind: str, emoji: str) -> list[dict[str, Any]]:
        reply = await answer(client, {"type": kind, "room_id": room, "message_id": sent["id"], "emoji": emoji})
        assert reply["type"] == "reactions_updated", reply
        assert (reply["room_id"], reply["message_id"]) == (room, sent["id"])
        reactions: list[dict[str, Any]] = reply["reactions"]
        return reactions

    assert await react(alice, "add_reaction", ":+1:") == [{"emoji": ":+1:", "count": 1, "user_ids": [1]}]
    seen = await bob.recv_type("reactions_updated")
    assert seen["reactions"] == [{"emoji": ":+1:", "count": 1, "user_ids": [1]}]
    await react(bob, "add_reaction", "🎉")
    assert await react(bob, "add_reaction", ":+1:") == [
        {"emoji": ":+1:", "count": 2, "user_ids": [1, 2]}, {"emoji": "🎉", "count": 1, "user_ids": [2]}]
    # Adding again changes nothing, and still answers.
    assert await react(bob, "add_reaction", ":+1:") == [
        {"emoji": ":+1:", "count": 2, "user_ids": [1, 2]}, {"emoji": "🎉", "count": 1, "user_ids": [2]}]
    assert await react(bob, "remove_reaction", "🎉") == [{"emoji": ":+1:", "count": 2, "user_ids": [1, 2]}]
    assert await react(bob, "remove_reaction", "🎉") == [{"emoji": ":+1:", "count": 2, "user_ids": [1, 2]}]
    page = await alice.request({"type": "get_history", "room_id": room}, "history")
    assert page["messages"][-1]["reactions"] == [{"emoji": ":+1:", "count": 2, "user_ids": [1, 2]}]


async def test_reaction_refusals(chat: RunningServer) -> None:
    room, foreign, alice, bob = await team(chat)
    sent = await say(alice, room, "x")
    base = {"type": "add_reaction", "room_id": room, "message_id": sent["id"]}
    for bad in ("", "x" * 33, "a b", "\n", 5, None, ["👍"]):
        assert (await error_of(bob, {**base, "emoji": bad}))["code"] == "invalid_message", bad
    assert (await error_of(bob, {**base, "room_id": foreign, "emoji": "👍"}))["code"] == "access_denied"
    assert (await error_of(bob, {**base, "message_id": 10**9, "emoji": "👍"}))["code"] == "not_found"
    for index in range(20):
        assert (await answer(bob, {**base, "emoji": f":e{index}:"}))["type"] == "reactions_updated"
    too_many = await error_of(alice, {**base, "emoji": ":e20:"})
    assert too_many["code"] == "invalid_message"
    assert "20" in too_many["message"]
    # An emoji already there may still be added by someone else.
    assert (await answer(alice, {**base, "emoji": ":e0:"}))["type"] == "reactions_updated"
    await alice.request({"type": "delete_message", "room_id": room, "message_id": sent["id"]}, "message_deleted")
    assert (await error_of(bob, {**base, "emoji": "👍"}))["code"] == "not_found"


async def test_the_same_user_reacting_from_two_connections_counts_once(chat: RunningServer) -> None:
    room, _, alice, _ = await team(chat)
    sent = await say(alice, room, "x")
    tabs = [await chat.connect(2, "bob") for _ in range(2)]
    frame = {"type": "add_reaction", "room_id": room, "message_id": sent["id"], "emoji": "🔥"}
    for _ in range(5):
        replies = await asyncio.gather(*(tab.request(frame, "reactions_updated") for tab in tabs))
        for reply in replies:
            assert reply["reactions"] == [{"emoji": "🔥", "count": 1, "user_ids": [2]}], reply
        removal = {**frame, "type": "remove_reaction"}
        replies = await asyncio.gather(*(tab.request(removal, "reactions_updated") for tab in tabs))
        assert all(reply["reactions"] == [] for reply in replies), replies
    with db(chat) as conn:
        assert conn.execute("SELECT COUNT(*) FROM reactions").fetchone() == (0,)


# -- threads ---------------------------------------------------------------------------


async def test_threads(chat: RunningServer) -> None:
    room, foreign, alice, bob = await team(chat)
    root = await say(alice, room, "root")
    assert (root["thread_root_id"], root["reply_count"], root["last_reply_at"]) == (None, 0, None)
    first = await say(bob, room, "first reply", reply_to=root["id"])
    assert first["thread_root_id"] == root["id"]
    assert first["reply_to"] == root["id"]
    update = await alice.recv_type("thread_updated")
    assert (update["room_id"], update["root_id"], update["reply_count"]) == (room, root["id"], 1)
    assert update["last_reply_at"] == first["timestamp"]
    # A reply to a reply belongs to the same thread.
    second = await say(alice, room, "second", reply_to=first["id"])
    assert second["thread_root_id"] == root["id"]
    assert [(await bob.recv_type("thread_updated"))["reply_count"] for _ in range(2)] == [1, 2]
    page = await bob.request({"type": "get_history", "room_id": room}, "history")
    stored_root = next(m for m in page["messages"] if m["id"] == root["id"])
    assert stored_root["reply_count"] == 2
    assert stored_root["last_reply_at"] == second["timestamp"]
    thread = await bob.request({"type": "get_thread", "room_id": room, "message_id": root["id"], "request_id": 1},
                               "thread")
    assert thread["root"]["id"] == root["id"]
    assert thread["room_id"] == room
    assert thread["request_id"] == 1
    assert [m["id"] for m in thread["messages"]] == [first["id"], second["id"]]
    assert thread["has_more"] is False
    paged = await bob.request({"type": "get_thread", "room_id": room, "message_id": root["id"], "limit": 1},
                              "thread")
    assert [m["id"] for m in paged["messages"]] == [first["id"]]
    assert paged["has_more"] is True
    rest = await bob.request({"type": "get_thread", "room_id": room, "message_id": root["id"],
                              "after_id": first["id"]}, "thread")
    assert [m["id"] for m in rest["messages"]] == [second["id"]]
    assert rest["has_more"] is False
    carol = await chat.connect(3, "carol")
    elsewhere = await say(carol, foreign, "carol's")
    ask = {"type": "get_thread", "room_id": room, "message_id": elsewhere["id"]}
    assert (await error_of(bob, ask))["code"] == "not_found"
    assert (await error_of(bob, {**ask, "room_id": foreign}))["code"] == "access_denied"
    assert (await error_of(bob, {**ask, "message_id": root["id"], "limit": 0}))["code"] == "invalid_message"
    assert (await error_of(bob, {**ask, "message_id": root["id"], "limit": 101}))["code"] == "invalid_message"


# -- mentions --------------------------------------------------------------------------


async def test_mentions_and_mention_counts(chat: RunningServer) -> None:
    room, _ = await chat.rooms(("team", [1, 2, 3]), ("x", [4]))
    alice = await chat.connect(1, "alice")
    bob = await chat.connect(2, "bob")  # connected, not subscribed
    await chat.connect(4, "dave")  # not a participant: naming him is no mention
    sent = await say(alice, room, "hi @Bob and @dave, mail bob@example.com; @alice.")
    assert sent["mentions"] == [2, 1] or sorted(sent["mentions"]) == [1, 2]
    update = await bob.recv_type("room_updated")
    assert (update["updates"]["unread_count"], update["updates"]["mention_count"]) == (1, 1)
    await say(alice, room, "no mention here")
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert (listed["rooms"][0]["unread_count"], listed["rooms"][0]["mention_count"]) == (2, 1)
    mine = await alice.request({"type": "get_room_list"}, "room_list")
    assert mine["rooms"][0]["mention_count"] == 0  # mentioning oneself counts for nothing
    # An edit that drops the mention drops the count; one that adds it adds it.
    await alice.request({"type": "edit_message", "room_id": room, "message_id": sent["id"], "content": "hi all"},
                        "message_updated")
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert listed["rooms"][0]["mention_count"] == 0
    await alice.request({"type": "edit_message", "room_id": room, "message_id": sent["id"],
                         "content": "hi @bob"}, "message_updated")
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert listed["rooms"][0]["mention_count"] == 1
    read = await bob.request({"type": "mark_read", "room_id": room}, "read_marked")
    assert read["unread_count"] == 0
    update = await bob.recv_type("room_updated")
    assert update["updates"]["mention_count"] == 0
    again = await say(alice, room, "@bob again")
    await alice.request({"type": "delete_message", "room_id": room, "message_id": again["id"]}, "message_deleted")
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert (listed["rooms"][0]["unread_count"], listed["rooms"][0]["mention_count"]) == (0, 0)


# -- search ----------------------------------------------------------------------------


async def test_search_words_prefixes_phrases_and_folding(chat: RunningServer) -> None:
    room, other = await chat.rooms(("team", [1, 2]), ("side", [1]))
    alice = await chat.connect(1, "alice")
    one = await say(alice, room, "Le Café est ouvert")
    two = await say(alice, other, "deploy the release candidate today")
    three = await say(alice, room, "the RELEASE is out, cafe time")

    async def ids(query: str, **fields: Any) -> list[int]:
        reply = await alice.request({"type": "search_messages", "query": query, **fields}, "search_results")
        assert reply["type"] == "search_results", reply
        assert reply["query"] == query
        return [m["id"] for m in reply["messages"]]

    assert await ids("cafe") == [three["id"], one["id"]]  # newest first, accents folded
    assert await ids("CAFÉ") == [three["id"], one["id"]]
    assert await ids("rel*") == [three["id"], two["id"]]
    assert await ids("rel") == []  # a word matches whole words
    assert await ids('"release candidate"') == [two["id"]]
    assert await ids('"candidate release"') == []
    assert await ids("release cafe") == [three["id"]]  # every term must match
    assert await ids("release", room_id=other) == [two["id"]]
    assert await ids("cafe", limit=1) == [three["id"]]
    assert await ids("cafe", before_id=three["id"]) == [one["id"]]
    reply = await alice.request({"type": "search_messages", "query": "cafe", "limit": 1}, "search_results")
    assert reply["has_more"] is True
    hit = reply["messages"][0]
    assert hit["snippet"] == "the RELEASE is out, [cafe] time"
    assert hit["room_id"] == room
    assert hit["sender"]["id"] == 1


async def test_search_never_finds_a_foreign_room(chat: RunningServer) -> None:
    room, foreign = await chat.rooms(("team", [1, 2]), ("private", [3]))
    carol = await chat.connect(3, "carol")
    await say(carol, foreign, "zanzibarquartz is only here")
    bob = await chat.connect(2, "bob")
    await say(bob, room, "nothing to see")
    for query in ("zanzibarquartz", "zanzi*", '"zanzibarquartz is"', "room_id:2 zanzibarquartz",
                  "zanzibarquartz OR nothing", "zanzibarquartz NOT x"):
        reply = await bob.request({"type": "search_messages", "query": query}, "search_results")
        assert reply["type"] == "search_results", (query, reply)
        assert reply["messages"] == [], (query, reply)
    refused = await error_of(bob, {"type": "search_messages", "query": "zanzibarquartz", "room_id": foreign})
    assert refused["code"] == "access_denied"


async def test_search_refuses_what_it_cannot_parse(chat: RunningServer) -> None:
    room = await chat.create_room("team", [1])
    alice = await chat.connect(1, "alice")
    await say(alice, room, "near or not, content matters")
    for query in ("", "   ", '"', 'open "quote', "*", "-", "^", "🎉", "x" * 257, 5, None):
        refused = await error_of(alice, {"type": "search_messages", "query": query})
        assert refused["code"] == "invalid_message", (query, refused)
    # Operator look-alikes are plain words: never an internal error, never FTS5 syntax.
    for query in ("NEAR(", "NEAR(a b)", "OR", "AND", "NOT", "content:matters", "room_id:1", "a:b", "-near",
                  "near -or", "(", ")", "{content}: x", "+", "near^", '""', '"" near', "***", "n**"):
        reply = await alice.request({"type": "search_messages", "query": query}, "search_results")
        assert reply["type"] in ("search_results", "error"), reply
        if reply["type"] == "error":
            assert reply["code"] == "invalid_message", (query, reply)
    found = await alice.request({"type": "search_messages", "query": "OR"}, "search_results")
    assert len(found["messages"]) == 1
    for bad in ({"limit": 0}, {"limit": 101}, {"before_id": 0}, {"room_id": "1"}):
        refused = await error_of(alice, {"type": "search_messages", "query": "near", **bad})
        assert refused["code"] == "invalid_message", bad


# -- catch-up of changes -------------------------------------------------------------


async def test_revisions_and_the_catch_up_of_changes(chat: RunningServer) -> None:
    room, _, alice, bob = await team(chat)
    first = await say(alice, room, "one")
    second = await say(alice, room, "two")
    seen_revision = second["revision"]
    await bob.close()
    # While bob is away: an edit, a reaction, a reply (which changes its root), a delete.
    edited = (await alice.request({"type": "edit_message", "room_id": room, "message_id": first["id"],
                                   "content": "one, edited"}, "message_updated"))["message"]
    await alice.request({"type": "add_reaction", "room_id": room, "message_id": second["id"], "emoji": "👀"},
                        "reactions_updated")
    reply = await say(alice, room, "reply", reply_to=first["id"])
    await alice.request({"type": "delete_message", "room_id": room, "message_id": second["id"]},
                        "message_deleted")
    assert edited["revision"] > seen_revision
    bob = await chat.connect(2, "bob")
    await bob.send({"type": "subscribe_room", "room_id": room, "last_message_id": second["id"],
                    "since_revision": seen_revision})
    history = await bob.recv_type("history")
    assert [m["id"] for m in history["messages"]] == [reply["id"]]
    changed = history["changed"]
    assert [m["id"] for m in changed] == [first["id"], second["id"]]  # in revision order
    assert [m["revision"] for m in changed] == sorted(m["revision"] for m in changed)
    assert changed[0]["content"] == "one, edited"
    assert changed[0]["reply_count"] == 1
    assert changed[1]["deleted"] is True
    assert history["changed_has_more"] is False
    pages = await bob.request({"type": "get_changes", "room_id": room, "since_revision": seen_revision,
                               "limit": 1, "request_id": "c"}, "changes")
    assert pages["room_id"] == room
    assert pages["has_more"] is True
    assert pages["request_id"] == "c"
    assert len(pages["messages"]) == 1
    everything = await bob.request({"type": "get_changes", "room_id": room, "since_revision": 0}, "changes")
    assert {m["id"] for m in everything["messages"]} == {first["id"], second["id"], reply["id"]}
    refused = await error_of(bob, {"type": "subscribe_room", "room_id": room, "since_revision": 1})
    assert refused["code"] == "invalid_message"
    refused = await error_of(bob, {"type": "get_changes", "room_id": 999, "since_revision": 0})
    assert refused["code"] == "access_denied"


async def test_help_lists_the_new_requests(chat: RunningServer) -> None:
    await chat.start()
    client = await chat.connect(1, "alice")
    answer = await client.request({"type": "help"}, "help")
    for kind in ("edit_message", "delete_message", "add_reaction", "remove_reaction", "get_thread",
                 "search_messages", "get_changes"):
        assert kind in answer["requests"], kind


async def test_a_v1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database written by the v1 schema keeps every message and gains threads and search."""
    from unichatd.store.schema import MIGRATIONS, configure, statements

    path = tmp_path / "chat.db"
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    for migration in MIGRATIONS[:2]:  # v1: the first schema and retention's column
        assert isinstance(migration, str)
        for statement in statements(migration):
            conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    conn.execute("INSERT INTO users(id, username, first_name, updated_ms) "
                 "VALUES (1, 'alice', '', 0), (2, 'bob', '', 0)")
    conn.execute("INSERT INTO rooms(id, name, room_type, created_ms) VALUES (1, 'team', 'group', 0)")
    conn.execute("INSERT INTO participants VALUES (1, 1, 0, 0), (1, 2, 1, 0)")
    conn.executemany("INSERT INTO messages(id, room_id, sender_id, content, created_ms, reply_to) VALUES (?,1,?,?,?,?)",
                     [(1, 1, "Quarterly résumé", 1000, None), (2, 2, "answer", 2000, 1),
                      (3, 1, "answer to the answer", 3000, 2), (4, 2, "latest", 4000, None)])
    conn.close()
    running = await start_server(make_config(tmp_path))
    try:
        bob = await running.connect(2, "bob")
        listed = await bob.request({"type": "get_room_list"}, "room_list")
        assert listed["rooms"][0]["unread_count"] == 1
        assert listed["rooms"][0]["last_message_content"] == "latest"
        page = await bob.request({"type": "get_history", "room_id": 1}, "history")
        by_id = {m["id"]: m for m in page["messages"]}
        assert [m["content"] for m in page["messages"]] == [
            "Quarterly résumé", "answer", "answer to the answer", "latest"]
        assert (by_id[2]["thread_root_id"], by_id[3]["thread_root_id"], by_id[4]["thread_root_id"]) == (1, 1, None)
        assert by_id[1]["reply_count"] == 2
        assert by_id[1]["last_reply_at"] == "1970-01-01T00:00:03.000Z"
        assert all(m["revision"] == m["id"] for m in page["messages"])
        found = await bob.request({"type": "search_messages", "query": "resume"}, "search_results")
        assert [m["id"] for m in found["messages"]] == [1]
        sent = await bob.request({"type": "send_message", "room_id": 1, "content": "new"}, "message_ack")
        assert sent["message"]["id"] == 5
        assert sent["message"]["revision"] > 4
    finally:
        await running.close()
    with contextlib.closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] >= 3
        assert check.execute("SELECT COUNT(*) FROM messages").fetchone() == (5,)


async def test_get_changes_pages_through_more_new_messages_than_a_page(chat: RunningServer) -> None:
    """Paging get_changes from revision 0 yields every message once, in revision order,
    however many were created since (and an edited one at its new revision)."""
    room = await chat.create_room("team", [1])
    alice = await chat.connect(1, "alice")
    for n in range(250):
        await alice.send({"type": "send_message", "room_id": room, "content": f"m{n}"})
    acks = [await alice.recv_type("message_ack") for _ in range(250)]
    ids = [ack["message"]["id"] for ack in acks]
    await alice.request({"type": "edit_message", "room_id": room, "message_id": ids[3], "content": "m3 again"},
                        "message_updated")
    seen: list[dict[str, Any]] = []
    since = 0
    while True:
        page = await alice.request({"type": "get_changes", "room_id": room, "since_revision": since}, "changes")
        seen += page["messages"]
        if not page["has_more"]:
            break
        since = page["messages"][-1]["revision"]
    assert sorted(m["id"] for m in seen) == ids
    assert [m["revision"] for m in seen] == sorted(m["revision"] for m in seen)
    assert seen[-1]["id"] == ids[3]
    assert seen[-1]["content"] == "m3 again"


async def test_mentioning_oneself_counts_for_nothing_after_a_restart(chat: RunningServer) -> None:
    room = await chat.create_room("team", [1, 2])
    alice = await chat.connect(1, "alice")
    await chat.connect(2, "bob")  # (named: a user who never connected has a placeholder name)
    sent = await say(alice, room, "note to @alice and @bob")
    assert sorted(sent["mentions"]) == [1, 2]
    await chat.server.stop()
    chat._server = None
    alice = await chat.connect(1, "alice")
    bob = await chat.connect(2, "bob")
    assert (await alice.request({"type": "get_room_list"}, "room_list"))["rooms"][0]["mention_count"] == 0
    assert (await bob.request({"type": "get_room_list"}, "room_list"))["rooms"][0]["mention_count"] == 1


async def test_reactions_keep_the_order_of_first_use(chat: RunningServer) -> None:
    """An emoji keeps its place while anyone still has it, even when its first user takes theirs back."""
    room, _, alice, bob = await team(chat, subscribe=False)
    sent = await say(alice, room, "x")
    base = {"room_id": room, "message_id": sent["id"]}
    await answer(alice, {"type": "add_reaction", **base, "emoji": "👍"})
    await answer(bob, {"type": "add_reaction", **base, "emoji": "❤"})
    await answer(bob, {"type": "add_reaction", **base, "emoji": "👍"})
    reply = await answer(alice, {"type": "remove_reaction", **base, "emoji": "👍"})
    assert reply["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [2]},
                                  {"emoji": "❤", "count": 1, "user_ids": [2]}]


async def test_editing_an_old_message_leaves_room_lists_alone(chat: RunningServer) -> None:
    """Only what a room list shows triggers room_updated: an edit of an older message
    that changes no preview and no count sends none."""
    room, _, alice, _ = await team(chat, subscribe=False)
    old = await say(alice, room, "old")
    await say(alice, room, "latest")
    bob = await chat.connect(2, "bob2")
    await asyncio.sleep(0.25)  # the room_updated of the sends is out
    await alice.request({"type": "edit_message", "room_id": room, "message_id": old["id"], "content": "old!"},
                        "message_updated")
    await bob.no_frame(0.4, ignore=())


async def test_random_queries_never_fail_the_server(chat: RunningServer) -> None:
    """Hundreds of queries drawn from FTS5's own syntax and odd characters, pipelined:
    each is answered with search_results or invalid_message, never internal_error, and
    never with a message of a room the user is not in (tests/test_search_query.py runs
    the same property under hypothesis against the store)."""
    import random

    room, foreign = await chat.rooms(("team", [1]), ("private", [2]))
    alice = await chat.connect(1, "alice")
    carol = await chat.connect(2, "carol")
    await say(alice, room, "near or not, content matters; café «quoted» under_score")
    await say(carol, foreign, "near secret content")
    pieces = ['"', "*", "-", "^", "(", ")", ":", "NEAR", "OR", "AND", "NOT", "content", "room_id", "{", "}",
              "+", " ", "near", "secret", "café", "_", "\\", "'", ",", "NEAR(", "\u0301", "🎉", "\x00", "x" * 40]
    rng = random.Random(1101)
    queries = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    for number, query in enumerate(queries):
        await alice.send({"type": "search_messages", "query": query, "request_id": number})
    answered = 0
    while answered < len(queries):
        reply = await alice.recv(10)
        if "request_id" not in reply:
            continue
        answered += 1
        assert reply["type"] in ("search_results", "error"), reply
        if reply["type"] == "error":
            assert reply["code"] in ("invalid_message", "rate_limited"), (queries[reply["request_id"]], reply)
        else:
            assert all(m["room_id"] == room for m in reply["messages"]), (queries[reply["request_id"]], reply)


async def test_a_member_the_cli_just_added_can_be_mentioned_at_once(chat: RunningServer) -> None:
    """The server learns of CLI membership changes by polling; a name in a message that
    matches no participant makes it read the changes first, so the new member is mentioned."""
    room = await chat.create_room("team", [1])
    alice = await chat.connect(1, "alice")
    await (await chat.connect(2, "bob")).close()  # bob is known by name, not in the room yet
    admin = chat.admin()
    try:
        admin.add_members(room, [2])
    finally:
        admin.close()
    sent = await say(alice, room, "welcome @bob")
    assert sent["mentions"] == [2]


async def test_snippets_are_at_most_200_characters(chat: RunningServer) -> None:
    """A long message's snippet is cut to 200 characters around its matches, and never
    cuts a [match] in two."""
    room = await chat.create_room("team", [1])
    alice = await chat.connect(1, "alice")
    words = [f"longword{n:03d}" for n in range(60)]
    words[30] = "needle"
    words[55] = "needle"
    await say(alice, room, " ".join(words))
    reply = await alice.request({"type": "search_messages", "query": "needle"}, "search_results")
    snippet = reply["messages"][0]["snippet"]
    assert len(snippet) <= 200, snippet
    assert "[needle]" in snippet
    assert snippet.count("[") == snippet.count("]")
