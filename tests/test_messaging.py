"""Protocol §2–§4: frames, every request and its failure branches, and the server events.

Every frame any client of this file receives is checked by :class:`CheckedClient`: it has a
``type`` and a ``timestamp`` in RFC 3339 UTC with milliseconds and ``Z``, close to now, and an
``error`` never carries a stack trace or SQL.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from tests.conftest import WAIT, Client, RunningServer, make_config
from tests.conftest import wait_until as poll_until
from unichatd.auth import mint_token
from unichatd.store import SqliteStore

pytestmark = pytest.mark.asyncio

FAST_LIMITS = {
    "messages_per_second": 100000,
    "message_burst": 100000,
    "frames_per_second": 100000,
    "frame_burst": 100000,
}
TIMESTAMP = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")
REPLY_TYPES = (
    "subscribed", "unsubscribed", "message_ack", "read_marked", "room_list", "history", "pong",
    "token_refreshed", "error",
)
MESSAGE_KEYS = {
    "id", "room_id", "content", "sender", "timestamp", "reply_to", "message_type", "client_msg_id",
    # v1.1 (protocol.md §6.1)
    "revision", "edited_at", "deleted", "reactions", "thread_root_id", "reply_count", "last_reply_at",
    "mentions", "attachments",
}
ROOM_KEYS = {
    "id", "name", "room_type", "last_message_content", "last_message_time", "unread_count", "participants",
    "mention_count", "owner_id",  # v1.1 (protocol.md §6.1, §6.2)
}
# The catch-up stream: messages, noise connections, pipelined sends per burst, max reader lag.
STREAM_TOTAL, STREAM_NOISE, STREAM_BURST, STREAM_LAG = 4000, 4, 10, 40
LEAKS = ("Traceback", "File \"", "SELECT ", "INSERT ", "sqlite", "Error(")


# ---------------------------------------------------------------------------
# Helpers


def parse_ts(value: str) -> datetime:
    assert isinstance(value, str), f"not RFC 3339 UTC ms Z: {value!r}"
    assert TIMESTAMP.match(value), f"not RFC 3339 UTC ms Z: {value!r}"
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def check_message(message: dict[str, Any]) -> None:
    assert set(message) == MESSAGE_KEYS, message
    assert set(message["sender"]) == {"id", "username", "first_name"}, message
    for key in ("id", "room_id"):
        assert type(message[key]) is int, message
    assert type(message["sender"]["id"]) is int, message
    assert message["message_type"] == "text", message
    parse_ts(message["timestamp"])


def check_frame(frame: dict[str, Any]) -> None:
    """What every server frame must satisfy (§2, §4)."""
    assert isinstance(frame.get("type"), str), frame
    stamped = parse_ts(frame.get("timestamp"))  # type: ignore[arg-type]
    assert abs((stamped - datetime.now(UTC)).total_seconds()) < 60, f"timestamp is not UTC now: {frame}"
    if "request_id" in frame:
        assert isinstance(frame["request_id"], str | int), frame
    if frame["type"] == "error":
        assert isinstance(frame.get("code"), str), frame
        assert isinstance(frame.get("message"), str), frame
        assert not any(leak in frame["message"] for leak in LEAKS), frame
    for message in frame.get("messages", ()):
        check_message(message)
    if isinstance(frame.get("message"), dict):
        check_message(frame["message"])


class CheckedClient(Client):
    """A conftest Client that checks every frame it receives and remembers their types."""

    def __init__(self, ws: Any) -> None:
        super().__init__(ws)
        self.seen: set[str] = set()

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        frame = await super().recv(timeout)
        check_frame(frame)
        self.seen.add(frame["type"])
        return frame

    async def reply(self, frame: dict[str, Any], timeout: float = WAIT) -> dict[str, Any]:
        """Send ``frame``; return the next direct reply (any reply type or error)."""
        await self.send(frame)
        return await self.recv_type(*REPLY_TYPES, timeout=timeout)

    async def wait_frame(self, predicate: Callable[[dict[str, Any]], bool],
                         timeout: float = WAIT) -> dict[str, Any]:
        """The first frame that satisfies ``predicate``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if predicate(frame):
                    return frame

    async def drain(self, within: float = 0.3) -> list[dict[str, Any]]:
        """Every frame received within ``within`` seconds."""
        frames = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                frames.append(await self.recv(left))
            except TimeoutError:
                break
        return frames


CHECKED: dict[str, Any] = {"client_class": CheckedClient, "name_format": "name{}",
                           "connect_options": {"close_timeout": 1}}
"""This file's server: every frame checked, users named name<id>."""


@pytest_asyncio.fixture
async def chat(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server with the default config (as the conftest ``server`` fixture)."""
    harness = RunningServer(make_config(tmp_path), **CHECKED)
    try:
        yield harness
    finally:
        await harness.close()


@pytest_asyncio.fixture
async def fast_chat(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server whose rate limits do not get in the way of bulk sends."""
    harness = RunningServer(make_config(tmp_path, limits=FAST_LIMITS), **CHECKED)
    try:
        yield harness
    finally:
        await harness.close()


async def send(client: CheckedClient, room_id: int, content: str = "hello", **fields: Any) -> dict[str, Any]:
    """Send a message; return the acked message object."""
    ack = await client.reply({"type": "send_message", "room_id": room_id, "content": content, **fields})
    assert ack["type"] == "message_ack", ack
    message: dict[str, Any] = ack["message"]
    return message


async def send_many(client: CheckedClient, room_id: int, count: int,
                    prefix: str = "m") -> list[dict[str, Any]]:
    """Pipeline ``count`` sends, then collect their acks (in commit order = id order)."""
    for i in range(count):
        await client.send({"type": "send_message", "room_id": room_id, "content": f"{prefix}{i}"})
    acks = [await client.recv_type("message_ack", "error") for _ in range(count)]
    assert all(ack["type"] == "message_ack" for ack in acks), acks
    return [ack["message"] for ack in acks]


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    await poll_until(predicate, timeout, interval=0.001)


def is_room_update(room_id: int, **expected: Any) -> Callable[[dict[str, Any]], bool]:
    def match(frame: dict[str, Any]) -> bool:
        if frame["type"] != "room_updated" or frame["room_id"] != room_id:
            return False
        return all(frame["updates"].get(key) == value for key, value in expected.items())
    return match


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        return orjson.loads(response.read())


# ---------------------------------------------------------------------------
# §2 Frames: request_id, timestamps, frame kinds


SUCCESS_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "subscribe_room": ({"type": "subscribe_room"}, "subscribed"),
    "unsubscribe_room": ({"type": "unsubscribe_room"}, "unsubscribed"),
    "send_message": ({"type": "send_message", "content": "hi"}, "message_ack"),
    "mark_read": ({"type": "mark_read"}, "read_marked"),
    "get_room_list": ({"type": "get_room_list"}, "room_list"),
    "get_history": ({"type": "get_history"}, "history"),
    "refresh_token": ({"type": "refresh_token"}, "token_refreshed"),
    "ping": ({"type": "ping"}, "pong"),
}


