"""Administration from the CLI against PostgreSQL: the SQLite ``AdminStore``'s commands
(synchronous, each on a private event loop), and ``copy``, which moves a single-host
SQLite installation over.

Every write transaction takes the write lock first (see ``schema``), as the daemon's do,
so the log ids and webhook seqs it writes follow the daemon's in commit order.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from ...config import redact
from ...errors import DirectRoom, NoSuchRoom, StoreError
from ...models import Message, Refusal, RoomSummary
from ..queries import MESSAGES_WITH_SENDER, message_from_row
from ..schema import open_sync
from . import reads, writes
from .schema import connect, require_current

T = TypeVar("T")

WRITE_LOCK = "SELECT last FROM message_numbers FOR UPDATE"

COPIED_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("users", ("id", "username", "first_name", "updated_ms", "last_seen_ms", "revoked_before_ms")),
    ("rooms", ("id", "name", "room_type", "created_ms", "pruned_through", "owner_id", "direct_key")),
    ("participants", ("room_id", "user_id", "last_read_id", "joined_ms")),
    ("messages", ("id", "room_id", "sender_id", "content", "created_ms", "reply_to", "message_type", "client_msg_id",
                  "revision", "edited_ms", "deleted", "thread_root_id", "reply_count", "last_reply_ms", "mentions",
                  "reactions", "attachments", "changed")),
    ("membership_log", ("id", "room_id", "user_id", "change")),
    ("reactions", ("message_id", "emoji", "user_id")),
    ("mentions", ("room_id", "user_id", "message_id")),
    ("files", ("id", "uploader_id", "name", "size", "content_type", "storage_key", "created_ms")),
    ("file_posts", ("file_id", "message_id", "room_id")),
    ("webhook_events", ("seq", "event", "body", "created_ms")),
    ("webhook_cursors", ("url", "through")),
)
"""Every table and column ``copy`` moves, parents before children; ``reactions`` in rowid
order, which keeps each message's emoji in the order of their first use."""
BOOLEAN_COLUMNS = {"deleted", "changed"}
IDENTITIES = {"rooms": "id", "membership_log": "id", "files": "id", "webhook_events": "seq", "reactions": "id"}
COPY_CHUNK = 10_000


class PostgresAdmin:
    """Room and participant changes made by the CLI, each logged for running servers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._runner = asyncio.Runner()
        try:
            self._conn: asyncpg.Connection = self._run(connect(url))
            self._run(require_current(self._conn, url))
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            return self._runner.run(coroutine)
        except asyncpg.PostgresError as exc:
            raise StoreError(f"database {redact(self.url)}: {exc}") from None

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            self._runner.run(conn.close())
        self._runner.close()

    async def _locked(self, change: Any) -> Any:
        async with self._conn.transaction():
            await self._conn.execute(WRITE_LOCK)
            return await change(self._conn)

    def create_room(self, name: str, room_type: str, members: list[int]) -> int:
        async def create(conn: asyncpg.Connection) -> int:
            if room_type == "direct":
                first, second = sorted(set(members))  # (the CLI checked there are two)
                return (await writes.direct_room(conn, first, second)).room_id
            return (await writes.create_room(conn, name, room_type, members)).room_id
        return int(self._run(self._locked(create)))

    def room_exists(self, room_id: int) -> bool:
        return self._run(writes.room_exists(self._conn, room_id))

    def add_members(self, room_id: int, user_ids: list[int]) -> None:
        self._change(room_id, "add", user_ids)

    def remove_members(self, room_id: int, user_ids: list[int]) -> None:
        self._change(room_id, "remove", user_ids)

    def _change(self, room_id: int, change: str, user_ids: list[int]) -> None:
        async def host_change(conn: asyncpg.Connection) -> Any:
            return await writes.host_change(conn, room_id, change, user_ids=user_ids)
        outcome = self._run(self._locked(host_change))
        if outcome is Refusal.NOT_FOUND:
            raise NoSuchRoom(room_id)
        if outcome is Refusal.DIRECT_ROOM:
            raise DirectRoom(room_id)

    def export_room(self, room_id: int, *, chunk: int = 1000) -> Iterator[Message]:
        after = 0
        while True:
            rows = self._run(self._conn.fetch(MESSAGES_WITH_SENDER + "WHERE m.room_id = $1 AND m.id > $2 "
                                              "ORDER BY m.id LIMIT $3", room_id, after, chunk))
            if not rows:
                return
            for row in rows:
                yield message_from_row(tuple(row))
            after = rows[-1][0]

    def user_names(self, user_id: int) -> tuple[str, str]:
        return self._run(reads.user_names(self._conn, user_id))

    def list_rooms(self) -> list[RoomSummary]:
        rows = self._run(self._conn.fetch(
            "SELECT r.id, r.name, r.room_type, (SELECT COUNT(*) FROM messages m WHERE m.room_id = r.id), "
            "COALESCE((SELECT array_agg(u.id ORDER BY u.id) FROM participants p JOIN users u ON u.id = p.user_id "
            "WHERE p.room_id = r.id), '{}'), "
            "COALESCE((SELECT array_agg(u.username ORDER BY u.id) FROM participants p JOIN users u "
            "ON u.id = p.user_id WHERE p.room_id = r.id), '{}') FROM rooms r ORDER BY r.id"))
        return [RoomSummary(room_id, name, room_type, list(zip(ids, names, strict=True)), count)
                for room_id, name, room_type, count, ids, names in rows]

    def copy_from(self, source: Path) -> dict[str, int]:
        """Copy a whole SQLite database into this (migrated, empty) one; rows per table."""
        if not source.is_file():
            raise StoreError(f"{source} is not a SQLite database file")
        sqlite = open_sync(source)  # (brought to the current schema first, as every command does)
        try:
            return self._run(self._locked(lambda conn: _copy(conn, sqlite, source)))
        finally:
            sqlite.close()


async def _copy(conn: asyncpg.Connection, sqlite: sqlite3.Connection, source: Path) -> dict[str, int]:
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM rooms) OR EXISTS (SELECT 1 FROM messages) "
                           "OR EXISTS (SELECT 1 FROM users WHERE id <> 0)"):
        raise StoreError("the target database already holds rooms, messages or users; copy needs an empty one")
    counts: dict[str, int] = {}
    try:
        await conn.execute("DELETE FROM users WHERE id = 0")  # (the source has its own system user)
        for table, columns in COPIED_TABLES:
            order = "rowid" if table == "reactions" else columns[0]
            cursor = sqlite.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
            flags = [column in BOOLEAN_COLUMNS for column in columns]
            counts[table] = 0
            while rows := cursor.fetchmany(COPY_CHUNK):
                records = [tuple(bool(value) if flag else value for value, flag in zip(row, flags, strict=True))
                           for row in rows]
                await conn.copy_records_to_table(table, records=records, columns=columns)
                counts[table] += len(records)
        last = sqlite.execute("SELECT last FROM message_numbers").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {source}: {exc}") from None
    await conn.execute("UPDATE message_numbers SET last = $1", last)
    for table, column in IDENTITIES.items():
        await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                           f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)")
    return counts
