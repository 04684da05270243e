"""The keepalive over a hand-moved clock: pings spread over the interval, a bounded amount
of work per loop turn, each connection's phase kept, and dead peers closed in time."""

from __future__ import annotations

import collections

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from tests.conftest import FakeClock
from unichatd.errors import CloseCode
from unichatd.keepalive import (
    BATCH,
    PING_FRAME,
    PING_PAYLOAD,
    TICK,
    TIMEOUT_REASON,
    AnswersPings,
    Keepalive,
    waits_for_a_frame,
)


class FakePeer:
    """Answers each ping at once until it goes silent."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.silent_from = float("inf")
        self.open = True
        self.awaiting_pong = False
        self.pings: list[float] = []
        self.pinged_in_firing: list[int] = []
        self.closed: tuple[CloseCode, str, float] | None = None
        self.remote = "127.0.0.1:1"

    def ping(self) -> None:
        now = self.clock.now
        self.pings.append(now)
        self.pinged_in_firing.append(self.clock.fired)
        self.awaiting_pong = now >= self.silent_from

    def close(self, code: CloseCode, reason: str) -> None:
        assert self.closed is None, "closed twice"
        self.closed = (code, reason, self.clock.now)
        self.open = False


def watched(count: int, interval: float = 20.0, timeout: float = 20.0) -> tuple[FakeClock, Keepalive, list[FakePeer]]:
    clock = FakeClock()
    keepalive = Keepalive(interval, timeout, clock)
    peers = [FakePeer(clock) for _ in range(count)]
    for peer in peers:  # all at the same instant: a reconnect storm at its worst
        keepalive.watch(peer)
    return clock, keepalive, peers


def test_the_ping_frame_is_the_one_websockets_would_write() -> None:
    assert PING_FRAME == Frame(Opcode.PING, PING_PAYLOAD).serialize(mask=False, extensions=[])


def test_the_pong_hook_is_one_websockets_calls() -> None:
    """AnswersPings overrides the method websockets runs for each pong; renamed upstream, no
    pong would ever be noted and every connection would be dropped after ping_timeout."""
    assert callable(getattr(ServerConnection, "acknowledge_pings", None))
    assert "acknowledge_pings" in vars(AnswersPings)


def opened_protocol() -> ServerProtocol:
    """websockets' sans-I/O server side, past its opening handshake."""
    protocol = ServerProtocol()
    protocol.receive_data(b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\n\r\n")
    [request] = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    return protocol


def client_frame(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=True, extensions=[])


def test_the_pong_is_taken_without_the_parser_only_between_frames() -> None:
    """The keepalive reads its pong itself only where websockets would read a new frame: in
    the middle of a frame the same ten bytes are payload, and after a close, nothing."""
    protocol = opened_protocol()
    assert waits_for_a_frame(protocol)
    text = client_frame(Opcode.TEXT, b'{"type":"ping"}')
    protocol.receive_data(text[:6])  # header and mask read, payload not yet: the buffer is empty
    assert not protocol.reader.buffer
    assert not waits_for_a_frame(protocol)
    protocol.receive_data(text[6:])
    assert [(event.opcode, event.data) for event in protocol.events_received() if isinstance(event, Frame)] \
        == [(Opcode.TEXT, b'{"type":"ping"}')]
    assert waits_for_a_frame(protocol)
    protocol.receive_data(client_frame(Opcode.CLOSE, Close(1000, "").serialize()))
    assert not waits_for_a_frame(protocol)


def test_pings_of_connections_opened_together_are_spread_over_the_interval() -> None:
    """15,000 connections opened in the same instant: about interval/TICK equal shares of
    pings per tick, never one burst; each connection pinged once per interval."""
    clock, _, peers = watched(15_000)
    clock.advance(60.0)
    per_tick = collections.Counter(int((at - 1000.0) / 1.0) for peer in peers for at in peer.pings)
    expected = len(peers) / 20.0  # pings per second if evenly spread
    assert max(per_tick.values()) <= 1.1 * expected, max(per_tick.values())
    assert min(per_tick[second] for second in range(59)) >= 0.9 * expected
    for peer in peers:
        assert peer.pings[0] <= 1000.0 + 20.0 + TICK
        assert all(abs(b - a - 20.0) <= TICK for a, b in zip(peer.pings, peer.pings[1:], strict=False))


def test_each_connection_keeps_its_phase() -> None:
    """Answered pings come exactly an interval apart: the phase does not drift with the ticks."""
    clock, _, peers = watched(500, interval=5.0, timeout=2.0)
    clock.advance(100.0)
    for peer in peers:
        gaps = [b - a for a, b in zip(peer.pings, peer.pings[1:], strict=False)]
        assert max(gaps) - min(gaps) <= TICK + 1e-9, gaps  # (each ping waits at most a tick for its firing)
        # Lateness does not add up: the last ping is as far from the first as the phase says.
        assert abs(peer.pings[-1] - peer.pings[0] - 5.0 * len(gaps)) <= TICK + 1e-9


def test_no_firing_handles_more_than_a_batch() -> None:
    """Even when thousands are due at the same moment, one loop turn pings at most BATCH."""
    clock, _, peers = watched(5_000, interval=0.01, timeout=0.0)
    clock.advance(1.0)
    per_firing = collections.Counter(firing for peer in peers for firing in peer.pinged_in_firing)
    assert max(per_firing.values()) <= BATCH
    assert all(len(peer.pings) >= 2 for peer in peers)


@pytest.mark.parametrize(("interval", "timeout"), [(20.0, 20.0), (20.0, 5.0), (5.0, 20.0), (1.0, 1.0)])
def test_a_peer_that_stops_answering_is_closed_within_interval_plus_timeout(interval: float,
                                                                            timeout: float) -> None:
    clock, _, peers = watched(50, interval, timeout)
    clock.advance(3 * interval + 0.37)
    assert all(peer.closed is None for peer in peers), "a peer that answers was closed"
    silent_at = clock.now
    for peer in peers:
        peer.silent_from = silent_at
    clock.advance(interval + timeout + 3 * TICK)
    for peer in peers:
        assert peer.closed is not None
        code, reason, at = peer.closed
        assert (code, reason) == (CloseCode.INTERNAL_ERROR, TIMEOUT_REASON)
        last_ping = max(ping for ping in peer.pings if ping >= silent_at)
        assert at - last_ping >= timeout - 1e-9, "closed before its ping timed out"
        assert at - silent_at <= interval + timeout + 2 * TICK


def test_closed_connections_cost_nothing_more() -> None:
    clock, keepalive, peers = watched(1_000)
    clock.advance(5.0)
    for peer in peers[:900]:
        peer.open = False
    pinged = [len(peer.pings) for peer in peers[:900]]
    clock.advance(40.0)
    assert [len(peer.pings) for peer in peers[:900]] == pinged
    assert len(keepalive) == 100


def test_no_timeout_pings_without_closing() -> None:
    clock, _, peers = watched(10, interval=1.0, timeout=0.0)
    for peer in peers:
        peer.silent_from = 0.0
    clock.advance(10.0)
    assert all(peer.closed is None and len(peer.pings) >= 9 for peer in peers)


def test_stop_ends_the_timer() -> None:
    clock, keepalive, peers = watched(10)
    keepalive.stop()
    clock.advance(100.0)
    assert all(not peer.pings for peer in peers)
    assert len(keepalive) == 0
