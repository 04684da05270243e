"""The writes, for PostgreSQL: each operation of ``store.operations`` as asyncpg runs it
inside the batch's transaction, and the room changes of ``store.membership`` with their
log rows and webhook events.  The answers are the SQLite store's, value for value.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ...models import (
    Change,
    FileRef,
    Message,
    ReadResult,
    Refusal,
    Resynced,
    RoomChanged,
    Snapshot,
    Stored,
    ThreadState,
)
from ...protocol.frames import format_timestamp, message_object
from ...protocol.requests import MAX_REACTIONS
from ..membership import OWNER_QUERY_COLUMNS, direct_key, refusal_of
from ..operations import (
    AppendMessage,
    Barrier,
    ChangeRoom,
    CreateRoom,
    DeleteMessage,
    EditMessage,
    HostChangeRoom,
    LoadRooms,
    MarkRead,
    MessageIds,
    OpenDirect,
    Prune,
    React,
    Resync,
    RevokeUser,
    SetLastSeen,
    StoreFile,
    UpsertUser,
    WebhookProgress,
)
from ..queries import MESSAGE_COLUMNS, format_attachments, format_mentions, message_from_row
from ..schema import now_ms
from . import reads

if TYPE_CHECKING:
    from .reads import Conn


def _count(status: str) -> int:
    """The row count of a command's status (``DELETE 3``, ``INSERT 0 1``)."""
    return int(status.rsplit(" ", 1)[-1])


# -- the outbox ----------------------------------------------------------------------


async def add_event(conn: Conn, event: str, data: dict[str, Any]) -> None:
    now = now_ms()
    body = orjson.dumps({"event": event, "id": f"evt_{uuid.uuid4().hex}", "timestamp": format_timestamp(now),
                         "data": data})
    await conn.execute("INSERT INTO webhook_events(event, body, created_ms) VALUES ($1, $2, $3)", event, body, now)


async def record_writes(conn: Conn, results: Sequence[Any], wanted: frozenset[str]) -> None:
    for result in results:
        if isinstance(result, Stored):
            if result.created and "message_created" in wanted:
                await add_event(conn, "message_created", message_object(result.message))
        elif isinstance(result, Change) and result.changed:
            event = "message_deleted" if result.message.deleted else "message_updated"
            if event in wanted:
                await add_event(conn, event, message_object(result.message))


async def room_data(conn: Conn, room_id: int) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT name, room_type, owner_id, created_ms FROM rooms WHERE id = $1", room_id)
    assert row is not None  # (the transaction made it)
    name, room_type, owner_id, created_ms = row
    participants = [{"id": user_id, "username": username, "first_name": first_name}
                    for user_id, username, first_name in await conn.fetch(
                        "SELECT u.id, u.username, u.first_name FROM participants p JOIN users u ON u.id = p.user_id "
                        "WHERE p.room_id = $1 ORDER BY u.id", room_id)]
    return {"id": room_id, "name": name, "room_type": room_type, "owner_id": owner_id,
            "created_at": format_timestamp(created_ms), "participants": participants}


# -- rooms and members (every path: the daemon's operations and the CLI) -------------


async def _log(conn: Conn, room_id: int, user_id: int | None, change: str) -> int:
    return int(await conn.fetchval("INSERT INTO membership_log(room_id, user_id, change) VALUES ($1, $2, $3) "
                                   "RETURNING id", room_id, user_id, change))