@pytest.mark.parametrize("request_id", ["req-42", 42, 0, ""], ids=["str", "int", "zero", "empty-str"])
@pytest.mark.parametrize("kind", list(SUCCESS_REQUESTS))
async def test_request_id_echoed_in_success_reply(chat: RunningServer, kind: str, request_id: str | int) -> None:
    """The success reply of every request type carries the request_id it was sent with, unchanged."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    frame, reply_type = SUCCESS_REQUESTS[kind]
    frame = {**frame, "room_id": room, "request_id": request_id}
    if kind == "refresh_token":
        frame["token"] = chat.token(1, "name1")
    reply = await client.reply(frame)
    assert reply["type"] == reply_type, reply
    assert reply["request_id"] == request_id
    assert type(reply["request_id"]) is type(request_id)


ERROR_REQUESTS: dict[str, dict[str, Any]] = {
    "access_denied": {"type": "get_history", "room_id": 999},
    "invalid_message": {"type": "get_history", "room_id": 1, "limit": 0},
    "unknown_type": {"type": "no_such_type"},
    "not_found": {"type": "send_message", "room_id": 1, "content": "x", "reply_to": 999},
}


@pytest.mark.parametrize("request_id", ["req-7", 7], ids=["str", "int"])
@pytest.mark.parametrize("code", list(ERROR_REQUESTS))
async def test_request_id_echoed_in_error(chat: RunningServer, code: str, request_id: str | int) -> None:
    """An error reply carries the request_id of the frame it answers."""
    await chat.create_room("r", [1])
    client = await chat.connect(1)
    error = await client.reply({**ERROR_REQUESTS[code], "request_id": request_id})
    assert error["type"] == "error", error
    assert error["code"] == code, error
    assert error["request_id"] == request_id
    assert type(error["request_id"]) is type(request_id)


async def test_each_request_gets_exactly_one_direct_reply(chat: RunningServer) -> None:
    """Pipelined requests get exactly one direct reply each (typing none), matched by request_id."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    requests: dict[str, tuple[dict[str, Any], str | None]] = {
        "sub": ({"type": "subscribe_room", "room_id": room}, "subscribed"),
        "send": ({"type": "send_message", "room_id": room, "content": "x"}, "message_ack"),
        "read": ({"type": "mark_read", "room_id": room}, "read_marked"),
        "list": ({"type": "get_room_list"}, "room_list"),
        "hist": ({"type": "get_history", "room_id": room}, "history"),
        "tok": ({"type": "refresh_token", "token": chat.token(1, "name1")}, "token_refreshed"),
        "ping": ({"type": "ping"}, "pong"),
        "typ": ({"type": "typing", "room_id": room}, None),
        "stop": ({"type": "stop_typing", "room_id": room}, None),
        "unsub": ({"type": "unsubscribe_room", "room_id": room}, "unsubscribed"),
        "err": ({"type": "get_history", "room_id": room + 1}, "error"),
    }
    for request_id, (frame, _) in requests.items():
        await client.send({**frame, "request_id": request_id})
    frames = await client.drain(0.5)
    for request_id, (_, reply_type) in requests.items():
        replies = [f["type"] for f in frames if f.get("request_id") == request_id]
        assert replies == ([reply_type] if reply_type else []), (request_id, replies)


async def test_request_id_absent_when_not_given(chat: RunningServer) -> None:
    """Without request_id in the request, neither success replies nor errors carry the key."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    replies = [
        await client.reply({"type": "ping"}),
        await client.reply({"type": "subscribe_room", "room_id": room}),
        await client.reply({"type": "send_message", "room_id": room, "content": "x"}),
        await client.reply({"type": "get_history", "room_id": room + 1}),
        await client.reply({"type": "nope"}),
    ]
    assert [r["type"] for r in replies] == ["pong", "subscribed", "message_ack", "error", "error"]
    assert all("request_id" not in r for r in replies), replies


async def test_request_id_longer_than_64_characters_refused(chat: RunningServer) -> None:
    """A request_id of 65 characters gets invalid_message; one of 64 is echoed."""
    client = await chat.connect(1)
    ok = await client.reply({"type": "ping", "request_id": "x" * 64})
    assert ok["type"] == "pong"
    assert ok["request_id"] == "x" * 64
    error = await client.reply({"type": "ping", "request_id": "x" * 65})
    assert error["type"] == "error", error
    assert error["code"] == "invalid_message", error
    assert "request_id" in error["message"]


async def test_every_server_frame_type_has_utc_millisecond_timestamp(chat: RunningServer) -> None:
    """Each of the 14 server frame types arrives with type and an RFC 3339 UTC millisecond Z timestamp."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    assert (await alice.reply({"type": "subscribe_room", "room_id": room}))["type"] == "subscribed"
    assert (await bob.reply({"type": "subscribe_room", "room_id": room}))["type"] == "subscribed"
    await send(bob, room, "x")
    await alice.recv_type("new_message")
    await bob.send({"type": "typing", "room_id": room})
    await alice.recv_type("typing")
    await alice.reply({"type": "mark_read", "room_id": room})
    await bob.recv_type("message_read")
    await alice.wait_frame(is_room_update(room))
    await alice.reply({"type": "get_room_list"})
    await alice.reply({"type": "get_history", "room_id": room})
    await alice.reply({"type": "ping"})
    await alice.reply({"type": "refresh_token", "token": chat.token(1, "name1")})
    await alice.reply({"type": "nope"})
    await alice.reply({"type": "unsubscribe_room", "room_id": room})
    expected = {
        "connection_established", "subscribed", "unsubscribed", "new_message", "message_ack", "typing",
        "message_read", "read_marked", "room_updated", "room_list", "history", "pong", "token_refreshed",
        "error",
    }
    assert expected <= alice.seen | bob.seen, expected - (alice.seen | bob.seen)


