"""Protocol §6.2 over real sockets: rooms from clients, direct rooms, owners, leaving,
users and presence — each rule and each failure branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_SENDS, Client, RunningServer, make_config
from tests.test_lifecycle import answer, error_of, say

pytestmark = pytest.mark.asyncio

@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> float:
    import unichatd.presence

    monkeypatch.setattr(unichatd.presence, "GRACE", 0.6)
    return 0.6


async def next_of(client: Client, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
    """The next frame of ``kind`` whose fields equal ``match``, skipping the rest."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await client.recv(timeout)
            if frame["type"] == kind and all(frame.get(key) == value for key, value in match.items()):
                return frame


async def members_seen(client: Client, room_id: int, member_ids: list[int]) -> None:
    """Wait for a room_updated showing exactly these participants."""
    async with asyncio.timeout(5):
        while True:
            frame = await next_of(client, "room_updated", room_id=room_id)
            listed = frame["updates"].get("participants")
            if listed is not None and sorted(p["id"] for p in listed) == member_ids:
                return


async def people(chat: RunningServer, *ids_names: tuple[int, str]) -> list[Client]:
    return [await chat.connect(user_id, name) for user_id, name in ids_names]


# -- create_room -----------------------------------------------------------------------


async def test_create_room_owner_members_and_room_updated(chat: RunningServer) -> None:
    alice, bob, carol = await people(chat, (1, "alice"), (2, "bob"), (3, "carol"))
    reply = await answer(alice, {"type": "create_room", "name": "  plans ", "member_ids": [2, 2, 1]})
    assert reply["type"] == "room_created", reply
    room = reply["room"]
    assert room["name"] == "plans"
    assert room["room_type"] == "group"
    assert room["owner_id"] == 1
    assert sorted(p["id"] for p in room["participants"]) == [1, 2]
    assert all({"online", "last_seen"} <= set(p) for p in room["participants"])
    # bob's room list gains it at once; carol hears nothing
    update = await next_of(bob, "room_updated", room_id=room["id"])
    assert update["updates"]["name"] == "plans"
    assert sorted(p["id"] for p in update["updates"]["participants"]) == [1, 2]
    await carol.no_frame(0.3, ignore=("presence",))
    # the new room is usable at once by both
    await bob.request({"type": "subscribe_room", "room_id": room["id"]}, "subscribed")
    await say(alice, room["id"], "hello")
    assert (await next_of(bob, "new_message"))["message"]["content"] == "hello"
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert [r["id"] for r in listed["rooms"]] == [room["id"]]


async def test_create_room_with_no_members_and_refusals(chat: RunningServer) -> None:
    (alice,) = await people(chat, (1, "alice"))
    reply = await answer(alice, {"type": "create_room", "name": "solo", "member_ids": []})
    assert [p["id"] for p in reply["room"]["participants"]] == [1]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "", "member_ids": []}, "invalid_message"),
        ({"name": "x" * 101, "member_ids": []}, "invalid_message"),
        ({"name": "ok", "member_ids": "2"}, "invalid_message"),
        ({"name": "ok"}, "invalid_message"),
        ({"name": "ok", "member_ids": [], "room_type": "direct"}, "invalid_message"),
        ({"name": "ok", "member_ids": [999]}, "not_found"),
    ]
    for fields, code in cases:
        assert (await error_of(alice, {"type": "create_room", **fields}))["code"] == code, fields
    assert len((await alice.request({"type": "get_room_list"}, "room_list"))["rooms"]) == 1
    ok = await answer(alice, {"type": "create_room", "name": "x" * 100, "member_ids": []})
    assert ok["type"] == "room_created"


async def test_users_can_create_false_forbids(tmp_path: Path) -> None:
    running = RunningServer(make_config(tmp_path, rooms={"users_can_create": False}), name_format="{}")
    try:
        alice, _ = await people(running, (1, "alice"), (2, "bob"))
        for frame in ({"type": "create_room", "name": "x", "member_ids": []},
                      {"type": "create_direct", "user_id": 2}, {"type": "get_users"}):
            assert (await error_of(alice, frame))["code"] == "forbidden", frame
        # presence stays open to all
        assert (await answer(alice, {"type": "get_presence", "user_ids": [2]}))["type"] == "presence_list"
    finally:
        await running.close()


