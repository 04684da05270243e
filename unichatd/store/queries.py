"""The SQL that reads: message rows, room snapshots, history pages, membership changes.

Plain functions over a ``sqlite3.Connection``; the daemon runs them on its reader's or
writer's thread (see ``threads``), the CLI on its own connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from ..models import FileRef, MembershipChange, Message, Reaction, RoomRecord, Snapshot, StoredFile, UserInfo

SNIPPET_TOKENS = 24
"""Words around the matches in a search snippet (cut to 200 characters after)."""
MAX_ROWID = 2**63 - 1

MESSAGE_COLUMNS = (
    "m.id, m.room_id, m.sender_id, u.username, u.first_name, m.content, m.created_ms, "
    "m.reply_to, m.client_msg_id, m.message_type, m.revision, m.edited_ms, m.deleted, "
    "m.thread_root_id, m.reply_count, m.last_reply_ms, m.mentions, m.reactions, m.attachments"
)
MESSAGES_WITH_SENDER = f"SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id "


def message_from_row(row: Sequence[Any]) -> Message:
    (message_id, room_id, sender_id, username, first_name, content, created_ms, reply_to, client_msg_id,
     message_type, revision, edited_ms, deleted, thread_root_id, reply_count, last_reply_ms, mentions,
     reactions, attachments) = row[:19]
    return Message(
        message_id, room_id, sender_id, username, first_name, content, created_ms, reply_to, client_msg_id,
        message_type, revision, edited_ms, bool(deleted), thread_root_id, reply_count, last_reply_ms,
        parse_mentions(mentions) if mentions else (),
        parse_reactions(reactions) if reactions else (),
        parse_attachments(attachments) if attachments else (),
    )


def parse_mentions(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def format_mentions(user_ids: Sequence[int]) -> str | None:
    return ",".join(map(str, user_ids)) if user_ids else None


def parse_reactions(text: str) -> tuple[Reaction, ...]:
    return tuple(Reaction(emoji, tuple(user_ids)) for emoji, user_ids in orjson.loads(text))


def parse_attachments(text: str) -> tuple[FileRef, ...]:
    return tuple(FileRef(*item) for item in orjson.loads(text))


def format_attachments(files: Sequence[FileRef]) -> str | None:
    if not files:
        return None
    return orjson.dumps([(file.id, file.name, file.size, file.content_type) for file in files]).decode()


def unread_count(conn: sqlite3.Connection, room_id: int, user_id: int, marker: int) -> int:
    # Two index-only counts: all messages of others above the marker, less the tombstones
    # among them (a partial index holds only those).
    row = conn.execute(
        "SELECT (SELECT COUNT(*) FROM messages WHERE room_id = ?1 AND id > ?2 AND sender_id != ?3) - "
        "(SELECT COUNT(*) FROM messages WHERE room_id = ?1 AND id > ?2 AND sender_id != ?3 AND deleted = 1)",
        (room_id, marker, user_id),
    ).fetchone()
    return int(row[0])


def mention_count(conn: sqlite3.Connection, room_id: int, user_id: int, marker: int) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM mentions WHERE room_id = ? AND user_id = ? AND message_id > ?",
        (room_id, user_id, marker),
    ).fetchone()
    return int(row[0])


def latest_message(conn: sqlite3.Connection, room_id: int) -> Message | None:
    """The room's latest message that is not deleted (its room-list preview)."""
    row = conn.execute(
        MESSAGES_WITH_SENDER + "WHERE m.room_id = ? AND m.deleted = 0 ORDER BY m.id DESC LIMIT 1", (room_id,)
    ).fetchone()
    return message_from_row(row) if row else None


def message(conn: sqlite3.Connection, message_id: int) -> Message | None:
    row = conn.execute(MESSAGES_WITH_SENDER + "WHERE m.id = ?", (message_id,)).fetchone()
    return message_from_row(row) if row else None


