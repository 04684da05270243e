"""The records every layer shares: what the store returns and the chat service keeps.

Plain data, no behaviour and no I/O: the store builds them from rows, the room
directory keeps them in memory, and ``protocol.frames`` turns them into wire objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Message:
    """A stored chat message."""

    id: int
    room_id: int
    sender_id: int
    sender_username: str
    sender_first_name: str
    content: str
    created_ms: int
    reply_to: int | None
    client_msg_id: str | None
    message_type: str = "text"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store (the store gives it its id and time)."""

    room_id: int
    sender_id: int
    sender_username: str
    sender_first_name: str
    content: str
    reply_to: int | None
    client_msg_id: str | None


@dataclass(frozen=True, slots=True)
class Stored:
    message: Message
    created: bool
    """False when a repeated client_msg_id was answered with the original message."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    last_read_id: int
    unread_count: int
    moved: bool


@dataclass(slots=True)
class RoomRecord:
    """A room as the daemon keeps it in memory."""

    id: int
    name: str
    room_type: str
    created_ms: int
    markers: dict[int, int] = field(default_factory=dict)
    """participant user id → read marker (largest message id read)."""
    unread: dict[int, int] = field(default_factory=dict)
    """participant user id → unread count."""
    last_message: Message | None = None
    pruned_through: int = 0
    """The newest message id retention deleted from this room (0: none)."""


@dataclass(slots=True)
class Snapshot:
    """Rooms as the database holds them at one point of the write sequence."""

    rooms: dict[int, RoomRecord]
    users: dict[int, tuple[str, str]]
    """user id → (username, first_name), for the users named by ``rooms``."""
    membership_log_id: int = 0


@dataclass(frozen=True, slots=True)
class MembershipChange:
    log_id: int
    room_id: int
    user_id: int | None
    change: str
    """``room`` (created), ``add`` or ``remove``."""


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """A room as ``unichatd room list`` prints it."""

    id: int
    name: str
    room_type: str
    participants: list[tuple[int, str]]
    message_count: int
