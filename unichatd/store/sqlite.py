"""The daemon's SQLite store: the embedded :class:`~unichatd.interfaces.MessageStore`.

Four connections, each on its own thread: the group-commit *writer* owns every
write (the search indexer's batches included); the *reader* serves history pages,
threads and changes (WAL lets it read while the writer writes); the *searcher* runs
full-text searches; the *checkpointer* copies the WAL back into the database in the
background.  One
daemon per database file: the CLI's room commands write rooms and participants
(never messages) and log each change in ``membership_log``, which the daemon polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import structlog

from ..errors import StoreError
from ..models import (
    FileRef,
    MembershipChange,
    Message,
    NewMessage,
    Stored,
    StoredFile,
    UserInfo,
)
from ..protocol.search import SearchTerm
from . import fulltext, queries
from .operations import IndexMessages, index_messages
from .schema import configure, create_private, immediate, migrate
from .threads import ConnectionThread
from .writer import GroupCommitWriter, SqliteTransactions
from .writes import WritingStore

log = structlog.get_logger("unichatd.store")

T = TypeVar("T")

CHECKPOINT_INTERVAL = 0.1
"""Seconds between background WAL checkpoints."""
INDEX_INTERVAL = 0.2
"""Seconds between runs of the search indexer while it has caught up."""
INDEX_BATCH = 5000
"""Messages indexed per run: a few milliseconds of the writer's time."""
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


def _index_everything(conn: sqlite3.Connection) -> None:
    while True:
        with immediate(conn):
            if index_messages(conn, INDEX_BATCH) < INDEX_BATCH:
                return


