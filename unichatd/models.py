"""The records every layer shares: what the store returns and the chat service keeps.

Plain data, no behaviour and no I/O: the store builds them from rows, the room
directory keeps them in memory, and ``protocol.frames`` turns them into wire objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class Message(NamedTuple):
    """A stored chat message.

    A named tuple, not a frozen dataclass: as immutable, and built six times faster, which
    counts for every send and for every message of a history page.
    """

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
    revision: int = 0
    """Grows within the room, in commit order, with every change to any of its messages."""
    edited_ms: int | None = None
    deleted: bool = False
    thread_root_id: int | None = None
    reply_count: int = 0
    last_reply_ms: int | None = None
    mentions: tuple[int, ...] = ()
    reactions: tuple[Reaction, ...] = ()
    attachments: tuple[FileRef, ...] = ()


@dataclass(frozen=True, slots=True)
class FileRef:
    """A stored file as messages and downloads name it."""

    id: int
    name: str
    size: int
    content_type: str


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file and who may download it: its uploader, and the participants of the rooms
    where a message (not deleted) shows it."""

    file: FileRef
    uploader_id: int
    storage_key: str
    """Its name inside ``storage.files_dir``."""
    room_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reaction:
    """One emoji on a message: who put it there, in the order they did."""

    emoji: str
    user_ids: tuple[int, ...]


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
    thread_root_id: int | None = None
    mentions: tuple[int, ...] = ()
    attachments: tuple[FileRef, ...] = ()
    message_type: str = "text"
    """``system`` for messages the host application posts without a sender (api.md)."""


@dataclass(frozen=True, slots=True)
class ThreadState:
    """A thread root's reply counters, as a new reply left them."""

    root_id: int
    reply_count: int
    last_reply_ms: int
    revision: int


@dataclass(frozen=True, slots=True)
class Stored:
    message: Message
    created: bool
    """False when a repeated client_msg_id was answered with the original message."""
    thread: ThreadState | None = None
    """The root's counters, when the new message is a reply."""


class Refusal(enum.Enum):
    """Why a change to a message was not made (the chat service names the error)."""

    NOT_FOUND = "not_found"
    """No such message in the room, or (for an edit or a reaction) a deleted one."""
    FORBIDDEN = "forbidden"
    """Someone else's message."""
    TOO_MANY_REACTIONS = "too_many_reactions"
    NOT_OWNER = "not_owner"
    """A change to a room that only its owner may make."""
    DIRECT_ROOM = "direct_room"
    """A change of members of a direct room, which nobody may make."""


@dataclass(frozen=True, slots=True)
class Change:
    """A message as an edit, delete or reaction left it, and what the room must know."""

    message: Message
    before: Message
    changed: bool
    """False when nothing was written (a repeated delete or reaction)."""
    latest: Message | None = None
    """After a delete of the room's preview message: the latest message not deleted."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    last_read_id: int
    unread_count: int
    moved: bool
    mention_count: int = 0


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
    mentions: dict[int, int] = field(default_factory=dict)
    """participant user id → unread messages that mention them."""
    last_message: Message | None = None
    """The latest message not deleted (the room list's preview)."""
    pruned_through: int = 0
    """The newest message id retention deleted from this room (0: none)."""
    owner_id: int | None = None
    """Who created the room from a client (protocol.md §6.2): may delete anyone's messages,
    rename the room and change its members; None: nobody."""
    direct_pair: tuple[int, int] | None = None
    """The two users of a direct room (smaller id first); None for other rooms."""


@dataclass(slots=True)
class Snapshot:
    """Rooms as the database holds them at one point of the write sequence."""

    rooms: dict[int, RoomRecord]
    users: dict[int, tuple[str, str]]
    """user id → (username, first_name), for the users named by ``rooms``."""
    membership_log_id: int = 0
    last_seen: dict[int, int] = field(default_factory=dict)
    """user id → when their last connection closed (ms), for every user seen (whole loads only)."""


@dataclass(frozen=True, slots=True)
class Resynced:
    """All rooms as of ``number`` (the last message id or revision given), and the messages
    created or changed after the number asked for, in the order of their revisions."""

    number: int
    snapshot: Snapshot
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class RoomChanged:
    """A room change committed: the room, and the membership log entry that announces it."""

    room_id: int
    log_id: int


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as ``get_users`` and ``get_presence`` list them (names from the database)."""

    id: int
    username: str
    first_name: str


@dataclass(frozen=True, slots=True)
class MembershipChange:
    log_id: int
    room_id: int
    user_id: int | None
    change: str
    """``room`` (created), ``add``, ``remove``, ``leave`` or ``rename``."""


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """A room as ``unichatd room list`` prints it."""

    id: int
    name: str
    room_type: str
    participants: list[tuple[int, str]]
    message_count: int
