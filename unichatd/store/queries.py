"""The SQL that reads: message rows, room snapshots, history pages, membership changes.

Plain functions over a ``sqlite3.Connection``; the daemon runs them on its reader's or
writer's thread (see ``threads``), the CLI on its own connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ..models import MembershipChange, Message, RoomRecord, Snapshot

MESSAGE_COLUMNS = (
    "m.id, m.room_id, m.sender_id, u.username, u.first_name, m.content, m.created_ms, "
    "m.reply_to, m.client_msg_id, m.message_type"
)
MESSAGES_WITH_SENDER = f"SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id "


def message_from_row(row: Sequence[Any]) -> Message:
    return Message(*row)


def unread_count(conn: sqlite3.Connection, room_id: int, user_id: int, marker: int) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM messages WHERE room_id = ? AND id > ? AND sender_id != ?",
        (room_id, marker, user_id),
    ).fetchone()
    return int(row[0])


def load_rooms(conn: sqlite3.Connection, room_ids: tuple[int, ...] | None) -> Snapshot:
    params: tuple[int, ...] = ()
    if room_ids is None:
        where = ""
    else:
        where = f"WHERE id IN ({','.join('?' * len(room_ids))})"
        params = room_ids
    rooms: dict[int, RoomRecord] = {}
    for room_id, name, room_type, created_ms, pruned_through in conn.execute(
        f"SELECT id, name, room_type, created_ms, pruned_through FROM rooms {where}", params
    ):
        rooms[room_id] = RoomRecord(room_id, name, room_type, created_ms, pruned_through=pruned_through)
    user_ids: set[int] = set()
    for room_id, user_id, marker in conn.execute(
        f"SELECT room_id, user_id, last_read_id FROM participants "
        f"{where.replace('id IN', 'room_id IN')}",
        params,
    ):
        room = rooms.get(room_id)
        if room is None:
            continue
        room.markers[user_id] = marker
        room.unread[user_id] = unread_count(conn, room_id, user_id, marker)
        user_ids.add(user_id)
    for room in rooms.values():
        row = conn.execute(
            MESSAGES_WITH_SENDER + "WHERE m.room_id = ? ORDER BY m.id DESC LIMIT 1",
            (room.id,),
        ).fetchone()
        room.last_message = message_from_row(row) if row else None
    users: dict[int, tuple[str, str]] = {}
    if user_ids:
        ids = sorted(user_ids)
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            for user_id, username, first_name in conn.execute(
                f"SELECT id, username, first_name FROM users WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                users[user_id] = (username, first_name)
    log_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM membership_log").fetchone()[0]
    return Snapshot(rooms, users, log_id)


def history(
    conn: sqlite3.Connection, room_id: int, before_id: int | None, after_id: int | None, limit: int
) -> tuple[list[Message], bool]:
    """A page of messages, oldest first, and whether more lie beyond it."""
    base = MESSAGES_WITH_SENDER + "WHERE m.room_id = ? "
    if after_id is not None:
        sql = base + "AND m.id > ? ORDER BY m.id ASC LIMIT ?"
        params: tuple[int, ...] = (room_id, after_id, limit + 1)
    elif before_id is not None:
        sql = base + "AND m.id < ? ORDER BY m.id DESC LIMIT ?"
        params = (room_id, before_id, limit + 1)
    else:
        sql = base + "ORDER BY m.id DESC LIMIT ?"
        params = (room_id, limit + 1)
    rows = conn.execute(sql, params).fetchall()
    has_more = len(rows) > limit
    messages = [message_from_row(row) for row in rows[:limit]]
    if after_id is None:
        messages.reverse()
    return messages, has_more


def message_room(conn: sqlite3.Connection, message_id: int) -> int | None:
    """The room a message belongs to, or None when there is no such message."""
    row = conn.execute("SELECT room_id FROM messages WHERE id = ?", (message_id,)).fetchone()
    return int(row[0]) if row else None


def membership_changes(conn: sqlite3.Connection, after_log_id: int) -> list[MembershipChange]:
    rows = conn.execute(
        "SELECT id, room_id, user_id, change FROM membership_log WHERE id > ? ORDER BY id",
        (after_log_id,),
    ).fetchall()
    return [MembershipChange(*row) for row in rows]


def last_message_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])
