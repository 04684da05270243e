"""The two seams the chat service is built on: where messages are kept, and how frames
reach connections.  The embedded implementations are ``store.SqliteStore`` and
``hub.Hub``; ``app.build_server`` chooses them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from .auth import Identity
from .errors import CloseCode
from .metrics import Histogram
from .models import (
    Change,
    FileRef,
    MembershipChange,
    Message,
    NewMessage,
    ReadResult,
    Refusal,
    Resynced,
    RoomChanged,
    Snapshot,
    Stored,
    StoredFile,
    UserInfo,
)
from .protocol.search import SearchTerm

if TYPE_CHECKING:
    from .store.writer import CommitGate


class MessageStore(Protocol):
    """What the chat service needs from storage.

    Writes return futures that resolve in commit order, after their commit: the chat
    service applies each write's effect to memory in that order, so memory moves through
    the same sequence of states as the database.
    """

    @property
    def batch_sizes(self) -> Histogram:
        """Operations per write transaction (for metrics)."""

    @property
    def write_latency(self) -> Histogram:
        """Seconds per write transaction (for metrics)."""

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Finish every write already submitted, then release the database."""

    def append_message(self, message: NewMessage) -> asyncio.Future[Stored]: ...

    def mark_read(
        self, room_id: int, user_id: int, message_ids: Sequence[int]
    ) -> asyncio.Future[ReadResult | None]: ...

    def edit_message(self, room_id: int, message_id: int, user_id: int, content: str,
                     mentions: tuple[int, ...]) -> asyncio.Future[Change | Refusal]:
        """Replace a message's content (its sender only)."""

    def delete_message(self, room_id: int, message_id: int, user_id: int) -> asyncio.Future[Change | Refusal]:
        """Leave a tombstone (the sender, or the room's owner)."""

    def react(self, room_id: int, message_id: int, user_id: int, emoji: str,
              add: bool) -> asyncio.Future[Change | Refusal]:
        """Add or remove the user's emoji on a message."""

    def upsert_user(self, user_id: int, username: str, first_name: str) -> asyncio.Future[None]: ...

    def prune(self, room_id: int, before_ms: int, limit: int) -> asyncio.Future[int]: ...

    def set_last_seen(self, seen: Sequence[tuple[int, int]]) -> asyncio.Future[None]:
        """(user id, ms) pairs: when each user's last connection closed."""

    def create_room(self, name: str, room_type: str, owner_id: int | None,
                    member_ids: Sequence[int]) -> asyncio.Future[RoomChanged]: ...

    def host_change_room(self, room_id: int, change: str, *, user_ids: Sequence[int] = (), name: str = "",
                         owner_id: int | None = None) -> asyncio.Future[RoomChanged | Refusal]:
        """A change with the host's authority (``unichatd room``, the server API): ``add``,
        ``remove``, ``rename`` or ``owner``; refused for a missing or (members) a direct room."""

    def revoke_user(self, user_id: int, before_ms: int) -> asyncio.Future[None]: ...

    def webhook_progress(self, cursors: Sequence[tuple[str, int]], prune_through: int,
                         prune_limit: int = 10_000) -> asyncio.Future[int]:
        """Move receivers' cursors, and delete (up to ``prune_limit`` of) the events every
        receiver has taken; resolves to how many were deleted."""

    def open_direct(self, user_id: int, other_id: int) -> asyncio.Future[RoomChanged]:
        """The pair's one direct room, created on first use (also when both ask at once)."""

    def change_room(self, room_id: int, user_id: int, change: str, *, user_ids: Sequence[int] = (),
                    name: str = "") -> asyncio.Future[RoomChanged | Refusal]:
        """``add``, ``remove``, ``rename`` (owners only) or ``leave``, checked in the transaction."""

    def store_file(self, uploader_id: int, name: str, size: int, content_type: str,
                   storage_key: str) -> asyncio.Future[FileRef]: ...

    def load_rooms(self, room_ids: Iterable[int] | None = None) -> asyncio.Future[Snapshot]: ...

    def set_commit_gate(self, gate: CommitGate) -> None:
        """Answer each committed batch through ``gate`` (several processes, one database)."""

    def resync(self, after: int) -> asyncio.Future[Resynced]:
        """Every room as of the last number given (message id or revision), and the messages
        created or changed after ``after``; answered without waiting for the commit gate."""

    def flush(self) -> asyncio.Future[None]:
        """Resolves once every write submitted before it has been answered."""

    async def history(
        self, room_id: int, *, before_id: int | None, after_id: int | None, limit: int
    ) -> tuple[list[Message], bool]: ...

    async def reply_target(self, message_id: int) -> tuple[int, int] | None:
        """(room, thread root) of the message a reply answers; None when there is none."""

    async def thread(self, room_id: int, message_id: int, *, after_id: int | None,
                     limit: int) -> tuple[Message, list[Message], bool] | None: ...

    async def changes(self, room_id: int, *, since_revision: int, through_id: int | None,
                      limit: int) -> tuple[list[Message], bool]: ...

    async def search(self, room_ids: Sequence[int], terms: Sequence[SearchTerm], *, other_rooms: Sequence[int],
                     before_id: int | None, limit: int) -> tuple[list[tuple[Message, str]], bool]:
        """Messages of these rooms matching every term, newest first, each with its snippet
        (``other_rooms``: every room not searched, which may be the shorter list to name)."""

    async def membership_changes(self, after_log_id: int) -> list[MembershipChange]: ...

    async def last_number(self) -> int:
        """The last number given as a message id or revision (committed)."""

    async def revocations(self) -> dict[int, int]:
        """user id → the ms before which their tokens are refused."""

    async def webhook_cursors(self) -> tuple[dict[str, int], int]:
        """Each receiver's cursor (by URL), and the newest event's seq."""

    async def webhook_events(self, after_seq: int, events: Sequence[str],
                             limit: int) -> tuple[list[tuple[int, str, bytes, int]], int]:
        """(seq, event, body, created_ms) of the events after ``after_seq`` of these kinds, in
        order, and the seq up to which there is no other event of these kinds."""

    async def find_users(self, query: str, limit: int) -> list[UserInfo]:
        """Users whose username or first name starts with ``query``, any case."""

    async def users_by_id(self, user_ids: Sequence[int]) -> list[UserInfo]: ...

    async def stored_file(self, file_id: int) -> StoredFile | None: ...

    async def files_of(self, uploader_id: int, file_ids: Sequence[int]) -> list[FileRef]:
        """Those of ``file_ids`` that ``uploader_id`` stored, in the order given."""

    async def uploads_since(self, uploader_id: int, since_ms: int) -> list[tuple[int, int]]:
        """(created_ms, size) of the user's files since ``since_ms``, oldest first."""


