"""The PostgreSQL :class:`~unichatd.interfaces.MessageStore`: the SQLite store's group
commit, on one asyncpg connection for writes and a small pool for reads.

Each batch is one transaction that first locks ``message_numbers`` (see ``schema``) and
takes its numbers from there, so several processes on one database give ids in commit
order.  A connection lost with the database (a restart, a network cut) fails the
writes and reads then in flight — their clients get an error, never an ack — and the
next one connects again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import structlog

from ...config import redact
from ...errors import StoreError
from ...models import FileRef, MembershipChange, Message, StoredFile, UserInfo
from ...protocol.search import SearchTerm
from .. import outbox
from ..operations import AppendMessage, MessageIds, Operation
from ..writer import Batch, CommitGate, GroupCommitWriter
from ..writes import WritingStore
from . import reads
from .schema import CONNECTION_ERRORS, connect, require_current
from .writes import RUNNERS, append_messages, record_writes

if TYPE_CHECKING:
    from .reads import Conn

log = structlog.get_logger("unichatd.store")

T = TypeVar("T")

READERS = 4
"""Connections for reads: history pages, catch-ups and searches run side by side."""


class PostgresTransactions:
    """Batches as transactions on the writer's own connection, reconnected after a loss."""

    def __init__(self, url: str, webhook_events: frozenset[str]) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None
        self._message_events = webhook_events & outbox.MESSAGE_EVENTS
        self.positions = False
        """See ``MessageIds.positions``: set with the commit gate."""

    async def open(self) -> None:
        self._conn = await connect(self._url)
        await require_current(self._conn, self._url)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def run(self, operations: Sequence[Operation[Any]]) -> Batch:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self._url)
        try:
            return await self._write(self._conn, operations)
        except CONNECTION_ERRORS:
            conn, self._conn = self._conn, None
            conn.terminate()
            raise

    async def _write(self, conn: asyncpg.Connection, operations: Sequence[Operation[Any]]) -> Batch:
        results: list[Any] = []
        async with conn.transaction():
            # The write lock, for every process on this database (see schema).
            last = int(await conn.fetchval("SELECT last FROM message_numbers FOR UPDATE"))
            ids = MessageIds(last + 1, self.positions)
            start = 0
            while start < len(operations):
                operation = operations[start]
                done = len(results)
                if type(operation) is AppendMessage:
                    end = start + 1
                    while end < len(operations) and type(operations[end]) is AppendMessage:
                        end += 1
                    results.extend(await append_messages(conn, ids, operations[start:end]))  # type: ignore[arg-type]
                    start = end
                else:
                    results.append(await RUNNERS[type(operation)](conn, ids, operation))
                    start += 1
                if self._message_events:
                    await record_writes(conn, results[done:], self._message_events)
            if ids.next != last + 1:
                await conn.execute("UPDATE message_numbers SET last = $1", ids.next - 1)
        return Batch(results, last, ids.next - 1)


