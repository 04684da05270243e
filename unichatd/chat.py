"""The chat service: what connections share — rooms, stored messages, fan-out, typing.

Sessions (one per connection) parse and dispatch their frames; whatever touches more
than one connection happens here.  The ordering rule that keeps unread counts and
broadcasts exact: the store resolves write futures in commit order, and every change
to the in-memory directory is applied in a done-callback of those futures, so memory
moves through the same sequence of states as the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog

from . import protocol
from .auth import Identity, KeyRing
from .config import Config
from .errors import ClientError, RateLimited
from .hub import Hub
from .limits import TokenBucket
from .log import switches
from .rooms import RoomDirectory
from .store import MembershipChange, NewMessage, Store, Stored

if TYPE_CHECKING:
    from .session import Session

log = structlog.get_logger("unichatd.chat")

TYPING_TIMEOUT = 6.0
ROOM_UPDATE_WINDOW = 0.09
"""room_updated frames are coalesced over this window; the spec allows 100 ms."""
ROOM_UPDATE_PIGGYBACK = 0.075
"""Past this age, a connection's pending room_updated frames leave with the next frame
broadcast to it, so they share its write (see server._ConnectionSink) instead of costing one."""
MEMBERSHIP_POLL_INTERVAL = 0.5
REMOVED_FROM_ROOM = "removed_from_room"
RETENTION_BATCH = 500
"""Messages deleted per transaction: small, so live writes never wait long behind retention."""


class Stats:
    """Counters read by /healthz and /metrics."""

    def __init__(self) -> None:
        self.messages_stored = 0
        self.deliveries = 0
        """new_message frames handed to subscribers."""
        self.errors: Counter[str] = Counter()
        self.slow_consumer_closes = 0
        self.flood_closes = 0
        self.rate_limited = 0
        self.room_updates = 0
        self.connections_refused: Counter[str] = Counter()


class Chat:
    def __init__(
        self, config: Config, store: Store, keyring: KeyRing, hub: Hub[Session] | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.keyring = keyring
        self.hub: Hub[Session] = hub if hub is not None else Hub()
        self.directory = RoomDirectory()
        self.stats = Stats()
        self._send_buckets: dict[int, TokenBucket] = {}
        self._typing: dict[tuple[int, int], asyncio.TimerHandle] = {}
        self._owed: collections.deque[tuple[float, Session]] = collections.deque()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._room_encoders: dict[int, tuple[float, tuple[int, str], protocol.RoomUpdateEncoder]] = {}
        self._membership_log_id = 0
        self._membership_catch_up: asyncio.Future[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        snapshot = await self.store.load_rooms()
        self.directory.apply(snapshot)
        self._membership_log_id = snapshot.membership_log_id
        self._poller = asyncio.create_task(self._poll_membership(), name="unichatd-membership")
        self._retention = asyncio.create_task(self._run_retention(), name="unichatd-retention")

    async def stop(self) -> None:
        for task in (self._poller, self._retention, self._membership_catch_up):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for handle in self._typing.values():
            handle.cancel()
        self._typing.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while self._owed:
            self.flush_room_updates_of(self._owed.popleft()[1])

    def reconfigure(self, config: Config, keyring: KeyRing) -> None:
        """Take reloaded limits and keys; buckets already handed out adopt the new rates."""
        self.config, self.keyring = config, keyring
        limits = config.limits
        for bucket in self._send_buckets.values():
            bucket.rate, bucket.burst = limits.messages_per_second, limits.message_burst
        for user_id in self.hub.online_users():
            for session in self.hub.connections_of(user_id):
                session.apply_limits()

    # -- connections -----------------------------------------------------------

    async def connect(self, session: Session) -> None:
        await self.remember_user(session.identity)
        self.hub.connect(session)

    async def remember_user(self, identity: Identity) -> None:
        """Store the user's names as their token gives them (history shows these)."""
        names = (identity.username, identity.first_name)
        if self.directory.users.get(identity.user_id) != names:
            # Only a new user or a changed name costs a write (reconnects are the common case).
            await self.store.upsert_user(identity.user_id, *names)
            self.directory.set_user(identity.user_id, *names)

    def disconnect(self, session: Session) -> None:
        self.hub.disconnect(session)
        session.pending_room_updates = None
        user_id = session.user_id
        if not self.hub.is_online(user_id):
            self._forget_bucket_when_full(user_id)
            for room_id, typer in tuple(self._typing):
                if typer == user_id:
                    self._stop_typing(room_id, user_id, session.identity.username)

    def _forget_bucket_when_full(self, user_id: int) -> None:
        """Drop an offline user's send bucket once it has refilled (it then holds nothing).

        Kept until then: reconnecting must not refill a user's bucket.
        """
        bucket = self._send_buckets.get(user_id)
        if bucket is None:
            return
        wait = bucket.seconds_until_full()
        if wait <= 0:
            del self._send_buckets[user_id]
        else:
            self._loop().call_later(wait + 0.01, self._forget_bucket_if_offline, user_id)

    def _forget_bucket_if_offline(self, user_id: int) -> None:
        if not self.hub.is_online(user_id):
            self._forget_bucket_when_full(user_id)

    def check_access(self, room_id: int, user_id: int) -> None:
        # One answer for foreign and nonexistent rooms: the reply must not tell them apart.
        if not self.directory.is_participant(room_id, user_id):
            raise ClientError("access_denied", "you are not a participant of this room", room_id=room_id)

    async def ensure_access(self, room_id: int, user_id: int) -> None:
        """:meth:`check_access`, after reading membership changes not applied yet.

        A member added by the CLI a moment ago may use the room at once (operations.md),
        not only after the next poll; a refusal costs one indexed read, shared by every
        request refused meanwhile.
        """
        if not self.directory.is_participant(room_id, user_id):
            await self.catch_up_membership()
            self.check_access(room_id, user_id)

    # -- messages --------------------------------------------------------------

    async def submit_message(self, session: Session, request: protocol.SendMessage) -> asyncio.Future[Stored]:
        """Check the send and hand it to the store; the caller answers when it commits.

        The user's message bucket is taken first, so refused sends (foreign rooms
        included) are limited like any other.
        """
        user_id = session.user_id
        bucket = self._send_buckets.get(user_id)
        if bucket is None:
            limits = self.config.limits
            bucket = self._send_buckets[user_id] = TokenBucket(
                limits.messages_per_second, limits.message_burst
            )
        wait_ms = bucket.take()
        if wait_ms:
            raise RateLimited(wait_ms, room_id=request.room_id)
        await self.ensure_access(request.room_id, user_id)
        if request.reply_to is not None:
            if await self.store.message_room(request.reply_to) != request.room_id:
                raise ClientError(
                    "not_found", "reply_to is not a message of this room", room_id=request.room_id
                )
            # The membership may have changed while the store was asked.
            self.check_access(request.room_id, user_id)
        identity = session.identity
        return self.store.append_message(
            NewMessage(
                request.room_id,
                user_id,
                identity.username,
                identity.first_name,
                request.content,
                request.reply_to,
                request.client_msg_id,
            )
        )

    def message_stored(self, session: Session, stored: Stored, wire: dict[str, Any]) -> None:
        """After the commit (and the sender's ack): fan the new message out."""
        if not stored.created:
            return
        message = stored.message
        self.stats.messages_stored += 1
        if switches.debug:
            log.debug("message.stored", conn_id=session.conn_id, user_id=message.sender_id,
                      room_id=message.room_id, message_id=message.id)
        self.directory.record_message(message)
        if (message.room_id, message.sender_id) in self._typing:
            self._stop_typing(message.room_id, message.sender_id, message.sender_username)
        self.stats.deliveries += self.hub.publish(
            message.room_id, protocol.new_message_frame(message, wire), message_id=message.id
        )
        self.room_changed(message.room_id)

    # -- read markers ----------------------------------------------------------

    async def mark_read(self, session: Session, request: protocol.MarkRead) -> None:
        user_id, room_id = session.user_id, request.room_id
        await self.ensure_access(room_id, user_id)
        result = await self.store.mark_read(room_id, user_id, request.message_ids)
        if result is None:  # removed from the room while the request waited
            raise ClientError("access_denied", "you are not a participant of this room", room_id=room_id)
        changed_unread = self.directory.unread(room_id, user_id) != result.unread_count
        self.directory.record_read(room_id, user_id, result.last_read_id, result.unread_count)
        session.reply(protocol.read_marked_frame(
            room_id, result.last_read_id, result.unread_count, request.request_id
        ))
        if result.moved:
            self.hub.publish(room_id, protocol.message_read_frame(
                room_id, user_id, request.message_ids, result.last_read_id
            ))
        if changed_unread:
            self._room_changed_for(user_id, room_id)

    # -- typing ----------------------------------------------------------------

    async def typing(self, session: Session, request: protocol.Typing) -> None:
        user_id, room_id = session.user_id, request.room_id
        await self.ensure_access(room_id, user_id)
        username = session.identity.username
        key = (room_id, user_id)
        if not request.is_typing:
            if key in self._typing:
                self._stop_typing(room_id, user_id, username)
            return
        previous = self._typing.pop(key, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._typing[key] = loop.call_later(
            TYPING_TIMEOUT, self._stop_typing, room_id, user_id, username
        )
        self.hub.publish(room_id, protocol.typing_frame(room_id, user_id, username, True),
                         exclude_user=user_id)

    def _stop_typing(self, room_id: int, user_id: int, username: str) -> None:
        handle = self._typing.pop((room_id, user_id), None)
        if handle is not None:
            handle.cancel()
        self.hub.publish(room_id, protocol.typing_frame(room_id, user_id, username, False),
                         exclude_user=user_id)

    # -- room lists --------------------------------------------------------------

    def room_changed(self, room_id: int) -> None:
        """Every participant's room list shows this room differently now."""
        for user_id in self.directory.participants(room_id):
            self._room_changed_for(user_id, room_id)

    def _room_changed_for(self, user_id: int, room_id: int) -> None:
        connections = self.hub.connections_of(user_id)
        if not connections:
            return
        now = time.monotonic()
        for session in connections:
            owed = session.pending_room_updates
            if owed is None:  # allocated only while owed: most connections are idle
                session.pending_room_updates = {room_id}
                session.room_updates_since = now
                self._owed.append((now, session))
            else:
                owed.add(room_id)
        if self._flush_handle is None:
            self._flush_handle = self._loop().call_later(ROOM_UPDATE_WINDOW, self._flush_room_updates)

    def flush_room_updates_of(self, session: Session) -> None:
        """Send the connection the room_updated frames it is owed, with the latest state."""
        rooms = session.pending_room_updates
        session.pending_room_updates = None
        if rooms is None:
            return
        directory = self.directory
        user_id = session.user_id
        now = time.monotonic()
        for room_id in rooms:
            if not directory.is_participant(room_id, user_id):
                continue
            # Most of a room_updated is the same for every participant: encode it once
            # per room and state (reused for a few milliseconds, so the timestamp holds).
            last = directory.rooms[room_id].last_message
            key = (last.id if last is not None else 0, directory.rooms[room_id].name)
            cached = self._room_encoders.get(room_id)
            if cached is None or cached[1] != key or now - cached[0] > 0.005:
                cached = (now, key, protocol.RoomUpdateEncoder(room_id, directory.room_state(room_id, user_id)))
                self._room_encoders[room_id] = cached
            session.send(cached[2].frame(directory.unread(room_id, user_id)))
            self.stats.room_updates += 1

    def _flush_room_updates(self) -> None:
        """The timer's part: whatever no broadcast carried out within the window goes now.

        ``_owed`` lists connections in the order they became owed; an entry whose
        connection was flushed since (piggyback) or owed anew later is stale and skipped.
        """
        self._flush_handle = None
        owed = self._owed
        now = time.monotonic()
        while owed and now - owed[0][0] >= ROOM_UPDATE_WINDOW - 0.005:
            since, session = owed.popleft()
            if session.pending_room_updates and session.room_updates_since == since:
                self.flush_room_updates_of(session)
        if owed:
            self._flush_handle = self._loop().call_later(
                max(0.001, owed[0][0] + ROOM_UPDATE_WINDOW - now), self._flush_room_updates
            )

    def _loop(self) -> asyncio.AbstractEventLoop:
        # Looked up once: asyncio.get_running_loop() costs a getpid() call.
        if self._event_loop is None:
            self._event_loop = asyncio.get_running_loop()
        return self._event_loop

    # -- live membership changes from the CLI ----------------------------------

    async def _poll_membership(self) -> None:
        while True:
            await asyncio.sleep(MEMBERSHIP_POLL_INTERVAL)
            try:
                await self.catch_up_membership()
            except Exception:
                log.exception("membership.poll_failed")

    async def catch_up_membership(self) -> None:
        """Apply the membership changes logged since the last look (one look at a time)."""
        if self._membership_catch_up is None or self._membership_catch_up.done():
            self._membership_catch_up = asyncio.ensure_future(self._read_membership_changes())
        await asyncio.shield(self._membership_catch_up)

    async def _read_membership_changes(self) -> None:
        changes = await self.store.membership_changes(self._membership_log_id)
        if changes:
            await self._apply_membership(changes)

    async def _apply_membership(self, changes: list[MembershipChange]) -> None:
        snapshot = await self.store.load_rooms({change.room_id for change in changes})
        self.directory.apply(snapshot)
        self._membership_log_id = changes[-1].log_id
        for change in changes:
            if change.user_id is None:
                log.info("room.created", room_id=change.room_id)
                continue
            user_id, room_id = change.user_id, change.room_id
            log.info("room.membership", room_id=room_id, user_id=user_id, change=change.change)
            if self.directory.is_participant(room_id, user_id):
                self._room_changed_for(user_id, room_id)
                continue
            for session in self.hub.connections_of(user_id):
                if self.hub.unsubscribe(room_id, session):
                    session.send(protocol.unsubscribed_frame(room_id, None, REMOVED_FROM_ROOM))
            if (room_id, user_id) in self._typing:
                self._stop_typing(room_id, user_id, self.directory.users.get(user_id, ("", ""))[0])

    # -- retention -----------------------------------------------------------------

    def retention_days(self, room_id: int) -> float:
        storage = self.config.storage
        return dict(storage.room_retention_days).get(room_id, storage.retention_days)

    async def _run_retention(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except Exception:
                log.exception("retention.failed")
            await asyncio.sleep(self.config.storage.retention_interval)

    async def apply_retention(self, now_ms: int | None = None) -> int:
        """One pass: delete what each room's retention allows, in small batches."""
        now_ms = protocol.now_ms() if now_ms is None else now_ms
        total = 0
        for room_id in tuple(self.directory.rooms):
            days = self.retention_days(room_id)
            if days <= 0:
                continue
            cutoff = now_ms - int(days * 86_400_000)
            deleted_here = 0
            while True:
                deleted = await self.store.prune(room_id, cutoff, RETENTION_BATCH)
                deleted_here += deleted
                if deleted < RETENTION_BATCH:
                    break
            if deleted_here:
                # Unread counts and the last message may have changed: reload them exactly.
                self.directory.apply(await self.store.load_rooms([room_id]))
                self.room_changed(room_id)
                log.info("retention.pruned", room_id=room_id, deleted=deleted_here)
                total += deleted_here
        return total

    def pruned_through(self, room_id: int) -> int:
        room = self.directory.rooms.get(room_id)
        return room.pruned_through if room is not None else 0

    # -- reads -------------------------------------------------------------------

    def room_list(self, user_id: int) -> list[dict[str, Any]]:
        return self.directory.room_list(user_id)

    def health(self, uptime_s: float) -> dict[str, Any]:
        return {
            "status": "ok",
            "connections": self.hub.connection_count,
            "rooms_active": self.hub.active_rooms,
            "uptime_s": int(uptime_s),
        }