class Bus(Protocol):
    """Events between the processes of one chat space (``bus.RedisBus``): every process
    hears every event published by the others, in the order each published them."""

    @property
    def connected(self) -> bool: ...

    async def start(self, receive: Callable[[bytes], None]) -> None:
        """Start hearing events (``receive`` runs on the loop, and must not block)."""

    def publish(self, event: bytes) -> None:
        """Queue an event for the other processes; never waits (lost while unreachable)."""

    async def ping(self) -> bool: ...

    async def stop(self) -> None: ...


class Subscriber(Protocol):
    """What a broker needs of a connection."""

    @property
    def user_id(self) -> int: ...

    def deliver(self, room_id: int | None, frame: bytes, message_id: int | None) -> None:
        """Queue ``frame`` for the peer without waiting; ``message_id`` for new messages,
        ``room_id`` None for a frame addressed to the user rather than a room."""


class Connection(Subscriber, Protocol):
    """What the chat service needs of a connection (a ``session.Session``)."""

    conn_id: int
    identity: Identity

    def send(self, frame: bytes) -> None:
        """Queue a frame for the peer now."""

    def apply_limits(self) -> None:
        """Adopt the current config's per-connection limits."""

    def close(self, code: CloseCode, reason: str) -> None:
        """Close the connection (after the replies it is owed)."""


class Listener(Protocol):
    """A notification-only connection (api.md, ``/ws/notifications/<user_id>/``)."""

    @property
    def user_id(self) -> int: ...

    def send(self, frame: bytes) -> None: ...

    def close(self, code: CloseCode, reason: str) -> None: ...


S = TypeVar("S", bound=Subscriber)


class Broker(Protocol[S]):
    """Fan-out: which connections listen to which room, and who is connected as whom.

    A published frame is already encoded; the broker hands the same ``bytes`` object to
    every recipient and never awaits one of them, so a slow peer cannot hold up the others.
    The queries about connections answer for this process's connections.
    """

    def connect(self, subscriber: S) -> None: ...

    def disconnect(self, subscriber: S) -> None:
        """Forget the connection: it leaves every room."""

    def subscribe(self, room_id: int, subscriber: S) -> bool:
        """Add the connection to the room; False when it was already there."""

    def unsubscribe(self, room_id: int, subscriber: S) -> bool:
        """Remove the connection from the room; False when it was not there."""

    def publish(
        self, room_id: int, frame: bytes, *, message_id: int | None = None, exclude_user: int | None = None
    ) -> int:
        """Hand ``frame`` to the room's subscribers; returns how many got it."""

    def publish_to_user(self, user_id: int, frame: bytes, *, leaving_room: int | None = None,
                        exclude: Collection[S] = ()) -> int:
        """Hand ``frame`` to the user's connections (but ``exclude``); with ``leaving_room``,
        each of them leaves that room first.  Returns how many got it."""

    def is_subscribed(self, room_id: int, subscriber: S) -> bool: ...

    def rooms_of(self, subscriber: S) -> frozenset[int]: ...

    def subscribers(self, room_id: int) -> tuple[S, ...]: ...

    def connections_of(self, user_id: int) -> Collection[S]: ...

    def sessions(self) -> tuple[S, ...]: ...

    def is_online(self, user_id: int) -> bool: ...

    @property
    def connection_count(self) -> int: ...

    @property
    def subscription_count(self) -> int: ...

    @property
    def active_rooms(self) -> int: ...
