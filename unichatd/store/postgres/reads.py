"""The SQL that reads, for PostgreSQL: the same answers as ``store.queries`` gives from
SQLite, over an asyncpg connection (the daemon's readers, or the writer's transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from ...models import FileRef, MembershipChange, Message, RoomRecord, Snapshot, StoredFile, UserInfo
from ...protocol.search import SearchTerm
from ..queries import MESSAGE_COLUMNS, MESSAGES_WITH_SENDER, SNIPPET_TOKENS, message_from_row

if TYPE_CHECKING:
    from typing import TypeAlias

    Conn: TypeAlias = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[Any]
    """A connection of its own, or one lent by the readers' pool."""


def _message(row: asyncpg.Record | None) -> Message | None:
    return message_from_row(tuple(row)) if row is not None else None


async def unread_count(conn: Conn, room_id: int, user_id: int, marker: int) -> int:
    return int(await conn.fetchval(
        "SELECT COUNT(*) FROM messages WHERE room_id = $1 AND id > $2 AND sender_id <> $3 AND NOT deleted",
        room_id, marker, user_id))


async def mention_count(conn: Conn, room_id: int, user_id: int, marker: int) -> int:
    return int(await conn.fetchval(
        "SELECT COUNT(*) FROM mentions WHERE room_id = $1 AND user_id = $2 AND message_id > $3",
        room_id, user_id, marker))


async def latest_message(conn: Conn, room_id: int) -> Message | None:
    return _message(await conn.fetchrow(
        MESSAGES_WITH_SENDER + "WHERE m.room_id = $1 AND NOT m.deleted ORDER BY m.id DESC LIMIT 1", room_id))


async def message(conn: Conn, message_id: int) -> Message | None:
    return _message(await conn.fetchrow(MESSAGES_WITH_SENDER + "WHERE m.id = $1", message_id))


async def load_rooms(conn: Conn, room_ids: Sequence[int] | None) -> Snapshot:
    """As ``queries.load_rooms``, in three queries whatever the number of rooms."""
    every = room_ids is None
    ids = list(room_ids or ())
    rooms: dict[int, RoomRecord] = {}
    for row in await conn.fetch(
            "SELECT id, name, room_type, created_ms, pruned_through, owner_id, direct_key FROM rooms "
            "WHERE $1 OR id = ANY($2::bigint[])", every, ids):
        pair: tuple[int, int] | None = None
        if row["direct_key"]:
            low, high = row["direct_key"].split(":")
            pair = (int(low), int(high))
        rooms[row["id"]] = RoomRecord(row["id"], row["name"], row["room_type"], row["created_ms"],
                                      pruned_through=row["pruned_through"], owner_id=row["owner_id"],
                                      direct_pair=pair)
    users: dict[int, tuple[str, str]] = {}
    for room_id, user_id, marker, unread, mentions, username, first_name in await conn.fetch(
            "SELECT p.room_id, p.user_id, p.last_read_id, "
            "(SELECT COUNT(*) FROM messages m WHERE m.room_id = p.room_id AND m.id > p.last_read_id "
            " AND m.sender_id <> p.user_id AND NOT m.deleted), "
            "(SELECT COUNT(*) FROM mentions x WHERE x.room_id = p.room_id AND x.user_id = p.user_id "
            " AND x.message_id > p.last_read_id), u.username, u.first_name "
            "FROM participants p JOIN users u ON u.id = p.user_id WHERE $1 OR p.room_id = ANY($2::bigint[])",
            every, ids):
        room = rooms.get(room_id)
        if room is None:
            continue
        room.markers[user_id] = marker
        room.unread[user_id] = unread
        if mentions:
            room.mentions[user_id] = mentions
        users[user_id] = (username, first_name)
    for row in await conn.fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM rooms r CROSS JOIN LATERAL (SELECT * FROM messages "
            "WHERE room_id = r.id AND NOT deleted ORDER BY id DESC LIMIT 1) m JOIN users u ON u.id = m.sender_id "
            "WHERE $1 OR r.id = ANY($2::bigint[])", every, ids):
        latest = message_from_row(tuple(row))
        if latest.room_id in rooms:
            rooms[latest.room_id].last_message = latest
    for room in rooms.values():
        for user_id in room.direct_pair or ():
            if user_id not in users:  # (the other one of a direct room left: its name is still theirs)
                users[user_id] = await user_names(conn, user_id)
    log_id = int(await conn.fetchval("SELECT COALESCE(MAX(id), 0) FROM membership_log"))
    last_seen: dict[int, int] = {}
    if every:
        last_seen = {row[0]: row[1] for row in await conn.fetch(
            "SELECT id, last_seen_ms FROM users WHERE last_seen_ms IS NOT NULL")}
    return Snapshot(rooms, users, log_id, last_seen)


