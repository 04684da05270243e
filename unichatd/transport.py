"""Frames out to the peers: framing, per-tick write batching, bounded closes.

Frames leave through :class:`ConnectionSink`, which writes synchronously into the
connection's transport (the way ``websockets.broadcast`` does) so that no delivery ever
awaits a peer; a peer whose unsent data passes ``server.send_buffer_bytes`` is closed as
a slow consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from .errors import CloseCode
from .keepalive import PING_FRAME, AnswersPings
from .stats import Stats

log = structlog.get_logger("unichatd.server")

CLOSE_TIMEOUT = 5.0


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, final WebSocket text frame (RFC 6455 §5.2) around ``payload``.

    Server frames are never masked and no extension is negotiated (compression is off),
    so the header is two, four or ten bytes and the payload goes as it is.
    """
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


class ConnectionSink:
    """Frames for one connection, written once per event-loop tick.

    ``send`` frames the payload (a broadcast's one ``bytes`` object is framed once for
    all its recipients, see :meth:`Corks.framed`) and queues it; the first queued frame
    of a tick schedules :meth:`Corks.flush`, which hands each connection's frames to its
    transport in one ``writelines`` — one system call for an ack, its broadcast and any
    room_updated due, instead of one each.  The keepalive's pings go the same way (see
    :mod:`.keepalive`); pongs and close frames stay with websockets, which writes them
    straight to the transport between whole data frames.
    """

    __slots__ = ("_conn", "_corks", "closed", "pending")

    def __init__(self, conn: AnswersPings, corks: Corks) -> None:
        self._conn = conn
        self._corks = corks
        self.closed = False
        self.pending: list[bytes] | None = None

    def send(self, payload: bytes) -> None:
        if self.closed:
            return  # (the protocol state is checked once per tick, in flush)
        self._queue(self._corks.framed(payload))

    def _queue(self, frame: bytes) -> None:
        if self.pending is None:
            self.pending = [frame]
            self._corks.add(self)
        else:
            self.pending.append(frame)

    # -- what the keepalive needs (keepalive.Peer) --

    @property
    def open(self) -> bool:
        return not self.closed and self._conn.protocol.state is State.OPEN

    @property
    def awaiting_pong(self) -> bool:
        return self._conn.awaiting_pong

    @property
    def remote(self) -> str:
        return remote_address(self._conn)

    def ping(self) -> None:
        self._conn.awaiting_pong = True
        self._queue(PING_FRAME)

    def flush(self) -> None:
        frames, self.pending = self.pending, None
        conn = self._conn
        if not frames or self.closed or conn.protocol.state is not State.OPEN:
            return  # a close frame went out meanwhile: nothing may follow it
        transport = conn.transport
        transport.writelines(frames)
        if transport.get_write_buffer_size() > self._corks.send_buffer_bytes:
            self._corks.stats.slow_consumer_closes += 1
            log.warning("connection.slow_consumer", conn_id=id(conn))
            self.close(CloseCode.POLICY_VIOLATION, "slow consumer")

    def close(self, code: CloseCode, reason: str) -> None:
        if self.closed:
            return
        if self.pending:
            self.flush()  # frames queued before the close go out before it
        if not self.closed:  # (flush may have closed it as a slow consumer)
            self.closed = True
            self.pending = None
            self._corks.spawn(close_bounded(self._conn, code, reason))


async def close_bounded(conn: ServerConnection, code: CloseCode, reason: str) -> None:
    """Close with ``code``; a peer that does not take the close frame in time is cut off.

    websockets first waits for the send buffer to drain, which a stalled reader never
    lets happen; without this bound its socket and session would stay held.
    """
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await conn.close(code, reason)
    except TimeoutError:
        conn.transport.abort()


class Corks:
    """The connections with frames waiting for the end of this tick."""

    __slots__ = ("stats", "spawn", "send_buffer_bytes", "_dirty", "_scheduled", "_last_payload", "_last_frame",
                 "loop")

    def __init__(self, stats: Stats, spawn: Callable[[Coroutine[Any, Any, None]], None],
                 send_buffer_bytes: int) -> None:
        self.stats = stats
        self.spawn = spawn
        self.send_buffer_bytes = send_buffer_bytes
        """Unsent bytes past which a connection is closed as a slow consumer."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._dirty: list[ConnectionSink] = []
        self._scheduled = False
        self._last_payload: bytes | None = None
        self._last_frame = b""

    def framed(self, payload: bytes) -> bytes:
        # The hub hands one bytes object to every recipient in a row: frame it once.
        if payload is not self._last_payload:
            self._last_payload = payload
            self._last_frame = text_frame(payload)
        return self._last_frame

    def add(self, sink: ConnectionSink) -> None:
        self._dirty.append(sink)
        if not self._scheduled:
            self._scheduled = True
            if self.loop is None:  # looked up once: get_running_loop() costs a getpid() call
                self.loop = asyncio.get_running_loop()
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for sink in dirty:
            try:
                sink.flush()
            except Exception:  # one broken transport must not starve the others
                log.exception("connection.write_failed")


def remote_address(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
