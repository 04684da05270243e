"""Several processes, one chat space (operations.md, "More than one process").

Every process keeps the whole room directory in memory, as one process alone does, and
the rule that keeps it exact is the same: changes are applied in commit order.  The
database gives every change that matters to memory a number (message ids, revisions,
read markers, room reloads: one counter, locked per transaction, see
``store.postgres.schema``), so commit order is number order across all processes.

Each process publishes every batch it commits — its number range and its effects — on
the bus, and applies batches, its own and the others', strictly in number order: a
local batch is answered (its futures resolved) and a remote one applied only when every
number before it has been.  Both are scheduled with ``call_soon``, so the chat
service's continuations run in that order too.

A number that stays missing — a process killed between its commit and its publish, or
Redis away — is filled from the database: every POLL_INTERVAL the newest committed
number is read, and one still not applied a poll later makes the process ``resync``:
the messages of the gap are fanned out from the database, and the directory is
replaced by a snapshot as of the newest number.

Besides batches the bus carries what is not stored: typing, notifications, presence
(which users each process has online), and each process's heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from . import protocol
from .errors import StoreError
from .interfaces import Bus, MessageStore
from .models import (
    Change,
    FileRef,
    Message,
    Reaction,
    ReadResult,
    Resynced,
    RoomChanged,
    Stored,
    ThreadState,
)
from .store.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    Prune,
    React,
    RevokeUser,
    UpsertUser,
)
from .store.writer import Batch

if TYPE_CHECKING:
    from .chat import Chat

log = structlog.get_logger("unichatd.cluster")

POLL_INTERVAL = 0.5
"""Seconds between reads of the newest committed number (a gap is filled one poll later)."""
BEAT_INTERVAL = 1.0
PEER_TIMEOUT = 5.0
"""A process not heard from for this long is gone: its users are offline there."""
NOTIFY_WAIT = 1.0
"""How long a notification waits for the other processes to count their deliveries."""
SNAPSHOT_ONLY = 2**62
"""``resync`` after this: the snapshot, and no messages."""


# -- the events' encoding -------------------------------------------------------------


def _message_out(m: Message) -> list[Any]:
    return [m.id, m.room_id, m.sender_id, m.sender_username, m.sender_first_name, m.content, m.created_ms,
            m.reply_to, m.client_msg_id, m.message_type, m.revision, m.edited_ms, m.deleted, m.thread_root_id,
            m.reply_count, m.last_reply_ms, m.mentions,
            [[r.emoji, r.user_ids] for r in m.reactions],
            [[f.id, f.name, f.size, f.content_type] for f in m.attachments]]


def _message_in(v: list[Any]) -> Message:
    return Message._make([*v[:16], tuple(v[16]), tuple(Reaction(e, tuple(u)) for e, u in v[17]),
                          tuple(FileRef(*f) for f in v[18])])


def _optional_message(v: list[Any] | None) -> Message | None:
    return None if v is None else _message_in(v)


CHANGE_KINDS: dict[type, str] = {EditMessage: "edit", DeleteMessage: "delete", React: "react"}


def effects_of(operations: Sequence[Operation[Any]], results: Sequence[Any]) -> list[list[Any]]:
    """What other processes must apply of a committed batch, in its order."""
    effects: list[list[Any]] = []
    for operation, result in zip(operations, results, strict=True):
        if isinstance(result, Stored):
            if result.created:
                thread = result.thread
                effects.append(["message", _message_out(result.message),
                                None if thread is None else [thread.root_id, thread.reply_count,
                                                             thread.last_reply_ms, thread.revision]])
        elif isinstance(result, Change):
            if result.changed:
                effects.append(["change", CHANGE_KINDS[type(operation)], _message_out(result.message),
                                _message_out(result.before),
                                None if result.latest is None else _message_out(result.latest)])
        elif isinstance(result, ReadResult) and isinstance(operation, MarkRead):
            effects.append(["read", operation.room_id, operation.user_id, operation.message_ids,
                            result.last_read_id, result.unread_count, result.moved, result.mention_count])
        elif isinstance(result, RoomChanged):
            effects.append(["rooms", result.log_id])
        elif isinstance(operation, UpsertUser):
            effects.append(["user", operation.user_id, *operation.names])
        elif isinstance(operation, RevokeUser):
            effects.append(["revoke", operation.user_id, operation.before_ms])
        elif isinstance(operation, Prune) and result:
            effects.append(["pruned", operation.room_id])
    return effects


class Cluster:
    """This process's part of the chat space: the commit gate of its writer, and the bus."""

    def __init__(self, chat: Chat, store: MessageStore, bus: Bus) -> None:
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.chat = chat
        self.store = store
        self.bus = bus
        self.applied = 0
        """Every number up to this one is applied to memory."""
        self._started = False
        self._early: list[list[Any]] = []
        """Events heard before the start snapshot was read."""
        self._pending: dict[int, tuple[int, Callable[[], None]]] = {}
        """before → (last, what applies it): batches waiting for the numbers before theirs."""
        self._seen_last = 0
        """The newest committed number, as of the previous poll."""
        self._resyncing = False
        self._peers: dict[str, float] = {}
        """process id → when it was last heard from (monotonic)."""
        self._notify_ids = itertools.count(1)
        self._notify_replies: dict[int, tuple[asyncio.Future[None], list[int], set[str]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> Resynced:
        """Hear the bus, then read the snapshot to start from; returns it for the chat service."""
        self._loop = asyncio.get_running_loop()
        self.store.set_commit_gate(self)
        await self.bus.start(self._receive)
        resynced = await self.store.resync(SNAPSHOT_ONLY)
        self.applied = self._seen_last = resynced.number
        self._started = True
        early, self._early = self._early, []
        for event in early:
            self._handle(event)
        self._publish("hello")
        self._tasks = [asyncio.create_task(self._beat(), name="unichatd-cluster-beat"),
                       asyncio.create_task(self._poll(), name="unichatd-cluster-poll")]
        return resynced

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._publish("bye")
        await self.bus.stop()  # (which sends what is queued first)

    @property
    def peers(self) -> list[str]:
        return sorted(self._peers)

    # -- the commit gate (store.writer.CommitGate) ------------------------------------

    def committed(self, batch: Batch, operations: Sequence[Operation[Any]], answer: Callable[[], None]) -> None:
        effects = effects_of(operations, batch.results)
        if effects or batch.last != batch.before:
            self._publish("batch", batch.before, batch.last, effects)
        if not self._started or batch.last == batch.before:
            answer()  # (no number: nothing in memory depends on where it stands)
        elif batch.last <= self.applied:
            # Cannot happen (a resync runs alone, after the batches before it were handed
            # here); should it, the submitters get their answers all the same.
            log.error("cluster.batch_behind", before=batch.before, last=batch.last, applied=self.applied)
            answer()
        else:
            self._wait_turn(batch.before, batch.last, answer)

    def _wait_turn(self, before: int, last: int, apply: Callable[[], None]) -> None:
        if last <= self.applied:
            return  # (a resync applied it already)
        if before < self.applied:
            log.warning("cluster.overlapping_batch", before=before, last=last, applied=self.applied)
            return
        self._pending[before] = (last, apply)
        self._advance()

    def _advance(self) -> None:
        pending = self._pending
        while self.applied in pending:
            last, apply = pending.pop(self.applied)
            self.applied = last
            apply()

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        """In the loop's queue, behind the callbacks of the futures answered before it."""
        assert self._loop is not None, "the cluster is not started"
        self._loop.call_soon(callback, *args)

    # -- events ------------------------------------------------------------------

    def _publish(self, kind: str, *fields: Any) -> None:
        self.bus.publish(orjson.dumps([kind, self.id, *fields]))

    def _receive(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("cluster.bad_event", size=len(data))
            return
        if event[1] == self.id:
            return
        if not self._started:
            self._early.append(event)
            return
        self._handle(event)

    def _handle(self, event: list[Any]) -> None:
        kind, origin = event[0], event[1]
        known = origin in self._peers
        self._peers[origin] = time.monotonic()
        if not known and kind not in ("hello", "bye"):
            self._publish("hello")  # (a process we had not heard of: learn who it has online)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            log.warning("cluster.unknown_event", kind=kind)
            return
        try:
            handler(origin, *event[2:])
        except (TypeError, ValueError, IndexError, KeyError):
            log.exception("cluster.bad_event", kind=kind)

    def _on_batch(self, origin: str, before: int, last: int, effects: list[list[Any]]) -> None:
        def apply() -> None:
            self._call_soon(self._apply_effects, effects)

        if last == before:
            apply()
        else:
            self._wait_turn(before, last, apply)

    def _apply_effects(self, effects: list[list[Any]]) -> None:
        chat = self.chat
        for effect in effects:
            kind = effect[0]
            if kind == "message":
                message = _message_in(effect[1])
                thread = None if effect[2] is None else ThreadState(*effect[2])
                chat.message_stored(Stored(message, True, thread), protocol.encoded_message(message))
            elif kind == "change":
                chat.applied_change(effect[1], Change(_message_in(effect[2]), _message_in(effect[3]), True,
                                                      _optional_message(effect[4])))
            elif kind == "read":
                _, room_id, user_id, message_ids, marker, unread, moved, mentions = effect
                chat.applied_read(room_id, user_id, tuple(message_ids), ReadResult(marker, unread, moved, mentions))
            elif kind == "rooms":
                chat.spawn(chat.membership.catch_up(effect[1]))
            elif kind == "user":
                chat.directory.set_user(effect[1], effect[2], effect[3])
            elif kind == "revoke":
                chat.revoked(effect[1], effect[2])
            elif kind == "pruned":
                chat.spawn(chat.reload_room(effect[1]))

    def _on_typing(self, origin: str, room_id: int, user_id: int, username: str, is_typing: bool) -> None:
        self.chat.typing_elsewhere(room_id, user_id, username, is_typing)

    def _on_notify(self, origin: str, request: int, user_id: int, frame: str) -> None:
        self._publish("notified", origin, request, self.chat.notify_here(user_id, frame.encode()))

    def _on_notified(self, origin: str, asker: str, request: int, count: int) -> None:
        if asker != self.id:
            return
        waiting = self._notify_replies.get(request)
        if waiting is not None:
            done, counts, expected = waiting
            counts.append(count)
            expected.discard(origin)
            if not expected and not done.done():
                done.set_result(None)

    def _on_online(self, origin: str, user_id: int) -> None:
        self.chat.presence.online_elsewhere(user_id, origin)

    def _on_offline(self, origin: str, user_id: int, last_seen_ms: int) -> None:
        self.chat.presence.offline_elsewhere(user_id, origin, last_seen_ms)

    def _on_hello(self, origin: str) -> None:
        self._publish("here", self.chat.presence.local_users())

    def _on_here(self, origin: str, user_ids: list[int]) -> None:
        for user_id in user_ids:
            self.chat.presence.online_elsewhere(user_id, origin)

    def _on_beat(self, origin: str) -> None:
        pass  # (_handle noted when it was heard)

    def _on_bye(self, origin: str) -> None:
        self._forget(origin)

    def _forget(self, origin: str) -> None:
        self._peers.pop(origin, None)
        self.chat.presence.forget_process(origin)
        for _, _, expected in self._notify_replies.values():
            expected.discard(origin)

    # -- what this process tells the others ---------------------------------------------

    def typing(self, room_id: int, user_id: int, username: str, is_typing: bool) -> None:
        self._publish("typing", room_id, user_id, username, is_typing)

    def online(self, user_id: int) -> None:
        self._publish("online", user_id)

    def offline(self, user_id: int, last_seen_ms: int) -> None:
        self._publish("offline", user_id, last_seen_ms)

    async def notify(self, user_id: int, frame: bytes) -> int:
        """Deliver to the user's connections in every process; how many got it (the
        processes that did not answer within NOTIFY_WAIT are not counted)."""
        count = self.chat.notify_here(user_id, frame)
        expected = set(self._peers)
        if not expected:
            return count
        request = next(self._notify_ids)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        counts: list[int] = []
        self._notify_replies[request] = (done, counts, expected)
        self._publish("notify", request, user_id, frame.decode())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, NOTIFY_WAIT)
        finally:
            del self._notify_replies[request]
        return count + sum(counts)

    # -- liveness and gaps ----------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(BEAT_INTERVAL)
            self._publish("beat")
            gone_before = time.monotonic() - PEER_TIMEOUT
            for origin, heard in tuple(self._peers.items()):
                if heard < gone_before:
                    log.warning("cluster.peer_gone", process=origin)
                    self._forget(origin)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                newest = await self.store.last_number()
            except StoreError:
                continue  # (Chat.watch_database reports it; the next poll tries again)
            if self.applied < self._seen_last:
                # Committed at least a poll ago and still not heard of: fill from the database.
                await self.resync()
            self._seen_last = newest

    async def resync(self) -> None:
        if self._resyncing:
            return
        self._resyncing = True
        try:
            after = self.applied
            try:
                resynced = await self.store.resync(after)
            except StoreError as exc:
                log.warning("cluster.resync_failed", error=str(exc))
                return
            if resynced.number <= self.applied:
                return
            log.info("cluster.resync", after=after, applied=self.applied, number=resynced.number,
                     messages=len(resynced.messages), pending=len(self._pending))
            self._fill(resynced)
        finally:
            self._resyncing = False

    def _fill(self, resynced: Resynced) -> None:
        """Apply, in number order, the batches heard of up to ``resynced.number`` and, for
        the numbers no batch was heard of, the messages the database holds; then take the
        snapshot as the directory's state."""
        number = resynced.number
        heard = sorted((before, last, apply) for before, (last, apply) in self._pending.items() if last <= number)
        for before, _, _ in heard:
            del self._pending[before]

        def unheard(position: int) -> bool:
            return position > self.applied and not any(before < position <= last for before, last, _ in heard)

        steps: list[tuple[int, Callable[[], None]]] = [(last, apply) for _, last, apply in heard]
        for message in resynced.messages:
            created = message.id > self.applied
            position = message.id if created else message.revision
            if position <= number and unheard(position):
                steps.append((position, self._gap_step(message, created)))
        steps.sort(key=lambda step: step[0])
        self.applied = number
        for _, apply in steps:
            apply()
        self._call_soon(self.chat.apply_snapshot, resynced.snapshot)
        self._advance()

    def _gap_step(self, message: Message, created: bool) -> Callable[[], None]:
        chat = self.chat

        def step() -> None:
            if created:
                self._call_soon(chat.message_stored, Stored(message, True), protocol.encoded_message(message))
            else:
                self._call_soon(chat.changed_in_gap, message)

        return step
