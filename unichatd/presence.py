"""Presence: who is online, when each user was last seen, and telling those who share a
room with them (protocol.md §6.2).

A user is online while a connection of theirs is open.  Going offline waits GRACE
seconds first, so a page reload (close, then connect again at once) tells nobody
anything; while the grace runs the user still counts as online.

Who hears it: those who share a room of at most ``max_members`` participants with the
user (``[rooms] presence_max_members``), or a direct room.  In a room of a thousand,
everyone telling everyone of every arrival is a million frames a morning; there, as in
Discord's large guilds, a client reads presence from the room's participants and
``get_presence`` instead.

With several processes (``cluster``), each tells the others when a user's first
connection to it opens and when it has none left (after the grace), and counts a user
online while any process has them; a process that stops beating takes its users with it.

What it costs stays flat: a change is encoded once, whatever the number of people it
goes to, and changes wait in an outbox that is sent DELIVERY_BUDGET deliveries per turn
of the event loop, so a crowd coming online at once (a morning, a reconnect storm) never
holds up the messages of others for long; a user whose state flips back before their
turn tells nobody anything.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from . import protocol
from .clock import Clock, Timer
from .errors import StoreError
from .interfaces import Broker, MessageStore
from .protocol import now_ms
from .rooms import RoomDirectory

if TYPE_CHECKING:
    from .cluster import Cluster

log = structlog.get_logger("unichatd.presence")

GRACE = 5.0
"""Seconds offline before others are told."""
DELIVERY_BUDGET = 2000
"""Presence deliveries per turn of the event loop (a few milliseconds at most)."""
SAVE_DELAY = 0.2
"""Seconds last_seen times gather before one write stores them all."""


class Presence:
    def __init__(self, directory: RoomDirectory, broker: Broker[Any], store: MessageStore, clock: Clock,
                 max_members: int) -> None:
        self.max_members = max_members
        """Rooms larger than this carry no presence changes (see the module's docstring)."""
        self._directory = directory
        self._broker = broker
        self._store = store
        self._clock = clock
        self._last_seen: dict[int, int] = {}
        """user id → when their last connection closed (ms), for users seen offline."""
        self._leaving: dict[int, tuple[Timer, int]] = {}
        """Users whose last connection closed less than GRACE ago: (timer, when it closed)."""
        self._told_online: set[int] = set()
        """Users their contacts were last told are online."""
        self._outbox: dict[int, None] = {}
        """Users whose contacts are owed their state, in order."""
        self._draining: Timer | None = None
        self._unsaved: list[tuple[int, int]] = []
        """(user, last seen) not written yet: written together, so a crowd leaving at once
        costs one write, not one each."""
        self._saving: Timer | None = None
        self._elsewhere: dict[int, set[str]] = {}
        """user id → the other processes that have them online."""
        self.peers: Cluster | None = None

    def load(self, last_seen: dict[int, int]) -> None:
        self._last_seen.update(last_seen)

    def is_online(self, user_id: int) -> bool:
        return user_id in self._leaving or self._broker.is_online(user_id) or user_id in self._elsewhere

    def last_seen(self, user_id: int) -> int | None:
        """When their last connection closed; None while online or when never seen."""
        return None if self.is_online(user_id) else self._last_seen.get(user_id)

    def state(self, user_id: int) -> tuple[bool, str | None]:
        """(online, last_seen as the wire writes it)."""
        if self.is_online(user_id):
            return True, None
        seen = self._last_seen.get(user_id)
        return False, None if seen is None else protocol.format_timestamp(seen)

    def connected(self, user_id: int) -> None:
        """A connection of the user opened (after the broker knows it)."""
        leaving = self._leaving.pop(user_id, None)
        if leaving is not None:
            leaving[0].cancel()  # back within the grace: nobody was told they left
            return
        if len(self._broker.connections_of(user_id)) == 1:
            if self.peers is not None:
                self.peers.online(user_id)
            self._owe(user_id)

    def disconnected(self, user_id: int) -> None:
        """A connection of the user closed (after the broker forgot it)."""
        if self._broker.is_online(user_id) or user_id in self._leaving:
            return
        closed_ms = now_ms()
        self._leaving[user_id] = (self._clock.call_later(GRACE, self._gone, user_id), closed_ms)

    def _gone(self, user_id: int) -> None:
        leaving = self._leaving.pop(user_id, None)
        if leaving is None or self._broker.is_online(user_id):
            return
        closed_ms = leaving[1]
        if self.peers is not None:
            self.peers.offline(user_id, closed_ms)
        self._last_seen[user_id] = closed_ms
        self._unsaved.append((user_id, closed_ms))
        if self._saving is None:
            self._saving = self._clock.call_later(SAVE_DELAY, self._save)
        self._owe(user_id)

    def online_elsewhere(self, user_id: int, process: str) -> None:
        self._elsewhere.setdefault(user_id, set()).add(process)
        self._owe(user_id)

    def offline_elsewhere(self, user_id: int, process: str, last_seen_ms: int) -> None:
        processes = self._elsewhere.get(user_id)
        if processes is None or process not in processes:
            return
        processes.discard(process)
        if not processes:
            del self._elsewhere[user_id]
        self._last_seen[user_id] = max(last_seen_ms, self._last_seen.get(user_id, 0))
        self._owe(user_id)

    def forget_process(self, process: str) -> None:
        """A process that left or stopped beating: its users are offline there, as of now."""
        now = now_ms()
        for user_id in [user_id for user_id, processes in self._elsewhere.items() if process in processes]:
            self.offline_elsewhere(user_id, process, now)

    def local_users(self) -> list[int]:
        """The users online in this process (its connections, and those within the grace)."""
        return sorted({conn.user_id for conn in self._broker.sessions()} | self._leaving.keys())

    def _save(self) -> None:
        self._saving = None
        unsaved, self._unsaved = self._unsaved, []
        self._store.set_last_seen(unsaved).add_done_callback(_logged)

    def _owe(self, user_id: int) -> None:
        self._outbox[user_id] = None
        if self._draining is None:
            self._draining = self._clock.call_later(0, self._drain)

    def _drain(self) -> None:
        """Tell contacts of the changes owed, DELIVERY_BUDGET deliveries at a time."""
        self._draining = None
        budget = DELIVERY_BUDGET
        outbox = self._outbox
        while outbox and budget > 0:
            user_id = next(iter(outbox))
            del outbox[user_id]
            online = self.is_online(user_id)
            if online == (user_id in self._told_online):
                continue  # back where their contacts last saw them
            if online:
                self._told_online.add(user_id)
            else:
                self._told_online.discard(user_id)
            budget -= self._announce(user_id, online, None if online else self._last_seen.get(user_id))
        if outbox:
            self._draining = self._clock.call_later(0, self._drain)

    def _announce(self, user_id: int, online: bool, last_seen_ms: int | None) -> int:
        """Send one change to every connection of every contact; returns how many got it."""
        contacts = self.contacts(user_id)
        if not contacts:
            return 1
        frame = protocol.presence_frame(user_id, online, last_seen_ms)
        publish = self._broker.publish_to_user
        return sum(publish(contact, frame) for contact in contacts) + 1

    def contacts(self, user_id: int) -> set[int]:
        """The connected users who share a room with ``user_id`` that carries presence."""
        directory, broker, limit = self._directory, self._broker, self.max_members
        contacts: set[int] = set()
        for room_id in directory.rooms_of(user_id):
            room = directory.rooms[room_id]
            if len(room.markers) <= limit or room.direct_pair is not None:
                contacts.update(other for other in room.markers if broker.is_online(other))
        contacts.discard(user_id)
        return contacts

    async def stop(self) -> None:
        """Shutdown: everyone online or leaving was last seen now (after a restart nobody is
        online until they connect again)."""
        for timer in (self._draining, self._saving):
            if timer is not None:
                timer.cancel()
        self._draining = self._saving = None
        self._outbox.clear()
        now = now_ms()
        seen = self._unsaved + [(user_id, closed) for user_id, (timer, closed) in self._leaving.items()]
        self._unsaved = []
        for timer, _ in self._leaving.values():
            timer.cancel()
        self._leaving.clear()
        seen.extend((user_id, now) for user_id in {conn.user_id for conn in self._broker.sessions()})
        if seen:
            with contextlib.suppress(StoreError):
                await self._store.set_last_seen(seen)


def _logged(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("presence.last_seen_not_stored", error=str(future.exception()))
