"""The daemon's SQLite store: the embedded :class:`~unichatd.interfaces.MessageStore`.

Three connections, each on its own thread: the group-commit *writer* owns every
write; the *reader* serves history pages (WAL lets it read while the writer writes);
the *checkpointer* copies the WAL back into the database in the background.  One
daemon per database file: the CLI's room commands write rooms and participants
(never messages) and log each change in ``membership_log``, which the daemon polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog

from ..errors import StoreError
from ..metrics import BATCH_BOUNDS, LATENCY_BOUNDS, Histogram
from ..models import MembershipChange, Message, NewMessage, ReadResult, Snapshot, Stored
from . import queries
from .operations import AppendMessage, Barrier, LoadRooms, MarkRead, Operation, Prune, UpsertUser
from .schema import configure, create_private, migrate
from .threads import ConnectionThread
from .writer import GroupCommitWriter

log = structlog.get_logger("unichatd.store")

T = TypeVar("T")

CHECKPOINT_INTERVAL = 0.1
"""Seconds between background WAL checkpoints."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024
CACHE_PAGES = "-32000"
"""The daemon keeps hot index and table pages in memory (32 MB) instead of reading them
back per batch; the CLI's short-lived connections do not need it."""


def _set_up_writer(conn: sqlite3.Connection) -> None:
    configure(conn)
    migrate(conn)
    conn.execute(f"PRAGMA cache_size={CACHE_PAGES}")
    # Checkpoints run on their own connection (see _run_checkpoints), never inside a group
    # commit, whose acks would otherwise wait for the copy and its fsync.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    # After a reset, a WAL that grew under a burst is cut back to this size.
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")


def _set_up_reader(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA cache_size={CACHE_PAGES}")


def _set_up_checkpointer(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout=5000")


class SqliteStore:
    """Messages, rooms and read markers in one SQLite file, written by group commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer_thread = ConnectionThread("writer")
        self._reader = ConnectionThread("reader")
        self._checkpointer = ConnectionThread("checkpoint")
        self._writer: GroupCommitWriter | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.batch_sizes = Histogram(BATCH_BOUNDS)
        """Operations per group-commit transaction (for metrics)."""
        self.write_latency = Histogram(LATENCY_BOUNDS)
        """Seconds per group-commit transaction, thread hop included (for metrics)."""

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        create_private(self.path)
        try:
            await self._writer_thread.open(self.path, _set_up_writer)
            next_id = await self._writer_thread.call(queries.last_message_id) + 1
            await self._reader.open(self.path, _set_up_reader)
            await self._checkpointer.open(self.path, _set_up_checkpointer)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._writer = GroupCommitWriter(self._writer_thread, next_message_id=next_id, database=str(self.path),
                                         batch_sizes=self.batch_sizes, write_latency=self.write_latency)
        self._checkpoint_task = asyncio.create_task(self._run_checkpoints(), name="unichatd-checkpoint")

    async def _run_checkpoints(self) -> None:
        """Copy the WAL back into the database in the background, every CHECKPOINT_INTERVAL.

        PASSIVE never blocks the writer or readers; the fsync it implies happens on this
        connection's thread, not on the path of any acknowledgement.
        """
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await self._checkpointer.call(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)"))
            except sqlite3.Error as exc:  # busy or locked: the next round tries again
                log.warning("store.checkpoint_failed", error=str(exc))

    async def close(self) -> None:
        """Finish every write already submitted, then close every connection."""
        if self._writer is not None:
            await self._writer.close()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
        if self._writer is not None:
            # A last full checkpoint leaves a compact database file behind.
            with contextlib.suppress(sqlite3.Error):
                await self._writer_thread.call(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        for thread in (self._checkpointer, self._reader, self._writer_thread):
            await thread.close()
        self._writer = None

    def _submit(self, operation: Operation[T]) -> asyncio.Future[T]:
        if self._writer is None:  # (closed, or never opened): the submitter gets the error
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            future.set_exception(StoreError("store is closing"))
            return future
        return self._writer.submit(operation)

    # -- writes (each resolved after the commit that holds it) -------------------

    def append_message(self, message: NewMessage) -> asyncio.Future[Stored]:
        """Store a message; resolves to it (or to the original, for a repeated client_msg_id)."""
        return self._submit(AppendMessage(message))

    def mark_read(self, room_id: int, user_id: int, message_ids: Sequence[int]) -> asyncio.Future[ReadResult | None]:
        """Move the user's read marker; resolves to None when they are not a participant."""
        return self._submit(MarkRead(room_id, user_id, tuple(message_ids)))

    def upsert_user(self, user_id: int, username: str, first_name: str) -> asyncio.Future[None]:
        return self._submit(UpsertUser(user_id, (username, first_name)))

    def prune(self, room_id: int, before_ms: int, limit: int) -> asyncio.Future[int]:
        """Delete up to ``limit`` of the room's oldest messages created before ``before_ms``.

        Resolves to how many were deleted; a small ``limit`` keeps each transaction short,
        so live writes queued meanwhile wait at most one such batch.
        """
        return self._submit(Prune(room_id, before_ms, limit))

    def load_rooms(self, room_ids: Iterable[int] | None = None) -> asyncio.Future[Snapshot]:
        """Rooms with participants, markers, unread counts and last messages (all if None),
        in the writer's sequence: exact as of the commits resolved before it."""
        return self._submit(LoadRooms(None if room_ids is None else tuple(room_ids)))

    def flush(self) -> asyncio.Future[None]:
        """Resolves once every write submitted before it has committed and been answered."""
        return self._submit(Barrier())

    # -- reads -----------------------------------------------------------------------

    async def history(
        self, room_id: int, *, before_id: int | None, after_id: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """A page of messages, oldest first, and whether more lie beyond it."""
        return await self._reader.call(lambda conn: queries.history(conn, room_id, before_id, after_id, limit))

    async def message_room(self, message_id: int) -> int | None:
        """The room a message belongs to, or None when there is no such message."""
        return await self._reader.call(lambda conn: queries.message_room(conn, message_id))

    async def membership_changes(self, after_log_id: int) -> list[MembershipChange]:
        """Membership changes the CLI logged after ``after_log_id``, oldest first."""
        return await self._reader.call(lambda conn: queries.membership_changes(conn, after_log_id))
