"""The chat service: what connections share — access, sends, read markers, typing.

Sessions (one per connection) parse and dispatch their frames; whatever touches more
than one connection happens here, over the two seams (``interfaces``).  The ordering
rule that keeps unread counts and broadcasts exact: the store resolves write futures in
commit order, and every change to the in-memory directory is applied in a
done-callback of those futures, so memory moves through the same sequence of states
as the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from . import protocol
from .auth import TOKEN_REVOKED, Identity, KeyRing
from .clock import Clock, LoopClock, Timer
from .config import Config
from .errors import ClientError, CloseCode, ErrorCode, RateLimited, StoreError
from .files import FileStore
from .interfaces import Broker, Connection, Listener, MessageStore
from .limits import TokenBucket
from .log import switches
from .maintenance import MembershipFeed, Retention
from .models import (
    Change,
    FileRef,
    MembershipChange,
    Message,
    NewMessage,
    ReadResult,
    Refusal,
    RoomChanged,
    Snapshot,
    Stored,
    UserInfo,
)
from .presence import Presence
from .rooms import RoomDirectory
from .stats import Stats
from .updates import RoomUpdates

if TYPE_CHECKING:
    from .cluster import Cluster
    from .redislimits import SharedLimits

log = structlog.get_logger("unichatd.chat")

TYPING_TIMEOUT = 6.0
HEALTH_INTERVAL = 1.0
REMOVED_FROM_ROOM = "removed_from_room"
LEFT_ROOM = "left_room"
SNIPPET_CHARS = 200


def _clip_snippet(snippet: str) -> str:
    """At most SNIPPET_CHARS characters, never ending inside a ``[match]``."""
    if len(snippet) <= SNIPPET_CHARS:
        return snippet
    clipped = snippet[: SNIPPET_CHARS - 1]
    if clipped.rfind("[") > clipped.rfind("]"):
        clipped = clipped[: clipped.rfind("[")]
    return clipped.rstrip() + "…"


class Chat:
    def __init__(
        self, config: Config, store: MessageStore, broker: Broker[Any], keyring: KeyRing,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.broker: Broker[Any] = broker
        self.keyring = keyring
        self.clock: Clock = clock or LoopClock()
        self.directory = RoomDirectory()
        self.stats = Stats()
        self.updates: RoomUpdates[Any] = RoomUpdates(self.directory, broker, self.stats, self.clock)
        self.presence = Presence(self.directory, broker, store, self.clock, config.rooms.presence_max_members)
        self.directory.presence = self.presence.state
        self.files = FileStore(config.files_path, store)
        self.membership = MembershipFeed(store, self.directory, self._rooms_changed)
        self.retention = Retention(store, self.directory, config.storage, self.updates.room_changed)
        self._send_buckets: dict[int, TokenBucket] = {}
        self._typing: dict[tuple[int, int], Timer] = {}
        self._leaving: dict[tuple[int, int], set[Connection]] = {}
        """(room, user) → the connections whose leave_room is under way: their replies tell them."""
        self.revocations: dict[int, int] = {}
        """user id → ms before which their tokens are refused (api.md, revoke)."""
        self.listeners: dict[int, set[Listener]] = {}
        """user id → their notification-only connections (api.md, /ws/notifications/)."""
        self.cluster: Cluster | None = None
        """The other processes of the chat space, when there are any (``cluster``)."""
        self.shared_limits: SharedLimits | None = None
        """Send limits kept in Redis for all processes (else each process keeps its own)."""
        self._background: set[asyncio.Task[None]] = set()
        self.database_reachable = True

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self.files.open()
        if self.cluster is not None:
            snapshot = (await self.cluster.start()).snapshot
        else:
            snapshot = await self.store.load_rooms()
        self.directory.apply(snapshot)
        self.revocations = await self.store.revocations()
        self.presence.load(snapshot.last_seen)
        self.membership.start(snapshot.membership_log_id)
        self.retention.start()
        self.spawn(self.watch_database())

    async def stop(self) -> None:
        await self.membership.stop()
        await self.retention.stop()
        for task in tuple(self._background):
            task.cancel()
        for timer in self._typing.values():
            timer.cancel()
        self._typing.clear()
        self.updates.send_all()
        await self.presence.stop()
        if self.cluster is not None:
            await self.cluster.stop()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background (cancelled at stop; a failure is logged)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("chat.background_failed", error=repr(task.exception()))

    def reconfigure(self, config: Config, keyring: KeyRing) -> None:
        """Take reloaded limits and keys; buckets already handed out adopt the new rates."""
        self.config, self.keyring = config, keyring
        self.presence.max_members = config.rooms.presence_max_members
        limits = config.limits
        for bucket in self._send_buckets.values():
            bucket.rate, bucket.burst = limits.messages_per_second, limits.message_burst
        if self.shared_limits is not None:
            self.shared_limits.rate, self.shared_limits.burst = limits.messages_per_second, limits.message_burst
        for connection in self.broker.sessions():
            connection.apply_limits()

    # -- connections -----------------------------------------------------------

    async def connect(self, connection: Connection) -> None:
        await self.remember_user(connection.identity)
        self.broker.connect(connection)
        self.presence.connected(connection.user_id)

    async def remember_user(self, identity: Identity) -> None:
        """Store the user's names as their token gives them (history shows these)."""
        names = (identity.username, identity.first_name)
        if self.directory.users.get(identity.user_id) != names:
            # Only a new user or a changed name costs a write (reconnects are the common case).
            await self.store.upsert_user(identity.user_id, *names)
            self.directory.set_user(identity.user_id, *names)

    def disconnect(self, connection: Connection) -> None:
        self.broker.disconnect(connection)
        self.updates.forget(connection)
        user_id = connection.user_id
        if not self.broker.is_online(user_id):
            self.presence.disconnected(user_id)
            self._forget_bucket_when_full(user_id)
            for room_id, typer in tuple(self._typing):
                if typer == user_id:
                    self._stop_typing(room_id, user_id, connection.identity.username)

    def is_revoked(self, identity: Identity) -> bool:
        return identity.revoked(self.revocations.get(identity.user_id))

    def listen(self, listener: Listener) -> None:
        self.listeners.setdefault(listener.user_id, set()).add(listener)

    def stop_listening(self, listener: Listener) -> None:
        listeners = self.listeners.get(listener.user_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self.listeners[listener.user_id]

    async def notify(self, user_id: int, frame: bytes) -> int:
        """A ``notification`` to every connection of the user, in every process; returns
        how many got it."""
        if self.cluster is not None:
            return await self.cluster.notify(user_id, frame)
        return self.notify_here(user_id, frame)

    def notify_here(self, user_id: int, frame: bytes) -> int:
        """:meth:`notify`, for this process's connections."""
        count = self.broker.publish_to_user(user_id, frame)
        for listener in tuple(self.listeners.get(user_id, ())):
            listener.send(frame)
            count += 1
        return count

    def revoked(self, user_id: int, before_ms: int) -> None:
        """A revocation another process made: refuse the user's older tokens here too."""
        self.revocations[user_id] = max(before_ms, self.revocations.get(user_id, 0))
        self.close_user(user_id, TOKEN_REVOKED)

    def close_user(self, user_id: int, reason: str) -> None:
        """Close every connection of the user with 4001 (a revocation)."""
        for connection in tuple(self.broker.connections_of(user_id)):
            connection.close(CloseCode.AUTH, reason)
        for listener in tuple(self.listeners.get(user_id, ())):
            listener.close(CloseCode.AUTH, reason)

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
            self.clock.call_later(wait + 0.01, self._forget_bucket_if_offline, user_id)

    def _forget_bucket_if_offline(self, user_id: int) -> None:
        if not self.broker.is_online(user_id):
            self._forget_bucket_when_full(user_id)

    def check_access(self, room_id: int, user_id: int) -> None:
        if not self.directory.is_participant(room_id, user_id):
            raise ClientError.access_denied(room_id)

    async def ensure_access(self, room_id: int, user_id: int) -> None:
        """:meth:`check_access`, after reading membership changes not applied yet.

        A member added by the CLI a moment ago may use the room at once (operations.md),
        not only after the next poll; a refusal costs one indexed read, shared by every
        request refused meanwhile.
        """
        if not self.directory.is_participant(room_id, user_id):
            await self.membership.catch_up()
            self.check_access(room_id, user_id)

    def _rooms_changed(self, changes: list[MembershipChange]) -> None:
        """Tell the connections concerned of room changes the directory now shows."""
        relisted: set[int] = set()
        renamed: set[int] = set()
        for change in changes:
            room_id, user_id = change.room_id, change.user_id
            if user_id is None:
                if change.change in ("rename", "owner"):
                    renamed.add(room_id)
                continue
            relisted.add(room_id)
            if self.directory.is_participant(room_id, user_id):
                continue
            # Every connection of a removed user hears it, subscribed or not, so each room
            # list can drop the room; the one that asked to leave gets its reply instead.
            leaving = change.change == "leave"
            frame = protocol.unsubscribed_frame(room_id, None, LEFT_ROOM if leaving else REMOVED_FROM_ROOM)
            # Connections that asked to leave are told by their reply instead.
            asked = self._leaving.get((room_id, user_id), ()) if leaving else ()
            self.broker.publish_to_user(user_id, frame, leaving_room=room_id, exclude=asked)
            if (room_id, user_id) in self._typing:
                self._stop_typing(room_id, user_id, self.directory.users.get(user_id, ("", ""))[0], tell_peers=False)
        for room_id in relisted:
            if room_id in self.directory.rooms:
                self.updates.room_changed(room_id, members=True)
        for room_id in renamed - relisted:
            if room_id in self.directory.rooms:
                self.updates.room_changed(room_id)

    # -- messages --------------------------------------------------------------

    async def submit_message(self, connection: Connection, request: protocol.SendMessage) -> asyncio.Future[Stored]:
        """Check the send and hand it to the store; the caller answers when it commits.

        The user's message bucket is taken first, so refused sends (foreign rooms
        included) are limited like any other.
        """
        user_id = connection.user_id
        if self.shared_limits is not None:
            wait_ms = await self.shared_limits.take(user_id, self._bucket(user_id))
        else:
            wait_ms = self._bucket(user_id).take()
        if wait_ms:
            raise RateLimited(wait_ms, room_id=request.room_id)
        await self.ensure_access(request.room_id, user_id)
        thread_root_id = None
        if request.reply_to is not None:
            target = await self.store.reply_target(request.reply_to)
            if target is None or target[0] != request.room_id:
                raise ClientError(ErrorCode.NOT_FOUND, "reply_to is not a message of this room",
                                  room_id=request.room_id)
            thread_root_id = target[1]
            # The membership may have changed while the store was asked.
            self.check_access(request.room_id, user_id)
        mentions, complete = self.directory.mentioned(request.room_id, request.content)
        if not complete:
            mentions = await self._mentions_after_catch_up(request.room_id, user_id, request.content)
        attachments: tuple[FileRef, ...] = ()
        if request.attachments:
            found = await self.store.files_of(user_id, request.attachments)
            if len(found) != len(request.attachments):
                # Someone else's file is refused exactly like one that does not exist.
                raise ClientError(ErrorCode.NOT_FOUND, "attachments: no such file of yours", room_id=request.room_id)
            attachments = tuple(found)
            self.check_access(request.room_id, user_id)
        identity = connection.identity
        return self.store.append_message(NewMessage(
            request.room_id, user_id, identity.username, identity.first_name,
            request.content, request.reply_to, request.client_msg_id, thread_root_id, mentions, attachments,
        ))

    def _bucket(self, user_id: int) -> TokenBucket:
        bucket = self._send_buckets.get(user_id)
        if bucket is None:
            limits = self.config.limits
            bucket = self._send_buckets[user_id] = TokenBucket(limits.messages_per_second, limits.message_burst)
        return bucket

    async def _mentions_after_catch_up(self, room_id: int, user_id: int, content: str) -> tuple[int, ...]:
        """Who ``content`` mentions, when a name in it matched no participant: it may be one
        the CLI added a moment ago, so membership changes not applied yet are read first."""
        await self.membership.catch_up()
        self.check_access(room_id, user_id)
        return self.directory.mentioned(room_id, content)[0]

    def message_stored(self, stored: Stored, wire: bytes, conn_id: int | None = None) -> None:
        """After the commit (and the sender's ack): fan the new message out."""
        if not stored.created:
            return
        message = stored.message
        self.stats.messages_stored += 1
        if switches.debug:
            log.debug("message.stored", conn_id=conn_id, user_id=message.sender_id,
                      room_id=message.room_id, message_id=message.id)
        self.directory.record_message(message)
        if (message.room_id, message.sender_id) in self._typing:
            # (every process stops it on the message itself: no need to tell the others)
            self._stop_typing(message.room_id, message.sender_id, message.sender_username, tell_peers=False)
        self.stats.deliveries += self.broker.publish(
            message.room_id, protocol.new_message_frame(message, wire), message_id=message.id
        )
        if stored.thread is not None:
            self.broker.publish(message.room_id, protocol.thread_updated_frame(message.room_id, stored.thread))
        self.updates.room_changed(message.room_id)

    # -- changes to messages -------------------------------------------------------

    async def edit_message(self, connection: Connection, request: protocol.EditMessage,
                           answer: Callable[[bytes], None]) -> None:
        room_id, user_id = request.room_id, connection.user_id
        await self.ensure_access(room_id, user_id)
        mentions, complete = self.directory.mentioned(room_id, request.content)
        if not complete:
            mentions = await self._mentions_after_catch_up(room_id, user_id, request.content)
        outcome = await self.store.edit_message(room_id, request.message_id, user_id, request.content, mentions)
        change = self._accepted(outcome, room_id, "edit")
        answer(protocol.message_updated_frame(change.message, request.request_id))
        self.applied_change("edit", change)

    async def delete_message(self, connection: Connection, request: protocol.DeleteMessage,
                             answer: Callable[[bytes], None]) -> None:
        room_id, user_id = request.room_id, connection.user_id
        await self.ensure_access(room_id, user_id)
        change = self._accepted(await self.store.delete_message(room_id, request.message_id, user_id),
                                room_id, "delete")
        answer(protocol.message_deleted_frame(change.message, request.request_id))
        if change.changed:
            self.applied_change("delete", change)

    async def react(self, connection: Connection, request: protocol.React, answer: Callable[[bytes], None]) -> None:
        room_id, user_id = request.room_id, connection.user_id
        await self.ensure_access(room_id, user_id)
        change = self._accepted(
            await self.store.react(room_id, request.message_id, user_id, request.emoji, request.add),
            room_id, "react to")
        answer(protocol.reactions_updated_frame(change.message, request.request_id))
        if change.changed:
            self.applied_change("react", change)

    def applied_change(self, kind: str, change: Change) -> None:
        """A committed edit, delete or reaction (``kind``), this process's or another's:
        memory and the room's subscribers learn of it."""
        room_id = change.message.room_id
        if kind == "react":
            self.broker.publish(room_id, protocol.reactions_updated_frame(change.message))
            return
        relist = self.directory.record_change(change)
        frame = protocol.message_deleted_frame if kind == "delete" else protocol.message_updated_frame
        self.broker.publish(room_id, frame(change.message))
        if relist:
            self.updates.room_changed(room_id)

    def changed_in_gap(self, message: Message) -> None:
        """A change another process committed and could not tell (found by a resync): the
        subscribers get the message as it now is; the snapshot after it fixes the counts."""
        frame = protocol.message_deleted_frame if message.deleted else protocol.message_updated_frame
        self.broker.publish(message.room_id, frame(message))

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """After a resync: the directory as the database holds it; connected users whose
        counts moved get their rooms listed again."""
        directory = self.directory
        users = {connection.user_id for connection in self.broker.sessions()}
        before = {(room_id, user_id): (directory.unread(room_id, user_id), directory.mention_count(room_id, user_id))
                  for user_id in users for room_id in directory.rooms_of(user_id)}
        previews = {room_id: room.last_message for room_id, room in directory.rooms.items()}
        directory.apply(snapshot)
        for room_id, room in snapshot.rooms.items():
            if previews.get(room_id) != room.last_message:
                self.updates.room_changed(room_id)
        for (room_id, user_id), counts in before.items():
            if room_id in directory.rooms and counts != (directory.unread(room_id, user_id),
                                                         directory.mention_count(room_id, user_id)):
                self.updates.changed_for(user_id, room_id)

    async def reload_room(self, room_id: int) -> None:
        """Another process pruned the room: its counts and preview as the database has them."""
        self.directory.apply(await self.store.load_rooms([room_id]))
        if room_id in self.directory.rooms:
            self.updates.room_changed(room_id)

    @staticmethod
    def _accepted(outcome: Change | Refusal, room_id: int, verb: str) -> Change:
        if isinstance(outcome, Change):
            return outcome
        if outcome is Refusal.FORBIDDEN:
            raise ClientError(ErrorCode.FORBIDDEN, f"you may not {verb} someone else's message", room_id=room_id)
        if outcome is Refusal.TOO_MANY_REACTIONS:
            raise ClientError(ErrorCode.INVALID_MESSAGE,
                              f"a message holds at most {protocol.MAX_REACTIONS} different emoji", room_id=room_id)
        raise ClientError(ErrorCode.NOT_FOUND, "no such message in this room", room_id=room_id)

    # -- rooms from clients ------------------------------------------------------

    def _check_may_create(self) -> None:
        if not self.config.rooms.users_can_create:
            raise ClientError(ErrorCode.FORBIDDEN, "this server lets only its administrators create rooms")

    async def _check_users_exist(self, user_ids: Iterable[int]) -> None:
        unknown = sorted(set(user_ids) - self.directory.users.keys())
        if unknown:
            missing = set(unknown) - {user.id for user in await self.store.users_by_id(unknown)}
            if missing:
                raise ClientError(ErrorCode.NOT_FOUND, f"no such user: {min(missing)}")

    async def create_room(self, connection: Connection, request: protocol.CreateRoom) -> bytes:
        self._check_may_create()
        user_id = connection.user_id
        members = tuple(member for member in request.member_ids if member != user_id)
        await self._check_users_exist(members)
        changed = await self.store.create_room(request.name, request.room_type, user_id, members)
        await self.membership.catch_up(changed.log_id)
        return protocol.room_created_frame(self.directory.room_object(changed.room_id, user_id), request.request_id)

    async def create_direct(self, connection: Connection, request: protocol.CreateDirect) -> bytes:
        self._check_may_create()
        user_id = connection.user_id
        if request.user_id == user_id:
            raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'user_id' must name someone else")
        await self._check_users_exist((request.user_id,))
        changed = await self.store.open_direct(user_id, request.user_id)
        await self.membership.catch_up(changed.log_id)
        return protocol.room_created_frame(self.directory.room_object(changed.room_id, user_id), request.request_id)

    async def change_members(self, connection: Connection, request: protocol.ChangeMembers) -> bytes:
        room_id = request.room_id
        await self.ensure_access(room_id, connection.user_id)
        room = self.directory.rooms[room_id]
        if room.direct_pair is not None or room.owner_id != connection.user_id:
            # (checked again in the change's transaction; first, so a refusal names the right cause)
            raise ClientError(ErrorCode.FORBIDDEN, "a direct room's members do not change" if room.direct_pair
                              else "only the room's owner may change its members", room_id=room_id)
        if request.add:
            await self._check_users_exist(request.user_ids)
        outcome = await self.store.change_room(room_id, connection.user_id, "add" if request.add else "remove",
                                               user_ids=request.user_ids)
        await self.membership.catch_up(self._room_accepted(outcome, room_id, "change its members").log_id)
        participants = self.directory.participant_list(room_id) if room_id in self.directory.rooms else []
        return protocol.members_updated_frame(room_id, participants, request.request_id)

    async def rename_room(self, connection: Connection, request: protocol.RenameRoom) -> bytes:
        room_id = request.room_id
        await self.ensure_access(room_id, connection.user_id)
        outcome = await self.store.change_room(room_id, connection.user_id, "rename", name=request.name)
        await self.membership.catch_up(self._room_accepted(outcome, room_id, "rename it").log_id)
        return protocol.room_updated_frame(room_id, {"name": request.name}, request.request_id)

    async def leave_room(self, connection: Connection, request: protocol.LeaveRoom) -> bytes:
        room_id, user_id = request.room_id, connection.user_id
        await self.ensure_access(room_id, user_id)
        key = (room_id, user_id)
        self._leaving.setdefault(key, set()).add(connection)
        try:
            outcome = await self.store.change_room(room_id, user_id, "leave")
            await self.membership.catch_up(self._room_accepted(outcome, room_id, "leave it").log_id)
        finally:
            asking = self._leaving[key]
            asking.discard(connection)
            if not asking:
                del self._leaving[key]
        return protocol.unsubscribed_frame(room_id, request.request_id, LEFT_ROOM)

    @staticmethod
    def _room_accepted(outcome: RoomChanged | Refusal, room_id: int, what: str) -> RoomChanged:
        if isinstance(outcome, RoomChanged):
            return outcome
        if outcome is Refusal.NOT_OWNER:
            raise ClientError(ErrorCode.FORBIDDEN, f"only the room's owner may {what}", room_id=room_id)
        if outcome is Refusal.DIRECT_ROOM:
            raise ClientError(ErrorCode.FORBIDDEN, "a direct room's members do not change", room_id=room_id)
        raise ClientError.access_denied(room_id)

    # -- people ------------------------------------------------------------------

    def _user_object(self, user: UserInfo) -> dict[str, Any]:
        online, last_seen = self.presence.state(user.id)
        return {"id": user.id, "username": user.username, "first_name": user.first_name,
                "online": online, "last_seen": last_seen}

    async def users(self, request: protocol.GetUsers) -> bytes:
        self._check_may_create()
        found = await self.store.find_users(request.query, request.limit)
        return protocol.users_frame("users", [self._user_object(user) for user in found], request.request_id)

    async def presence_list(self, request: protocol.GetPresence) -> bytes:
        found = await self.store.users_by_id(request.user_ids)
        return protocol.users_frame("presence_list", [self._user_object(user) for user in found],
                                    request.request_id)

    # -- threads, search, changes --------------------------------------------------

    async def thread(self, connection: Connection, request: protocol.GetThread) -> bytes:
        await self.ensure_access(request.room_id, connection.user_id)
        found = await self.store.thread(request.room_id, request.message_id, after_id=request.after_id,
                                        limit=request.limit)
        if found is None:
            raise ClientError(ErrorCode.NOT_FOUND, "no such message in this room", room_id=request.room_id)
        root, replies, has_more = found
        return protocol.thread_frame(root, replies, has_more, request.request_id)

    async def search(self, connection: Connection, request: protocol.SearchMessages) -> bytes:
        user_id = connection.user_id
        if request.room_id is not None:
            await self.ensure_access(request.room_id, user_id)
            room_ids: tuple[int, ...] = (request.room_id,)
        else:
            room_ids = self.directory.rooms_of(user_id)
        if not room_ids:
            return protocol.search_results_frame(request.query, [], False, request.request_id)
        mine = set(room_ids)
        others = tuple(room_id for room_id in self.directory.rooms if room_id not in mine)
        hits, has_more = await self.store.search(room_ids, request.terms, other_rooms=others,
                                                 before_id=request.before_id, limit=request.limit)
        # A room the user left while the index was read is not theirs to search any more.
        visible = [(message, _clip_snippet(snippet)) for message, snippet in hits
                   if self.directory.is_participant(message.room_id, user_id)]
        return protocol.search_results_frame(request.query, visible, has_more, request.request_id)

    async def changes(self, connection: Connection, request: protocol.GetChanges) -> bytes:
        await self.ensure_access(request.room_id, connection.user_id)
        messages, has_more = await self.store.changes(request.room_id, since_revision=request.since_revision,
                                                      through_id=None, limit=request.limit)
        return protocol.changes_frame(request.room_id, messages, has_more, request.request_id)

    # -- read markers ----------------------------------------------------------

    async def mark_read(self, connection: Connection, request: protocol.MarkRead,
                        answer: Callable[[ReadResult], None]) -> None:
        """Move the marker; ``answer`` gets the result before the room hears of it (a
        request's reply goes before the broadcasts it causes)."""
        user_id, room_id = connection.user_id, request.room_id
        await self.ensure_access(room_id, user_id)
        result = await self.store.mark_read(room_id, user_id, request.message_ids)
        if result is None:  # removed from the room while the request waited
            raise ClientError.access_denied(room_id)
        self.applied_read(room_id, user_id, request.message_ids, result, answer)

    def applied_read(self, room_id: int, user_id: int, message_ids: tuple[int, ...], result: ReadResult,
                     answer: Callable[[ReadResult], None] | None = None) -> None:
        """A committed read marker (this process's, answered first, or another's)."""
        directory = self.directory
        changed_unread = (directory.unread(room_id, user_id) != result.unread_count
                          or directory.mention_count(room_id, user_id) != result.mention_count)
        directory.record_read(room_id, user_id, result.last_read_id, result.unread_count, result.mention_count)
        if answer is not None:
            answer(result)
        if result.moved:
            self.broker.publish(room_id, protocol.message_read_frame(
                room_id, user_id, message_ids, result.last_read_id
            ))
        if changed_unread:
            self.updates.changed_for(user_id, room_id)

    # -- typing ----------------------------------------------------------------

    async def typing(self, connection: Connection, request: protocol.Typing) -> None:
        user_id, room_id = connection.user_id, request.room_id
        await self.ensure_access(room_id, user_id)
        username = connection.identity.username
        if self.cluster is not None:
            self.cluster.typing(room_id, user_id, username, request.is_typing)
        self.typing_elsewhere(room_id, user_id, username, request.is_typing, tell_peers=False)

    def typing_elsewhere(self, room_id: int, user_id: int, username: str, is_typing: bool, *,
                         tell_peers: bool = False) -> None:
        """Typing started or stopped (here, or in another process): each process expires it
        on its own, so a process gone mid-sentence leaves nobody typing for ever."""
        key = (room_id, user_id)
        if not is_typing:
            if key in self._typing:
                self._stop_typing(room_id, user_id, username, tell_peers=tell_peers)
            return
        previous = self._typing.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._typing[key] = self.clock.call_later(
            TYPING_TIMEOUT, partial(self._stop_typing, room_id, user_id, username, tell_peers=False))
        self.broker.publish(room_id, protocol.typing_frame(room_id, user_id, username, True), exclude_user=user_id)

    def _stop_typing(self, room_id: int, user_id: int, username: str, *, tell_peers: bool = True) -> None:
        timer = self._typing.pop((room_id, user_id), None)
        if timer is not None:
            timer.cancel()
        if tell_peers and self.cluster is not None:
            self.cluster.typing(room_id, user_id, username, False)
        self.broker.publish(room_id, protocol.typing_frame(room_id, user_id, username, False),
                            exclude_user=user_id)

    # -- reads -------------------------------------------------------------------

    def pruned_through(self, room_id: int) -> int:
        room = self.directory.rooms.get(room_id)
        return room.pruned_through if room is not None else 0

    def room_list(self, user_id: int) -> list[dict[str, Any]]:
        return self.directory.room_list(user_id)

    def health(self, uptime_s: float) -> dict[str, Any]:
        """``/healthz``: ``status`` is ``unavailable`` (and the answer 503) while the database
        or the broker cannot be reached."""
        database = "ok" if self.database_reachable else "unreachable"
        broker = "none" if self.cluster is None else "ok" if self.cluster.bus.connected else "unreachable"
        return {
            "status": "ok" if "unreachable" not in (database, broker) else "unavailable",
            "connections": self.broker.connection_count,
            "rooms_active": self.broker.active_rooms,
            "uptime_s": int(uptime_s),
            "database": database,
            "broker": broker,
        }

    async def watch_database(self) -> None:
        """Read the database every HEALTH_INTERVAL (``/healthz`` says when it stops answering)."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            try:
                async with asyncio.timeout(HEALTH_INTERVAL * 2):
                    await self.store.last_number()
            except (StoreError, TimeoutError) as exc:
                if self.database_reachable:
                    log.warning("database.unreachable", error=str(exc) or "timeout")
                self.database_reachable = False
            else:
                if not self.database_reachable:
                    log.info("database.reachable")
                self.database_reachable = True