class PostgresStore(WritingStore):
    """Messages, rooms and read markers in a PostgreSQL database, written by group commit."""

    def __init__(self, url: str, *, webhook_events: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.url = url
        self._transactions = PostgresTransactions(url, webhook_events)
        self._readers: asyncpg.Pool | None = None
        self._lock_holder: asyncpg.Connection | None = None
        self._holding = False

    async def open(self) -> None:
        await self._transactions.open()
        try:
            self._readers = await asyncpg.create_pool(self.url, min_size=1, max_size=READERS, timeout=10)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError, TimeoutError) as exc:
            await self._transactions.close()
            raise StoreError(f"cannot connect to database {redact(self.url)}: {exc}") from None
        self._writer = GroupCommitWriter(self._transactions, database=redact(self.url),
                                         batch_sizes=self.batch_sizes, write_latency=self.write_latency)

    def set_commit_gate(self, gate: CommitGate) -> None:
        self._transactions.positions = True
        super().set_commit_gate(gate)

    async def holds_lock(self, name: str) -> bool:
        """Whether this process holds the database-wide lock ``name`` (taken if free): one
        session-level advisory lock on a connection of its own, lost with it."""
        try:
            if self._lock_holder is None or self._lock_holder.is_closed():
                self._holding = False
                self._lock_holder = await asyncpg.connect(self.url, timeout=5)
            if not self._holding:
                self._holding = bool(await self._lock_holder.fetchval(
                    "SELECT pg_try_advisory_lock(hashtext(current_schema() || ':' || $1))", name))
            else:
                await self._lock_holder.fetchval("SELECT 1")  # (still connected: still held)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError, TimeoutError):
            if self._lock_holder is not None:
                self._lock_holder.terminate()
            self._lock_holder, self._holding = None, False
        return self._holding

    async def close(self) -> None:
        if self._lock_holder is not None:
            await self._lock_holder.close()
            self._lock_holder, self._holding = None, False
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        await self._transactions.close()
        if self._readers is not None:
            await self._readers.close()
            self._readers = None

    async def _read(self, query: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``query`` on a reader; a database that is down is a StoreError (the
        request gets an error frame, and the pool connects again for the next)."""
        if self._readers is None:
            raise StoreError("store is closing")
        try:
            async with self._readers.acquire(timeout=10) as conn:
                return await query(conn)
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            raise StoreError(f"cannot read from database {redact(self.url)}: {exc}") from None

    # -- reads -----------------------------------------------------------------------

    async def history(self, room_id: int, *, before_id: int | None, after_id: int | None,
                      limit: int) -> tuple[list[Message], bool]:
        return await self._read(lambda conn: reads.history(conn, room_id, before_id, after_id, limit))

    async def reply_target(self, message_id: int) -> tuple[int, int] | None:
        return await self._read(lambda conn: reads.reply_target(conn, message_id))

    async def thread(self, room_id: int, message_id: int, *, after_id: int | None,
                     limit: int) -> tuple[Message, list[Message], bool] | None:
        return await self._read(lambda conn: reads.thread(conn, room_id, message_id, after_id, limit))

    async def changes(self, room_id: int, *, since_revision: int, through_id: int | None,
                      limit: int) -> tuple[list[Message], bool]:
        return await self._read(lambda conn: reads.changes(conn, room_id, since_revision, through_id, limit))

    async def search(self, room_ids: Sequence[int], terms: Sequence[SearchTerm], *, other_rooms: Sequence[int],
                     before_id: int | None, limit: int) -> tuple[list[tuple[Message, str]], bool]:
        """Committed messages are searchable at once: their words are computed with the row."""
        return await self._read(lambda conn: reads.search(conn, terms, room_ids, other_rooms, before_id, limit))

    async def find_users(self, query: str, limit: int) -> list[UserInfo]:
        return await self._read(lambda conn: reads.find_users(conn, query, limit))

    async def users_by_id(self, user_ids: Sequence[int]) -> list[UserInfo]:
        return await self._read(lambda conn: reads.users_by_id(conn, user_ids))

    async def stored_file(self, file_id: int) -> StoredFile | None:
        return await self._read(lambda conn: reads.stored_file(conn, file_id))

    async def files_of(self, uploader_id: int, file_ids: Sequence[int]) -> list[FileRef]:
        return await self._read(lambda conn: reads.files_of(conn, uploader_id, file_ids))

    async def uploads_since(self, uploader_id: int, since_ms: int) -> list[tuple[int, int]]:
        return await self._read(lambda conn: reads.uploads_since(conn, uploader_id, since_ms))

    async def revocations(self) -> dict[int, int]:
        return await self._read(reads.revocations)

    async def webhook_cursors(self) -> tuple[dict[str, int], int]:
        async def both(conn: Conn) -> tuple[dict[str, int], int]:
            return await reads.webhook_cursors(conn), await reads.last_webhook_event(conn)
        return await self._read(both)

    async def webhook_events(self, after_seq: int, events: Sequence[str],
                             limit: int) -> tuple[list[tuple[int, str, bytes, int]], int]:
        return await self._read(lambda conn: reads.webhook_events(conn, after_seq, events, limit))

    async def last_number(self) -> int:
        return await self._read(reads.last_number)

    async def membership_changes(self, after_log_id: int) -> list[MembershipChange]:
        return await self._read(lambda conn: reads.membership_changes(conn, after_log_id))
