"""The in-process :class:`~unichatd.interfaces.Broker`: fan-out within one daemon.

Rooms map to their subscribed connections and users to their connections, in plain
dicts; a publish is a loop over one of them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Generic

from .interfaces import S


class Hub(Generic[S]):
    """Room → subscribed connections, and user → connections."""

    def __init__(self) -> None:
        self._rooms: dict[int, dict[S, None]] = {}
        self._users: dict[int, dict[S, None]] = {}
        self._memberships: dict[S, set[int]] = {}
        self.deliveries = 0
        """Frames handed to subscribers by :meth:`publish`, of every kind."""

    # -- connections -----------------------------------------------------------

    def connect(self, subscriber: S) -> None:
        self._users.setdefault(subscriber.user_id, {})[subscriber] = None
        self._memberships[subscriber] = set()

    def disconnect(self, subscriber: S) -> None:
        """Forget the connection: it leaves every room."""
        self.leave_all(subscriber)
        self._memberships.pop(subscriber, None)
        connections = self._users.get(subscriber.user_id)
        if connections is not None:
            connections.pop(subscriber, None)
            if not connections:
                del self._users[subscriber.user_id]

    def connections_of(self, user_id: int) -> Collection[S]:
        """The user's connections (a live view: do not connect or disconnect while iterating)."""
        return self._users.get(user_id, {}).keys()

    def sessions(self) -> tuple[S, ...]:
        """Every connected subscriber."""
        return tuple(self._memberships)

    def online_users(self) -> tuple[int, ...]:
        return tuple(self._users)

    def is_online(self, user_id: int) -> bool:
        return user_id in self._users

    @property
    def connection_count(self) -> int:
        return len(self._memberships)

    # -- rooms -----------------------------------------------------------------

    def subscribe(self, room_id: int, subscriber: S) -> bool:
        """Add the connection to the room; False when it was already there."""
        rooms = self._memberships.get(subscriber)
        if rooms is None or room_id in rooms:
            return False
        rooms.add(room_id)
        self._rooms.setdefault(room_id, {})[subscriber] = None
        return True

    def unsubscribe(self, room_id: int, subscriber: S) -> bool:
        """Remove the connection from the room; False when it was not there."""
        rooms = self._memberships.get(subscriber)
        if rooms is None or room_id not in rooms:
            return False
        rooms.discard(room_id)
        listeners = self._rooms.get(room_id)
        if listeners is not None:
            listeners.pop(subscriber, None)
            if not listeners:
                del self._rooms[room_id]
        return True

    def leave_all(self, subscriber: S) -> None:
        for room_id in tuple(self._memberships.get(subscriber, ())):
            self.unsubscribe(room_id, subscriber)

    def is_subscribed(self, room_id: int, subscriber: S) -> bool:
        return room_id in self._memberships.get(subscriber, ())

    def rooms_of(self, subscriber: S) -> frozenset[int]:
        return frozenset(self._memberships.get(subscriber, ()))

    def subscribers(self, room_id: int) -> tuple[S, ...]:
        return tuple(self._rooms.get(room_id, ()))

    @property
    def subscription_count(self) -> int:
        return sum(len(listeners) for listeners in self._rooms.values())

    @property
    def active_rooms(self) -> int:
        return len(self._rooms)

    # -- fan-out ---------------------------------------------------------------

    def publish(
        self,
        room_id: int,
        frame: bytes,
        *,
        message_id: int | None = None,
        exclude_user: int | None = None,
    ) -> int:
        """Hand ``frame`` to the room's subscribers; returns how many got it."""
        listeners = self._rooms.get(room_id)
        if not listeners:
            return 0
        count = 0
        # A copy: a delivery may close a slow consumer, which unsubscribes it.
        for subscriber in tuple(listeners):
            if exclude_user is not None and subscriber.user_id == exclude_user:
                continue
            subscriber.deliver(room_id, frame, message_id)
            count += 1
        self.deliveries += count
        return count

    def publish_to_user(self, user_id: int, frame: bytes, *, leaving_room: int | None = None,
                        exclude: Collection[S] = ()) -> int:
        """Hand ``frame`` to the user's connections (but ``exclude``); with ``leaving_room``,
        each of them leaves that room first.  Returns how many got it."""
        count = 0
        for subscriber in tuple(self._users.get(user_id, ())):
            if leaving_room is not None:
                self.unsubscribe(leaving_room, subscriber)
            if subscriber in exclude:
                continue
            subscriber.deliver(None, frame, None)
            count += 1
        self.deliveries += count
        return count
