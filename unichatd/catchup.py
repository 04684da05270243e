"""Catching up on a room without gap or duplicate (``subscribe_room`` with ``last_message_id``).

The session joins the room *before* it reads what it missed, so no message can fall
between the read and the live stream; the price is that a message may come both ways.
One :class:`CatchUp` per room sorts that out:

1. while the history read runs, the room's live frames are *held*;
2. the read sees every message whose broadcast happened before the join, and a message
   committed after the read is broadcast after the join, so it is among the held ones;
3. after ``subscribed`` and ``history`` go out, :meth:`release` gives back the held
   frames that history did not carry;
4. a message committed before the read whose broadcast comes only now (its commit
   callback had not run yet) is still skipped, up to history's last id; the first live
   message past that id ends the catch-up, as a room's broadcasts come in id order.
"""

from __future__ import annotations

from collections.abc import Sequence

from .models import Message


class CatchUp:
    __slots__ = ("_held", "_through", "finished")

    def __init__(self, skipping_through: int = 0) -> None:
        self._held: list[tuple[bytes, int | None]] | None = []
        self._through = skipping_through
        """Live messages up to this id are dropped (a previous catch-up's history had them)."""
        self.finished = False
        """Nothing more to sort out: live frames pass as they are."""

    def offer(self, frame: bytes, message_id: int | None) -> bool:
        """A live frame of the room: True when it is to be sent now."""
        if self._held is not None:
            self._held.append((frame, message_id))
            return False
        if message_id is None:
            return True
        if message_id <= self._through:
            return False  # history carried it already
        self.finished = True
        return True

    def release(self, history: Sequence[Message], after_id: int) -> list[bytes]:
        """History went out: the held frames it did not carry, in order."""
        held, self._held = self._held or [], None
        seen = history[-1].id if history else after_id
        released = [frame for frame, message_id in held if message_id is None or message_id > seen]
        if history:
            self._through = max(self._through, seen)  # (step 4) broadcasts up to `seen` may still come
        if not self._through or any(message_id is not None and message_id >= self._through for _, message_id in held):
            self.finished = True
        return released

    @property
    def skipping_through(self) -> int:
        """The id up to which late broadcasts are still dropped (0 once finished)."""
        return 0 if self.finished else self._through
