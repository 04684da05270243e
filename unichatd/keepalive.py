"""Keepalive: each connection pinged once per ``ping_interval`` in a phase of its own, and
closed with 1011 when a ping goes unanswered for ``ping_timeout``.

websockets' own keepalive runs a task and a timer per connection; the single sweep this
replaced pinged every connection in one burst, which stalled the whole server for half
a second every interval at 15,000 connections.  Here one timer serves all connections
and the work never bunches up: each connection's phase is spread over the interval when
it is first watched (so a reconnect storm does not line the pings up either), and each
firing handles at most ``BATCH`` connections before giving the loop back.  The ping is
one frame, built once, that leaves through the connection's corked writes like any
other frame; its pong, alone in a read as it nearly always is, is recognised without
websockets' frame parser.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Protocol

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.protocol import Protocol as FrameProtocol
from websockets.streams import StreamReader

from .clock import Clock, Timer
from .errors import CloseCode

log = structlog.get_logger("unichatd.server")

PING_PAYLOAD = b"beat"
PING_FRAME = bytes((0x89, len(PING_PAYLOAD))) + PING_PAYLOAD
"""A final, unmasked ping frame (RFC 6455 §5.5.2): one ``bytes`` for every connection."""
TIMEOUT_REASON = "keepalive ping timeout"
TICK = 0.01
"""Seconds at least between firings: what falls due within a tick shares one wake-up.
Short, so that a firing's pings (and the pongs that come straight back) are a few
hundred microseconds of the loop's time, not milliseconds: with 15,000 connections and
a 20 s interval one firing has 7 or 8 due.  Longer ticks mean fewer wake-ups (alone, 50 ms
ticks cost an idle server with 15,000 connections 4.1–4.5 % of a core against 4.9–5.1 %
at 10 ms; the pong read without the parser, below, pays for the difference) but bunch
the work, which a busy room feels (docs/performance.md)."""
BATCH = 16
"""Connections handled per firing at most; more that are due wait for the next loop turn."""
_GOLDEN = 0.6180339887498949
"""Successive phases step by the golden ratio: any number of them is evenly spread."""


class Peer(Protocol):
    """A connection as the keepalive sees it."""

    @property
    def open(self) -> bool: ...

    @property
    def remote(self) -> str:
        """The peer's address, for the log."""

    @property
    def awaiting_pong(self) -> bool:
        """Whether the last ping is still unanswered."""

    def ping(self) -> None:
        """Send :data:`PING_FRAME`; :attr:`awaiting_pong` is true until its pong comes."""

    def close(self, code: CloseCode, reason: str) -> None: ...


_PONG_HEADER = b"\x8a\x84"
"""A final pong frame, masked (as every client frame), with a 4-byte payload (RFC 6455 §5.2)."""
_PONG_FRAME_SIZE = len(_PONG_HEADER) + 4 + len(PING_PAYLOAD)
_PAYLOAD_BITS = int.from_bytes(PING_PAYLOAD, "big")
_WAITING_CODE = StreamReader.at_eof.__code__