def load_rooms(conn: sqlite3.Connection, room_ids: tuple[int, ...] | None) -> Snapshot:
    params: tuple[int, ...] = ()
    if room_ids is None:
        where = ""
    else:
        where = f"WHERE id IN ({','.join('?' * len(room_ids))})"
        params = room_ids
    rooms: dict[int, RoomRecord] = {}
    for room_id, name, room_type, created_ms, pruned_through, owner_id, direct in conn.execute(
        f"SELECT id, name, room_type, created_ms, pruned_through, owner_id, direct_key FROM rooms {where}", params
    ):
        pair: tuple[int, int] | None = None
        if direct:
            low, high = direct.split(":")
            pair = (int(low), int(high))
        rooms[room_id] = RoomRecord(room_id, name, room_type, created_ms, pruned_through=pruned_through,
                                    owner_id=owner_id, direct_pair=pair)
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
        mentions = mention_count(conn, room_id, user_id, marker)
        if mentions:
            room.mentions[user_id] = mentions
        user_ids.add(user_id)
    for room in rooms.values():
        room.last_message = latest_message(conn, room.id)
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
    for room in rooms.values():
        for user_id in room.direct_pair or ():
            if user_id not in users:  # (the other one of a direct room left: its name is still theirs)
                users[user_id] = user_names(conn, user_id)
    log_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM membership_log").fetchone()[0]
    last_seen: dict[int, int] = {}
    if room_ids is None:
        last_seen = dict(conn.execute("SELECT id, last_seen_ms FROM users WHERE last_seen_ms IS NOT NULL"))
    return Snapshot(rooms, users, log_id, last_seen)


def user_names(conn: sqlite3.Connection, user_id: int) -> tuple[str, str]:
    """(username, first_name) as last seen in a token, or the placeholder name."""
    row = conn.execute("SELECT username, first_name FROM users WHERE id = ?", (user_id,)).fetchone()
    return (str(row[0]), str(row[1])) if row else (f"user{user_id}", "")


def find_users(conn: sqlite3.Connection, query: str, limit: int) -> list[UserInfo]:
    """Users whose username or first name starts with ``query`` (any case), by username."""
    if not query:
        rows = conn.execute("SELECT id, username, first_name FROM users WHERE id > 0 "
                            "ORDER BY username COLLATE NOCASE, id "
                            "LIMIT ?", (limit,))
    else:
        pattern = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = conn.execute(
            "SELECT id, username, first_name FROM users WHERE id > 0 AND (username LIKE ?1 ESCAPE '\\' "
            "OR first_name LIKE ?1 ESCAPE '\\') ORDER BY username COLLATE NOCASE, id LIMIT ?2",
            (pattern, limit),
        )
    return [UserInfo(*row) for row in rows]


def users_by_id(conn: sqlite3.Connection, user_ids: Sequence[int]) -> list[UserInfo]:
    found: list[UserInfo] = []
    for start in range(0, len(user_ids), 500):
        chunk = user_ids[start : start + 500]
        found.extend(UserInfo(*row) for row in conn.execute(
            f"SELECT id, username, first_name FROM users WHERE id > 0 AND id IN ({','.join('?' * len(chunk))}) "
            "ORDER BY id",
            chunk))
    return found


def stored_file(conn: sqlite3.Connection, file_id: int) -> StoredFile | None:
    row = conn.execute("SELECT id, name, size, content_type, uploader_id, storage_key FROM files WHERE id = ?",
                       (file_id,)).fetchone()
    if row is None:
        return None
    rooms = tuple(room_id for (room_id,) in conn.execute(
        "SELECT DISTINCT room_id FROM file_posts WHERE file_id = ?", (file_id,)))
    return StoredFile(FileRef(*row[:4]), int(row[4]), str(row[5]), rooms)


def files_of(conn: sqlite3.Connection, uploader_id: int, file_ids: Sequence[int]) -> list[FileRef]:
    """Those of ``file_ids`` that ``uploader_id`` uploaded, in the order given."""
    marks = ",".join("?" * len(file_ids))
    found = {row[0]: FileRef(*row) for row in conn.execute(
        f"SELECT id, name, size, content_type FROM files WHERE uploader_id = ? AND id IN ({marks})",
        (uploader_id, *file_ids))}
    return [found[file_id] for file_id in file_ids if file_id in found]


def uploads_since(conn: sqlite3.Connection, uploader_id: int, since_ms: int) -> list[tuple[int, int]]:
    """(created_ms, size) of the user's files stored since ``since_ms``, oldest first."""
    return [(int(created), int(size)) for created, size in conn.execute(
        "SELECT created_ms, size FROM files WHERE uploader_id = ? AND created_ms >= ? ORDER BY created_ms",
        (uploader_id, since_ms))]


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


