"""The writes, one typed operation each, as the group-commit writer runs them.

An operation is a frozen value with ``run(conn, ids)``; it runs inside the writer's one
transaction for its batch, on the writer's thread.  ``AppendMessage`` runs a whole run
of consecutive sends at once (one ``executemany``) through ``run_many``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import orjson

from ..models import (
    Change,
    FileRef,
    Message,
    NewMessage,
    ReadResult,
    Refusal,
    Resynced,
    RoomChanged,
    Snapshot,
    Stored,
    ThreadState,
)
from ..protocol.requests import MAX_REACTIONS
from . import membership, queries
from .queries import (
    MESSAGE_COLUMNS,
    format_attachments,
    format_mentions,
    load_rooms,
    mention_count,
    message_from_row,
    unread_count,
)
from .schema import now_ms

T_co = TypeVar("T_co", covariant=True)


@dataclass(slots=True)
class MessageIds:
    """The next number to give; the writer keeps it only when the batch commits.

    Message ids and revisions are drawn from this one counter: a new message's revision
    is its id, and a change to a message takes the next number as its revision (so ids
    skip the numbers changes took).  That is what lets the catch-up of changes find the
    messages created after a revision by id (``queries.changes``).
    """

    next: int
    positions: bool = False
    """True where several processes share the database: writes that change memory without
    a number of their own (read markers, reloads, retention) take one, so every process
    applies them in commit order (see ``cluster``)."""

    def take(self) -> int:
        number = self.next
        self.next += 1
        return number

    def position(self) -> None:
        """A number for this write's place in commit order, when places are kept."""
        if self.positions:
            self.next += 1


