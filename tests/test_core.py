"""The chat core without sockets: Session, Chat, the catch-up and the room-update coalescer,
over a list sink, an in-memory store and a clock moved by hand."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from tests.conftest import SIGNING_KEY, FakeClock, make_config
from unichatd import protocol
from unichatd.auth import KeyRing, mint_token, verify_token
from unichatd.catchup import CatchUp
from unichatd.chat import TYPING_TIMEOUT, Chat
from unichatd.errors import CloseCode
from unichatd.hub import Hub
from unichatd.metrics import BATCH_BOUNDS, LATENCY_BOUNDS, Histogram
from unichatd.models import (
    Change,
    FileRef,
    MembershipChange,
    Message,
    NewMessage,
    ReadResult,
    Refusal,
    Resynced,
    RoomChanged,
    RoomRecord,
    Snapshot,
    Stored,
    StoredFile,
    UserInfo,
)
from unichatd.protocol.search import SearchTerm
from unichatd.rooms import RoomDirectory
from unichatd.session import Session
from unichatd.stats import Stats
from unichatd.updates import PIGGYBACK, WINDOW, RoomUpdates

# ---------------------------------------------------------------------------
# The fakes


class ListSink:
    """A connection's frames, decoded, in the order the session wrote them."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        assert self.closed is None, "frame after close"
        self.frames.append(orjson.loads(frame))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def take(self, *types: str) -> list[dict[str, Any]]:
        """The frames of these types received so far (all when none named), forgetting every frame."""
        frames, self.frames = self.frames, []
        return [frame for frame in frames if not types or frame["type"] in types]