async def last_log_id(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT COALESCE(MAX(id), 0) FROM membership_log"))


async def ensure_users(conn: Conn, user_ids: Sequence[int]) -> None:
    now = now_ms()
    await conn.executemany("INSERT INTO users(id, username, first_name, updated_ms) VALUES ($1, $2, '', $3) "
                           "ON CONFLICT (id) DO NOTHING", [(user_id, f"user{user_id}", now) for user_id in user_ids])


async def create_room(conn: Conn, name: str, room_type: str, members: Sequence[int], *,
                      owner_id: int | None = None, key: str | None = None) -> RoomChanged:
    room_id = int(await conn.fetchval(
        "INSERT INTO rooms(name, room_type, created_ms, owner_id, direct_key) VALUES ($1, $2, $3, $4, $5) "
        "RETURNING id", name, room_type, now_ms(), owner_id, key))
    log_id = await _log(conn, room_id, None, "room")
    log_id = await add_members(conn, room_id, members, announce=False) or log_id
    await add_event(conn, "room_created", await room_data(conn, room_id))
    return RoomChanged(room_id, log_id)


async def room_exists(conn: Conn, room_id: int) -> bool:
    return await conn.fetchval("SELECT 1 FROM rooms WHERE id = $1", room_id) is not None


async def add_members(conn: Conn, room_id: int, user_ids: Sequence[int], *, announce: bool = True) -> int:
    await ensure_users(conn, user_ids)
    log_id = 0
    for user_id in dict.fromkeys(user_ids):
        added = await conn.execute(
            "INSERT INTO participants(room_id, user_id, last_read_id, joined_ms) "
            "VALUES ($1, $2, (SELECT COALESCE(MAX(id), 0) FROM messages WHERE room_id = $1), $3) "
            "ON CONFLICT DO NOTHING", room_id, user_id, now_ms())
        if _count(added):
            log_id = await _log(conn, room_id, user_id, "add")
            if announce:
                await add_event(conn, "member_added", {"room_id": room_id, "user_id": user_id})
    return log_id


async def remove_members(conn: Conn, room_id: int, user_ids: Sequence[int], change: str = "remove") -> int:
    log_id = 0
    for user_id in dict.fromkeys(user_ids):
        removed = await conn.execute("DELETE FROM participants WHERE room_id = $1 AND user_id = $2", room_id, user_id)
        if _count(removed):
            await conn.execute("UPDATE rooms SET owner_id = NULL WHERE id = $1 AND owner_id = $2", room_id, user_id)
            log_id = await _log(conn, room_id, user_id, change)
            await add_event(conn, "member_removed", {"room_id": room_id, "user_id": user_id})
    return log_id


async def rename_room(conn: Conn, room_id: int, name: str) -> int:
    await conn.execute("UPDATE rooms SET name = $1 WHERE id = $2", name, room_id)
    return await _log(conn, room_id, None, "rename")


async def set_owner(conn: Conn, room_id: int, owner_id: int | None) -> int:
    log_id = await add_members(conn, room_id, (owner_id,)) if owner_id is not None else 0
    await conn.execute("UPDATE rooms SET owner_id = $1 WHERE id = $2", owner_id, room_id)
    return await _log(conn, room_id, None, "owner") or log_id


async def host_change(conn: Conn, room_id: int, change: str, *, user_ids: Sequence[int] = (), name: str = "",
                      owner_id: int | None = None) -> RoomChanged | Refusal:
    room_type = await conn.fetchval("SELECT room_type FROM rooms WHERE id = $1", room_id)
    if room_type is None:
        return Refusal.NOT_FOUND
    if room_type == "direct" and change != "rename":
        return Refusal.DIRECT_ROOM
    if change == "rename":
        log_id = await rename_room(conn, room_id, name)
    elif change == "owner":
        log_id = await set_owner(conn, room_id, owner_id)
    elif change == "add":
        log_id = await add_members(conn, room_id, user_ids)
    else:
        log_id = await remove_members(conn, room_id, user_ids)
    return RoomChanged(room_id, log_id or await last_log_id(conn))


async def direct_room(conn: Conn, user_id: int, other_id: int) -> RoomChanged:
    key = direct_key(user_id, other_id)
    room_id = await conn.fetchval("SELECT id FROM rooms WHERE direct_key = $1", key)
    if room_id is None:
        return await create_room(conn, key, "direct", (user_id, other_id), key=key)
    log_id = await add_members(conn, room_id, (user_id, other_id))
    return RoomChanged(room_id, log_id or await last_log_id(conn))


async def owner_refusal(conn: Conn, room_id: int, user_id: int, *, members: bool) -> Refusal | None:
    row = await conn.fetchrow(
        f"SELECT {OWNER_QUERY_COLUMNS} FROM rooms r "
        "LEFT JOIN participants p ON p.room_id = r.id AND p.user_id = $1 WHERE r.id = $2", user_id, room_id)
    return refusal_of(None if row is None else tuple(row), user_id, members=members)


# -- messages --------------------------------------------------------------------------


async def append_messages(conn: Conn, ids: MessageIds, ops: Sequence[AppendMessage]) -> list[Stored]:
    """As ``AppendMessage.run_many``: a run of sends in one statement per table."""
    pending = [op.message for op in ops]
    existing: dict[tuple[int, int, str], Message] = {}
    keyed = [(m.sender_id, m.room_id, m.client_msg_id) for m in pending if m.client_msg_id]
    if keyed:
        for row in await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM unnest($1::bigint[], $2::bigint[], $3::text[]) k(s, r, c) "
                "JOIN messages m ON m.sender_id = k.s AND m.room_id = k.r AND m.client_msg_id = k.c "
                "JOIN users u ON u.id = m.sender_id",
                [key[0] for key in keyed], [key[1] for key in keyed], [key[2] for key in keyed]):
            found = message_from_row(tuple(row))
            assert found.client_msg_id is not None
            existing[(found.sender_id, found.room_id, found.client_msg_id)] = found
    now = now_ms()
    results: list[Stored] = []
    rows: list[tuple[Any, ...]] = []
    mentions: list[tuple[int, int, int]] = []
    posts: list[tuple[int, int, int]] = []
    replies: list[int] = []
    for item in pending:
        key = (item.sender_id, item.room_id, item.client_msg_id) if item.client_msg_id else None
        if key is not None and key in existing:
            results.append(Stored(existing[key], created=False))
            continue
        message_id = ids.take()
        message = Message(message_id, item.room_id, item.sender_id, item.sender_username, item.sender_first_name,
                          item.content, now, item.reply_to, item.client_msg_id, item.message_type, message_id,
                          None, False, item.thread_root_id, 0, None, item.mentions, (), item.attachments)
        if key is not None:
            existing[key] = message
        results.append(Stored(message, created=True))
        posts.extend((file.id, message_id, item.room_id) for file in item.attachments)
        rows.append((message.id, message.room_id, message.sender_id, message.content, now, message.reply_to,
                     message.client_msg_id, message.revision, message.thread_root_id,
                     format_mentions(message.mentions), format_attachments(message.attachments),
                     message.message_type))
        mentions.extend((message.room_id, user_id, message.id) for user_id in message.mentions
                        if user_id != message.sender_id)
        if message.thread_root_id is not None:
            replies.append(len(results) - 1)
    if rows:
        await conn.copy_records_to_table(
            "messages", records=rows,
            columns=("id", "room_id", "sender_id", "content", "created_ms", "reply_to", "client_msg_id", "revision",
                     "thread_root_id", "mentions", "attachments", "message_type"))
    if posts:
        await conn.executemany("INSERT INTO file_posts(file_id, message_id, room_id) VALUES ($1, $2, $3) "
                               "ON CONFLICT DO NOTHING", posts)
    if mentions:
        await conn.executemany("INSERT INTO mentions(room_id, user_id, message_id) VALUES ($1, $2, $3)", mentions)
    for index in replies:
        reply = results[index].message
        root_id = reply.thread_root_id
        revision = ids.take()
        count = await conn.fetchval(
            "UPDATE messages SET reply_count = reply_count + 1, last_reply_ms = $1, revision = $2, changed = true "
            "WHERE id = $3 RETURNING reply_count", now, revision, root_id)
        if count is not None and root_id is not None:  # (retention may have taken the root)
            results[index] = Stored(reply, True, ThreadState(root_id, int(count), now, revision))
    return results


