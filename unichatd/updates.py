"""The room list's live feed: ``room_updated`` frames, coalesced per connection.

A busy room changes many times a second; each participant's connection is told at
most once per window (protocol.md allows 100 ms), with the state as it is when the
frame leaves.  A connection that is owed frames and gets a broadcast past
``PIGGYBACK`` seconds takes them along with it, sharing that write.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from . import protocol
from .clock import Clock, Timer
from .rooms import RoomDirectory
from .stats import Stats

WINDOW = 0.09
"""room_updated frames are coalesced over this window; the spec allows 100 ms."""
PIGGYBACK = 0.075
"""Past this age, a connection's owed frames leave with the next frame broadcast to it."""
ENCODER_REUSE = 0.005
"""Seconds a room's encoded state is reused across participants (the timestamp holds)."""


class Recipient(Hashable, Protocol):
    @property
    def user_id(self) -> int: ...

    def send(self, frame: bytes) -> None: ...


R = TypeVar("R", bound=Recipient)
R_co = TypeVar("R_co", bound=Recipient, covariant=True)


class Connections(Protocol[R_co]):
    def connections_of(self, user_id: int) -> collections.abc.Collection[R_co]: ...


@dataclass(slots=True)
class _Owed:
    since: float
    rooms: set[int] = field(default_factory=set)
    members: set[int] | None = None
    """Rooms whose participants changed: their frame carries ``participants`` too."""


class RoomUpdates(Generic[R]):
    """Which connections are owed ``room_updated`` for which rooms, and sending them."""

    def __init__(self, directory: RoomDirectory, connections: Connections[R], stats: Stats, clock: Clock) -> None:
        self._directory = directory
        self._connections = connections
        self._stats = stats
        self._clock = clock
        self._owed: dict[R, _Owed] = {}
        self._order: collections.deque[tuple[R, _Owed]] = collections.deque()
        """Connections in the order they became owed; entries already sent are skipped."""
        self._timer: Timer | None = None
        self._encoders: dict[int, tuple[float, tuple[int, int, str], protocol.RoomUpdateEncoder]] = {}
        self._participant_lists: dict[int, tuple[float, list[dict[str, Any]]]] = {}

    def room_changed(self, room_id: int, *, members: bool = False) -> None:
        """Every participant's room list shows this room differently now (with ``members``:
        its participants changed)."""
        for user_id in self._directory.participants(room_id):
            self.changed_for(user_id, room_id, members=members)

    def changed_for(self, user_id: int, room_id: int, *, members: bool = False) -> None:
        """The user's room list shows this room differently now."""
        connections = self._connections.connections_of(user_id)
        if not connections:
            return
        now = self._clock.monotonic()
        for connection in connections:
            owed = self._owed.get(connection)
            if owed is None:  # allocated only while owed: most connections are idle
                owed = self._owed[connection] = _Owed(now)
                self._order.append((connection, owed))
            owed.rooms.add(room_id)
            if members:
                if owed.members is None:
                    owed.members = set()
                owed.members.add(room_id)
        if self._timer is None:
            self._timer = self._clock.call_later(WINDOW, self._send_due)

    def after_delivery(self, connection: R) -> None:
        """A broadcast just went to ``connection``: owed frames old enough go with it."""
        if self._owed:
            owed = self._owed.get(connection)
            if owed is not None and self._clock.monotonic() - owed.since >= PIGGYBACK:
                self.send_owed(connection)

    def send_owed(self, connection: R) -> None:
        """Send the connection the room_updated frames it is owed, with the latest state."""
        owed = self._owed.pop(connection, None)
        if owed is None:
            return
        directory = self._directory
        user_id = connection.user_id
        now = self._clock.monotonic()
        for room_id in owed.rooms:
            if not directory.is_participant(room_id, user_id):
                continue
            if owed.members is not None and room_id in owed.members:
                updates = directory.room_state(room_id, user_id)
                updates["participants"] = self._participants(room_id, now)
                connection.send(protocol.room_updated_frame(room_id, updates))
                self._stats.room_updates += 1
                continue
            # Most of a room_updated is the same for every participant: encode it once
            # per room and state.
            room = directory.rooms[room_id]
            last = room.last_message
            name = directory.name_for(room, user_id)
            key = (last.id if last is not None else 0, last.revision if last is not None else 0, name)
            cached = self._encoders.get(room_id)
            if cached is None or cached[1] != key or now - cached[0] > ENCODER_REUSE:
                cached = (now, key, protocol.RoomUpdateEncoder(room_id, directory.room_state(room_id, user_id)))
                self._encoders[room_id] = cached
            connection.send(cached[2].frame(room.unread.get(user_id, 0), room.mentions.get(user_id, 0)))
            self._stats.room_updates += 1

    def _participants(self, room_id: int, now: float) -> list[dict[str, Any]]:
        """The room's participant list, built once for all the participants told at once
        (a join in a room of a thousand is not a million entries)."""
        cached = self._participant_lists.get(room_id)
        if cached is None or now - cached[0] > ENCODER_REUSE:
            cached = self._participant_lists[room_id] = (now, self._directory.participant_list(room_id))
        return cached[1]

    def forget(self, connection: R) -> None:
        """The connection is gone: it is owed nothing any more."""
        self._owed.pop(connection, None)

    def send_all(self) -> None:
        """Send everything owed now (at shutdown) and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for connection in tuple(self._owed):
            self.send_owed(connection)
        self._order.clear()

    def _send_due(self) -> None:
        """The timer's part: whatever no broadcast carried out within the window goes now."""
        self._timer = None
        order = self._order
        now = self._clock.monotonic()
        while order and now - order[0][1].since >= WINDOW - ENCODER_REUSE:
            connection, owed = order.popleft()
            if self._owed.get(connection) is owed:  # (not sent since, nor owed anew)
                self.send_owed(connection)
        if order:
            self._timer = self._clock.call_later(max(0.001, order[0][1].since + WINDOW - now), self._send_due)