def reply_target(conn: sqlite3.Connection, message_id: int) -> tuple[int, int] | None:
    """(room, thread root) of the message a reply answers, or None when there is no such message."""
    row = conn.execute("SELECT room_id, COALESCE(thread_root_id, id) FROM messages WHERE id = ?",
                       (message_id,)).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def thread(
    conn: sqlite3.Connection, room_id: int, message_id: int, after_id: int | None, limit: int
) -> tuple[Message, list[Message], bool] | None:
    """The thread ``message_id`` belongs to: its root and a page of replies, oldest first."""
    asked = message(conn, message_id)
    if asked is None or asked.room_id != room_id:
        return None
    root = asked if asked.thread_root_id is None else message(conn, asked.thread_root_id)
    if root is None:  # (retention took the root: the thread has none left to show)
        return None
    rows = conn.execute(
        MESSAGES_WITH_SENDER + "WHERE m.thread_root_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
        (root.id, after_id or 0, limit + 1),
    ).fetchall()
    return root, [message_from_row(row) for row in rows[:limit]], len(rows) > limit


def changes(
    conn: sqlite3.Connection, room_id: int, since_revision: int, through_id: int | None, limit: int
) -> tuple[list[Message], bool]:
    """Messages whose revision is above ``since_revision`` (up to ``through_id``), in revision order.

    Two kinds, each read in order from an index: messages changed after their creation
    (the partial index ``messages_changed``), and unchanged messages, whose revision is
    their id (ids and revisions share one counter), so those created after
    ``since_revision`` are the ids above it.
    """
    through = MAX_ROWID if through_id is None else through_id
    changed = conn.execute(
        MESSAGES_WITH_SENDER + "WHERE m.room_id = ? AND m.changed = 1 AND m.revision > ? AND m.id <= ? "
        "ORDER BY m.revision LIMIT ?",
        (room_id, since_revision, through, limit + 1),
    ).fetchall()
    created = conn.execute(
        MESSAGES_WITH_SENDER + "WHERE m.room_id = ? AND m.id > ? AND m.id <= ? AND m.changed = 0 "
        "ORDER BY m.id LIMIT ?",
        (room_id, since_revision, through, limit + 1),
    ).fetchall()
    found = sorted((message_from_row(row) for row in (*changed, *created)), key=lambda message: message.revision)
    return found[:limit], len(found) > limit


def search(
    conn: sqlite3.Connection, expression: str, before_id: int | None, limit: int
) -> tuple[list[tuple[Message, str]], bool]:
    """Messages matching an FTS5 ``expression``, newest first, each with its snippet."""
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS}, snippet(messages_fts, 0, '[', ']', '…', {SNIPPET_TOKENS}) "
        "FROM messages_fts f JOIN messages m ON m.id = f.rowid JOIN users u ON u.id = m.sender_id "
        "WHERE messages_fts MATCH ? AND f.rowid < ? AND m.deleted = 0 ORDER BY f.rowid DESC LIMIT ?",
        (expression, before_id or MAX_ROWID, limit + 1),
    ).fetchall()
    return [(message_from_row(row), row[-1]) for row in rows[:limit]], len(rows) > limit


def membership_changes(conn: sqlite3.Connection, after_log_id: int) -> list[MembershipChange]:
    rows = conn.execute(
        "SELECT id, room_id, user_id, change FROM membership_log WHERE id > ? ORDER BY id",
        (after_log_id,),
    ).fetchall()
    return [MembershipChange(*row) for row in rows]


def last_number(conn: sqlite3.Connection) -> int:
    """The last number given as a message id or a revision (they share one counter)."""
    return int(conn.execute("SELECT last FROM message_numbers").fetchone()[0])


def revocations(conn: sqlite3.Connection) -> dict[int, int]:
    return dict(conn.execute("SELECT id, revoked_before_ms FROM users WHERE revoked_before_ms IS NOT NULL"))


def webhook_cursors(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT url, through FROM webhook_cursors"))


def _event_filter(events: Sequence[str]) -> str:
    return f"event IN ({','.join('?' * len(events))})"


def webhook_events(conn: sqlite3.Connection, after_seq: int, events: Sequence[str],
                   limit: int) -> tuple[list[tuple[int, str, bytes, int]], int]:
    """Up to ``limit`` events of these kinds after ``after_seq``, and how far that look
    reached: the newest seq when fewer came (none of these kinds up to it), else the last."""
    # The newest seq first: every event up to it is committed, so the next read sees them all.
    newest = last_webhook_event(conn)
    rows = conn.execute(
        f"SELECT seq, event, body, created_ms FROM webhook_events WHERE seq > ? AND seq <= ? "
        f"AND {_event_filter(events)} ORDER BY seq LIMIT ?", (after_seq, newest, *events, limit)).fetchall()
    return rows, (rows[-1][0] if len(rows) == limit else newest)


def last_webhook_event(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM webhook_events").fetchone()[0])