async def _mark_read(conn: Conn, ids: MessageIds, op: MarkRead) -> ReadResult | None:
    ids.position()
    old_marker = await conn.fetchval("SELECT last_read_id FROM participants WHERE room_id = $1 AND user_id = $2",
                                     op.room_id, op.user_id)
    if old_marker is None:
        return None
    if op.message_ids:
        target = await conn.fetchval("SELECT MAX(id) FROM messages WHERE room_id = $1 AND id = ANY($2::bigint[])",
                                     op.room_id, list(op.message_ids))
    else:
        target = await conn.fetchval("SELECT MAX(id) FROM messages WHERE room_id = $1", op.room_id)
    new_marker = max(int(old_marker), int(target or 0))
    if new_marker != old_marker:
        await conn.execute("UPDATE participants SET last_read_id = $1 WHERE room_id = $2 AND user_id = $3",
                           new_marker, op.room_id, op.user_id)
    return ReadResult(new_marker, await reads.unread_count(conn, op.room_id, op.user_id, new_marker),
                      new_marker != old_marker, await reads.mention_count(conn, op.room_id, op.user_id, new_marker))


async def _in_room(conn: Conn, room_id: int, message_id: int) -> Message | None:
    found = await reads.message(conn, message_id)
    return found if found is not None and found.room_id == room_id else None


async def _reread(conn: Conn, message_id: int) -> Message:
    found = await reads.message(conn, message_id)
    assert found is not None
    return found


