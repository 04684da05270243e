"""Time for the chat core, behind a seam: the event loop's clock in the daemon, a
hand-moved one in the unit tests (so a 6-second typing timeout takes no 6 seconds)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for intervals)."""

    def time(self) -> float:
        """Seconds since the epoch (for token expiry)."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` after ``delay`` seconds, unless cancelled."""


class LoopClock:
    """The running event loop's timers over the system clocks."""

    __slots__ = ("_loop",)

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        if self._loop is None:  # looked up once: asyncio.get_running_loop() costs a getpid() call
            self._loop = asyncio.get_running_loop()
        return self._loop.call_later(delay, callback, *args)