class AnswersPings(ServerConnection):
    """A websockets connection that notes the pong to the keepalive's ping."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set here, not on the first ping: an attribute added later would take the
        # instance out of its class's shared attribute layout (about 0.75 KB more each).
        self.awaiting_pong = False

    def data_received(self, data: bytes) -> None:
        # Most reads on an idle connection are the pong to our ping, alone.  When the
        # parser waits for the start of a frame, that pong is taken here: what websockets
        # would do with it (parse it, then acknowledge_pings) was a third of the
        # keepalive's whole cost per connection.  Anything else goes to websockets.
        if (self.awaiting_pong and len(data) == _PONG_FRAME_SIZE and data.startswith(_PONG_HEADER)
                and int.from_bytes(data[2:6], "big") ^ int.from_bytes(data[6:], "big") == _PAYLOAD_BITS
                and waits_for_a_frame(self.protocol)):
            self.awaiting_pong = False
            return
        super().data_received(data)

    def acknowledge_pings(self, data: bytes) -> None:
        if data == PING_PAYLOAD:
            self.awaiting_pong = False
        else:
            super().acknowledge_pings(data)  # (a ping sent with websockets' own ping())


def waits_for_a_frame(protocol: FrameProtocol) -> bool:
    """Whether websockets' parser of an open connection waits for the first byte of a frame
    (not in the middle of one, whose payload may look like anything, nor discarding what
    follows a close)."""
    parser: Any = protocol.parser  # (a generator: a server's delegates to the frame parser,
    frames = parser.gi_yieldfrom   # which waits in the reader's at_eof between frames)
    waiting = frames.gi_yieldfrom if frames is not None else None
    return waiting is not None and waiting.gi_code is _WAITING_CODE


class Keepalive:
    """Pings the peers it watches, each at its own phase of the interval.

    Each watched peer has one entry in a heap ordered by when it is next due: either
    its next ping, or the moment its unanswered ping times out.  Entries of peers that
    closed are dropped when they come up, so closing costs the keepalive nothing.
    """

    def __init__(self, interval: float, timeout: float, clock: Clock) -> None:
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._due: list[tuple[float, int, Peer, float, float | None]] = []
        """(due, tie-breaker, peer, phase, sent_at): ``phase`` is when its ping is due
        (the next one is due an interval later); ``sent_at`` is None until that ping
        went out, then the time it did (its timeout counts from there)."""
        self._order = itertools.count()
        self._phase = 0.0
        self._timer: Timer | None = None
        self._timer_due = 0.0

    def __len__(self) -> int:
        return len(self._due)

    def watch(self, peer: Peer) -> None:
        """Keep ``peer`` alive from now on, until it closes."""
        self._phase = (self._phase + _GOLDEN) % 1.0
        now = self._clock.monotonic()
        first = now + self._phase * self.interval
        self._push(first, peer, first, None)
        if self._timer is None or first < self._timer_due - TICK:
            self._arm(now, first)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()

    def _arm(self, now: float, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = max(due, now)
        self._timer = self._clock.call_later(self._timer_due - now, self._fire)

    def _push(self, due: float, peer: Peer, phase: float, sent_at: float | None) -> None:
        heapq.heappush(self._due, (due, next(self._order), peer, phase, sent_at))

    def _fire(self) -> None:
        self._timer = None
        due_entries = self._due
        now = self._clock.monotonic()
        for _ in range(BATCH):
            if not due_entries or due_entries[0][0] > now:
                break
            _, _, peer, phase, sent_at = heapq.heappop(due_entries)
            if peer.open:
                self._visit(peer, phase, sent_at, now)
        else:
            if due_entries and due_entries[0][0] <= now:
                self._arm(now, now)  # more are due: after what else is ready has run
                return
        if due_entries:
            self._arm(now, max(due_entries[0][0], now + TICK))

    def _visit(self, peer: Peer, phase: float, sent_at: float | None, now: float) -> None:
        interval, timeout = self.interval, self.timeout
        if sent_at is None:  # its ping is due
            peer.ping()
            if timeout:
                self._push(now + min(timeout, interval), peer, phase, now)
            else:
                self._push(phase + interval, peer, phase + interval, None)
        elif not peer.awaiting_pong:  # answered: the next ping keeps the phase
            if phase + interval <= now:
                self._visit(peer, phase + interval, None, now)
            else:
                self._push(phase + interval, peer, phase + interval, None)
        elif now >= sent_at + timeout:
            log.info("connection.ping_timeout", remote=peer.remote, waited_s=round(now - sent_at, 3))
            peer.close(CloseCode.INTERNAL_ERROR, TIMEOUT_REASON)
        else:  # the timeout is longer than the interval: one ping at a time, as websockets does
            self._push(sent_at + timeout, peer, phase, sent_at)