async def _edit(conn: Conn, ids: MessageIds, op: EditMessage) -> Change | Refusal:
    before = await _in_room(conn, op.room_id, op.message_id)
    if before is None or before.deleted:
        return Refusal.NOT_FOUND
    if before.sender_id != op.user_id:
        return Refusal.FORBIDDEN
    await conn.execute("UPDATE messages SET content = $1, edited_ms = $2, revision = $3, changed = true, "
                       "mentions = $4 WHERE id = $5",
                       op.content, now_ms(), ids.take(), format_mentions(op.mentions), op.message_id)
    if before.mentions != op.mentions:
        await conn.execute("DELETE FROM mentions WHERE message_id = $1", op.message_id)
        await conn.executemany("INSERT INTO mentions(room_id, user_id, message_id) VALUES ($1, $2, $3)",
                               [(op.room_id, user_id, op.message_id) for user_id in op.mentions
                                if user_id != op.user_id])
    return Change(await _reread(conn, op.message_id), before, changed=True)


async def _delete(conn: Conn, ids: MessageIds, op: DeleteMessage) -> Change | Refusal:
    before = await _in_room(conn, op.room_id, op.message_id)
    if before is None:
        return Refusal.NOT_FOUND
    if before.sender_id != op.user_id:
        owner = await conn.fetchval("SELECT owner_id FROM rooms WHERE id = $1", op.room_id)
        if owner != op.user_id:
            return Refusal.FORBIDDEN
    if before.deleted:
        return Change(before, before, changed=False)
    await conn.execute("UPDATE messages SET content = '', deleted = true, revision = $1, changed = true, "
                       "mentions = NULL, reactions = NULL, attachments = NULL WHERE id = $2", ids.take(), op.message_id)
    for table in ("file_posts", "reactions", "mentions"):
        await conn.execute(f"DELETE FROM {table} WHERE message_id = $1", op.message_id)
    return Change(await _reread(conn, op.message_id), before, changed=True,
                  latest=await reads.latest_message(conn, op.room_id))


async def _react(conn: Conn, ids: MessageIds, op: React) -> Change | Refusal:
    before = await _in_room(conn, op.room_id, op.message_id)
    if before is None or before.deleted:
        return Refusal.NOT_FOUND
    if op.add:
        emoji_in_use = {reaction.emoji for reaction in before.reactions}
        if op.emoji not in emoji_in_use and len(emoji_in_use) >= MAX_REACTIONS:
            return Refusal.TOO_MANY_REACTIONS
        status = await conn.execute("INSERT INTO reactions(message_id, emoji, user_id) VALUES ($1, $2, $3) "
                                    "ON CONFLICT DO NOTHING", op.message_id, op.emoji, op.user_id)
    else:
        status = await conn.execute("DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
                                    op.message_id, op.emoji, op.user_id)
    if not _count(status):
        return Change(before, before, changed=False)
    # Emoji keep the order of their first use (see operations.React).
    grouped: dict[str, list[int]] = {reaction.emoji: [] for reaction in before.reactions}
    for emoji, user_id in await conn.fetch("SELECT emoji, user_id FROM reactions WHERE message_id = $1 ORDER BY id",
                                           op.message_id):
        grouped.setdefault(emoji, []).append(user_id)
    listed = [(emoji, user_ids) for emoji, user_ids in grouped.items() if user_ids]
    await conn.execute("UPDATE messages SET reactions = $1, revision = $2, changed = true WHERE id = $3",
                       orjson.dumps(listed).decode() if listed else None, ids.take(), op.message_id)
    return Change(await _reread(conn, op.message_id), before, changed=True)


async def _upsert_user(conn: Conn, ids: MessageIds, op: UpsertUser) -> None:
    await conn.execute(
        "INSERT INTO users(id, username, first_name, updated_ms) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (id) DO UPDATE SET username = excluded.username, first_name = excluded.first_name, "
        "updated_ms = excluded.updated_ms "
        "WHERE users.username <> excluded.username OR users.first_name <> excluded.first_name",
        op.user_id, *op.names, now_ms())


async def _set_last_seen(conn: Conn, ids: MessageIds, op: SetLastSeen) -> None:
    await conn.executemany("UPDATE users SET last_seen_ms = $1 WHERE id = $2", [(ms, user) for user, ms in op.seen])


async def _create_room(conn: Conn, ids: MessageIds, op: CreateRoom) -> RoomChanged:
    members = op.member_ids if op.owner_id is None else (op.owner_id, *op.member_ids)
    return await create_room(conn, op.name, op.room_type, members, owner_id=op.owner_id)


async def _open_direct(conn: Conn, ids: MessageIds, op: OpenDirect) -> RoomChanged:
    return await direct_room(conn, op.user_id, op.other_id)