class FakeStore:
    """An in-memory MessageStore; with ``paused`` set, writes wait for :meth:`commit`."""

    def __init__(self, rooms: dict[int, list[int]]) -> None:
        self.members = {room: dict.fromkeys(users, 0) for room, users in rooms.items()}
        self.names: dict[int, tuple[str, str]] = {}
        self.last_seen: dict[int, int] = {}
        self.messages: list[Message] = []
        self.paused = False
        self._waiting: list[tuple[asyncio.Future[Any], Callable[[], Any]]] = []
        self.batch_sizes = Histogram(BATCH_BOUNDS)
        self.write_latency = Histogram(LATENCY_BOUNDS)

    def _write(self, apply: Callable[[], Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.paused:
            self._waiting.append((future, apply))
        else:
            future.set_result(apply())
        return future

    def commit(self) -> None:
        waiting, self._waiting = self._waiting, []
        for future, apply in waiting:
            future.set_result(apply())

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self.commit()

    def append_message(self, message: NewMessage) -> asyncio.Future[Stored]:
        def apply() -> Stored:
            stored = Message(len(self.messages) + 1, message.room_id, message.sender_id, message.sender_username,
                             message.sender_first_name, message.content, 1_700_000_000_000, message.reply_to,
                             message.client_msg_id)
            self.messages.append(stored)
            return Stored(stored, created=True)

        return self._write(apply)

    def mark_read(self, room_id: int, user_id: int, message_ids: Sequence[int]) -> asyncio.Future[ReadResult | None]:
        def apply() -> ReadResult | None:
            markers = self.members[room_id]
            if user_id not in markers:
                return None
            ids = [m.id for m in self.messages if m.room_id == room_id and (not message_ids or m.id in message_ids)]
            old = markers[user_id]
            markers[user_id] = max([old, *ids])
            return ReadResult(markers[user_id], self._unread(room_id, user_id), markers[user_id] != old)

        return self._write(apply)

    def _unread(self, room_id: int, user_id: int) -> int:
        marker = self.members[room_id][user_id]
        return sum(1 for m in self.messages if m.room_id == room_id and m.id > marker and m.sender_id != user_id)

    def upsert_user(self, user_id: int, username: str, first_name: str) -> asyncio.Future[None]:
        return self._write(lambda: self.names.__setitem__(user_id, (username, first_name)))

    def prune(self, room_id: int, before_ms: int, limit: int) -> asyncio.Future[int]:
        return self._write(lambda: 0)

    def set_last_seen(self, seen: Sequence[tuple[int, int]]) -> asyncio.Future[None]:
        return self._write(lambda: self.last_seen.update(seen))

    def load_rooms(self, room_ids: Iterable[int] | None = None) -> asyncio.Future[Snapshot]:
        def apply() -> Snapshot:
            rooms = {}
            for room_id in self.members if room_ids is None else room_ids:
                markers = dict(self.members[room_id])
                room = RoomRecord(room_id, f"room{room_id}", "group", 0, markers,
                                  {user: self._unread(room_id, user) for user in markers})
                rooms[room_id] = room
            return Snapshot(rooms, dict(self.names))

        return self._write(apply)

    def resync(self, after: int) -> asyncio.Future[Resynced]:
        def read() -> Resynced:
            snapshot = self.load_rooms().result()
            newer = [m for m in self.messages if m.id > after]
            return Resynced(max((m.id for m in self.messages), default=0), snapshot, newer)

        return self._write(read)

    def flush(self) -> asyncio.Future[None]:
        return self._write(lambda: None)

    async def last_number(self) -> int:
        return max((m.id for m in self.messages), default=0)

    def set_commit_gate(self, gate: Any) -> None:
        raise AssertionError("the chat service alone (no cluster) never sets a commit gate")

    async def history(self, room_id: int, *, before_id: int | None, after_id: int | None,
                      limit: int) -> tuple[list[Message], bool]:
        found = [m for m in self.messages if m.room_id == room_id and m.id > (after_id or 0)]
        return found[:limit], len(found) > limit

    async def reply_target(self, message_id: int) -> tuple[int, int] | None:
        return next(((m.room_id, m.thread_root_id or m.id) for m in self.messages if m.id == message_id), None)

    # The message lifecycle (protocol.md §6.1) is tested over real sockets and a real
    # SQLite file (tests/test_lifecycle.py); this tier does not use it.

    def edit_message(self, room_id: int, message_id: int, user_id: int, content: str,
                     mentions: tuple[int, ...]) -> asyncio.Future[Change | Refusal]:
        raise NotImplementedError("tests/test_lifecycle.py covers edits")

    def delete_message(self, room_id: int, message_id: int, user_id: int) -> asyncio.Future[Change | Refusal]:
        raise NotImplementedError("tests/test_lifecycle.py covers deletes")

    def react(self, room_id: int, message_id: int, user_id: int, emoji: str,
              add: bool) -> asyncio.Future[Change | Refusal]:
        raise NotImplementedError("tests/test_lifecycle.py covers reactions")

    async def thread(self, room_id: int, message_id: int, *, after_id: int | None,
                     limit: int) -> tuple[Message, list[Message], bool] | None:
        raise NotImplementedError("tests/test_lifecycle.py covers threads")

    async def changes(self, room_id: int, *, since_revision: int, through_id: int | None,
                      limit: int) -> tuple[list[Message], bool]:
        raise NotImplementedError("tests/test_lifecycle.py covers changes")

    async def search(self, room_ids: Sequence[int], terms: Sequence[SearchTerm], *, other_rooms: Sequence[int],
                     before_id: int | None, limit: int) -> tuple[list[tuple[Message, str]], bool]:
        raise NotImplementedError("tests/test_lifecycle.py and test_search_query.py cover search")

    async def membership_changes(self, after_log_id: int) -> list[MembershipChange]:
        return []

    async def revocations(self) -> dict[int, int]:
        return {}

    # Rooms from clients, users and files: tests/test_people.py and test_files.py cover them
    # over a real store.

    def create_room(self, name: str, room_type: str, owner_id: int | None,
                    member_ids: Sequence[int]) -> asyncio.Future[RoomChanged]:
        raise NotImplementedError

    # The server API and webhooks: tests/test_api.py and test_webhooks.py over a real store.

    def host_change_room(self, room_id: int, change: str, *, user_ids: Sequence[int] = (), name: str = "",
                         owner_id: int | None = None) -> asyncio.Future[RoomChanged | Refusal]:
        raise NotImplementedError

    def revoke_user(self, user_id: int, before_ms: int) -> asyncio.Future[None]:
        raise NotImplementedError

    def webhook_progress(self, cursors: Sequence[tuple[str, int]], prune_through: int,
                         prune_limit: int = 10_000) -> asyncio.Future[int]:
        raise NotImplementedError

    async def webhook_cursors(self) -> tuple[dict[str, int], int]:
        raise NotImplementedError

    async def webhook_events(self, after_seq: int, events: Sequence[str],
                             limit: int) -> tuple[list[tuple[int, str, bytes, int]], int]:
        raise NotImplementedError

    def open_direct(self, user_id: int, other_id: int) -> asyncio.Future[RoomChanged]:
        raise NotImplementedError

    def change_room(self, room_id: int, user_id: int, change: str, *, user_ids: Sequence[int] = (),
                    name: str = "") -> asyncio.Future[RoomChanged | Refusal]:
        raise NotImplementedError

    def store_file(self, uploader_id: int, name: str, size: int, content_type: str,
                   storage_key: str) -> asyncio.Future[FileRef]:
        raise NotImplementedError

    async def find_users(self, query: str, limit: int) -> list[UserInfo]:
        raise NotImplementedError

    async def users_by_id(self, user_ids: Sequence[int]) -> list[UserInfo]:
        raise NotImplementedError

    async def stored_file(self, file_id: int) -> StoredFile | None:
        raise NotImplementedError

    async def files_of(self, uploader_id: int, file_ids: Sequence[int]) -> list[FileRef]:
        raise NotImplementedError

    async def uploads_since(self, uploader_id: int, since_ms: int) -> list[tuple[int, int]]:
        raise NotImplementedError


class Core:
    """A Chat over the fakes, and sessions on list sinks."""

    def __init__(self, chat: Chat, store: FakeStore, clock: FakeClock) -> None:
        self.chat, self.store, self.clock = chat, store, clock
        self._conn_ids = itertools.count(1)

    async def connect(self, user_id: int, *, ttl: int = 3600) -> tuple[Session, ListSink]:
        token = mint_token(SIGNING_KEY, user_id, f"user{user_id}", ttl=ttl)
        identity = verify_token(token, self.chat.keyring)
        sink = ListSink()
        session = Session(next(self._conn_ids), identity, sink, self.chat)
        await session.open()
        assert sink.take()[0]["type"] == "connection_established"
        return session, sink


async def request(session: Session, frame: dict[str, Any]) -> None:
    await session.handle_text(orjson.dumps(frame).decode())


@pytest_asyncio.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    clock = FakeClock()
    store = FakeStore({1: [1, 2], 2: [3]})
    chat = Chat(make_config(tmp_path), store, Hub(), KeyRing.single(SIGNING_KEY), clock)
    await chat.start()
    try:
        yield Core(chat, store, clock)
    finally:
        store.paused = False  # (stopping writes presence's last_seen)
        await chat.stop()


# ---------------------------------------------------------------------------
# Catch-up


def _message(message_id: int) -> Message:
    return Message(message_id, 1, 1, "u", "", "x", 0, None, None)


def test_catch_up_releases_the_held_frames_history_did_not_carry() -> None:
    """Frames held while history is read go out after it, without the messages history holds."""
    catch_up = CatchUp()
    for message_id in (5, 6, 7):
        assert catch_up.offer(f"m{message_id}".encode(), message_id) is False
    assert catch_up.offer(b"typing", None) is False
    released = catch_up.release([_message(4), _message(5), _message(6)], after_id=3)
    assert released == [b"m7", b"typing"]
    assert catch_up.finished  # a held message past history: nothing older can follow


def test_catch_up_skips_late_broadcasts_of_messages_history_carried() -> None:
    """A broadcast of a message history already carried, arriving after the release, is dropped;
    the first newer message ends the catch-up."""
    catch_up = CatchUp()
    assert catch_up.release([_message(8), _message(9)], after_id=7) == []
    assert not catch_up.finished
    assert catch_up.offer(b"m9", 9) is False
    assert catch_up.offer(b"read", None) is True
    assert catch_up.offer(b"m10", 10) is True
    assert catch_up.finished


def test_catch_up_carries_an_earlier_skip_over() -> None:
    """A second catch-up of the same room, started while the first still drops late broadcasts,
    keeps dropping them even when its own history is empty."""
    first = CatchUp()
    first.release([_message(8), _message(9)], after_id=7)
    second = CatchUp(first.skipping_through)
    assert second.release([], after_id=9) == []
    assert second.offer(b"m9", 9) is False
    assert second.offer(b"m10", 10) is True
    assert second.finished


def test_catch_up_with_empty_history_passes_everything_after() -> None:
    """Nothing missed: the held frames are released as they are, and the catch-up ends."""
    catch_up = CatchUp()
    catch_up.offer(b"m3", 3)
    assert catch_up.release([], after_id=2) == [b"m3"]
    assert catch_up.finished


# ---------------------------------------------------------------------------
# Room updates


class Recipient:
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.sink = ListSink()

    def send(self, frame: bytes) -> None:
        self.sink.send(frame)


class Connections:
    def __init__(self, *recipients: Recipient) -> None:
        self.recipients = recipients

    def connections_of(self, user_id: int) -> list[Recipient]:
        return [r for r in self.recipients if r.user_id == user_id]


def _updates(*recipients: Recipient) -> tuple[RoomUpdates[Recipient], FakeClock, Stats]:
    directory = RoomDirectory()
    directory.apply(Snapshot({room: RoomRecord(room, f"room{room}", "group", 0, {1: 0, 2: 0}, {1: 0, 2: 0})
                              for room in (1, 2)}, {}))
    clock, stats = FakeClock(), Stats()
    return RoomUpdates(directory, Connections(*recipients), stats, clock), clock, stats


def test_room_updates_coalesce_within_the_window() -> None:
    """Many changes of a room within the window make one room_updated per connection, sent when
    the window closes."""
    alice, bob = Recipient(1), Recipient(2)
    updates, clock, stats = _updates(alice, bob)
    for _ in range(5):
        updates.room_changed(1)
        clock.advance(0.01)
    updates.room_changed(2)
    assert alice.sink.frames == []
    clock.advance(WINDOW)
    for recipient in (alice, bob):
        assert sorted(frame["room_id"] for frame in recipient.sink.take("room_updated")) == [1, 2]
    assert stats.room_updates == 4
    clock.advance(1.0)
    assert alice.sink.frames == []
    assert bob.sink.frames == []


def test_room_updates_ride_along_with_a_broadcast_past_the_piggyback_age() -> None:
    """A connection owed frames takes them with its next broadcast once they are old enough,
    and not before."""
    alice = Recipient(1)
    updates, clock, _ = _updates(alice)
    updates.changed_for(1, 1)
    clock.now += PIGGYBACK / 2
    updates.after_delivery(alice)
    assert alice.sink.frames == []
    clock.now += PIGGYBACK / 2
    updates.after_delivery(alice)
    assert [frame["room_id"] for frame in alice.sink.take()] == [1]
    clock.advance(WINDOW)
    assert alice.sink.frames == []  # (sent already: the timer finds nothing owed)


def test_room_updates_forget_a_closed_connection() -> None:
    """A connection that closed is owed nothing."""
    alice = Recipient(1)
    updates, clock, _ = _updates(alice)
    updates.changed_for(1, 1)
    updates.forget(alice)
    clock.advance(WINDOW)
    assert alice.sink.frames == []


# ---------------------------------------------------------------------------
# Session and Chat


@pytest.mark.asyncio
async def test_send_is_acked_then_broadcast_with_one_message_object(core: Core) -> None:
    """The sender gets message_ack; a subscriber gets new_message with the same message object."""
    alice, alice_sink = await core.connect(1)
    bob, bob_sink = await core.connect(2)
    await request(bob, {"type": "subscribe_room", "room_id": 1})
    assert bob_sink.take()[0]["type"] == "subscribed"
    await request(alice, {"type": "send_message", "room_id": 1, "content": "hi", "request_id": 1})
    await asyncio.sleep(0)  # the store's done-callbacks
    [ack] = alice_sink.take("message_ack")
    [delivered] = bob_sink.take("new_message")
    assert ack["request_id"] == 1
    assert ack["message"] == delivered["message"]
    assert delivered["message"]["content"] == "hi"


@pytest.mark.asyncio
async def test_a_reply_never_overtakes_an_earlier_send_still_being_stored(core: Core) -> None:
    """A ping answered at once still waits behind the ack of a send that has not committed."""
    alice, sink = await core.connect(1)
    core.store.paused = True
    await request(alice, {"type": "send_message", "room_id": 1, "content": "slow", "request_id": "s"})
    await request(alice, {"type": "ping", "request_id": "p"})
    assert sink.take() == []
    core.store.commit()
    await asyncio.sleep(0)
    assert [frame.get("request_id") for frame in sink.take("message_ack", "pong")] == ["s", "p"]


@pytest.mark.asyncio
async def test_foreign_room_is_access_denied(core: Core) -> None:
    """A room the user is not a participant of is refused with access_denied."""
    alice, sink = await core.connect(1)
    await request(alice, {"type": "get_history", "room_id": 2, "request_id": 9})
    [error] = sink.take()
    assert (error["type"], error["code"], error["room_id"], error["request_id"]) == ("error", "access_denied", 2, 9)


@pytest.mark.asyncio
async def test_mark_read_replies_and_the_reader_room_list_follows(core: Core) -> None:
    """mark_read answers read_marked with the new marker and unread count."""
    alice, _ = await core.connect(1)
    bob, bob_sink = await core.connect(2)
    await request(alice, {"type": "send_message", "room_id": 1, "content": "one"})
    await asyncio.sleep(0)
    core.clock.advance(WINDOW)
    assert bob_sink.take("room_updated")[-1]["updates"]["unread_count"] == 1
    await request(bob, {"type": "mark_read", "room_id": 1})
    [marked] = bob_sink.take("read_marked")
    assert (marked["last_read_message_id"], marked["unread_count"]) == (1, 0)


@pytest.mark.asyncio
async def test_typing_expires_after_six_seconds(core: Core) -> None:
    """A typing without stop_typing is ended by the server with is_typing false after 6 s,
    to the room's other users and not to the typer's own connections.  (Moved from the
    socket tier, where it waited 6 s of real time.)"""
    alice, alice_sink = await core.connect(1)
    alice_other, other_sink = await core.connect(1)
    bob, bob_sink = await core.connect(2)
    for session in (alice_other, bob):
        await request(session, {"type": "subscribe_room", "room_id": 1})
    await request(alice, {"type": "typing", "room_id": 1})
    assert [f["is_typing"] for f in bob_sink.take("typing")] == [True]
    core.clock.advance(TYPING_TIMEOUT - 0.5)
    assert bob_sink.take("typing") == []
    core.clock.advance(0.5)
    [stopped] = bob_sink.take("typing")
    assert stopped["is_typing"] is False
    assert stopped["user_id"] == 1
    assert other_sink.take("typing") == []
    assert alice_sink.take("typing") == []


@pytest.mark.asyncio
async def test_token_expiry_closes_4001_at_exp(core: Core) -> None:
    """A connection whose token expires is closed with 4001 'token expired' at its exp, not before."""
    session, sink = await core.connect(1, ttl=2)
    core.clock.advance(session.identity.expires_at - core.clock.time() - 0.1)
    assert sink.closed is None
    core.clock.advance(0.2)
    assert sink.closed == (CloseCode.AUTH, "token expired")


@pytest.mark.asyncio
async def test_refresh_moves_the_expiry(core: Core) -> None:
    """After refresh_token the connection outlives the first token's exp, and closes at the new
    one.  (Moved from the socket tier, where it slept past the old exp.)"""
    alice, sink = await core.connect(1, ttl=2)
    fresh = mint_token(SIGNING_KEY, 1, "user1", ttl=60)
    await request(alice, {"type": "refresh_token", "token": fresh, "request_id": "r"})
    [refreshed] = sink.take()
    assert refreshed["type"] == "token_refreshed", refreshed
    assert refreshed["request_id"] == "r", refreshed
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", refreshed["expires_at"])
    core.clock.advance(58)
    assert sink.closed is None
    core.clock.advance(3)
    assert sink.closed == (CloseCode.AUTH, "token expired")


@pytest.mark.asyncio
async def test_removed_member_is_told_and_loses_the_room(core: Core) -> None:
    """A participant removed from a room gets unsubscribed(removed_from_room) on its subscribed
    connections and leaves the room."""
    bob, sink = await core.connect(2)
    await request(bob, {"type": "subscribe_room", "room_id": 1})
    sink.take()
    del core.store.members[1][2]
    core.chat.directory.apply(await core.store.load_rooms([1]))
    core.chat._rooms_changed([MembershipChange(1, 1, 2, "remove")])
    [frame] = sink.take()
    assert (frame["type"], frame["room_id"], frame["reason"]) == ("unsubscribed", 1, "removed_from_room")
    assert not core.chat.broker.is_subscribed(1, bob)


@pytest.mark.asyncio
async def test_frames_are_encoded_once_per_broadcast(core: Core) -> None:
    """Every subscriber of a room gets the same encoded bytes object."""
    seen: list[bytes] = []

    class Recording(ListSink):
        def send(self, frame: bytes) -> None:
            seen.append(frame)
            super().send(frame)

    sessions = []
    for user in (1, 2):
        token = mint_token(SIGNING_KEY, user, f"user{user}", ttl=60)
        session = Session(100 + user, verify_token(token, core.chat.keyring),
                          Recording(), core.chat)
        await session.open()
        await request(session, {"type": "subscribe_room", "room_id": 1})
        sessions.append(session)
    seen.clear()
    core.chat.broker.publish(1, protocol.typing_frame(1, 9, "x", True))
    assert len(seen) == 2
    assert seen[0] is seen[1]
