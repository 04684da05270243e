"""Persistence: the SQLite schema, its migrations, and every SQL statement of unichatd.

Two connections serve the daemon.  The *writer* owns every write and runs them as
group commits: whatever was submitted while the previous transaction ran goes into the
next single ``BEGIN IMMEDIATE … COMMIT``, and each submitter's future is resolved (in
submission order) only after that commit.  So an acknowledged message is on disk, and
the thread hop that aiosqlite costs per call is paid per batch, not per message.  The
*reader* serves history pages; WAL lets it read while the writer writes.

Message ids are assigned here, by the single writer, so they grow strictly across the
whole server.  One daemon per database file: the CLI's room commands write rooms and
participants (never messages) and log each change in ``membership_log``, which the
daemon polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from .metrics import BATCH_BOUNDS, LATENCY_BOUNDS, Histogram
from .protocol import Message

log = structlog.get_logger("unichatd.store")

PREVIEW_CHARS = 200
CHECKPOINT_INTERVAL = 0.1
"""Seconds between background WAL checkpoints."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024

_MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        first_name TEXT NOT NULL DEFAULT '',
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        room_type TEXT NOT NULL DEFAULT 'group',
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE participants (
        room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id),
        last_read_id INTEGER NOT NULL DEFAULT 0,
        joined_ms INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX participants_by_user ON participants(user_id);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        sender_id INTEGER NOT NULL REFERENCES users(id),
        content TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        reply_to INTEGER,
        message_type TEXT NOT NULL DEFAULT 'text',
        client_msg_id TEXT
    );
    -- History pages and "messages after the marker" walk this index, and sender_id makes
    -- unread counts an index-only scan.
    CREATE INDEX messages_by_room ON messages(room_id, id, sender_id);
    CREATE UNIQUE INDEX messages_client_msg_id
        ON messages(sender_id, room_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
    CREATE TABLE membership_log (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL,
        user_id INTEGER,
        change TEXT NOT NULL
    );
    """,
    # 2: retention remembers, per room, the newest message id it deleted.
    """
    ALTER TABLE rooms ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(Exception):
    """A database problem the caller can report (a locked, corrupt or too-new database)."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _configure(conn: sqlite3.Connection) -> None:
    # WAL + synchronous=NORMAL: a committed transaction survives a crash of the
    # process (it is in the WAL file before COMMIT returns); on power loss the last
    # transactions before the crash may be lost, never corrupted.  See docs/reliability.md.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE … COMMIT`` (rolled back on any exception) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk does): a second ROLLBACK would
        # fail and hide the real cause.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def create_private(path: Path) -> None:
    """Make sure a data file is readable by its owner alone (mode 0600).

    SQLite gives the WAL and shared-memory files the mode of the database file, so a
    database created here keeps all three private; an older one is tightened.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    except OSError:
        return  # (a directory we cannot write: SQLite reports it with the path)
    for existing in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            mode = existing.stat().st_mode
            if mode & 0o077:
                existing.chmod(mode & 0o700)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` (``PRAGMA user_version``)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this unichatd ({SCHEMA_VERSION})"
        )
    for number in range(version, SCHEMA_VERSION):
        with _immediate(conn):
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number + 1}")


def open_sync(path: Path) -> sqlite3.Connection:
    """A configured, migrated connection for the CLI (autocommit; explicit transactions)."""
    create_private(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        _configure(conn)
        migrate(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    return conn


# ---------------------------------------------------------------------------
# What the daemon keeps in memory, as loaded from the database


@dataclass(slots=True)
class RoomRecord:
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
class NewMessage:
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


_MESSAGE_COLUMNS = (
    "m.id, m.room_id, m.sender_id, u.username, u.first_name, m.content, m.created_ms, "
    "m.reply_to, m.client_msg_id, m.message_type"
)


def _message(row: Sequence[Any]) -> Message:
    return Message(*row)


# ---------------------------------------------------------------------------
# The daemon's store


@dataclass(slots=True)
class _Op:
    kind: str
    payload: Any
    future: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class _Failed:
    error: str


class Store:
    """The daemon's SQLite store: a group-committing writer and a reader."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: list[_Op] = []
        self._wakeup = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_id = 1
        self._failure: str | None = None
        """The error the last write failed with, until a write succeeds (logged once)."""
        self.batch_sizes = Histogram(BATCH_BOUNDS)
        """Operations per group-commit transaction (for metrics)."""
        self.write_latency = Histogram(LATENCY_BOUNDS)
        """Seconds per group-commit transaction, thread hop included (for metrics)."""

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        create_private(self.path)
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._call(_configure)
            await self._call(migrate)
            # The daemon keeps hot index and table pages in memory (32 MB) instead of
            # reading them back per batch; the CLI's short-lived connections do not need it.
            await self._writer.execute("PRAGMA cache_size=-32000")
            # Checkpoints run on their own connection (see _run_checkpoints), never inside
            # a group commit, whose acks would otherwise wait for the copy and its fsync.
            await self._writer.execute("PRAGMA wal_autocheckpoint=0")
            # After a reset, a WAL that grew under a burst is cut back to this size.
            await self._writer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA foreign_keys=ON")
        await self._reader.execute("PRAGMA busy_timeout=5000")
        await self._reader.execute("PRAGMA cache_size=-32000")
        async with self._writer.execute("SELECT COALESCE(MAX(id), 0) FROM messages") as cursor:
            row = await cursor.fetchone()
        self._next_id = (row[0] if row else 0) + 1
        self._writer_task = asyncio.create_task(self._run_writer(), name="unichatd-writer")
        self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
        await self._checkpointer.execute("PRAGMA busy_timeout=5000")
        self._checkpoint_task = asyncio.create_task(self._run_checkpoints(), name="unichatd-checkpoint")

    async def _run_checkpoints(self) -> None:
        """Copy the WAL back into the database in the background, every CHECKPOINT_INTERVAL.

        PASSIVE never blocks the writer or readers; the fsync it implies happens here, on
        this connection's thread, not on the path of any acknowledgement.
        """
        assert self._checkpointer is not None
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # busy or locked: the next round tries again
                log.warning("store.checkpoint_failed", error=str(exc))

    async def _call(self, fn: Any) -> Any:
        """Run ``fn(sqlite3_connection)`` in the writer's thread: one hop for a whole batch.

        aiosqlite has no public call for this; its public calls cost one thread hop
        (~100 µs) each, which per message would cap throughput far below the target.
        """
        assert self._writer is not None
        writer = self._writer
        return await writer._execute(fn, writer._conn)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Finish every write already submitted, then close both connections."""
        self._closing = True
        self._wakeup.set()
        if self._writer_task is not None:
            await self._writer_task
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
        if self._writer is not None and self._checkpointer is not None:
            # A last full checkpoint leaves a compact database file behind.
            with contextlib.suppress(sqlite3.Error):
                await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for conn in (self._checkpointer, self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._checkpointer = self._reader = self._writer = None

    # -- submissions (each resolved after the commit that holds it) -----------

    def _submit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        # The loop is looked up once: asyncio.get_running_loop() costs a getpid() call.
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closing:
            future.set_exception(StoreError("store is closing"))
            return future
        self._queue.append(_Op(kind, payload, future))
        self._wakeup.set()
        return future

    def append_message(self, message: NewMessage) -> asyncio.Future[Stored]:
        """Store a message; resolves to it (or to the original, for a repeated client_msg_id)."""
        return self._submit("message", message)

    def mark_read(
        self, room_id: int, user_id: int, message_ids: Sequence[int]
    ) -> asyncio.Future[ReadResult | None]:
        """Move the user's read marker; resolves to None when they are not a participant."""
        return self._submit("read", (room_id, user_id, tuple(message_ids)))

    def flush(self) -> asyncio.Future[None]:
        """Resolves once every write submitted before it has committed and been answered."""
        return self._submit("barrier", None)

    def upsert_user(self, user_id: int, username: str, first_name: str) -> asyncio.Future[None]:
        return self._submit("user", (user_id, username, first_name))

    def prune(self, room_id: int, before_ms: int, limit: int) -> asyncio.Future[int]:
        """Delete up to ``limit`` of the room's oldest messages created before ``before_ms``.

        Resolves to how many were deleted; a small ``limit`` keeps each transaction short,
        so live writes queued meanwhile wait at most one such batch.
        """
        return self._submit("prune", (room_id, before_ms, limit))

    def load_rooms(self, room_ids: Iterable[int] | None = None) -> asyncio.Future[Snapshot]:
        """Rooms, participants, markers, unread counts and last messages (all rooms if None).

        Runs in the writer's sequence, so the counts agree exactly with the messages
        whose commits resolved before it.
        """
        return self._submit("load", None if room_ids is None else tuple(room_ids))

    # -- the writer ------------------------------------------------------------

    async def _run_writer(self) -> None:
        while True:
            if self._closing and not self._queue:
                return
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results: list[Any] = await self._call(partial(self._write_batch, batch=batch))
            except Exception:
                # The transaction was rolled back. Whatever made it fail must not fail the
                # others: each operation is tried again in a transaction of its own.
                results = [await self._write_alone(op) for op in batch]
            else:
                if self._failure is not None:
                    log.warning("store.write_recovered", after=self._failure)
                    self._failure = None
            finally:
                self.batch_sizes.observe(len(batch))
                self.write_latency.observe(time.perf_counter() - started)
            for op, result in zip(batch, results, strict=True):
                if op.future.done():
                    continue
                if isinstance(result, _Failed):
                    op.future.set_exception(StoreError(f"write failed: {result.error}"))
                else:
                    op.future.set_result(result)
            if self._closing:
                self._wakeup.set()

    async def _write_alone(self, op: _Op) -> Any:
        try:
            return (await self._call(partial(self._write_batch, batch=[op])))[0]
        except Exception as exc:
            # A full disk or a read-only file fails every write alike: say so once, not per write.
            if str(exc) != self._failure:
                self._failure = str(exc)
                log.error("store.write_failed", kind=op.kind, error=str(exc), database=str(self.path))
            return _Failed(str(exc))

    def _write_batch(self, conn: sqlite3.Connection, *, batch: list[_Op]) -> list[Any]:
        """One transaction for the whole batch; runs in the writer's thread."""
        results: list[Any] = []
        next_id = self._next_id
        with _immediate(conn):
            start = 0
            while start < len(batch):
                op = batch[start]
                if op.kind == "message":
                    end = start
                    while end < len(batch) and batch[end].kind == "message":
                        end += 1
                    messages, next_id = _insert_messages(
                        conn, [o.payload for o in batch[start:end]], next_id
                    )
                    results.extend(messages)
                    start = end
                    continue
                if op.kind == "read":
                    results.append(_mark_read(conn, *op.payload))
                elif op.kind == "user":
                    conn.execute(
                        "INSERT INTO users(id, username, first_name, updated_ms) VALUES (?,?,?,?) "
                        "ON CONFLICT(id) DO UPDATE SET username=excluded.username, "
                        "first_name=excluded.first_name, updated_ms=excluded.updated_ms "
                        "WHERE username != excluded.username OR first_name != excluded.first_name",
                        (*op.payload, _now_ms()),
                    )
                    results.append(None)
                elif op.kind == "load":
                    results.append(_load_rooms(conn, op.payload))
                elif op.kind == "prune":
                    results.append(_prune(conn, *op.payload))
                elif op.kind == "barrier":
                    results.append(None)
                else:  # pragma: no cover - the submitters above are the only ones
                    raise AssertionError(op.kind)
                start += 1
        self._next_id = next_id
        return results

    # -- reads -----------------------------------------------------------------

    async def history(
        self, room_id: int, *, before_id: int | None, after_id: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """A page of messages, oldest first, and whether more lie beyond it."""
        assert self._reader is not None
        base = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id "
            "WHERE m.room_id = ? "
        )
        if after_id is not None:
            sql = base + "AND m.id > ? ORDER BY m.id ASC LIMIT ?"
            params: tuple[int, ...] = (room_id, after_id, limit + 1)
        elif before_id is not None:
            sql = base + "AND m.id < ? ORDER BY m.id DESC LIMIT ?"
            params = (room_id, before_id, limit + 1)
        else:
            sql = base + "ORDER BY m.id DESC LIMIT ?"
            params = (room_id, limit + 1)
        rows = list(await self._reader.execute_fetchall(sql, params))
        has_more = len(rows) > limit
        messages = [_message(row) for row in rows[:limit]]
        if after_id is None:
            messages.reverse()
        return messages, has_more

    async def message_room(self, message_id: int) -> int | None:
        """The room a message belongs to, or None when there is no such message."""
        assert self._reader is not None
        rows = list(
            await self._reader.execute_fetchall(
                "SELECT room_id FROM messages WHERE id = ?", (message_id,)
            )
        )
        return int(rows[0][0]) if rows else None

    async def membership_changes(self, after_log_id: int) -> list[MembershipChange]:
        assert self._reader is not None
        rows = await self._reader.execute_fetchall(
            "SELECT id, room_id, user_id, change FROM membership_log WHERE id > ? ORDER BY id",
            (after_log_id,),
        )
        return [MembershipChange(*row) for row in rows]



def _insert_messages(
    conn: sqlite3.Connection, pending: list[NewMessage], next_id: int
) -> tuple[list[Stored], int]:
    """Insert a run of messages, answering repeated client_msg_ids with the original."""
    existing: dict[tuple[int, int, str], Message] = {}
    keyed = [(m.sender_id, m.room_id, m.client_msg_id) for m in pending if m.client_msg_id]
    if keyed:
        values = ",".join("(?,?,?)" for _ in keyed)
        flat = [item for key in keyed for item in key]
        rows = conn.execute(
            f"WITH k(s, r, c) AS (VALUES {values}) SELECT {_MESSAGE_COLUMNS} "
            "FROM k JOIN messages m ON m.sender_id = k.s AND m.room_id = k.r "
            "AND m.client_msg_id = k.c JOIN users u ON u.id = m.sender_id",
            flat,
        ).fetchall()
        for row in rows:
            message = _message(row)
            assert message.client_msg_id is not None
            existing[(message.sender_id, message.room_id, message.client_msg_id)] = message
    now = _now_ms()
    results: list[Stored] = []
    rows_to_insert: list[tuple[Any, ...]] = []
    for item in pending:
        key = (item.sender_id, item.room_id, item.client_msg_id) if item.client_msg_id else None
        if key is not None and key in existing:
            results.append(Stored(existing[key], created=False))
            continue
        message = Message(
            next_id,
            item.room_id,
            item.sender_id,
            item.sender_username,
            item.sender_first_name,
            item.content,
            now,
            item.reply_to,
            item.client_msg_id,
        )
        next_id += 1
        if key is not None:
            existing[key] = message
        results.append(Stored(message, created=True))
        rows_to_insert.append(
            (message.id, message.room_id, message.sender_id, message.content, now,
             message.reply_to, message.client_msg_id)
        )
    conn.executemany(
        "INSERT INTO messages(id, room_id, sender_id, content, created_ms, reply_to, "
        "client_msg_id) VALUES (?,?,?,?,?,?,?)",
        rows_to_insert,
    )
    return results, next_id


def _prune(conn: sqlite3.Connection, room_id: int, before_ms: int, limit: int) -> int:
    deleted = [row[0] for row in conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE room_id = ? AND created_ms < ? "
        "ORDER BY id LIMIT ?) RETURNING id",
        (room_id, before_ms, limit),
    )]
    if deleted:
        conn.execute("UPDATE rooms SET pruned_through = MAX(pruned_through, ?) WHERE id = ?",
                     (max(deleted), room_id))
    return len(deleted)


def _unread_count(conn: sqlite3.Connection, room_id: int, user_id: int, marker: int) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM messages WHERE room_id = ? AND id > ? AND sender_id != ?",
        (room_id, marker, user_id),
    ).fetchone()
    return int(row[0])


def _mark_read(
    conn: sqlite3.Connection, room_id: int, user_id: int, message_ids: tuple[int, ...]
) -> ReadResult | None:
    row = conn.execute(
        "SELECT last_read_id FROM participants WHERE room_id = ? AND user_id = ?",
        (room_id, user_id),
    ).fetchone()
    if row is None:
        return None  # no longer a participant; failing here would roll back the whole batch
    old_marker = int(row[0])
    if message_ids:
        marks = ",".join("?" * len(message_ids))
        target = conn.execute(
            f"SELECT MAX(id) FROM messages WHERE room_id = ? AND id IN ({marks})",
            (room_id, *message_ids),
        ).fetchone()[0]
    else:
        target = conn.execute(
            "SELECT MAX(id) FROM messages WHERE room_id = ?", (room_id,)
        ).fetchone()[0]
    new_marker = max(old_marker, int(target or 0))
    if new_marker != old_marker:
        conn.execute(
            "UPDATE participants SET last_read_id = ? WHERE room_id = ? AND user_id = ?",
            (new_marker, room_id, user_id),
        )
    return ReadResult(new_marker, _unread_count(conn, room_id, user_id, new_marker),
                      new_marker != old_marker)


def _load_rooms(conn: sqlite3.Connection, room_ids: tuple[int, ...] | None) -> Snapshot:
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
        room.unread[user_id] = _unread_count(conn, room_id, user_id, marker)
        user_ids.add(user_id)
    for room in rooms.values():
        row = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id "
            "WHERE m.room_id = ? ORDER BY m.id DESC LIMIT 1",
            (room.id,),
        ).fetchone()
        room.last_message = _message(row) if row else None
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


# ---------------------------------------------------------------------------
# Administration from the CLI (synchronous; the daemon learns of it from membership_log)


@dataclass(frozen=True, slots=True)
class RoomSummary:
    id: int
    name: str
    room_type: str
    participants: list[tuple[int, str]]
    message_count: int


_IMPORT_SQL = "INSERT INTO messages(room_id, sender_id, content, created_ms) VALUES (?,?,?,?)"


class AdminStore:
    """Room and participant changes made by the CLI, each logged for the running daemon."""

    def __init__(self, path: Path) -> None:
        self.conn = open_sync(path)

    def close(self) -> None:
        self.conn.close()

    def _ensure_users(self, user_ids: Iterable[int]) -> None:
        # A member who never connected gets a placeholder name until their first token.
        self.conn.executemany(
            "INSERT OR IGNORE INTO users(id, username, first_name, updated_ms) VALUES (?, ?, '', ?)",
            [(uid, f"user{uid}", _now_ms()) for uid in user_ids],
        )

    def create_room(self, name: str, room_type: str, members: Sequence[int]) -> int:
        with _immediate(self.conn) as conn:
            room_id = conn.execute(
                "INSERT INTO rooms(name, room_type, created_ms) VALUES (?, ?, ?)",
                (name, room_type, _now_ms()),
            ).lastrowid
            assert room_id is not None
            conn.execute(
                "INSERT INTO membership_log(room_id, user_id, change) VALUES (?, NULL, 'room')",
                (room_id,),
            )
            self._add(room_id, members)
        return room_id

    def _add(self, room_id: int, user_ids: Sequence[int]) -> None:
        self._ensure_users(user_ids)
        for user_id in dict.fromkeys(user_ids):
            # A new member starts with everything before their arrival read.
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO participants(room_id, user_id, last_read_id, joined_ms) "
                "VALUES (?, ?, (SELECT COALESCE(MAX(id), 0) FROM messages WHERE room_id = ?), ?)",
                (room_id, user_id, room_id, _now_ms()),
            )
            if cursor.rowcount:
                self.conn.execute(
                    "INSERT INTO membership_log(room_id, user_id, change) VALUES (?, ?, 'add')",
                    (room_id, user_id),
                )

    def room_exists(self, room_id: int) -> bool:
        return self.conn.execute("SELECT 1 FROM rooms WHERE id = ?", (room_id,)).fetchone() is not None

    def add_members(self, room_id: int, user_ids: Sequence[int]) -> None:
        with _immediate(self.conn):
            if not self.room_exists(room_id):
                raise LookupError(f"room {room_id} does not exist")
            self._add(room_id, user_ids)

    def remove_members(self, room_id: int, user_ids: Sequence[int]) -> None:
        with _immediate(self.conn) as conn:
            if not self.room_exists(room_id):
                raise LookupError(f"room {room_id} does not exist")
            for user_id in dict.fromkeys(user_ids):
                cursor = conn.execute(
                    "DELETE FROM participants WHERE room_id = ? AND user_id = ?", (room_id, user_id)
                )
                if cursor.rowcount:
                    conn.execute(
                        "INSERT INTO membership_log(room_id, user_id, change) VALUES (?, ?, 'remove')",
                        (room_id, user_id),
                    )

    def import_messages(self, rows: Iterable[tuple[int, int, str, int]], *, chunk: int = 50_000) -> None:
        """Bulk-load (room_id, sender_id, content, created_ms) rows, e.g. to seed a benchmark.

        Only for a database no daemon is serving: the daemon assigns message ids itself.
        """
        with _immediate(self.conn) as conn:
            batch: list[tuple[int, int, str, int]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= chunk:
                    conn.executemany(_IMPORT_SQL, batch)
                    batch.clear()
            conn.executemany(_IMPORT_SQL, batch)

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole database, taken while the daemon keeps writing.

        ``VACUUM INTO`` reads one snapshot (WAL lets writers go on) and writes a compact,
        self-contained file.  The target is created here first, empty and private (0600),
        which VACUUM INTO accepts; an existing target raises FileExistsError.
        """
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self.conn.execute("VACUUM INTO ?", (str(target),))
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    def export_room(self, room_id: int, *, chunk: int = 1000) -> Iterator[Message]:
        """Every message of the room, oldest first, fetched ``chunk`` rows at a time."""
        after = 0
        while True:
            rows = self.conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id "
                "WHERE m.room_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
                (room_id, after, chunk),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _message(row)
            after = rows[-1][0]

    def user_names(self, user_id: int) -> tuple[str, str]:
        """(username, first_name) as last seen in a token, or the placeholder name."""
        row = self.conn.execute("SELECT username, first_name FROM users WHERE id = ?", (user_id,)).fetchone()
        return (str(row[0]), str(row[1])) if row else (f"user{user_id}", "")

    def first_message_id(self, room_id: int) -> int | None:
        row = self.conn.execute("SELECT MIN(id) FROM messages WHERE room_id = ?", (room_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def list_rooms(self) -> list[RoomSummary]:
        summaries = []
        for room_id, name, room_type in self.conn.execute(
            "SELECT id, name, room_type FROM rooms ORDER BY id"
        ).fetchall():
            members = self.conn.execute(
                "SELECT u.id, u.username FROM participants p JOIN users u ON u.id = p.user_id "
                "WHERE p.room_id = ? ORDER BY u.id",
                (room_id,),
            ).fetchall()
            count = self.conn.execute(
                "SELECT COUNT(*) FROM messages WHERE room_id = ?", (room_id,)
            ).fetchone()[0]
            summaries.append(RoomSummary(room_id, name, room_type, members, count))
        return summaries