async def _change_room(conn: Conn, ids: MessageIds, op: ChangeRoom) -> RoomChanged | Refusal:
    if op.change == "leave":
        log_id = await remove_members(conn, op.room_id, (op.user_id,), "leave")
        return RoomChanged(op.room_id, log_id) if log_id else Refusal.NOT_FOUND
    refusal = await owner_refusal(conn, op.room_id, op.user_id, members=op.change != "rename")
    if refusal is not None:
        return refusal
    if op.change == "rename":
        log_id = await rename_room(conn, op.room_id, op.name)
    elif op.change == "add":
        log_id = await add_members(conn, op.room_id, op.user_ids)
    else:
        log_id = await remove_members(conn, op.room_id, op.user_ids)
    return RoomChanged(op.room_id, log_id or await last_log_id(conn))


async def _host_change_room(conn: Conn, ids: MessageIds, op: HostChangeRoom) -> RoomChanged | Refusal:
    return await host_change(conn, op.room_id, op.change, user_ids=op.user_ids, name=op.name, owner_id=op.owner_id)


async def _revoke_user(conn: Conn, ids: MessageIds, op: RevokeUser) -> None:
    await ensure_users(conn, (op.user_id,))
    await conn.execute("UPDATE users SET revoked_before_ms = GREATEST(COALESCE(revoked_before_ms, 0), $1) "
                       "WHERE id = $2", op.before_ms, op.user_id)


async def _webhook_progress(conn: Conn, ids: MessageIds, op: WebhookProgress) -> int:
    await conn.executemany("INSERT INTO webhook_cursors(url, through) VALUES ($1, $2) ON CONFLICT (url) "
                           "DO UPDATE SET through = GREATEST(webhook_cursors.through, excluded.through)", op.cursors)
    if not op.prune_through:
        return 0
    return _count(await conn.execute(
        "DELETE FROM webhook_events WHERE seq IN (SELECT seq FROM webhook_events WHERE seq <= $1 "
        "ORDER BY seq LIMIT $2)", op.prune_through, op.prune_limit))


async def _store_file(conn: Conn, ids: MessageIds, op: StoreFile) -> FileRef:
    file_id = await conn.fetchval(
        "INSERT INTO files(uploader_id, name, size, content_type, storage_key, created_ms) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        op.uploader_id, op.name, op.size, op.content_type, op.storage_key, now_ms())
    return FileRef(int(file_id), op.name, op.size, op.content_type)


async def _load_rooms(conn: Conn, ids: MessageIds, op: LoadRooms) -> Snapshot:
    ids.position()
    return await reads.load_rooms(conn, op.room_ids)


async def _prune(conn: Conn, ids: MessageIds, op: Prune) -> int:
    deleted = [row[0] for row in await conn.fetch(
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE room_id = $1 AND created_ms < $2 "
        "ORDER BY id LIMIT $3) RETURNING id", op.room_id, op.before_ms, op.limit)]
    if deleted:
        await conn.execute("UPDATE rooms SET pruned_through = GREATEST(pruned_through, $1) WHERE id = $2",
                           max(deleted), op.room_id)
        ids.position()
    return len(deleted)


async def _resync(conn: Conn, ids: MessageIds, op: Resync) -> Resynced:
    messages = [message_from_row(tuple(row)) for row in await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id "
        "WHERE m.id > $1 OR (m.changed AND m.revision > $1) ORDER BY m.revision", op.after)]
    return Resynced(ids.next - 1, await reads.load_rooms(conn, None), messages)


async def _barrier(conn: Conn, ids: MessageIds, op: Barrier) -> None:
    return None


Runner = Callable[[Any, MessageIds, Any], Awaitable[Any]]
"""(connection, the batch's numbers, operation) → the operation's answer."""

RUNNERS: dict[type, Runner] = {
    MarkRead: _mark_read, EditMessage: _edit, DeleteMessage: _delete, React: _react, UpsertUser: _upsert_user,
    SetLastSeen: _set_last_seen, CreateRoom: _create_room, OpenDirect: _open_direct, ChangeRoom: _change_room,
    HostChangeRoom: _host_change_room, RevokeUser: _revoke_user, WebhookProgress: _webhook_progress,
    StoreFile: _store_file, LoadRooms: _load_rooms, Prune: _prune, Barrier: _barrier, Resync: _resync,
}
"""Every operation but the batched ``AppendMessage`` (see ``append_messages``)."""
