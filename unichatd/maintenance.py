"""Background work on the rooms: membership changes made by the CLI, and retention.

Both read or write through the store and bring the room directory up to date; what
connections must be told is left to the chat service's callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from .config import StorageConfig
from .errors import StoreError
from .interfaces import MessageStore
from .models import MembershipChange
from .protocol import now_ms
from .rooms import RoomDirectory

log = structlog.get_logger("unichatd.chat")

MEMBERSHIP_POLL_INTERVAL = 0.5
RETENTION_BATCH = 500
"""Messages deleted per transaction: small, so live writes never wait long behind retention."""


class MembershipFeed:
    """Applies the changes logged in ``membership_log``, by the CLI or by the daemon's own
    requests: polled, and on demand.

    ``on_changes(changes)`` runs for the changes read at once, in log order, after the
    directory shows them.
    """

    def __init__(self, store: MessageStore, directory: RoomDirectory,
                 on_changes: Callable[[list[MembershipChange]], None]) -> None:
        self._store = store
        self._directory = directory
        self._on_changes = on_changes
        self._log_id = 0
        self._catch_up: asyncio.Future[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    def start(self, log_id: int) -> None:
        self._log_id = log_id
        self._poller = asyncio.create_task(self._poll(), name="unichatd-membership")

    async def stop(self) -> None:
        await _cancel(self._poller)
        await _cancel(self._catch_up)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(MEMBERSHIP_POLL_INTERVAL)
            try:
                await self.catch_up()
            except StoreError as exc:  # (the database is away: the next poll tries again)
                log.warning("membership.poll_failed", error=str(exc))
            except Exception:
                log.exception("membership.poll_failed")

    async def catch_up(self, through: int = 0) -> None:
        """Apply the changes logged since the last look (one look at a time, shared); with
        ``through``, until the change with that log id is applied."""
        while True:
            if self._catch_up is None or self._catch_up.done():
                self._catch_up = asyncio.ensure_future(self._read_changes())
            await asyncio.shield(self._catch_up)
            if self._log_id >= through:
                return

    async def _read_changes(self) -> None:
        changes = await self._store.membership_changes(self._log_id)
        if changes:
            await self._apply(changes)

    async def _apply(self, changes: list[MembershipChange]) -> None:
        snapshot = await self._store.load_rooms({change.room_id for change in changes})
        self._directory.apply(snapshot)
        self._log_id = changes[-1].log_id
        for change in changes:
            if change.user_id is None:
                log.info("room.changed", room_id=change.room_id, change=change.change)
            else:
                log.info("room.membership", room_id=change.room_id, user_id=change.user_id, change=change.change)
        self._on_changes(changes)


class Retention:
    """Deletes what each room's retention allows, every ``retention_interval``.

    ``on_pruned(room_id)`` runs for each room that lost messages, after the directory
    shows its new unread counts and last message.
    """

    def __init__(self, store: MessageStore, directory: RoomDirectory, config: StorageConfig,
                 on_pruned: Callable[[int], None]) -> None:
        self._store = store
        self._directory = directory
        self.config = config
        self._on_pruned = on_pruned
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="unichatd-retention")

    async def stop(self) -> None:
        await _cancel(self._task)

    def days(self, room_id: int) -> float:
        return dict(self.config.room_retention_days).get(room_id, self.config.retention_days)

    async def _run(self) -> None:
        while True:
            try:
                await self.apply()
            except Exception:
                log.exception("retention.failed")
            await asyncio.sleep(self.config.retention_interval)

    async def apply(self, now: int | None = None) -> int:
        """One pass over every room, in small batches; returns how many messages went."""
        now = now_ms() if now is None else now
        total = 0
        for room_id in tuple(self._directory.rooms):
            days = self.days(room_id)
            if days <= 0:
                continue
            cutoff = now - int(days * 86_400_000)
            deleted_here = 0
            while True:
                deleted = await self._store.prune(room_id, cutoff, RETENTION_BATCH)
                deleted_here += deleted
                if deleted < RETENTION_BATCH:
                    break
            if deleted_here:
                # Unread counts and the last message may have changed: reload them exactly.
                self._directory.apply(await self._store.load_rooms([room_id]))
                self._on_pruned(room_id)
                log.info("retention.pruned", room_id=room_id, deleted=deleted_here)
                total += deleted_here
        return total


async def _cancel(task: asyncio.Future[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