async def user_names(conn: Conn, user_id: int) -> tuple[str, str]:
    row = await conn.fetchrow("SELECT username, first_name FROM users WHERE id = $1", user_id)
    return (str(row[0]), str(row[1])) if row else (f"user{user_id}", "")


async def find_users(conn: Conn, query: str, limit: int) -> list[UserInfo]:
    pattern = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = await conn.fetch(
        "SELECT id, username, first_name FROM users WHERE id > 0 AND (lower(username) LIKE $1 "
        "OR lower(first_name) LIKE $1) ORDER BY lower(username), id LIMIT $2", pattern, limit)
    return [UserInfo(*row) for row in rows]


async def users_by_id(conn: Conn, user_ids: Sequence[int]) -> list[UserInfo]:
    rows = await conn.fetch("SELECT id, username, first_name FROM users WHERE id > 0 AND id = ANY($1::bigint[]) "
                            "ORDER BY id", list(user_ids))
    return [UserInfo(*row) for row in rows]


async def stored_file(conn: Conn, file_id: int) -> StoredFile | None:
    row = await conn.fetchrow("SELECT id, name, size, content_type, uploader_id, storage_key FROM files "
                              "WHERE id = $1", file_id)
    if row is None:
        return None
    rooms = tuple(room_id for (room_id,) in await conn.fetch(
        "SELECT DISTINCT room_id FROM file_posts WHERE file_id = $1 ORDER BY room_id", file_id))
    return StoredFile(FileRef(*row[:4]), int(row[4]), str(row[5]), rooms)


async def files_of(conn: Conn, uploader_id: int, file_ids: Sequence[int]) -> list[FileRef]:
    found = {row[0]: FileRef(*row) for row in await conn.fetch(
        "SELECT id, name, size, content_type FROM files WHERE uploader_id = $1 AND id = ANY($2::bigint[])",
        uploader_id, list(file_ids))}
    return [found[file_id] for file_id in file_ids if file_id in found]


async def uploads_since(conn: Conn, uploader_id: int, since_ms: int) -> list[tuple[int, int]]:
    return [(int(created), int(size)) for created, size in await conn.fetch(
        "SELECT created_ms, size FROM files WHERE uploader_id = $1 AND created_ms >= $2 ORDER BY created_ms",
        uploader_id, since_ms)]


async def history(conn: Conn, room_id: int, before_id: int | None, after_id: int | None,
                  limit: int) -> tuple[list[Message], bool]:
    base = MESSAGES_WITH_SENDER + "WHERE m.room_id = $1 "
    if after_id is not None:
        rows = await conn.fetch(base + "AND m.id > $2 ORDER BY m.id ASC LIMIT $3", room_id, after_id, limit + 1)
    elif before_id is not None:
        rows = await conn.fetch(base + "AND m.id < $2 ORDER BY m.id DESC LIMIT $3", room_id, before_id, limit + 1)
    else:
        rows = await conn.fetch(base + "ORDER BY m.id DESC LIMIT $2", room_id, limit + 1)
    messages = [message_from_row(tuple(row)) for row in rows[:limit]]
    if after_id is None:
        messages.reverse()
    return messages, len(rows) > limit


async def reply_target(conn: Conn, message_id: int) -> tuple[int, int] | None:
    row = await conn.fetchrow("SELECT room_id, COALESCE(thread_root_id, id) FROM messages WHERE id = $1",
                              message_id)
    return (int(row[0]), int(row[1])) if row else None


async def thread(conn: Conn, room_id: int, message_id: int, after_id: int | None,
                 limit: int) -> tuple[Message, list[Message], bool] | None:
    asked = await message(conn, message_id)
    if asked is None or asked.room_id != room_id:
        return None
    root = asked if asked.thread_root_id is None else await message(conn, asked.thread_root_id)
    if root is None:  # (retention took the root)
        return None
    rows = await conn.fetch(MESSAGES_WITH_SENDER + "WHERE m.thread_root_id = $1 AND m.id > $2 ORDER BY m.id "
                            "LIMIT $3", root.id, after_id or 0, limit + 1)
    return root, [message_from_row(tuple(row)) for row in rows[:limit]], len(rows) > limit


