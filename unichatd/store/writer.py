"""The group-commit writer: every write of the daemon, in one sequence.

Whatever was submitted while the previous transaction ran goes into the next single
transaction, and each submitter's future is resolved (in submission order) only after
that commit.  So an acknowledged message is on disk, and the cost of a transaction
(a thread hop for SQLite, a round trip for PostgreSQL) is paid per batch, not per
message.  How a batch becomes one transaction is the backend's ``Transactions``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import structlog

from ..errors import StoreError
from ..metrics import Histogram
from . import outbox
from .operations import MessageIds, Operation, Resync
from .schema import immediate
from .threads import ConnectionThread

log = structlog.get_logger("unichatd.store")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Batch:
    """A committed transaction's results, and where it stands in the sequence of numbers
    (message ids and revisions): every number up to ``before`` was given before it, and it
    gave those up to ``last`` (none when the two are equal)."""

    results: list[Any]
    before: int
    last: int


class Transactions(Protocol):
    async def run(self, operations: Sequence[Operation[Any]]) -> Batch:
        """Run ``operations`` in one transaction, in order; their results once it committed.
        Raises (and leaves nothing written) when the transaction fails."""


class CommitGate(Protocol):
    """Where several processes write one database, their batches must be applied to each
    process's memory in commit order (see ``cluster``): the writer hands each batch over
    instead of answering it at once."""

    def committed(self, batch: Batch, operations: Sequence[Operation[Any]], answer: Callable[[], None]) -> None:
        """Call ``answer()`` (which resolves the batch's futures) once every batch committed
        before this one has been applied."""


@dataclass(slots=True)
class _Pending:
    operation: Operation[Any]
    future: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class _Failed:
    error: str


class SqliteTransactions:
    """Batches as ``BEGIN IMMEDIATE … COMMIT`` on the writer's connection thread.  Message
    ids are assigned here, by the single writer, so they grow strictly across the server."""

    def __init__(self, connection: ConnectionThread, *, next_message_id: int,
                 webhook_events: frozenset[str] = frozenset()) -> None:
        self._connection = connection
        self._ids = MessageIds(next_message_id)
        self._message_events = webhook_events & outbox.MESSAGE_EVENTS
        """The message events some webhook wants: written with the batch that makes them."""

    async def run(self, operations: Sequence[Operation[Any]]) -> Batch:
        before = self._ids.next - 1
        results = await self._connection.call(partial(self._write, operations=operations))
        return Batch(results, before, self._ids.next - 1)

    def _write(self, conn: sqlite3.Connection, operations: Sequence[Operation[Any]]) -> list[Any]:
        """One transaction for the whole batch; runs on the writer's thread."""
        results: list[Any] = []
        ids = MessageIds(self._ids.next)
        with immediate(conn):
            start = 0
            while start < len(operations):
                operation = operations[start]
                kind: Any = type(operation)  # (a batched kind has run_many)
                done = len(results)
                if kind.batched:
                    end = start + 1
                    while end < len(operations) and type(operations[end]) is kind:
                        end += 1
                    results.extend(kind.run_many(conn, ids, operations[start:end]))
                    start = end
                else:
                    results.append(operation.run(conn, ids))
                    start += 1
                if self._message_events:
                    # (after each step, so events keep the order of the changes: a room's
                    # member_removed written by a later step follows this step's messages)
                    outbox.record_writes(conn, results[done:], self._message_events)
            if ids.next != self._ids.next:
                conn.execute("UPDATE message_numbers SET last = ?", (ids.next - 1,))
        self._ids = ids  # only a committed batch uses up ids
        return results


class GroupCommitWriter:
    """Runs submitted operations in group commits, one transaction at a time."""

    def __init__(self, transactions: Transactions, *, database: str, batch_sizes: Histogram,
                 write_latency: Histogram) -> None:
        self._transactions = transactions
        self.gate: CommitGate | None = None
        """None: a batch is answered as soon as it commits (one process on its database)."""
        self._database = database
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._failure: str | None = None
        """The error the last write failed with, until a write succeeds (logged once)."""
        self._batch_sizes = batch_sizes
        self._write_latency = write_latency
        self._task = asyncio.create_task(self._run(), name="unichatd-writer")

    def submit(self, operation: Operation[T]) -> asyncio.Future[T]:
        """Queue ``operation``; the future resolves after the commit that holds it."""
        future: asyncio.Future[T] = self._loop.create_future()
        if self._closing:
            future.set_exception(StoreError("store is closing"))
            return future
        self._queue.append(_Pending(operation, future))
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Finish every write already submitted; later submissions fail."""
        self._closing = True
        self._wakeup.set()
        await self._task

    async def _run(self) -> None:
        while True:
            if self._closing and not self._queue:
                return
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._take_batch(self._queue)
            if not batch:
                continue
            started = time.perf_counter()
            try:
                committed: list[tuple[list[_Pending], Batch | _Failed]] = [
                    (batch, await self._transactions.run([pending.operation for pending in batch]))]
            except Exception:  # noqa: BLE001  (whatever it was, the batch is retried op by op)
                # The transaction was rolled back. Whatever made it fail must not fail the
                # others: each operation is tried again in a transaction of its own.
                committed = [([pending], await self._write_alone(pending)) for pending in batch]
            else:
                if self._failure is not None:
                    log.warning("store.write_recovered", after=self._failure)
                    self._failure = None
            finally:
                # (the metrics describe the writes clients wait for, not background indexing)
                requested = sum(1 for pending in batch if not pending.operation.background)
                if requested:
                    self._batch_sizes.observe(requested)
                    self._write_latency.observe(time.perf_counter() - started)
            for pendings, outcome in committed:
                answer = partial(_answer, pendings, outcome)
                if self.gate is None or isinstance(outcome, _Failed) or isinstance(pendings[0].operation, Resync):
                    answer()
                else:
                    self.gate.committed(outcome, [pending.operation for pending in pendings], answer)
            if self._closing or self._queue:
                self._wakeup.set()

    def _take_batch(self, queue: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """The next batch, and what stays queued.  A ``Resync`` runs alone: the batches
        before it have been handed to the gate when it answers, none after it has."""
        if self.gate is None:
            return queue, []
        for index, pending in enumerate(queue):
            if isinstance(pending.operation, Resync):
                cut = index or 1
                return queue[:cut], queue[cut:]
        return queue, []

    async def _write_alone(self, pending: _Pending) -> Batch | _Failed:
        try:
            return await self._transactions.run([pending.operation])
        except Exception as exc:  # noqa: BLE001  (answered to the submitter as a StoreError)
            # A full disk or a read-only file fails every write alike: say so once, not per write.
            if str(exc) != self._failure:
                self._failure = str(exc)
                log.error("store.write_failed", kind=pending.operation.kind,
                          error=str(exc), database=self._database)
            return _Failed(str(exc))


def _answer(pendings: list[_Pending], outcome: Batch | _Failed) -> None:
    """Resolve each future with its operation's result, in submission order."""
    if isinstance(outcome, _Failed):
        for pending in pendings:
            if not pending.future.done():
                pending.future.set_exception(StoreError(f"write failed: {outcome.error}"))
        return
    for pending, result in zip(pendings, outcome.results, strict=True):
        if not pending.future.done():
            pending.future.set_result(result)