async def test_binary_frame_gets_unsupported_frame(chat: RunningServer) -> None:
    """A binary frame is answered with unsupported_frame and the connection stays open."""
    client = await chat.connect(1)
    await client.send(b'{"type": "ping"}')
    error = await client.recv()
    assert error["type"] == "error", error
    assert error["code"] == "unsupported_frame", error
    assert (await client.reply({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize("text", ["[1, 2]", '"ping"', "42", "null"])
async def test_json_that_is_not_an_object_is_invalid_message(chat: RunningServer, text: str) -> None:
    """Valid JSON that is not an object gets invalid_message."""
    client = await chat.connect(1)
    await client.send(text)
    error = await client.recv()
    assert error["type"] == "error", error
    assert error["code"] == "invalid_message", error


async def test_frame_without_type_is_invalid_message(chat: RunningServer) -> None:
    """An object without a string type gets invalid_message naming 'type'."""
    client = await chat.connect(1)
    error = await client.reply({"room_id": 1, "request_id": "t"})
    assert error["code"] == "invalid_message"
    assert "type" in error["message"]
    assert error["request_id"] == "t"


# ---------------------------------------------------------------------------
# §3 Access


ROOM_REQUESTS: dict[str, dict[str, Any]] = {
    "subscribe_room": {},
    "subscribe_room+last_message_id": {"last_message_id": 0},
    "unsubscribe_room": {},
    "send_message": {"content": "intrusion"},
    "mark_read": {},
    "typing": {},
    "stop_typing": {},
    "get_history": {},
}


def room_request(kind: str, room_id: int, **extra: Any) -> dict[str, Any]:
    return {"type": kind.split("+")[0], "room_id": room_id, **ROOM_REQUESTS[kind], **extra}


@pytest.mark.parametrize("kind", list(ROOM_REQUESTS))
async def test_access_denied_identical_for_foreign_and_nonexistent_room(chat: RunningServer, kind: str) -> None:
    """A foreign room and a nonexistent one get the same access_denied error; only room_id differs."""
    foreign = await chat.create_room("theirs", [2])
    missing = foreign + 1000
    intruder = await chat.connect(1)
    denied_foreign = await intruder.reply(room_request(kind, foreign, request_id="q"))
    denied_missing = await intruder.reply(room_request(kind, missing, request_id="q"))
    for error, room_id in ((denied_foreign, foreign), (denied_missing, missing)):
        assert set(error) == {"type", "code", "message", "room_id", "request_id", "timestamp"}, error
        assert error["code"] == "access_denied", error
        assert error["room_id"] == room_id, error
    assert denied_foreign["message"] == denied_missing["message"]


@pytest.mark.parametrize("kind", list(ROOM_REQUESTS))
async def test_access_denied_has_no_effect(chat: RunningServer, kind: str) -> None:
    """After access_denied nothing was subscribed, stored or broadcast to the room's subscribers."""
    foreign = await chat.create_room("theirs", [2])
    owner, intruder = await chat.connect(2), await chat.connect(1)
    assert (await owner.reply({"type": "subscribe_room", "room_id": foreign}))["type"] == "subscribed"
    await send(owner, foreign, "before")
    await owner.recv_type("new_message")
    await owner.drain(0.2)  # the owner's own room_updated
    error = await intruder.reply(room_request(kind, foreign))
    assert error["code"] == "access_denied", error
    await owner.no_frame(0.4, ignore=())
    assert chat.broker.subscribers(foreign) == tuple(chat.broker.connections_of(2))
    assert [row[2] for row in chat.stored(foreign)] == ["before"]
    await send(owner, foreign, "after")
    await intruder.no_frame(0.3, ignore=())


# ---------------------------------------------------------------------------
# §3 subscribe_room


async def test_subscribe_replies_subscribed(chat: RunningServer) -> None:
    """subscribe_room is answered with subscribed {room_id}; the connection then gets the room's messages."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    reply = await alice.reply({"type": "subscribe_room", "room_id": room})
    assert reply == {"type": "subscribed", "room_id": room, "timestamp": reply["timestamp"]}
    sent = await send(bob, room, "hi")
    assert (await alice.recv_type("new_message"))["message"] == sent


async def test_subscribe_without_last_message_id_sends_no_history(chat: RunningServer) -> None:
    """Without last_message_id the subscribed reply is not followed by a history frame."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    await send(client, room, "old")
    await client.drain(0.2)
    assert (await client.reply({"type": "subscribe_room", "room_id": room}))["type"] == "subscribed"
    await client.no_frame(0.3)


async def test_subscribe_is_idempotent(chat: RunningServer) -> None:
    """Subscribing twice answers subscribed twice and still delivers each message once."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    for _ in range(2):
        assert (await alice.reply({"type": "subscribe_room", "room_id": room}))["type"] == "subscribed"
    sent = await send(bob, room, "once")
    assert (await alice.recv_type("new_message"))["message"] == sent
    await alice.no_frame(0.3)


async def test_subscribe_with_last_message_id_sends_history_after_it(chat: RunningServer) -> None:
    """With last_message_id, subscribed is followed by one history of exactly the later messages."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    sent = [await send(bob, room, f"m{i}") for i in range(5)]
    subscribed = await alice.reply({"type": "subscribe_room", "room_id": room,
                                    "last_message_id": sent[1]["id"]})
    assert subscribed["type"] == "subscribed"
    history = await alice.recv_type("history", "new_message", "error")
    assert history["type"] == "history"
    assert history["room_id"] == room
    assert history["messages"] == sent[2:]
    assert history["has_more"] is False


async def test_subscribe_with_latest_id_sends_empty_history(chat: RunningServer) -> None:
    """last_message_id equal to the latest message gives an empty history with has_more false."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    last = await send(client, room, "x")
    await client.reply({"type": "subscribe_room", "room_id": room, "last_message_id": last["id"]})
    history = await client.recv_type("history")
    assert history["messages"] == []
    assert history["has_more"] is False


async def test_subscribe_history_capped_at_100_with_has_more(fast_chat: RunningServer) -> None:
    """More than 100 missed messages: history holds the oldest 100 and has_more true; get_history pages on."""
    room = await fast_chat.create_room("r", [1])
    client = await fast_chat.connect(1)
    sent = await send_many(client, room, 130)
    await client.reply({"type": "subscribe_room", "room_id": room, "last_message_id": 0})
    history = await client.recv_type("history")
    assert [m["id"] for m in history["messages"]] == [m["id"] for m in sent[:100]]
    assert history["has_more"] is True
    rest = await client.reply({"type": "get_history", "room_id": room, "after_id": sent[99]["id"],
                               "limit": 100})
    assert [m["id"] for m in rest["messages"]] == [m["id"] for m in sent[100:]]
    assert rest["has_more"] is False


async def test_subscribe_history_of_exactly_100_has_no_more(fast_chat: RunningServer) -> None:
    """Exactly 100 missed messages fit in the history with has_more false."""
    room = await fast_chat.create_room("r", [1])
    client = await fast_chat.connect(1)
    sent = await send_many(client, room, 101)
    await client.reply({"type": "subscribe_room", "room_id": room, "last_message_id": sent[0]["id"]})
    history = await client.recv_type("history")
    assert [m["id"] for m in history["messages"]] == [m["id"] for m in sent[1:]]
    assert history["has_more"] is False


async def stream_with_catch_ups(harness: RunningServer, total: int, noise: int) -> None:
    """Stream messages into a room while a reader catches up with last_message_id again and again.

    Two sender connections stream ``total`` messages into one room (bursts of STREAM_BURST pipelined
    sends, then their acks), while ``noise`` connections flood another room to keep the event loop and
    the writer busy; then one sender sends "END". Meanwhile the reader subscribes with last_message_id,
    takes a few live new_message frames, unsubscribes, and subscribes again from the last id it got, over
    and over until END: each round is one catch-up in the middle of the stream, checked on its own.
    Design: the senders pause while the reader trails the latest ack by more than STREAM_LAG, so every
    history holds fewer than 100 messages and has_more is false (asserted); no get_history paging.
    """
    per_sender = total // 2
    room, noise_room = await harness.rooms(("stream", [1, 2]), ("noise", [3]))
    senders = [await harness.connect(1) for _ in range(2)]
    noisy = [await harness.connect(3) for _ in range(noise)]
    reader = await harness.connect(2)
    first_marker = (await send(senders[0], room, "before the stream"))["id"]
    rounds: list[tuple[int, list[int], list[int]]] = []  # (marker, history ids, live ids) per subscription
    position = {"acked": first_marker, "read": first_marker}

    async def produce(sender: CheckedClient) -> None:
        for start in range(0, per_sender, STREAM_BURST):
            await wait_until(lambda: position["acked"] - position["read"] <= STREAM_LAG)
            for i in range(start, start + STREAM_BURST):
                await sender.send({"type": "send_message", "room_id": room, "content": f"m{i}"})
            for _ in range(STREAM_BURST):
                ack = await sender.recv_type("message_ack", "error")
                assert ack["type"] == "message_ack", ack
                position["acked"] = max(position["acked"], ack["message"]["id"])

    async def make_noise(client: CheckedClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await send_many(client, noise_room, STREAM_BURST, prefix="noise")

    async def produce_all() -> None:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as producers:
            for client in noisy:
                producers.create_task(make_noise(client, stop))
            async with asyncio.TaskGroup() as streams:
                for sender in senders:
                    streams.create_task(produce(sender))
            stop.set()
        await send(senders[0], room, "END")

    def take(ids: list[int], message: dict[str, Any]) -> bool:
        ids.append(message["id"])
        position["read"] = max(position["read"], message["id"])
        return bool(message["content"] == "END")

    async def subscribe_round(marker: int) -> bool:
        """One subscription from ``marker``; True once END was received."""
        await reader.send({"type": "subscribe_room", "room_id": room, "last_message_id": marker})
        first = await reader.recv_type("subscribed", "history", "new_message", "error")
        assert first["type"] == "subscribed", first
        history = await reader.recv_type("history", "new_message", "error")
        assert history["type"] == "history", f"expected history right after subscribed, got {history}"
        assert history["has_more"] is False, "test design: a catch-up history must stay below 100"
        history_ids: list[int] = []
        live: list[int] = []
        rounds.append((marker, history_ids, live))
        done = any([take(history_ids, message) for message in history["messages"]])
        while not done and len(live) < 3:
            done = take(live, (await reader.recv_type("new_message"))["message"])
        if not done:  # new_message frames may still precede the unsubscribed reply; they count
            await reader.send({"type": "unsubscribe_room", "room_id": room})
            while (frame := await reader.recv_type("new_message", "unsubscribed"))["type"] == "new_message":
                done = take(live, frame["message"])
        return done

    async def consume() -> None:
        marker = first_marker
        while not await subscribe_round(marker):
            marker = position["read"]

    async with asyncio.timeout(40), asyncio.TaskGroup() as group:
        group.create_task(produce_all())
        group.create_task(consume())

    stored = harness.stored_ids(room)
    assert len(stored) == per_sender * 2 + 2
    for marker, history, live in rounds:
        got = history + live
        duplicates = sorted({i for i in got if got.count(i) > 1})
        assert not duplicates, (
            f"subscribe from {marker}: history {history} then live {live} repeat {duplicates}"
        )
        end = got[-1] if got else marker
        assert got == [i for i in stored if marker < i <= end], (
            f"subscribe from {marker}: history {history} then live {live} skip or reorder stored ids"
        )
    received = [i for _, history, live in rounds for i in history + live]
    expected = [i for i in stored if i > first_marker]
    assert received == expected, "the rounds together do not cover the stored ids exactly once"


def lag_broadcasts(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every stored message reach the chat (ack, broadcast) ``seconds`` after its commit, in order.

    A busy event loop does the same: SqliteStore.append_message's future resolves after the commit, and the
    ack and new_message follow only when the loop gets to it. Order and durability are unchanged.
    """
    original = SqliteStore.append_message
    committed: deque[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = deque()

    def release() -> None:
        proxy, done = committed.popleft()
        if done.cancelled():
            proxy.cancel()
        elif (exc := done.exception()) is not None:
            proxy.set_exception(exc)
        else:
            proxy.set_result(done.result())

    def append_message(self: SqliteStore, message: Any) -> asyncio.Future[Any]:
        real = original(self, message)
        proxy: asyncio.Future[Any] = real.get_loop().create_future()

        def on_commit(done: asyncio.Future[Any]) -> None:
            committed.append((proxy, done))
            proxy.get_loop().call_later(seconds, release)

        real.add_done_callback(on_commit)
        return proxy

    monkeypatch.setattr(SqliteStore, "append_message", append_message)


async def test_catch_up_during_a_message_stream_has_no_gap_and_no_duplicate(fast_chat: RunningServer) -> None:
    """Subscribing mid-stream with last_message_id: history + live ids = stored ids after it, once each."""
    await stream_with_catch_ups(fast_chat, total=STREAM_TOTAL, noise=STREAM_NOISE)


async def test_catch_up_has_no_duplicate_when_broadcasts_trail_commits(
    fast_chat: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catch-up stream again, each broadcast 3 ms behind its commit (a busy loop): still no gap or dup."""
    lag_broadcasts(monkeypatch, 0.003)
    await stream_with_catch_ups(fast_chat, total=1000, noise=0)


# ---------------------------------------------------------------------------
# §3 unsubscribe_room


async def test_unsubscribe_stops_new_messages(chat: RunningServer) -> None:
    """unsubscribe_room is answered with unsubscribed and no new_message follows it."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    await alice.reply({"type": "subscribe_room", "room_id": room})
    reply = await alice.reply({"type": "unsubscribe_room", "room_id": room, "request_id": "u"})
    assert reply == {"type": "unsubscribed", "room_id": room, "request_id": "u",
                     "timestamp": reply["timestamp"]}
    await send(bob, room, "unseen")
    await bob.send({"type": "typing", "room_id": room})
    await alice.no_frame(0.4)
    assert chat.broker.subscribers(room) == ()


# ---------------------------------------------------------------------------
# §3 send_message, §4 message_ack / new_message


async def test_message_ack_carries_the_full_message_object(chat: RunningServer) -> None:
    """message_ack has room_id, client_msg_id and the message object of the spec, with the sender's names."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1, "alice", first_name="Alice")
    before = datetime.now(UTC).replace(microsecond=0)
    ack = await client.reply({"type": "send_message", "room_id": room, "content": "hi",
                              "client_msg_id": "c-1"})
    assert set(ack) == {"type", "room_id", "client_msg_id", "message", "timestamp"}, ack
    assert ack["type"] == "message_ack"
    assert ack["room_id"] == room
    assert ack["client_msg_id"] == "c-1"
    message = ack["message"]
    assert message == {
        "id": message["id"], "room_id": room, "content": "hi",
        "sender": {"id": 1, "username": "alice", "first_name": "Alice"},
        "timestamp": message["timestamp"], "reply_to": None, "message_type": "text", "client_msg_id": "c-1",
        "revision": message["revision"], "edited_at": None, "deleted": False, "reactions": [],
        "thread_root_id": None, "reply_count": 0, "last_reply_at": None, "mentions": [], "attachments": [],
    }
    assert type(message["revision"]) is int
    assert message["revision"] >= 1
    assert type(message["id"]) is int
    assert message["id"] >= 1
    assert before <= parse_ts(message["timestamp"]) <= datetime.now(UTC)


async def test_message_ack_without_client_msg_id_has_null(chat: RunningServer) -> None:
    """Without client_msg_id the ack's client_msg_id and the message's are null."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    ack = await client.reply({"type": "send_message", "room_id": room, "content": "hi"})
    assert ack["client_msg_id"] is None
    assert ack["message"]["client_msg_id"] is None


async def test_new_message_to_every_subscribed_connection_including_senders(chat: RunningServer) -> None:
    """new_message reaches every subscribed connection (the sender's own included), not unsubscribed ones."""
    room = await chat.create_room("r", [1, 2, 3])
    sending, alice_other = await chat.connect(1), await chat.connect(1)
    bob, carol = await chat.connect(2), await chat.connect(3)
    for client in (sending, alice_other, bob):
        assert (await client.reply({"type": "subscribe_room", "room_id": room}))["type"] == "subscribed"
    sent = await send(sending, room, "to all")
    for client in (sending, alice_other, bob):
        frame = await client.recv_type("new_message")
        assert frame == {"type": "new_message", "room_id": room, "message": sent,
                         "timestamp": frame["timestamp"]}
        await client.no_frame(0.2)
    await carol.no_frame(0.3)


async def test_sender_need_not_be_subscribed(chat: RunningServer) -> None:
    """An unsubscribed participant can send: acked, delivered to subscribers, no new_message to the sender."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    await bob.reply({"type": "subscribe_room", "room_id": room})
    sent = await send(alice, room, "from outside")
    assert (await bob.recv_type("new_message"))["message"] == sent
    await alice.no_frame(0.3)


@pytest.mark.parametrize("content", ["", " ", "\n\t  \r\n", "\u3000\u00a0"])
async def test_blank_content_is_invalid_message(chat: RunningServer, content: str) -> None:
    """Content empty after trimming white space gets invalid_message naming content; nothing stored."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    error = await client.reply({"type": "send_message", "room_id": room, "content": content, "request_id": 1})
    assert error["type"] == "error", error
    assert error["code"] == "invalid_message", error
    assert "content" in error["message"]
    assert error["room_id"] == room
    assert error["request_id"] == 1
    assert chat.stored(room) == []


@pytest.mark.parametrize("content", [None, 5, ["x"], {"text": "x"}])
async def test_non_string_content_is_invalid_message(chat: RunningServer, content: Any) -> None:
    """Missing or non-string content gets invalid_message naming content."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    frame = {"type": "send_message", "room_id": room}
    if content is not None:
        frame["content"] = content
    error = await client.reply(frame)
    assert error["code"] == "invalid_message", error
    assert "content" in error["message"], error
    assert chat.stored(room) == []


async def test_content_over_max_content_chars_is_invalid_message(chat: RunningServer) -> None:
    """4001 characters (default limit 4000) get invalid_message; nothing is stored."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    error = await client.reply({"type": "send_message", "room_id": room, "content": "é" * 4001})
    assert error["code"] == "invalid_message", error
    assert "content" in error["message"], error
    assert chat.stored(room) == []


async def test_content_of_exactly_max_content_chars_is_accepted(chat: RunningServer) -> None:
    """Content of exactly limits.max_content_chars characters is stored whole."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    message = await send(client, room, "é" * 4000)
    assert message["content"] == "é" * 4000


async def test_configured_max_content_chars_is_honoured(tmp_path: Path) -> None:
    """With limits.max_content_chars = 10, 10 characters pass and 11 get invalid_message."""
    harness = RunningServer(make_config(tmp_path, limits={"max_content_chars": 10}), **CHECKED)
    try:
        room = await harness.create_room("r", [1])
        client = await harness.connect(1)
        assert (await send(client, room, "x" * 10))["content"] == "x" * 10
        error = await client.reply({"type": "send_message", "room_id": room, "content": "x" * 11})
        assert error["code"] == "invalid_message", error
    finally:
        await harness.close()


async def test_reply_to_message_of_same_room(chat: RunningServer) -> None:
    """reply_to naming a message of the same room is stored and shown in ack and new_message."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    await bob.reply({"type": "subscribe_room", "room_id": room})
    original = await send(bob, room, "question")
    await bob.recv_type("new_message")
    answer = await send(alice, room, "answer", reply_to=original["id"])
    assert answer["reply_to"] == original["id"]
    assert (await bob.recv_type("new_message"))["message"] == answer


async def test_reply_to_message_of_another_room_is_not_found(chat: RunningServer) -> None:
    """reply_to naming a message of another room gets not_found with room_id; nothing stored or broadcast."""
    room, other = await chat.rooms(("r", [1, 2]), ("o", [1]))
    alice, bob = await chat.connect(1), await chat.connect(2)
    elsewhere = await send(alice, other, "elsewhere")
    await bob.reply({"type": "subscribe_room", "room_id": room})
    error = await alice.reply({"type": "send_message", "room_id": room, "content": "x",
                               "reply_to": elsewhere["id"], "request_id": "rt"})
    assert error["type"] == "error", error
    assert error["code"] == "not_found", error
    assert error["room_id"] == room
    assert error["request_id"] == "rt"
    assert chat.stored(room) == []
    await bob.no_frame(0.3)


async def test_reply_to_nonexistent_message_is_not_found(chat: RunningServer) -> None:
    """reply_to naming no message at all gets not_found; nothing stored."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    await send(client, room, "x")
    error = await client.reply({"type": "send_message", "room_id": room, "content": "y", "reply_to": 10**9})
    assert error["code"] == "not_found", error
    assert error["room_id"] == room, error
    assert len(chat.stored(room)) == 1


async def test_client_msg_id_repeat_stores_and_broadcasts_nothing(chat: RunningServer) -> None:
    """A repeated client_msg_id (same user, same room) is acked with the original message, nothing new."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    await bob.reply({"type": "subscribe_room", "room_id": room})
    first = await alice.reply({"type": "send_message", "room_id": room, "content": "once",
                               "client_msg_id": "k"})
    assert (await bob.recv_type("new_message"))["message"] == first["message"]
    second = await alice.reply({"type": "send_message", "room_id": room, "content": "again",
                                "client_msg_id": "k", "request_id": "retry"})
    assert second["type"] == "message_ack", second
    assert second["message"] == first["message"]
    assert second["client_msg_id"] == "k"
    assert second["request_id"] == "retry"
    await bob.no_frame(0.4)
    assert [row[2] for row in chat.stored(room)] == ["once"]


async def test_client_msg_id_repeat_from_another_connection_of_the_user(chat: RunningServer) -> None:
    """The idempotency key is per user, so a retry from another connection of that user gets the original."""
    room = await chat.create_room("r", [1])
    first_conn, second_conn = await chat.connect(1), await chat.connect(1)
    first = await send(first_conn, room, "once", client_msg_id="k")
    again = await send(second_conn, room, "once", client_msg_id="k")
    assert again == first
    assert len(chat.stored(room)) == 1


async def test_same_client_msg_id_in_another_room_is_a_new_message(chat: RunningServer) -> None:
    """The same client_msg_id in another room stores a new message."""
    room, other = await chat.rooms(("r", [1]), ("o", [1]))
    client = await chat.connect(1)
    first = await send(client, room, "a", client_msg_id="k")
    second = await send(client, other, "b", client_msg_id="k")
    assert second["id"] > first["id"]
    assert second["room_id"] == other
    assert second["content"] == "b"
    assert len(chat.stored(room)) == 1
    assert len(chat.stored(other)) == 1


async def test_same_client_msg_id_by_another_user_is_a_new_message(chat: RunningServer) -> None:
    """The same client_msg_id sent by another user in the same room stores a new message."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    first = await send(alice, room, "a", client_msg_id="k")
    second = await send(bob, room, "b", client_msg_id="k")
    assert second["id"] > first["id"]
    assert second["sender"]["id"] == 2
    assert second["content"] == "b"
    assert len(chat.stored(room)) == 2


@pytest.mark.parametrize("client_msg_id", ["x" * 65, "", 12])
async def test_bad_client_msg_id_is_invalid_message(chat: RunningServer, client_msg_id: Any) -> None:
    """A client_msg_id that is not a string of 1..64 characters gets invalid_message."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    error = await client.reply({"type": "send_message", "room_id": room, "content": "x",
                                "client_msg_id": client_msg_id})
    assert error["code"] == "invalid_message", error
    assert "client_msg_id" in error["message"], error
    assert chat.stored(room) == []


async def test_message_ids_grow_strictly_across_rooms_and_users(chat: RunningServer) -> None:
    """Message ids are integers growing strictly across the whole server."""
    room, other = await chat.rooms(("r", [1, 2]), ("o", [1, 2]))
    alice, bob = await chat.connect(1), await chat.connect(2)
    ids = []
    for i in range(6):
        client = alice if i % 2 else bob
        ids.append((await send(client, room if i % 3 else other, f"m{i}"))["id"])
    assert all(type(i) is int for i in ids)
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False)), ids


async def test_acked_message_is_persisted(chat: RunningServer) -> None:
    """Right after the ack, get_history and the database hold the message."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    message = await send(client, room, "keep me")
    history = await client.reply({"type": "get_history", "room_id": room})
    assert history["messages"] == [message]
    assert chat.stored(room) == [(message["id"], 1, "keep me")]


async def test_rate_limit_refuses_with_retry_after_and_stores_nothing(chat: RunningServer) -> None:
    """Past the burst, send_message gets rate_limited with retry_after_ms; refused messages are not stored."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    count = 30  # default burst 20 at 10/s
    for i in range(count):
        await client.send({"type": "send_message", "room_id": room, "content": f"m{i}", "request_id": i})
    replies = [await client.recv_type("message_ack", "error") for _ in range(count)]
    acked = [r for r in replies if r["type"] == "message_ack"]
    refused = [r for r in replies if r["type"] == "error"]
    assert refused, "nothing was rate limited"
    for error in refused:
        assert error["code"] == "rate_limited", error
        assert type(error["retry_after_ms"]) is int, error
        assert error["retry_after_ms"] > 0, error
        assert isinstance(error["request_id"], int)
    assert sorted(row[0] for row in chat.stored(room)) == sorted(a["message"]["id"] for a in acked)
    refused_contents = {f"m{e['request_id']}" for e in refused}
    assert not refused_contents & {row[2] for row in chat.stored(room)}


# ---------------------------------------------------------------------------
# §3 mark_read, §4 read_marked / message_read


async def _room_with_messages(chat: RunningServer, count: int = 3) -> tuple[int, CheckedClient, CheckedClient,
                                                                        list[dict[str, Any]]]:
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    sent = [await send(alice, room, f"a{i}") for i in range(count)]
    return room, alice, bob, sent


async def test_mark_read_without_ids_reads_everything(chat: RunningServer) -> None:
    """mark_read without message_ids moves the marker to the latest message: read_marked with unread 0."""
    room, _, bob, sent = await _room_with_messages(chat)
    reply = await bob.reply({"type": "mark_read", "room_id": room, "request_id": "m"})
    assert reply == {"type": "read_marked", "room_id": room, "last_read_message_id": sent[-1]["id"],
                     "unread_count": 0, "request_id": "m", "timestamp": reply["timestamp"]}


async def test_mark_read_with_empty_ids_reads_everything(chat: RunningServer) -> None:
    """mark_read with message_ids [] moves the marker to the latest message."""
    room, _, bob, sent = await _room_with_messages(chat)
    reply = await bob.reply({"type": "mark_read", "room_id": room, "message_ids": []})
    assert reply["last_read_message_id"] == sent[-1]["id"], reply
    assert reply["unread_count"] == 0, reply


async def test_mark_read_specific_ids_takes_the_largest(chat: RunningServer) -> None:
    """With message_ids, the marker moves to the largest given id; unread counts the later ones."""
    room, _, bob, sent = await _room_with_messages(chat, 4)
    reply = await bob.reply({"type": "mark_read", "room_id": room,
                             "message_ids": [sent[1]["id"], sent[0]["id"]]})
    assert reply["last_read_message_id"] == sent[1]["id"], reply
    assert reply["unread_count"] == 2, reply


async def test_mark_read_never_moves_back(chat: RunningServer) -> None:
    """A mark_read naming older ids leaves the marker where it was."""
    room, _, bob, sent = await _room_with_messages(chat)
    await bob.reply({"type": "mark_read", "room_id": room})
    reply = await bob.reply({"type": "mark_read", "room_id": room, "message_ids": [sent[0]["id"]]})
    assert reply["last_read_message_id"] == sent[-1]["id"], reply
    assert reply["unread_count"] == 0, reply


async def test_mark_read_ignores_ids_of_another_room(chat: RunningServer) -> None:
    """Ids of another room's messages (even larger ones) do not move the marker."""
    room, other = await chat.rooms(("r", [1, 2]), ("o", [1, 2]))
    alice, bob = await chat.connect(1), await chat.connect(2)
    mine = [await send(alice, room, f"a{i}") for i in range(2)]
    foreign = await send(alice, other, "elsewhere")
    reply = await bob.reply({"type": "mark_read", "room_id": room, "message_ids": [foreign["id"]]})
    assert reply["last_read_message_id"] == 0, reply
    assert reply["unread_count"] == 2, reply
    reply = await bob.reply({"type": "mark_read", "room_id": room,
                             "message_ids": [mine[0]["id"], foreign["id"]]})
    assert reply["last_read_message_id"] == mine[0]["id"], reply
    assert reply["unread_count"] == 1, reply


async def test_mark_read_sends_message_read_to_subscribers(chat: RunningServer) -> None:
    """message_read {room_id, user_id, message_ids, last_read_message_id} goes to every room subscriber."""
    room = await chat.create_room("r", [1, 2, 3])
    alice, bob, carol = await chat.connect(1), await chat.connect(2), await chat.connect(3)
    for client in (alice, bob):
        await client.reply({"type": "subscribe_room", "room_id": room})
    sent = await send(alice, room, "read me")
    ids = [sent["id"]]
    await bob.reply({"type": "mark_read", "room_id": room, "message_ids": ids})
    for client in (alice, bob):
        frame = await client.recv_type("message_read")
        assert frame == {"type": "message_read", "room_id": room, "user_id": 2, "message_ids": ids,
                         "last_read_message_id": sent["id"], "timestamp": frame["timestamp"]}
    assert "message_read" not in {f["type"] for f in await carol.drain(0.3)}


async def test_unread_count_counts_only_others_messages_above_marker(chat: RunningServer) -> None:
    """Unread count = messages by other users with an id above the marker (own messages never count)."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    a0 = await send(alice, room, "a0")
    await send(bob, room, "b0")
    await send(alice, room, "a1")
    await send(bob, room, "b1")
    await send(alice, room, "a2")
    reply = await bob.reply({"type": "mark_read", "room_id": room, "message_ids": [a0["id"]]})
    assert reply["unread_count"] == 2, reply
    reply = await alice.reply({"type": "mark_read", "room_id": room, "message_ids": [a0["id"]]})
    assert reply["unread_count"] == 2, reply


async def test_room_list_shows_each_users_own_unread_count(chat: RunningServer) -> None:
    """get_room_list reports the requesting user's own unread count."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    for i in range(3):
        await send(alice, room, f"a{i}")
    await send(bob, room, "b")
    lists = [await c.reply({"type": "get_room_list"}) for c in (alice, bob)]
    assert [lst["rooms"][0]["unread_count"] for lst in lists] == [1, 3]
    await bob.reply({"type": "mark_read", "room_id": room})
    lists = [await c.reply({"type": "get_room_list"}) for c in (alice, bob)]
    assert [lst["rooms"][0]["unread_count"] for lst in lists] == [1, 0]


# ---------------------------------------------------------------------------
# §3 typing / stop_typing


async def _typing_room(chat: RunningServer) -> tuple[int, CheckedClient, CheckedClient, CheckedClient]:
    """Room of 1, 2 and 3: alice (two connections) and bob subscribed."""
    room = await chat.create_room("r", [1, 2, 3])
    alice, alice_other = await chat.connect(1, "alice"), await chat.connect(1, "alice")
    bob = await chat.connect(2)
    for client in (alice, alice_other, bob):
        await client.reply({"type": "subscribe_room", "room_id": room})
    return room, alice, alice_other, bob


async def test_typing_reaches_other_subscribers_only(chat: RunningServer) -> None:
    """typing goes to the other users' subscribed connections, never to any connection of the typer."""
    room, alice, alice_other, bob = await _typing_room(chat)
    carol = await chat.connect(3)  # a participant who did not subscribe
    await alice.send({"type": "typing", "room_id": room})
    frame = await bob.recv_type("typing")
    assert frame == {"type": "typing", "room_id": room, "user_id": 1, "username": "alice", "is_typing": True,
                     "timestamp": frame["timestamp"]}
    await alice_other.no_frame(0.3)
    await alice.no_frame(0.1)
    await carol.no_frame(0.1)


@pytest.mark.parametrize("kind", ["typing", "stop_typing"])
async def test_typing_success_gets_no_reply(chat: RunningServer, kind: str) -> None:
    """A successful typing or stop_typing is not answered, even with a request_id."""
    room, alice, _, _ = await _typing_room(chat)
    if kind == "stop_typing":
        await alice.send({"type": "typing", "room_id": room})
    await alice.send({"type": kind, "room_id": room, "request_id": "t"})
    await alice.no_frame(0.4)


async def test_stop_typing_sends_is_typing_false(chat: RunningServer) -> None:
    """stop_typing after typing sends typing with is_typing false to the other subscribers."""
    room, alice, _, bob = await _typing_room(chat)
    await alice.send({"type": "typing", "room_id": room})
    assert (await bob.recv_type("typing"))["is_typing"] is True
    await alice.send({"type": "stop_typing", "room_id": room})
    frame = await bob.recv_type("typing")
    assert frame["is_typing"] is False
    assert frame["user_id"] == 1
    assert frame["room_id"] == room




# ---------------------------------------------------------------------------
# §3 get_room_list, §4 room object


async def test_room_list_holds_only_the_users_rooms(chat: RunningServer) -> None:
    """room_list holds exactly the rooms the user participates in."""
    mine, also_mine, _ = await chat.rooms(("a", [1, 2]), ("b", [1]), ("c", [2, 3]))
    client = await chat.connect(1)
    reply = await client.reply({"type": "get_room_list", "request_id": 3})
    assert reply["type"] == "room_list"
    assert reply["request_id"] == 3
    assert sorted(r["id"] for r in reply["rooms"]) == sorted([mine, also_mine])


async def test_room_list_of_user_without_rooms_is_empty(chat: RunningServer) -> None:
    """A user in no room gets an empty list."""
    await chat.create_room("other", [2])
    client = await chat.connect(1)
    assert (await client.reply({"type": "get_room_list"}))["rooms"] == []


async def test_room_list_most_recent_activity_first(chat: RunningServer) -> None:
    """Rooms are ordered by their latest message, newest first."""
    first, second, third = await chat.rooms(("a", [1]), ("b", [1]), ("c", [1]))
    client = await chat.connect(1)
    for room in (third, first, second):
        await send(client, room, "x")
        await asyncio.sleep(0.01)
    reply = await client.reply({"type": "get_room_list"})
    assert [r["id"] for r in reply["rooms"]] == [second, first, third]


async def test_room_list_order_for_messages_committed_together(chat: RunningServer) -> None:
    """Messages acked in quick succession order their rooms by recency even within one millisecond."""
    rooms = await chat.rooms(("a", [1]), ("b", [1]), ("c", [1]))
    client = await chat.connect(1)
    for room in reversed(rooms):  # the last message goes to rooms[0]
        await client.send({"type": "send_message", "room_id": room, "content": f"to {room}"})
    acks = [await client.recv_type("message_ack") for _ in rooms]
    assert [a["room_id"] for a in sorted(acks, key=lambda a: a["message"]["id"])] == list(reversed(rooms))
    reply = await client.reply({"type": "get_room_list"})
    assert [r["id"] for r in reply["rooms"]] == rooms, [a["message"]["timestamp"] for a in acks]


async def test_room_object_has_spec_shape(chat: RunningServer) -> None:
    """Each room object has exactly the spec's fields, with participants {id, username, online,
    last_seen}; a direct room is named for the other participant (protocol.md §6.2)."""
    room = await chat.create_room("Team", [1, 2])
    direct = await chat.create_room("DM", [1, 3], room_type="direct")
    alice, bob = await chat.connect(1, "alice"), await chat.connect(2, "bob")
    message = await send(bob, room, "latest")
    reply = await alice.reply({"type": "get_room_list"})
    by_id = {r["id"]: r for r in reply["rooms"]}
    for obj in by_id.values():
        assert set(obj) == ROOM_KEYS, obj
    team = by_id[room]
    assert {k: v for k, v in team.items() if k != "participants"} == {
        "id": room, "name": "Team", "room_type": "group", "last_message_content": "latest",
        "last_message_time": message["timestamp"], "unread_count": 1, "mention_count": 0, "owner_id": None,
    }
    assert sorted(team["participants"], key=lambda p: p["id"]) == [
        {"id": 1, "username": "alice", "online": True, "last_seen": None},
        {"id": 2, "username": "bob", "online": True, "last_seen": None},
    ]
    dm = by_id[direct]
    assert dm["room_type"] == "direct"
    assert dm["name"] == "user3"  # (user 3 never connected: the placeholder name)
    assert dm["last_message_content"] is None
    assert dm["last_message_time"] is None
    assert dm["unread_count"] == 0
    assert sorted(p["id"] for p in dm["participants"]) == [1, 3]
    await bob.no_frame(0.1)


async def test_room_list_preview_is_first_200_characters(chat: RunningServer) -> None:
    """last_message_content is the first 200 characters of the latest message."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    content = "".join(chr(0x41 + i % 26) for i in range(199)) + "Ω" + "tail" * 50
    await send(client, room, content)
    reply = await client.reply({"type": "get_room_list"})
    assert reply["rooms"][0]["last_message_content"] == content[:200]


# ---------------------------------------------------------------------------
# §4 room_updated


async def test_room_updated_to_every_participant_connection_after_message(chat: RunningServer) -> None:
    """After a message every participant connection, subscribed or not, gets room_updated with its unread."""
    room = await chat.create_room("r", [1, 2])
    alice = await chat.connect(1)
    bob_subscribed, bob_idle = await chat.connect(2), await chat.connect(2)
    outsider = await chat.connect(3)
    await bob_subscribed.reply({"type": "subscribe_room", "room_id": room})
    message = await send(alice, room, "news")
    expected = {"last_message_content": "news", "last_message_time": message["timestamp"]}
    for client, unread in ((alice, 0), (bob_subscribed, 1), (bob_idle, 1)):
        frame = await client.wait_frame(is_room_update(room, **expected, unread_count=unread))
        assert set(frame) == {"type", "room_id", "updates", "timestamp"}, frame
    await outsider.no_frame(0.4, ignore=())


async def test_room_updated_arrives_within_100_ms(chat: RunningServer) -> None:
    """room_updated for a new message arrives within about 100 ms of the message's commit (the ack)."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    await send(alice, room, "now")
    acked = time.monotonic()
    await bob.wait_frame(is_room_update(room, last_message_content="now"), timeout=1)
    assert time.monotonic() - acked <= 0.15


async def test_room_updated_preview_is_first_200_characters(chat: RunningServer) -> None:
    """room_updated's last_message_content is the first 200 characters of the message."""
    room = await chat.create_room("r", [1, 2])
    alice, bob = await chat.connect(1), await chat.connect(2)
    content = "x" * 199 + "yz" + "w" * 300
    await send(alice, room, content)
    frame = await bob.wait_frame(is_room_update(room, unread_count=1))
    assert frame["updates"]["last_message_content"] == content[:200]


async def test_room_updated_after_mark_read_updates_unread(chat: RunningServer) -> None:
    """After mark_read every connection of the reader gets room_updated with unread_count 0."""
    room = await chat.create_room("r", [1, 2])
    alice, bob, bob_other = await chat.connect(1), await chat.connect(2), await chat.connect(2)
    await send(alice, room, "a")
    await send(alice, room, "b")
    for client in (bob, bob_other):
        await client.wait_frame(is_room_update(room, unread_count=2))
    await bob.reply({"type": "mark_read", "room_id": room})
    for client in (bob, bob_other):
        await client.wait_frame(is_room_update(room, unread_count=0))


# ---------------------------------------------------------------------------
# §3 get_history


HistoryRoom = tuple[int, CheckedClient, list[int]]


@pytest_asyncio.fixture
async def history_room(fast_chat: RunningServer) -> HistoryRoom:
    room = await fast_chat.create_room("r", [1])
    client = await fast_chat.connect(1)
    sent = await send_many(client, room, 120)
    return room, client, [m["id"] for m in sent]


async def test_get_history_default_is_latest_50(history_room: HistoryRoom) -> None:
    """get_history without limit returns the latest 50 messages oldest first, has_more true."""
    room, client, ids = history_room
    reply = await client.reply({"type": "get_history", "room_id": room, "request_id": "h"})
    assert reply["type"] == "history"
    assert reply["room_id"] == room
    assert reply["request_id"] == "h"
    assert [m["id"] for m in reply["messages"]] == ids[-50:]
    assert reply["has_more"] is True


async def test_get_history_before_id_pages_backwards(history_room: HistoryRoom) -> None:
    """before_id returns the newest messages older than it, oldest first; has_more false at the start."""
    room, client, ids = history_room
    reply = await client.reply({"type": "get_history", "room_id": room, "before_id": ids[10], "limit": 5})
    assert [m["id"] for m in reply["messages"]] == ids[5:10]
    assert reply["has_more"] is True
    reply = await client.reply({"type": "get_history", "room_id": room, "before_id": ids[3], "limit": 5})
    assert [m["id"] for m in reply["messages"]] == ids[:3]
    assert reply["has_more"] is False


async def test_get_history_after_id_pages_forwards(history_room: HistoryRoom) -> None:
    """after_id returns the oldest messages newer than it, oldest first; has_more false at the end."""
    room, client, ids = history_room
    reply = await client.reply({"type": "get_history", "room_id": room, "after_id": ids[50], "limit": 5})
    assert [m["id"] for m in reply["messages"]] == ids[51:56]
    assert reply["has_more"] is True
    reply = await client.reply({"type": "get_history", "room_id": room, "after_id": ids[110], "limit": 20})
    assert [m["id"] for m in reply["messages"]] == ids[111:]
    assert reply["has_more"] is False


async def test_get_history_exact_page_has_no_more(history_room: HistoryRoom) -> None:
    """A page that ends exactly at the last message says has_more false."""
    room, client, ids = history_room
    reply = await client.reply({"type": "get_history", "room_id": room, "after_id": ids[109], "limit": 10})
    assert [m["id"] for m in reply["messages"]] == ids[110:]
    assert reply["has_more"] is False


@pytest.mark.parametrize("limit", [1, 100])
async def test_get_history_limit_bounds_accepted(history_room: HistoryRoom,
                                                 limit: int) -> None:
    """limit 1 and 100 are accepted and honoured."""
    room, client, ids = history_room
    reply = await client.reply({"type": "get_history", "room_id": room, "limit": limit})
    assert [m["id"] for m in reply["messages"]] == ids[-limit:]
    assert reply["has_more"] is True


@pytest.mark.parametrize("limit", [0, 101, -1, "10", 1.5, True])
async def test_get_history_limit_out_of_range_refused(chat: RunningServer, limit: Any) -> None:
    """A limit outside 1..100 (or not an integer) is refused with invalid_message naming limit."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    error = await client.reply({"type": "get_history", "room_id": room, "limit": limit})
    assert error["type"] == "error", error
    assert error["code"] == "invalid_message", error
    assert "limit" in error["message"]
    assert error["room_id"] == room


async def test_get_history_of_empty_room(chat: RunningServer) -> None:
    """A room without messages has an empty history with has_more false."""
    room = await chat.create_room("r", [1])
    client = await chat.connect(1)
    reply = await client.reply({"type": "get_history", "room_id": room})
    assert reply["messages"] == []
    assert reply["has_more"] is False


# ---------------------------------------------------------------------------
# §3 refresh_token


def _expires_at_matches(value: Any, exp: int) -> bool:
    if isinstance(value, str):
        return parse_ts(value) == datetime.fromtimestamp(exp, UTC)
    return isinstance(value, int | float) and not isinstance(value, bool) and value == exp


async def test_refresh_token_replies_token_refreshed(chat: RunningServer) -> None:
    """A valid token for the same user is answered with token_refreshed carrying the new token's expiry."""
    client = await chat.connect(1)
    token = mint_token(chat.key, 1, "name1", ttl=7200)
    exp = int(time.time()) + 7200
    reply = await client.reply({"type": "refresh_token", "token": token, "request_id": "t"})
    assert reply["type"] == "token_refreshed", reply
    assert reply["request_id"] == "t", reply
    assert _expires_at_matches(reply["expires_at"], exp) or _expires_at_matches(reply["expires_at"], exp - 1)




async def test_refresh_token_for_another_user_refused_identity_kept(chat: RunningServer) -> None:
    """A token for another user gets invalid_message and the connection keeps its identity:
    it still sends as itself and is still refused the other user's rooms."""
    room, theirs = await chat.rooms(("r", [1, 2]), ("theirs", [2]))
    client = await chat.connect(1, "alice")
    other = chat.token(2, "bob")
    error = await client.reply({"type": "refresh_token", "token": other, "request_id": 9})
    assert error["type"] == "error", error
    assert error["code"] == "invalid_message", error
    assert error["request_id"] == 9, error
    message = await send(client, room, "still alice")
    assert message["sender"]["id"] == 1
    assert message["sender"]["username"] == "alice"
    assert list(chat.broker.connections_of(2)) == []
    denied = await client.reply({"type": "subscribe_room", "room_id": theirs})
    assert denied["type"] == "error", denied
    assert denied["code"] == "access_denied", denied


@pytest.mark.parametrize("token", ["not-a-jwt", "wrong-key", "expired", ""])
async def test_refresh_token_invalid_is_refused(chat: RunningServer, token: str) -> None:
    """An invalid token is answered with an error and the connection stays open."""
    client = await chat.connect(1)
    if token == "wrong-key":
        token = mint_token("w" * 40, 1, "name1")
    elif token == "expired":
        token = mint_token(chat.key, 1, "name1", ttl=-60)
    error = await client.reply({"type": "refresh_token", "token": token})
    assert error["type"] == "error", error
    assert error["code"] == "invalid_message", error
    assert (await client.reply({"type": "ping"}))["type"] == "pong"


# ---------------------------------------------------------------------------
# §3 ping, errors, disconnect


async def test_ping_gets_pong(chat: RunningServer) -> None:
    """ping is answered with pong."""
    client = await chat.connect(1)
    reply = await client.reply({"type": "ping", "request_id": "p"})
    assert reply == {"type": "pong", "request_id": "p", "timestamp": reply["timestamp"]}


async def test_unknown_type_gets_unknown_type(chat: RunningServer) -> None:
    """A frame of an unknown type gets unknown_type and the connection stays open."""
    client = await chat.connect(1)
    error = await client.reply({"type": "launch_rockets", "request_id": "u"})
    assert error["code"] == "unknown_type", error
    assert error["request_id"] == "u", error
    assert (await client.reply({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize("text", ["{not json", '{"type": "ping"', "", "\u00ff\u00fe"])
async def test_invalid_json_gets_invalid_json_and_connection_stays_open(chat: RunningServer, text: str) -> None:
    """A text frame that is not JSON gets invalid_json (no request_id) and the connection stays open."""
    client = await chat.connect(1)
    await client.send(text)
    error = await client.recv()
    assert error["type"] == "error", error
    assert error["code"] == "invalid_json", error
    assert "request_id" not in error
    assert (await client.reply({"type": "ping"}))["type"] == "pong"


async def test_disconnect_leaves_every_room(chat: RunningServer) -> None:
    """A closed connection is removed from every room: healthz counts drop and nothing is delivered to it."""
    rooms = await chat.rooms(("a", [1, 2]), ("b", [1, 2]))
    leaving, staying = await chat.connect(1), await chat.connect(2)
    for room in rooms:
        await leaving.reply({"type": "subscribe_room", "room_id": room})
    health = await asyncio.to_thread(get_json, f"{chat.http_url}/healthz")
    assert health["connections"] == 2, health
    assert health["rooms_active"] == 2, health
    await leaving.close()
    await chat.wait_for(lambda: chat.broker.connection_count == 1)
    health = await asyncio.to_thread(get_json, f"{chat.http_url}/healthz")
    assert health["connections"] == 1, health
    assert health["rooms_active"] == 0, health
    deliveries = chat.broker.deliveries
    for room in rooms:
        await send(staying, room, "anyone?")
    assert chat.broker.deliveries == deliveries