async def changes(conn: Conn, room_id: int, since_revision: int, through_id: int | None,
                  limit: int) -> tuple[list[Message], bool]:
    """As ``queries.changes``: changed messages by revision, and unchanged ones (whose
    revision is their id) by id."""
    through = through_id if through_id is not None else 2**63 - 1
    changed = await conn.fetch(
        MESSAGES_WITH_SENDER + "WHERE m.room_id = $1 AND m.changed AND m.revision > $2 AND m.id <= $3 "
        "ORDER BY m.revision LIMIT $4", room_id, since_revision, through, limit + 1)
    created = await conn.fetch(
        MESSAGES_WITH_SENDER + "WHERE m.room_id = $1 AND m.id > $2 AND m.id <= $3 AND NOT m.changed "
        "ORDER BY m.id LIMIT $4", room_id, since_revision, through, limit + 1)
    found = sorted((message_from_row(tuple(row)) for row in (*changed, *created)), key=lambda found: found.revision)
    return found[:limit], len(found) > limit


def tsquery(terms: Sequence[SearchTerm]) -> str:
    """``to_tsquery`` text for ``terms``: each word quoted (so nothing typed is syntax), a
    phrase's words adjacent, a prefix term's last word a prefix, every term required."""
    def quoted(word: str) -> str:
        return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"

    parts = []
    for term in terms:
        words = [quoted(word) for word in term.text.split()]
        if term.prefix:
            words[-1] += ":*"
        parts.append("(" + " <-> ".join(words) + ")")
    return " & ".join(parts)


async def search(conn: Conn, terms: Sequence[SearchTerm], room_ids: Sequence[int], other_rooms: Sequence[int],
                 before_id: int | None, limit: int) -> tuple[list[tuple[Message, str]], bool]:
    """Messages matching every term, newest first, each with its snippet (matches in ``[]``)."""
    if len(other_rooms) < len(room_ids):
        rooms = "NOT (m.room_id = ANY($2::bigint[]))"
        listed = list(other_rooms)
    else:
        rooms = "m.room_id = ANY($2::bigint[])"
        listed = list(room_ids)
    options = f"StartSel=[, StopSel=], MaxWords={SNIPPET_TOKENS}, MinWords={SNIPPET_TOKENS // 2}, ShortWord=0"
    rows = await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS}, ts_headline('unichatd_words', m.content, q, $5) "
        "FROM messages m JOIN users u ON u.id = m.sender_id, to_tsquery('unichatd_words', $1) q "
        f"WHERE m.words @@ q AND {rooms} AND m.id < $3 AND NOT m.deleted ORDER BY m.id DESC LIMIT $4",
        tsquery(terms), listed, before_id or 2**63 - 1, limit + 1, options)
    return [(message_from_row(tuple(row)), row[-1]) for row in rows[:limit]], len(rows) > limit


async def membership_changes(conn: Conn, after_log_id: int) -> list[MembershipChange]:
    rows = await conn.fetch("SELECT id, room_id, user_id, change FROM membership_log WHERE id > $1 ORDER BY id",
                            after_log_id)
    return [MembershipChange(*row) for row in rows]


async def last_number(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT last FROM message_numbers"))


async def revocations(conn: Conn) -> dict[int, int]:
    return {row[0]: row[1] for row in await conn.fetch(
        "SELECT id, revoked_before_ms FROM users WHERE revoked_before_ms IS NOT NULL")}


async def webhook_cursors(conn: Conn) -> dict[str, int]:
    return {row[0]: row[1] for row in await conn.fetch("SELECT url, through FROM webhook_cursors")}


async def last_webhook_event(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM webhook_events"))


async def webhook_events(conn: Conn, after_seq: int, events: Sequence[str],
                         limit: int) -> tuple[list[tuple[int, str, bytes, int]], int]:
    """As ``queries.webhook_events``."""
    newest = await last_webhook_event(conn)
    rows = [tuple(row) for row in await conn.fetch(
        "SELECT seq, event, body, created_ms FROM webhook_events WHERE seq > $1 AND seq <= $2 "
        "AND event = ANY($3::text[]) ORDER BY seq LIMIT $4", after_seq, newest, list(events), limit)]
    return rows, (rows[-1][0] if len(rows) == limit else newest)