# -- direct rooms ------------------------------------------------------------------------


async def test_create_direct_is_one_room_per_pair_named_for_the_other(chat: RunningServer) -> None:
    alice, bob = await people(chat, (1, "alice"), (2, "bob"))
    first = await answer(alice, {"type": "create_direct", "user_id": 2})
    assert first["type"] == "room_created", first
    room = first["room"]
    assert room["room_type"] == "direct"
    assert room["name"] == "bob"
    assert room["owner_id"] is None
    update = await next_of(bob, "room_updated", room_id=room["id"])
    assert update["updates"]["name"] == "alice"
    again = await answer(bob, {"type": "create_direct", "user_id": 1})
    assert again["room"]["id"] == room["id"]
    assert again["room"]["name"] == "alice"
    listed = await alice.request({"type": "get_room_list"}, "room_list")
    assert [(r["id"], r["name"]) for r in listed["rooms"]] == [(room["id"], "bob")]


async def test_create_direct_raced_from_both_sides_gives_one_room(chat: RunningServer) -> None:
    alice, bob = await people(chat, (1, "alice"), (2, "bob"))
    for _ in range(5):
        replies = await asyncio.gather(answer(alice, {"type": "create_direct", "user_id": 2}),
                                       answer(bob, {"type": "create_direct", "user_id": 1}))
        assert replies[0]["room"]["id"] == replies[1]["room"]["id"]
    with contextlib.closing(sqlite3.connect(chat.config.database_path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM rooms WHERE room_type = 'direct'").fetchone()[0] == 1


async def test_create_direct_refusals_and_members_never_change(chat: RunningServer) -> None:
    alice, _ = await people(chat, (1, "alice"), (2, "bob"))
    assert (await error_of(alice, {"type": "create_direct", "user_id": 1}))["code"] == "invalid_message"
    assert (await error_of(alice, {"type": "create_direct", "user_id": 404}))["code"] == "not_found"
    assert (await error_of(alice, {"type": "create_direct"}))["code"] == "invalid_message"
    room = (await answer(alice, {"type": "create_direct", "user_id": 2}))["room"]["id"]
    await people(chat, (3, "carol"))
    for kind in ("add_members", "remove_members"):
        refusal = await error_of(alice, {"type": kind, "room_id": room, "user_ids": [3]})
        assert refusal["code"] == "forbidden"
        assert refusal["room_id"] == room


async def test_a_left_direct_room_opens_again(chat: RunningServer) -> None:
    alice, bob = await people(chat, (1, "alice"), (2, "bob"))
    room = (await answer(alice, {"type": "create_direct", "user_id": 2}))["room"]["id"]
    assert (await answer(bob, {"type": "leave_room", "room_id": room}))["reason"] == "left_room"
    again = await answer(alice, {"type": "create_direct", "user_id": 2})
    assert again["room"]["id"] == room
    assert sorted(p["id"] for p in again["room"]["participants"]) == [1, 2]


# -- owners: add, remove, rename ---------------------------------------------------------


async def owned_room(chat: RunningServer) -> tuple[int, Client, Client, Client]:
    alice, bob, carol = await people(chat, (1, "alice"), (2, "bob"), (3, "carol"))
    room = (await answer(alice, {"type": "create_room", "name": "crew", "member_ids": [2]}))["room"]["id"]
    await next_of(bob, "room_updated", room_id=room)
    return room, alice, bob, carol


async def test_owner_adds_and_removes_members_live(chat: RunningServer) -> None:
    room, alice, bob, carol = await owned_room(chat)
    added = await answer(alice, {"type": "add_members", "room_id": room, "user_ids": [3]})
    assert added["type"] == "members_updated"
    assert sorted(p["id"] for p in added["participants"]) == [1, 2, 3]
    joined = await next_of(carol, "room_updated", room_id=room)
    assert joined["updates"]["name"] == "crew"
    await members_seen(bob, room, [1, 2, 3])
    await carol.request({"type": "subscribe_room", "room_id": room}, "subscribed")
    removed = await answer(alice, {"type": "remove_members", "room_id": room, "user_ids": [3]})
    assert sorted(p["id"] for p in removed["participants"]) == [1, 2]
    gone = await next_of(carol, "unsubscribed", room_id=room)
    assert gone["reason"] == "removed_from_room"
    assert (await error_of(carol, {"type": "send_message", "room_id": room, "content": "hi"}))["code"] == \
        "access_denied"


async def test_only_the_owner_changes_the_room(chat: RunningServer) -> None:
    room, _, bob, carol = await owned_room(chat)
    for frame in ({"type": "add_members", "room_id": room, "user_ids": [3]},
                  {"type": "remove_members", "room_id": room, "user_ids": [1]},
                  {"type": "rename_room", "room_id": room, "name": "mine"}):
        refusal = await error_of(bob, frame)
        assert refusal["code"] == "forbidden", frame
        assert refusal["room_id"] == room, frame
        # a non-participant learns nothing about the room
        assert (await error_of(carol, frame))["code"] == "access_denied", frame
    # a room made by the CLI has no owner: nobody may
    cli_room = await chat.create_room("ops", [1, 2])
    assert (await error_of(bob, {"type": "rename_room", "room_id": cli_room, "name": "x"}))["code"] == "forbidden"
    for frame in ({"type": "add_members", "room_id": room, "user_ids": []},
                  {"type": "add_members", "room_id": room},
                  {"type": "rename_room", "room_id": room, "name": "\x00"}):
        assert (await error_of(bob, frame))["code"] == "invalid_message", frame


async def test_rename_reaches_every_participant(chat: RunningServer) -> None:
    room, alice, bob, _ = await owned_room(chat)
    reply = await answer(alice, {"type": "rename_room", "room_id": room, "name": "the crew"})
    assert reply["type"] == "room_updated"
    assert reply["updates"] == {"name": "the crew"}
    seen = await next_of(bob, "room_updated", room_id=room)
    assert seen["updates"]["name"] == "the crew"
    assert (await error_of(alice, {"type": "rename_room", "room_id": room, "name": "y" * 101}))["code"] == \
        "invalid_message"


async def test_leave_room_for_anyone_owner_included(chat: RunningServer) -> None:
    room, alice, bob, _ = await owned_room(chat)
    second_bob = await chat.connect(2, "bob")
    for client in (bob, second_bob):
        await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
    reply = await answer(bob, {"type": "leave_room", "room_id": room})
    assert reply == {"type": "unsubscribed", "room_id": room, "reason": "left_room",
                     "request_id": reply["request_id"], "timestamp": reply["timestamp"]}
    other = await next_of(second_bob, "unsubscribed", room_id=room)
    assert other["reason"] == "left_room"
    assert "request_id" not in other
    await bob.no_frame(0.3, ignore=("room_updated", "presence"))
    await members_seen(alice, room, [1])
    assert (await error_of(bob, {"type": "leave_room", "room_id": room}))["code"] == "access_denied"
    # the owner leaves: the room has no owner, nothing is handed on
    await answer(alice, {"type": "leave_room", "room_id": room})
    with contextlib.closing(sqlite3.connect(chat.config.database_path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM participants WHERE room_id = ?", (room,)).fetchone()[0] == 0


# -- users and presence -------------------------------------------------------------------


async def test_get_users_prefix_any_case_with_presence(chat: RunningServer) -> None:
    await chat.connect(1, "alice", first_name="Alice")
    bob = await chat.connect(2, "bob", first_name="Robert")
    await chat.create_room("cli", [7])  # a member who never connected is known too
    users = await answer(bob, {"type": "get_users", "query": "AL"})
    assert users["type"] == "users"
    assert users["users"] == [{"id": 1, "username": "alice", "first_name": "Alice", "online": True,
                               "last_seen": None}]
    assert [u["id"] for u in (await answer(bob, {"type": "get_users", "query": "rob"}))["users"]] == [2]
    assert [u["id"] for u in (await answer(bob, {"type": "get_users", "query": "%"}))["users"]] == []
    everyone = await answer(bob, {"type": "get_users", "limit": 2})
    assert len(everyone["users"]) == 2
    assert {u["id"] for u in (await answer(bob, {"type": "get_users"}))["users"]} == {1, 2, 7}
    for fields in ({"limit": 0}, {"limit": 101}, {"query": 5}, {"query": "x" * 101}):
        assert (await error_of(bob, {"type": "get_users", **fields}))["code"] == "invalid_message", fields


async def test_get_presence_known_and_never_seen(chat: RunningServer) -> None:
    await chat.create_room("cli", [1, 7])
    alice = await chat.connect(1, "alice")
    reply = await answer(alice, {"type": "get_presence", "user_ids": [7, 1, 404]})
    assert reply["type"] == "presence_list"
    assert {u["id"]: (u["online"], u["last_seen"]) for u in reply["users"]} == {1: (True, None), 7: (False, None)}
    assert (await error_of(alice, {"type": "get_presence", "user_ids": list(range(1, 1002))}))["code"] == \
        "invalid_message"


async def test_presence_online_offline_after_grace_with_last_seen(chat: RunningServer, short_grace: float) -> None:
    await chat.create_room("team", [1, 2])
    await chat.create_room("elsewhere", [3, 4])
    alice = await chat.connect(1, "alice")
    stranger = await chat.connect(4, "dave")
    bob = await chat.connect(2, "bob")
    online = await next_of(alice, "presence", user_id=2)
    assert online["online"] is True
    assert online["last_seen"] is None
    await bob.close()
    await alice.no_frame(short_grace * 0.5, ignore=("room_updated",))
    offline = await next_of(alice, "presence", user_id=2, timeout=short_grace + 3)
    assert offline["online"] is False
    assert offline["last_seen"].endswith("Z")
    await stranger.no_frame(0.2, ignore=("room_updated",))
    listed = await alice.request({"type": "get_room_list"}, "room_list")
    bob_entry = next(p for p in listed["rooms"][0]["participants"] if p["id"] == 2)
    assert bob_entry == {"id": 2, "username": "bob", "online": False, "last_seen": offline["last_seen"]}
    presence = await answer(alice, {"type": "get_presence", "user_ids": [2]})
    assert presence["users"][0]["last_seen"] == offline["last_seen"]


async def test_two_devices_and_a_reload_do_not_flap(chat: RunningServer, short_grace: float) -> None:
    await chat.create_room("team", [1, 2])
    alice = await chat.connect(1, "alice")
    phone = await chat.connect(2, "bob")
    await next_of(alice, "presence", user_id=2)
    laptop = await chat.connect(2, "bob")
    await phone.close()
    await alice.no_frame(short_grace + 0.5, ignore=("room_updated",))  # still online on the laptop
    await laptop.close()
    await asyncio.sleep(short_grace * 0.3)
    reloaded = await chat.connect(2, "bob")  # a reload: back within the grace
    await alice.no_frame(short_grace + 0.6, ignore=("room_updated",))
    presence = await answer(alice, {"type": "get_presence", "user_ids": [2]})
    assert presence["users"][0]["online"] is True
    await reloaded.close()
    assert (await next_of(alice, "presence", user_id=2, timeout=short_grace + 3))["online"] is False


async def test_one_user_online_is_one_encoding_for_all_contacts(chat: RunningServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    members = list(range(1, 31))
    await chat.create_room("all", members)
    clients = [await chat.connect(user_id, f"u{user_id}") for user_id in members[1:]]
    import unichatd.protocol

    encoded: list[bytes] = []
    real = unichatd.protocol.presence_frame

    def counting(*args: Any) -> bytes:
        encoded.append(real(*args))
        return encoded[-1]

    monkeypatch.setattr(unichatd.protocol, "presence_frame", counting)
    await chat.connect(1, "u1")
    await asyncio.gather(*(next_of(client, "presence", user_id=1) for client in clients))
    assert len(encoded) == 1


async def test_restart_leaves_nobody_online(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits=FAST_SENDS)
    first = RunningServer(config, name_format="{}")
    await first.create_room("team", [1, 2])
    await first.connect(1, "alice")
    await first.connect(2, "bob")
    await first.close()
    second = RunningServer(config, name_format="{}")
    try:
        alice = await second.connect(1, "alice")
        reply = await answer(alice, {"type": "get_presence", "user_ids": [2]})
        assert reply["users"][0]["online"] is False
        assert reply["users"][0]["last_seen"] is not None
    finally:
        await second.close()


async def test_presence_skips_rooms_past_the_size_limit(tmp_path: Path) -> None:
    running = RunningServer(make_config(tmp_path, rooms={"presence_max_members": 3}), name_format="{}")
    try:
        await running.create_room("big", [1, 2, 3, 4])
        await running.create_room("small", [5, 6])
        direct = await running.create_room("pair", [1, 2], room_type="direct")
        alice = await running.connect(1, "alice")
        carol = await running.connect(3, "carol")
        await running.connect(2, "bob")
        assert (await next_of(alice, "presence", user_id=2))["online"] is True  # (through the direct room)
        await carol.no_frame(0.5, ignore=("room_updated",))
        listed = await answer(carol, {"type": "get_room_list"})
        big = next(room for room in listed["rooms"] if room["name"] == "big")
        assert {p["id"]: p["online"] for p in big["participants"]}[2] is True  # the list still shows it
        assert direct
    finally:
        await running.close()


async def test_an_owner_who_leaves_leaves_no_owner(chat: RunningServer) -> None:
    room, alice, bob, _ = await owned_room(chat)
    await answer(alice, {"type": "leave_room", "room_id": room})
    listed = await bob.request({"type": "get_room_list"}, "room_list")
    assert listed["rooms"][0]["owner_id"] is None
    with contextlib.closing(sqlite3.connect(chat.config.database_path)) as conn:
        assert conn.execute("SELECT owner_id FROM rooms WHERE id = ?", (room,)).fetchone()[0] is None


async def test_a_non_owner_is_forbidden_before_anything_else(chat: RunningServer) -> None:
    room, _, bob, _ = await owned_room(chat)
    refusal = await error_of(bob, {"type": "add_members", "room_id": room, "user_ids": [404]})
    assert refusal["code"] == "forbidden"


async def test_get_users_takes_underscores_and_backslashes_literally(chat: RunningServer) -> None:
    for user_id, name in ((1, "a_b"), (2, "axb"), (3, "a\\c"), (4, "abc")):
        await chat.connect(user_id, name)
    client = chat.clients[0]
    assert [u["username"] for u in (await answer(client, {"type": "get_users", "query": "a_"}))["users"]] == ["a_b"]
    assert [u["username"] for u in (await answer(client, {"type": "get_users", "query": "a\\"}))["users"]] == ["a\\c"]


async def test_two_leaves_on_two_connections_each_get_one_reply(chat: RunningServer) -> None:
    room, _, bob, _ = await owned_room(chat)
    other = await chat.connect(2, "bob")
    replies = await asyncio.gather(answer(bob, {"type": "leave_room", "room_id": room}),
                                   answer(other, {"type": "leave_room", "room_id": room}))
    assert sorted(reply["type"] for reply in replies) == ["error", "unsubscribed"]
    for client in (bob, other):
        await client.no_frame(0.3, ignore=("room_updated", "presence", "unsubscribed"))


async def test_a_v3_direct_room_is_found_by_create_direct(tmp_path: Path) -> None:
    """A direct room the CLI made before v1.1 is the pair's room after the upgrade."""
    from unichatd.store.schema import MIGRATIONS, configure, statements

    path = tmp_path / "chat.db"
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    for migration in MIGRATIONS[:3]:
        for step in migration if isinstance(migration, tuple) else (migration,):
            if isinstance(step, str):
                for statement in statements(step):
                    conn.execute(statement)
            else:
                step(conn)
    conn.execute("PRAGMA user_version=3")
    conn.execute("INSERT INTO users(id, username, first_name, updated_ms) "
                 "VALUES (1, 'alice', '', 0), (2, 'bob', '', 0)")
    conn.execute("INSERT INTO rooms(id, name, room_type, created_ms) VALUES (5, 'dm', 'direct', 0), "
                 "(6, 'dm again', 'direct', 0)")
    conn.execute("INSERT INTO participants VALUES (5, 1, 0, 0), (5, 2, 0, 0), (6, 1, 0, 0), (6, 2, 0, 0)")
    conn.close()
    running = RunningServer(make_config(tmp_path), name_format="{}")
    try:
        alice = await running.connect(1, "alice")
        reply = await answer(alice, {"type": "create_direct", "user_id": 2})
        assert reply["room"]["id"] == 5
        assert reply["room"]["name"] == "bob"
    finally:
        await running.close()
