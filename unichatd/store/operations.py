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

from ..models import Message, NewMessage, ReadResult, Snapshot, Stored
from .queries import MESSAGE_COLUMNS, load_rooms, message_from_row, unread_count
from .schema import now_ms

T_co = TypeVar("T_co", covariant=True)


@dataclass(slots=True)
class MessageIds:
    """The next message id to give; the writer keeps it only when the batch commits."""

    next: int


class Operation(Protocol[T_co]):
    batched: ClassVar[bool]
    """True when consecutive operations of this type run together (see ``run_many``)."""
    kind: ClassVar[str]
    """What the log calls it."""

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> T_co: ...


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """Store a message; resolves to it (or to the original, for a repeated client_msg_id)."""

    message: NewMessage
    batched: ClassVar[bool] = True
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
        for item in pending:
            key = (item.sender_id, item.room_id, item.client_msg_id) if item.client_msg_id else None
            if key is not None and key in existing:
                results.append(Stored(existing[key], created=False))
                continue
            message = Message(ids.next, item.room_id, item.sender_id, item.sender_username,
                              item.sender_first_name, item.content, now, item.reply_to, item.client_msg_id)
            ids.next += 1
            if key is not None:
                existing[key] = message
            results.append(Stored(message, created=True))
            rows.append((message.id, message.room_id, message.sender_id, message.content, now,
                         message.reply_to, message.client_msg_id))
        conn.executemany(
            "INSERT INTO messages(id, room_id, sender_id, content, created_ms, reply_to, "
            "client_msg_id) VALUES (?,?,?,?,?,?,?)",
            rows,
        )
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


@dataclass(frozen=True, slots=True)
class MarkRead:
    """Move the user's read marker; resolves to None when they are not a participant."""

    room_id: int
    user_id: int
    message_ids: tuple[int, ...]
    batched: ClassVar[bool] = False
    kind: ClassVar[str] = "read"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> ReadResult | None:
        room_id, user_id = self.room_id, self.user_id
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
        return ReadResult(new_marker, unread_count(conn, room_id, user_id, new_marker), new_marker != old_marker)


@dataclass(frozen=True, slots=True)
class UpsertUser:
    """Remember a user's names as their token gives them (history shows these)."""

    user_id: int
    names: tuple[str, str]
    """(username, first_name)"""
    batched: ClassVar[bool] = False
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
class LoadRooms:
    """Rooms, participants, markers, unread counts and last messages (all rooms if None).

    Runs in the writer's sequence, so the counts agree exactly with the messages whose
    commits resolved before it.
    """

    room_ids: tuple[int, ...] | None
    batched: ClassVar[bool] = False
    kind: ClassVar[str] = "load"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> Snapshot:
        return load_rooms(conn, self.room_ids)


@dataclass(frozen=True, slots=True)
class Prune:
    """Delete up to ``limit`` of the room's oldest messages created before ``before_ms``."""

    room_id: int
    before_ms: int
    limit: int
    batched: ClassVar[bool] = False
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
        return len(deleted)


@dataclass(frozen=True, slots=True)
class Barrier:
    """Writes nothing: resolves once every write submitted before it has committed."""

    batched: ClassVar[bool] = False
    kind: ClassVar[str] = "barrier"

    def run(self, conn: sqlite3.Connection, ids: MessageIds) -> None:
        return None