class Operation(Protocol[T_co]):
    batched: ClassVar[bool]
    """True when consecutive operations of this type run together (see ``run_many``)."""
    background: ClassVar[bool]
    """True for the writer's own upkeep (indexing), which no client waits for."""
    kind: ClassVar[str]
    """What the log calls it."""

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> T_co: ...


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """Store a message; resolves to it (or to the original, for a repeated client_msg_id)."""

    message: NewMessage
    batched: ClassVar[bool] = True
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "message"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> Stored:
        return self.run_many(conn, ids, [self])[0]

    @staticmethod
    def run_many(conn: sqlite3.Connection, ids: MessageIds, ops: Sequence[Any]) -> list[Stored]:
        """Insert a run of messages, answering repeated client_msg_ids with the original."""
        pending: list[NewMessage] = [op.message for op in ops]
        existing = _existing_by_client_msg_id(conn, pending)
        now = now_ms()
        results: list[Stored] = []
        rows: list[tuple[Any, ...]] = []
        mentions: list[tuple[int, int, int]] = []
        replies: list[int] = []
        posts: list[tuple[int, int, int]] = []
        for item in pending:
            key = (item.sender_id, item.room_id, item.client_msg_id) if item.client_msg_id else None
            if key is not None and key in existing:
                results.append(Stored(existing[key], created=False))
                continue
            message_id = ids.take()
            message = Message(message_id, item.room_id, item.sender_id, item.sender_username,
                              item.sender_first_name, item.content, now, item.reply_to, item.client_msg_id,
                              item.message_type, message_id, None, False, item.thread_root_id, 0, None, item.mentions,
                              (), item.attachments)
            if key is not None:
                existing[key] = message
            results.append(Stored(message, created=True))
            if item.attachments:
                posts.extend((file.id, message_id, item.room_id) for file in item.attachments)
            rows.append((message.id, message.room_id, message.sender_id, message.content, now,
                         message.reply_to, message.client_msg_id, message.revision, message.thread_root_id,
                         format_mentions(message.mentions), format_attachments(message.attachments),
                         message.message_type))
            if message.mentions:
                mentions.extend(_mention_rows(message.room_id, message.id, message.sender_id, message.mentions))
            if message.thread_root_id is not None:
                replies.append(len(results) - 1)
        conn.executemany(
            "INSERT INTO messages(id, room_id, sender_id, content, created_ms, reply_to, "
            "client_msg_id, revision, thread_root_id, mentions, attachments, message_type) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        if posts:
            conn.executemany("INSERT OR IGNORE INTO file_posts(file_id, message_id, room_id) VALUES (?,?,?)", posts)
        if mentions:
            conn.executemany("INSERT INTO mentions(room_id, user_id, message_id) VALUES (?,?,?)", mentions)
        for index in replies:
            reply = results[index].message
            root_id = reply.thread_root_id
            revision = ids.take()
            row = conn.execute(
                "UPDATE messages SET reply_count = reply_count + 1, last_reply_ms = ?, revision = ?, changed = 1 "
                "WHERE id = ? RETURNING reply_count",
                (now, revision, root_id),
            ).fetchone()
            if row is not None and root_id is not None:  # (retention may have taken the root)
                results[index] = Stored(reply, True, ThreadState(root_id, int(row[0]), now, revision))
        return results


def _existing_by_client_msg_id(
    conn: sqlite3.Connection, pending: Sequence[NewMessage]
) -> dict[tuple[int, int, str], Message]:
    keyed = [(m.sender_id, m.room_id, m.client_msg_id) for m in pending if m.client_msg_id]
    existing: dict[tuple[int, int, str], Message] = {}
    if not keyed:
        return existing
    values = ",".join("(?,?,?)" for _ in keyed)
    rows = conn.execute(
        f"WITH k(s, r, c) AS (VALUES {values}) SELECT {MESSAGE_COLUMNS} "
        "FROM k JOIN messages m ON m.sender_id = k.s AND m.room_id = k.r "
        "AND m.client_msg_id = k.c JOIN users u ON u.id = m.sender_id",
        [item for key in keyed for item in key],
    ).fetchall()
    for row in rows:
        message = message_from_row(row)
        assert message.client_msg_id is not None
        existing[(message.sender_id, message.room_id, message.client_msg_id)] = message
    return existing


def _mention_rows(room_id: int, message_id: int, sender_id: int,
                  user_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """The rows that count as mentions: mentioning oneself counts for nothing."""
    return [(room_id, user_id, message_id) for user_id in user_ids if user_id != sender_id]


@dataclass(frozen=True, slots=True)
class MarkRead:
    """Move the user's read marker; resolves to None when they are not a participant."""

    room_id: int
    user_id: int
    message_ids: tuple[int, ...]
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "read"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> ReadResult | None:
        room_id, user_id = self.room_id, self.user_id
        ids.position()
        row = conn.execute(
            "SELECT last_read_id FROM participants WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        ).fetchone()
        if row is None:
            return None  # no longer a participant; failing here would roll back the whole batch
        old_marker = int(row[0])
        if self.message_ids:
            marks = ",".join("?" * len(self.message_ids))
            target = conn.execute(
                f"SELECT MAX(id) FROM messages WHERE room_id = ? AND id IN ({marks})",
                (room_id, *self.message_ids),
            ).fetchone()[0]
        else:
            target = conn.execute("SELECT MAX(id) FROM messages WHERE room_id = ?", (room_id,)).fetchone()[0]
        new_marker = max(old_marker, int(target or 0))
        if new_marker != old_marker:
            conn.execute(
                "UPDATE participants SET last_read_id = ? WHERE room_id = ? AND user_id = ?",
                (new_marker, room_id, user_id),
            )
        return ReadResult(new_marker, unread_count(conn, room_id, user_id, new_marker), new_marker != old_marker,
                          mention_count(conn, room_id, user_id, new_marker))


def _message_in_room(conn: sqlite3.Connection, room_id: int, message_id: int) -> Message | None:
    found = queries.message(conn, message_id)
    return found if found is not None and found.room_id == room_id else None


def _reread(conn: sqlite3.Connection, message_id: int) -> Message:
    found = queries.message(conn, message_id)
    assert found is not None
    return found


@dataclass(frozen=True, slots=True)
class EditMessage:
    """Replace a message's content (its sender only); resolves to a Change or a Refusal."""

    room_id: int
    message_id: int
    user_id: int
    content: str
    mentions: tuple[int, ...]
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "edit"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> Change | Refusal:
        before = _message_in_room(conn, self.room_id, self.message_id)
        if before is None or before.deleted:
            return Refusal.NOT_FOUND
        if before.sender_id != self.user_id:
            return Refusal.FORBIDDEN
        conn.execute(
            "UPDATE messages SET content = ?, edited_ms = ?, revision = ?, changed = 1, mentions = ? WHERE id = ?",
            (self.content, now_ms(), ids.take(), format_mentions(self.mentions), self.message_id),
        )
        if before.mentions != self.mentions:
            conn.execute("DELETE FROM mentions WHERE message_id = ?", (self.message_id,))
            conn.executemany("INSERT INTO mentions(room_id, user_id, message_id) VALUES (?,?,?)",
                             _mention_rows(self.room_id, self.message_id, self.user_id, self.mentions))
        return Change(_reread(conn, self.message_id), before, changed=True)


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    """Leave a tombstone (the sender or the room's owner); resolves to a Change or a Refusal."""

    room_id: int
    message_id: int
    user_id: int
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "delete"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> Change | Refusal:
        before = _message_in_room(conn, self.room_id, self.message_id)
        if before is None:
            return Refusal.NOT_FOUND
        if before.sender_id != self.user_id:
            owner = conn.execute("SELECT owner_id FROM rooms WHERE id = ?", (self.room_id,)).fetchone()
            if owner is None or owner[0] != self.user_id:
                return Refusal.FORBIDDEN
        if before.deleted:
            return Change(before, before, changed=False)
        conn.execute(
            "UPDATE messages SET content = '', deleted = 1, revision = ?, changed = 1, mentions = NULL, "
            "reactions = NULL, attachments = NULL WHERE id = ?",
            (ids.take(), self.message_id),
        )
        conn.execute("DELETE FROM file_posts WHERE message_id = ?", (self.message_id,))
        conn.execute("DELETE FROM reactions WHERE message_id = ?", (self.message_id,))
        conn.execute("DELETE FROM mentions WHERE message_id = ?", (self.message_id,))
        return Change(_reread(conn, self.message_id), before, changed=True,
                      latest=queries.latest_message(conn, self.room_id))


@dataclass(frozen=True, slots=True)
class React:
    """Add or remove the user's emoji on a message; resolves to a Change or a Refusal."""

    room_id: int
    message_id: int
    user_id: int
    emoji: str
    add: bool
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "reaction"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> Change | Refusal:
        before = _message_in_room(conn, self.room_id, self.message_id)
        if before is None or before.deleted:
            return Refusal.NOT_FOUND
        if self.add:
            emoji_in_use = {reaction.emoji for reaction in before.reactions}
            if self.emoji not in emoji_in_use and len(emoji_in_use) >= MAX_REACTIONS:
                return Refusal.TOO_MANY_REACTIONS
            cursor = conn.execute("INSERT OR IGNORE INTO reactions(message_id, emoji, user_id) VALUES (?,?,?)",
                                  (self.message_id, self.emoji, self.user_id))
        else:
            cursor = conn.execute("DELETE FROM reactions WHERE message_id = ? AND emoji = ? AND user_id = ?",
                                  (self.message_id, self.emoji, self.user_id))
        if not cursor.rowcount:
            return Change(before, before, changed=False)
        # Emoji keep the order of their first use: those already there stay in place (even
        # when the user who put one there first takes theirs back), a new one goes last.
        grouped: dict[str, list[int]] = {reaction.emoji: [] for reaction in before.reactions}
        for emoji, user_id in conn.execute(
            "SELECT emoji, user_id FROM reactions WHERE message_id = ? ORDER BY rowid", (self.message_id,)
        ):
            grouped.setdefault(emoji, []).append(user_id)
        listed = [(emoji, user_ids) for emoji, user_ids in grouped.items() if user_ids]
        conn.execute("UPDATE messages SET reactions = ?, revision = ?, changed = 1 WHERE id = ?",
                     (orjson.dumps(listed).decode() if listed else None, ids.take(), self.message_id))
        return Change(_reread(conn, self.message_id), before, changed=True)


@dataclass(frozen=True, slots=True)
class UpsertUser:
    """Remember a user's names as their token gives them (history shows these)."""

    user_id: int
    names: tuple[str, str]
    """(username, first_name)"""
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "user"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> None:
        conn.execute(
            "INSERT INTO users(id, username, first_name, updated_ms) VALUES (?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET username=excluded.username, "
            "first_name=excluded.first_name, updated_ms=excluded.updated_ms "
            "WHERE username != excluded.username OR first_name != excluded.first_name",
            (self.user_id, *self.names, now_ms()),
        )


@dataclass(frozen=True, slots=True)
class SetLastSeen:
    """When users' last connections closed (presence's ``last_seen``)."""

    seen: tuple[tuple[int, int], ...]
    """(user id, ms)"""
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "last_seen"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> None:
        conn.executemany("UPDATE users SET last_seen_ms = ? WHERE id = ?", [(ms, user) for user, ms in self.seen])


@dataclass(frozen=True, slots=True)
class CreateRoom:
    """A room created from a client: its creator owns it and is its first member."""

    name: str
    room_type: str
    owner_id: int | None
    """None: a room without an owner (the host application's, api.md)."""
    member_ids: tuple[int, ...]
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "room"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> RoomChanged:
        members = self.member_ids if self.owner_id is None else (self.owner_id, *self.member_ids)
        return membership.create_room(conn, self.name, self.room_type, members, owner_id=self.owner_id)


@dataclass(frozen=True, slots=True)
class OpenDirect:
    """The pair's one direct room (created on first use)."""

    user_id: int
    other_id: int
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "direct"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> RoomChanged:
        return membership.direct_room(conn, self.user_id, self.other_id)


@dataclass(frozen=True, slots=True)
class ChangeRoom:
    """A participant's change to a room: ``add``/``remove`` members or ``rename`` (its
    owner only), or ``leave`` (anyone, themself)."""

    room_id: int
    user_id: int
    change: str
    user_ids: tuple[int, ...] = ()
    name: str = ""
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "room_change"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> RoomChanged | Refusal:
        room_id = self.room_id
        if self.change == "leave":
            log_id = membership.remove_members(conn, room_id, (self.user_id,), "leave")
            return RoomChanged(room_id, log_id) if log_id else Refusal.NOT_FOUND
        refusal = membership.owner_refusal(conn, room_id, self.user_id, members=self.change != "rename")
        if refusal is not None:
            return refusal
        if self.change == "rename":
            log_id = membership.rename_room(conn, room_id, self.name)
        elif self.change == "add":
            log_id = membership.add_members(conn, room_id, self.user_ids)
        else:
            log_id = membership.remove_members(conn, room_id, self.user_ids)
        return RoomChanged(room_id, log_id or membership.last_log_id(conn))


@dataclass(frozen=True, slots=True)
class HostChangeRoom:
    """The host application's change to a room (api.md): as ``unichatd room`` makes it,
    with no owner to ask.  ``add``/``remove`` members, ``rename``, or ``owner``."""

    room_id: int
    change: str
    user_ids: tuple[int, ...] = ()
    name: str = ""
    owner_id: int | None = None
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "room_change"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> RoomChanged | Refusal:
        return membership.host_change(conn, self.room_id, self.change, user_ids=self.user_ids, name=self.name,
                                      owner_id=self.owner_id)


@dataclass(frozen=True, slots=True)
class RevokeUser:
    """Refuse the user's tokens issued before ``before_ms`` (api.md, revoke)."""

    user_id: int
    before_ms: int
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "revoke"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> None:
        membership.ensure_users(conn, (self.user_id,))
        conn.execute("UPDATE users SET revoked_before_ms = MAX(COALESCE(revoked_before_ms, 0), ?) WHERE id = ?",
                     (self.before_ms, self.user_id))


@dataclass(frozen=True, slots=True)
class WebhookProgress:
    """Receivers' cursors moved (url, through), and the events every receiver has taken
    (at or below ``prune_through``) deleted."""

    cursors: tuple[tuple[str, int], ...]
    prune_through: int
    prune_limit: int
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = True
    kind: ClassVar[str] = "webhooks"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> int:
        """Returns how many events were deleted (``prune_limit`` at most)."""
        conn.executemany("INSERT INTO webhook_cursors(url, through) VALUES (?, ?) "
                         "ON CONFLICT(url) DO UPDATE SET through = MAX(through, excluded.through)", self.cursors)
        if not self.prune_through:
            return 0
        return conn.execute(
            "DELETE FROM webhook_events WHERE seq IN "
            "(SELECT seq FROM webhook_events WHERE seq <= ? ORDER BY seq LIMIT ?)",
            (self.prune_through, self.prune_limit)).rowcount


@dataclass(frozen=True, slots=True)
class StoreFile:
    """A complete upload, already on disk under ``storage_key``."""

    uploader_id: int
    name: str
    size: int
    content_type: str
    storage_key: str
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "file"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> FileRef:
        file_id = conn.execute(
            "INSERT INTO files(uploader_id, name, size, content_type, storage_key, created_ms) VALUES (?,?,?,?,?,?)",
            (self.uploader_id, self.name, self.size, self.content_type, self.storage_key, now_ms()),
        ).lastrowid
        assert file_id is not None
        return FileRef(file_id, self.name, self.size, self.content_type)


@dataclass(frozen=True, slots=True)
class LoadRooms:
    """Rooms, participants, markers, unread counts and last messages (all rooms if None).

    Runs in the writer's sequence, so the counts agree exactly with the messages whose
    commits resolved before it.
    """

    room_ids: tuple[int, ...] | None
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "load"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> Snapshot:
        ids.position()
        return load_rooms(conn, self.room_ids)


@dataclass(frozen=True, slots=True)
class Prune:
    """Delete up to ``limit`` of the room's oldest messages created before ``before_ms``."""

    room_id: int
    before_ms: int
    limit: int
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "prune"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> int:
        deleted = [row[0] for row in conn.execute(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE room_id = ? AND created_ms < ? "
            "ORDER BY id LIMIT ?) RETURNING id",
            (self.room_id, self.before_ms, self.limit),
        )]
        if deleted:
            conn.execute("UPDATE rooms SET pruned_through = MAX(pruned_through, ?) WHERE id = ?",
                         (max(deleted), self.room_id))
            ids.position()
        return len(deleted)


def index_messages(conn: sqlite3.Connection, limit: int) -> int:
    """Add up to ``limit`` messages not indexed yet to the search index; returns how many."""
    through = int(conn.execute("SELECT through FROM search_index").fetchone()[0])
    upto, count = conn.execute(
        "SELECT MAX(id), COUNT(*) FROM (SELECT id FROM messages WHERE id > ? ORDER BY id LIMIT ?)", (through, limit)
    ).fetchone()
    if not count:
        return 0
    # Tombstones too (their text is empty): the triggers take out of the index whatever
    # id is at or below `through`, so everything up to it must be in.
    conn.execute(
        "INSERT INTO messages_fts(rowid, content, room_id) SELECT id, content, room_id FROM messages "
        "WHERE id > ? AND id <= ?",
        (through, upto),
    )
    conn.execute("UPDATE search_index SET through = ?", (upto,))
    return int(count)


@dataclass(frozen=True, slots=True)
class IndexMessages:
    """Index messages committed since the last run (the search index lags the acks).

    Indexing in batches of hundreds costs a fraction of indexing each group commit's few
    messages (docs/performance.md), and keeps the work out of the commits that acks wait for.
    """

    limit: int
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = True
    kind: ClassVar[str] = "index"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> int:
        return index_messages(conn, self.limit)


@dataclass(frozen=True, slots=True)
class Resync:
    """Every room as of the last number given, and the messages created or changed after
    ``after``: how a process of several that missed some batches catches up (``cluster``).
    Answered as soon as it commits, whatever the batches before it (see ``writer``)."""

    after: int
    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "resync"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> Resynced:
        messages = [message_from_row(row) for row in conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id "
            "WHERE m.id > ?1 OR (m.changed = 1 AND m.revision > ?1) ORDER BY m.revision", (self.after,))]
        return Resynced(ids.next - 1, load_rooms(conn, None), messages)


@dataclass(frozen=True, slots=True)
class Barrier:
    """Writes nothing: resolves once every write submitted before it has committed."""

    batched: ClassVar[bool] = False
    background: ClassVar[bool] = False
    kind: ClassVar[str] = "barrier"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> None:
        return None