def _set_up_reader(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA cache_size={CACHE_PAGES}")


def _set_up_checkpointer(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout=5000")


class SqliteStore(WritingStore):
    """Messages, rooms and read markers in one SQLite file, written by group commit."""

    def __init__(self, path: Path, *, webhook_events: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.path = path
        self._webhook_events = webhook_events
        self._writer_thread = ConnectionThread("writer")
        self._reader = ConnectionThread("reader")
        self._searcher = ConnectionThread("search")
        """Searches read on a connection of their own: a slow one never holds up a history
        page, a catch-up or a reply's check."""
        self._checkpointer = ConnectionThread("checkpoint")
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._index_task: asyncio.Task[None] | None = None
        self._appends = 0
        """Messages handed to the writer."""
        self._indexed_appends = 0
        """The value of _appends when the index last caught up with everything committed."""

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        create_private(self.path)
        try:
            await self._writer_thread.open(self.path, _set_up_writer)
            # Messages not indexed yet (an import, a crash before the indexer ran) go in now.
            await self._writer_thread.call(_index_everything)
            next_id = await self._writer_thread.call(queries.last_number) + 1
            await self._reader.open(self.path, _set_up_reader)
            await self._searcher.open(self.path, _set_up_reader)
            await self._checkpointer.open(self.path, _set_up_checkpointer)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        transactions = SqliteTransactions(self._writer_thread, next_message_id=next_id,
                                          webhook_events=self._webhook_events)
        self._writer = GroupCommitWriter(transactions, database=str(self.path), batch_sizes=self.batch_sizes,
                                         write_latency=self.write_latency)
        self._checkpoint_task = asyncio.create_task(self._run_checkpoints(), name="unichatd-checkpoint")
        self._index_task = asyncio.create_task(self._run_indexer(), name="unichatd-indexer")

    async def _run_indexer(self) -> None:
        """Keep the search index close behind the commits, in batches (see IndexMessages)."""
        while True:
            try:
                caught_up = await self._index_pending()
            except StoreError:  # a failing write was logged by the writer; the next round tries again
                caught_up = True
            if caught_up:
                await asyncio.sleep(INDEX_INTERVAL)

    async def _index_pending(self) -> bool:
        """Index up to INDEX_BATCH of the messages appended since the last run; True when
        none is left.  Costs nothing (no write) when nothing was appended."""
        appended = self._appends
        if appended == self._indexed_appends:
            return True
        indexed = await self._submit(IndexMessages(INDEX_BATCH))
        if indexed < INDEX_BATCH:
            self._indexed_appends = max(self._indexed_appends, appended)
            return True
        return False

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
        for task in (self._index_task, self._checkpoint_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreError):
                    await task
        if self._writer is not None:
            # A last full checkpoint leaves a compact database file behind.
            with contextlib.suppress(sqlite3.Error):
                await self._writer_thread.call(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        for thread in (self._checkpointer, self._searcher, self._reader, self._writer_thread):
            await thread.close()
        self._writer = None

    def append_message(self, message: NewMessage) -> asyncio.Future[Stored]:
        self._appends += 1  # (the indexer's cue)
        return super().append_message(message)

    # -- reads -----------------------------------------------------------------------

    async def history(
        self, room_id: int, *, before_id: int | None, after_id: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """A page of messages, oldest first, and whether more lie beyond it."""
        return await self._reader.call(lambda conn: queries.history(conn, room_id, before_id, after_id, limit))

    async def reply_target(self, message_id: int) -> tuple[int, int] | None:
        """(room, thread root) of the message a reply answers, or None when there is none."""
        return await self._reader.call(lambda conn: queries.reply_target(conn, message_id))

    async def thread(self, room_id: int, message_id: int, *, after_id: int | None,
                     limit: int) -> tuple[Message, list[Message], bool] | None:
        """The root of the message's thread and a page of its replies; None when the
        message is not in the room."""
        return await self._reader.call(lambda conn: queries.thread(conn, room_id, message_id, after_id, limit))

    async def changes(self, room_id: int, *, since_revision: int, through_id: int | None,
                      limit: int) -> tuple[list[Message], bool]:
        """Messages changed after ``since_revision``, in revision order."""
        return await self._reader.call(
            lambda conn: queries.changes(conn, room_id, since_revision, through_id, limit))

    async def search(self, room_ids: Sequence[int], terms: Sequence[SearchTerm], *, other_rooms: Sequence[int],
                     before_id: int | None, limit: int) -> tuple[list[tuple[Message, str]], bool]:
        """Messages of these rooms matching every term, newest first, each with a snippet.

        Messages committed before the search are indexed first, so a search finds them.
        ``other_rooms`` are every other room (the index is told the shorter list).
        """
        while not await self._index_pending():
            pass
        expression = fulltext.expression(terms, room_ids, other_rooms)
        return await self._searcher.call(lambda conn: queries.search(conn, expression, before_id, limit))

    async def find_users(self, query: str, limit: int) -> list[UserInfo]:
        return await self._reader.call(lambda conn: queries.find_users(conn, query, limit))

    async def users_by_id(self, user_ids: Sequence[int]) -> list[UserInfo]:
        return await self._reader.call(lambda conn: queries.users_by_id(conn, user_ids))

    async def stored_file(self, file_id: int) -> StoredFile | None:
        return await self._reader.call(lambda conn: queries.stored_file(conn, file_id))

    async def files_of(self, uploader_id: int, file_ids: Sequence[int]) -> list[FileRef]:
        return await self._reader.call(lambda conn: queries.files_of(conn, uploader_id, file_ids))

    async def uploads_since(self, uploader_id: int, since_ms: int) -> list[tuple[int, int]]:
        return await self._reader.call(lambda conn: queries.uploads_since(conn, uploader_id, since_ms))

    async def revocations(self) -> dict[int, int]:
        """user id → the ms before which their tokens are refused."""
        return await self._reader.call(queries.revocations)

    async def webhook_cursors(self) -> tuple[dict[str, int], int]:
        """Each receiver's cursor, and the newest event's seq (where a new receiver starts)."""
        return await self._reader.call(lambda conn: (queries.webhook_cursors(conn), queries.last_webhook_event(conn)))

    async def webhook_events(self, after_seq: int, events: Sequence[str],
                             limit: int) -> tuple[list[tuple[int, str, bytes, int]], int]:
        """(seq, event, body, created_ms) of the events after ``after_seq`` of these kinds, and
        the seq this look reached (see ``queries.webhook_events``)."""
        return await self._reader.call(lambda conn: queries.webhook_events(conn, after_seq, events, limit))


    async def last_number(self) -> int:
        return await self._reader.call(queries.last_number)

    async def membership_changes(self, after_log_id: int) -> list[MembershipChange]:
        """Membership changes the CLI logged after ``after_log_id``, oldest first."""
        return await self._reader.call(lambda conn: queries.membership_changes(conn, after_log_id))
