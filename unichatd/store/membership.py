"""Rooms and their members, as every path changes them: the CLI's ``room`` commands and
the daemon's requests from clients run these same functions, inside a transaction of
their own.

Each change is logged in ``membership_log`` in the same transaction; the daemon applies
the log in order (``maintenance.MembershipFeed``), so a change reaches the affected
connections the same way whoever made it; and its webhook event goes into the outbox in
that transaction too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ..models import Refusal, RoomChanged
from . import outbox
from .schema import now_ms


def _log(conn: sqlite3.Connection, room_id: int, user_id: int | None, change: str) -> int:
    log_id = conn.execute(
        "INSERT INTO membership_log(room_id, user_id, change) VALUES (?, ?, ?)", (room_id, user_id, change)
    ).lastrowid
    assert log_id is not None
    return log_id


def last_log_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM membership_log").fetchone()[0])


def ensure_users(conn: sqlite3.Connection, user_ids: Iterable[int]) -> None:
    """A member who never connected gets a placeholder name until their first token."""
    now = now_ms()
    conn.executemany(
        "INSERT OR IGNORE INTO users(id, username, first_name, updated_ms) VALUES (?, ?, '', ?)",
        [(user_id, f"user{user_id}", now) for user_id in user_ids],
    )


def create_room(conn: sqlite3.Connection, name: str, room_type: str, members: Sequence[int], *,
                owner_id: int | None = None, direct_key: str | None = None) -> RoomChanged:
    room_id = conn.execute(
        "INSERT INTO rooms(name, room_type, created_ms, owner_id, direct_key) VALUES (?, ?, ?, ?, ?)",
        (name, room_type, now_ms(), owner_id, direct_key),
    ).lastrowid
    assert room_id is not None
    log_id = _log(conn, room_id, None, "room")
    log_id = add_members(conn, room_id, members, announce=False) or log_id
    outbox.add(conn, "room_created", outbox.room_data(conn, room_id))
    return RoomChanged(room_id, log_id)


def room_exists(conn: sqlite3.Connection, room_id: int) -> bool:
    return conn.execute("SELECT 1 FROM rooms WHERE id = ?", (room_id,)).fetchone() is not None


def add_members(conn: sqlite3.Connection, room_id: int, user_ids: Sequence[int], *, announce: bool = True) -> int:
    """Add who is not a participant yet; returns the last log id written (0: none).

    ``announce`` False: the room is being created, and its ``room_created`` event lists them.
    """
    ensure_users(conn, user_ids)
    log_id = 0
    for user_id in dict.fromkeys(user_ids):
        # A new member starts with everything before their arrival read.
        cursor = conn.execute(
            "INSERT OR IGNORE INTO participants(room_id, user_id, last_read_id, joined_ms) "
            "VALUES (?, ?, (SELECT COALESCE(MAX(id), 0) FROM messages WHERE room_id = ?), ?)",
            (room_id, user_id, room_id, now_ms()),
        )
        if cursor.rowcount:
            log_id = _log(conn, room_id, user_id, "add")
            if announce:
                outbox.add(conn, "member_added", {"room_id": room_id, "user_id": user_id})
    return log_id


def remove_members(conn: sqlite3.Connection, room_id: int, user_ids: Sequence[int], change: str = "remove") -> int:
    """Remove who is a participant; returns the last log id written (0: none).

    ``change`` is ``leave`` when users remove themselves (their connections are told why).
    """
    log_id = 0
    for user_id in dict.fromkeys(user_ids):
        cursor = conn.execute("DELETE FROM participants WHERE room_id = ? AND user_id = ?", (room_id, user_id))
        if cursor.rowcount:
            # An owner who goes hands nothing on: the room has no owner from now on.
            conn.execute("UPDATE rooms SET owner_id = NULL WHERE id = ? AND owner_id = ?", (room_id, user_id))
            log_id = _log(conn, room_id, user_id, change)
            outbox.add(conn, "member_removed", {"room_id": room_id, "user_id": user_id})
    return log_id


def rename_room(conn: sqlite3.Connection, room_id: int, name: str) -> int:
    conn.execute("UPDATE rooms SET name = ? WHERE id = ?", (name, room_id))
    return _log(conn, room_id, None, "rename")


def set_owner(conn: sqlite3.Connection, room_id: int, owner_id: int | None) -> int:
    """Give the room an owner (made a participant if not one yet), or none."""
    log_id = add_members(conn, room_id, (owner_id,)) if owner_id is not None else 0
    conn.execute("UPDATE rooms SET owner_id = ? WHERE id = ?", (owner_id, room_id))
    return _log(conn, room_id, None, "owner") or log_id


def host_change(conn: sqlite3.Connection, room_id: int, change: str, *, user_ids: Sequence[int] = (),
                name: str = "", owner_id: int | None = None) -> RoomChanged | Refusal:
    """A change made with the host's authority — ``unichatd room`` or the server API —
    with no owner to ask: ``add``/``remove`` members, ``rename``, or ``owner``."""
    row = conn.execute("SELECT room_type FROM rooms WHERE id = ?", (room_id,)).fetchone()
    if row is None:
        return Refusal.NOT_FOUND
    if row[0] == "direct" and change != "rename":
        return Refusal.DIRECT_ROOM
    if change == "rename":
        log_id = rename_room(conn, room_id, name)
    elif change == "owner":
        log_id = set_owner(conn, room_id, owner_id)
    elif change == "add":
        log_id = add_members(conn, room_id, user_ids)
    else:
        log_id = remove_members(conn, room_id, user_ids)
    return RoomChanged(room_id, log_id or last_log_id(conn))


def direct_key(user_a: int, user_b: int) -> str:
    low, high = sorted((user_a, user_b))
    return f"{low}:{high}"


def direct_room(conn: sqlite3.Connection, user_id: int, other_id: int) -> RoomChanged:
    """The pair's one direct room, created on first use; either of them who left it is
    back in it (opening a conversation again, as in every chat)."""
    key = direct_key(user_id, other_id)
    row = conn.execute("SELECT id FROM rooms WHERE direct_key = ?", (key,)).fetchone()
    if row is None:
        # The room's own name is for the CLI's list; each of the pair sees the other's name.
        return create_room(conn, key, "direct", (user_id, other_id), direct_key=key)
    room_id = int(row[0])
    log_id = add_members(conn, room_id, (user_id, other_id))
    return RoomChanged(room_id, log_id or last_log_id(conn))


def owner_refusal(conn: sqlite3.Connection, room_id: int, user_id: int, *, members: bool) -> Refusal | None:
    """Why ``user_id`` may not change the room (rename it, or its ``members``), or None."""
    row = conn.execute(
        f"SELECT {OWNER_QUERY_COLUMNS} FROM rooms r "
        "LEFT JOIN participants p ON p.room_id = r.id AND p.user_id = ? WHERE r.id = ?",
        (user_id, room_id),
    ).fetchone()
    return refusal_of(row, user_id, members=members)


OWNER_QUERY_COLUMNS = "r.owner_id, r.room_type, p.user_id"


def refusal_of(row: Sequence[Any] | None, user_id: int, *, members: bool) -> Refusal | None:
    """The refusal a row of (owner, room type, the user as participant) means, for either store."""
    if row is None or row[2] is None:
        return Refusal.NOT_FOUND
    if members and row[1] == "direct":
        return Refusal.DIRECT_ROOM
    if row[0] != user_id:
        return Refusal.NOT_OWNER
    return None
