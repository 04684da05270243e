"""Reliability: crashes, limits, slow and silent peers, token lifetime, live admin, shutdown, bad input.

Contracts: protocol.md §3 (rate limit) and §5 (connection rules); operations.md (live room
changes, shutdown).  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.connection import Connection as WebSocketConnection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from tests.conftest import (
    SIGNING_KEY,
    Client,
    DaemonProcess,
    RunningServer,
    free_port,
    make_config,
    run_cli,
    stalled_client,
    start_server,
    write_config,
)
from unichatd.auth import mint_token
from unichatd.config import Config
from unichatd.keepalive import TICK, AnswersPings
from unichatd.protocol import MAX_ID, REQUEST_TYPES
from unichatd.store import AdminStore
from unichatd.transport import CLOSE_TIMEOUT

WAIT = 5.0
FAST_LIMITS: dict[str, Any] = {
    "messages_per_second": 100000,
    "message_burst": 100000,
    "frames_per_second": 100000,
    "frame_burst": 100000,
}
ERROR_CODES = {
    "invalid_json", "invalid_message", "unknown_type", "unsupported_frame", "access_denied",
    "not_found", "rate_limited", "internal_error",
}
BROADCAST_TYPES = {"new_message", "typing", "message_read", "room_updated"}
"""Server frames that are not a direct reply to a request (protocol.md §4)."""
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEAKS = re.compile(r"traceback|select |sqlite|file \"", re.IGNORECASE)


# -- helpers ---------------------------------------------------------------------


def token(user_id: int, ttl: int = 3600) -> str:
    return mint_token(SIGNING_KEY, user_id, f"user{user_id}", ttl=ttl)


async def connect_url(url: str, user_id: int, ttl: int = 3600, **kwargs: Any) -> Client:
    """Connect to ``url`` as ``user_id`` and consume ``connection_established``."""
    ws = await asyncio.wait_for(websockets.connect(f"{url}?token={token(user_id, ttl)}", **kwargs), WAIT)
    client = Client(ws)
    hello = await client.recv()
    assert hello["type"] == "connection_established", hello
    return client


async def closed_with(client: Client, timeout: float = WAIT) -> tuple[int | None, str | None]:
    """Read (and drop) frames until the server closes the connection; its close code and reason."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await client.ws.recv()
        except ConnectionClosed:
            pass
    return client.ws.close_code, client.ws.close_reason


async def eventually(predicate: Callable[[], bool], timeout: float) -> float:
    """Wait until ``predicate()`` holds; the seconds it took.  Fails after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"condition not met within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def http_get(url: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(fetch)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def send_frame(room_id: int, content: str, **extra: Any) -> dict[str, Any]:
    return {"type": "send_message", "room_id": room_id, "content": content, **extra}


async def all_history(client: Client, room_id: int) -> list[dict[str, Any]]:
    """Every message of the room, oldest first, paging with after_id."""
    messages: list[dict[str, Any]] = []
    after = 0
    for _ in range(1000):
        page = await client.request(
            {"type": "get_history", "room_id": room_id, "after_id": after, "limit": 100}, "history"
        )
        assert page["type"] == "history", page
        messages.extend(page["messages"])
        if not page["has_more"]:
            return messages
        after = page["messages"][-1]["id"]
    raise AssertionError("history did not end")


def daemon_config(directory: Path, port: int, limits: dict[str, Any]) -> Path:
    """conftest's daemon config plus a [limits] table."""
    path = write_config(directory, port)
    lines = "".join(f"{key} = {value}\n" for key, value in limits.items())
    path.write_text(path.read_text() + f"[limits]\n{lines}")
    return path


def db_rows(database: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(database)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def server_side(running: RunningServer, client: Client) -> Any:
    """The server's end of ``client``'s connection (a websockets ServerConnection)."""
    port = client.ws.local_address[1]
    ws_server = running.server._ws
    assert ws_server is not None
    matches = [c for c in ws_server.all_connections if c.remote_address[1] == port]
    assert len(matches) == 1, matches
    return matches[0]


async def with_server(config: Config, body: Callable[[RunningServer], Awaitable[None]]) -> None:
    running = await start_server(config)
    try:
        await body(running)
    finally:
        await running.server.stop()


# -- 1. durability under kill -9 ---------------------------------------------------------


async def _stream(client: Client, user_id: int, room: int, count: int, acks: dict[str, int]) -> None:
    """Pipeline ``count`` sends while a reader records every ack, until the connection dies."""

    async def reader() -> None:
        try:
            while True:
                frame = orjson.loads(await client.ws.recv())
                if frame["type"] == "message_ack":
                    acks[frame["client_msg_id"]] = frame["message"]["id"]
        except ConnectionClosed:
            return

    task = asyncio.create_task(reader())
    try:
        for i in range(count):
            await client.send(send_frame(room, f"m{i}", client_msg_id=f"u{user_id}-{i}"))
    except ConnectionClosed:
        pass
    await task


@pytest.mark.asyncio
@pytest.mark.process
async def test_kill_9_keeps_every_acked_message(tmp_path: Path) -> None:
    """After SIGKILL mid-stream, every acked message is stored once, in order, and the DB is sound."""
    port = free_port()
    config_path = daemon_config(tmp_path, port, FAST_LIMITS)
    created = run_cli("room", "create", "durable", "--member", "1", "--member", "2", "--member", "3",
                      "--config", str(config_path), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    room = int(created.stdout)
    database = tmp_path / "chat.db"
    daemon = DaemonProcess(config_path, port)
    clients: list[Client] = []
    streams: list[asyncio.Task[None]] = []
    per_client = 5000
    try:
        await asyncio.to_thread(daemon.start)
        clients = [await connect_url(daemon.url, uid) for uid in (1, 2, 3)]
        acks: dict[str, int] = {}
        streams += [asyncio.create_task(_stream(c, uid, room, per_client, acks))
                    for uid, c in zip((1, 2, 3), clients, strict=True)]
        await eventually(lambda: len(acks) >= 300, timeout=15)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.proc.wait, 10)
        async with asyncio.timeout(10):
            await asyncio.gather(*streams)
        for client in clients:
            await client.close()

        assert db_rows(database, "PRAGMA integrity_check") == [("ok",)]
        rows = db_rows(database, "SELECT id, sender_id, client_msg_id FROM messages WHERE room_id = ? "
                       "ORDER BY id", room)
        assert len(rows) < 3 * per_client, "the daemon finished the stream before it was killed"
        stored = {cmid: mid for mid, _, cmid in rows}
        assert len(stored) == len(rows), "a client_msg_id is stored twice"
        missing = {cmid: mid for cmid, mid in acks.items() if stored.get(cmid) != mid}
        assert not missing, f"acked but not stored: {list(missing.items())[:5]}"
        for uid in (1, 2, 3):
            seqs = [int(cmid.split("-")[1]) for _, sender, cmid in rows if sender == uid]
            assert seqs == sorted(seqs), f"user {uid}'s messages are stored out of order"

        daemon.stop()  # the process is gone; this closes its pipes
        await asyncio.to_thread(daemon.start)
        clients = [await connect_url(daemon.url, uid) for uid in (1, 2, 3)]
        history = await all_history(clients[0], room)
        assert [m["id"] for m in history] == [mid for mid, _, _ in rows]
        for uid, client in zip((1, 2, 3), clients, strict=True):
            mine = sorted((c for c in acks if c.startswith(f"u{uid}-")), key=lambda c: int(c.split("-")[1]))
            for cmid in mine[:1] + mine[-1:]:
                ack = await client.request(send_frame(room, "again", client_msg_id=cmid), "message_ack")
                assert ack["type"] == "message_ack", ack
                assert ack["message"]["id"] == acks[cmid], "a resent client_msg_id got a new message"
        assert len(await all_history(clients[0], room)) == len(rows)
    finally:
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        for client in clients:
            await client.close()
        daemon.stop()
    assert db_rows(database, "PRAGMA integrity_check") == [("ok",)]


# -- 2. rate limiting ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_send_rate_limit_is_per_user_across_connections(tmp_path: Path) -> None:
    """The send bucket is shared by a user's connections; a limited message is not stored."""

    async def body(running: RunningServer) -> None:
        room = await running.create_room("limited", [1])
        first, second = await running.connect(1), await running.connect(1)
        try:
            for i, client in enumerate((first, second, first, second)):
                ack = await client.request(send_frame(room, f"ok{i}"), "message_ack")
                assert ack["type"] == "message_ack", ack
            for i, client in enumerate((second, first)):
                refused = await client.request(send_frame(room, f"over{i}", request_id=i), "message_ack")
                assert refused["type"] == "error", refused
                assert refused["code"] == "rate_limited", refused
                assert refused["retry_after_ms"] > 0
                assert refused["request_id"] == i
            contents = [m["content"] for m in await all_history(first, room)]
            assert contents == ["ok0", "ok1", "ok2", "ok3"]
        finally:
            await first.close()
            await second.close()

    await with_server(make_config(tmp_path, limits={"messages_per_second": 0.2, "message_burst": 4}), body)


@pytest.mark.asyncio
async def test_limited_client_that_waits_is_served(tmp_path: Path) -> None:
    """A client that honours retry_after_ms is served again and not closed."""

    async def body(running: RunningServer) -> None:
        room = await running.create_room("polite", [1])
        client = await running.connect(1)
        try:
            for i in range(2):
                ack = await client.request(send_frame(room, f"m{i}"), "message_ack")
                assert ack["type"] == "message_ack", ack
            refused = await client.request(send_frame(room, "too soon"), "message_ack")
            assert refused["code"] == "rate_limited", refused
            await asyncio.sleep(refused["retry_after_ms"] / 1000 + 0.05)
            ack = await client.request(send_frame(room, "later"), "message_ack")
            assert ack["type"] == "message_ack", ack
        finally:
            await client.close()

    await with_server(make_config(tmp_path, limits={"messages_per_second": 10, "message_burst": 2}), body)


@pytest.mark.asyncio
async def test_send_flood_after_limit_closes_1008(tmp_path: Path) -> None:
    """A client that sends 3x its burst within a second, ignoring rate_limited, is closed with 1008."""

    async def body(running: RunningServer) -> None:
        room = await running.create_room("flood", [1])
        client = await running.connect(1)
        try:
            try:
                for i in range(15):
                    await client.send(send_frame(room, f"f{i}"))
            except ConnectionClosed:
                pass
            codes: list[str] = []
            try:
                async with asyncio.timeout(WAIT):
                    while True:
                        frame = orjson.loads(await client.ws.recv())
                        codes.append(frame.get("code") or frame["type"])
            except ConnectionClosed:
                pass
            assert "rate_limited" in codes
            assert (client.ws.close_code, client.ws.close_reason) == (1008, "rate limit exceeded")
            # The accepted sends may still be committing when the close arrives.
            stored: list[str] = []
            for _ in range(100):
                page, _ = await running.server.store.history(room, before_id=None, after_id=None, limit=100)
                stored = [m.content for m in page]
                if len(stored) >= 5:
                    break
                await asyncio.sleep(0.02)
            assert stored == [f"f{i}" for i in range(5)]
        finally:
            await client.close()

    await with_server(make_config(tmp_path, limits={"messages_per_second": 0.2, "message_burst": 5}), body)


@pytest.mark.asyncio
async def test_ping_flood_is_limited_then_closed_1008(tmp_path: Path) -> None:
    """Frames past frames_per_second/frame_burst get rate_limited, and a continued flood closes 1008."""

    async def body(running: RunningServer) -> None:
        client = await running.connect(1)
        try:
            try:
                for i in range(60):
                    await client.send({"type": "ping", "request_id": i})
            except ConnectionClosed:
                pass
            frames: list[dict[str, Any]] = []
            try:
                async with asyncio.timeout(WAIT):
                    while True:
                        frames.append(orjson.loads(await client.ws.recv()))
            except ConnectionClosed:
                pass
            pongs = [f for f in frames if f["type"] == "pong"]
            limited = [f for f in frames if f.get("code") == "rate_limited"]
            assert 10 <= len(pongs) < 30, len(pongs)
            assert limited
            assert all(f["retry_after_ms"] > 0 for f in limited)
            assert (client.ws.close_code, client.ws.close_reason) == (1008, "rate limit exceeded")
        finally:
            await client.close()

    await with_server(make_config(tmp_path, limits={"frames_per_second": 5, "frame_burst": 10}), body)


# -- 3. oversized frame ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_frame_over_max_message_bytes_closes_1009(tmp_path: Path) -> None:
    """A frame larger than server.max_message_bytes closes the connection with 1009."""

    async def body(running: RunningServer) -> None:
        client = await running.connect(1)
        try:
            await client.send({"type": "ping", "pad": "x" * 2000})
            code, _ = await closed_with(client)
            assert code == 1009
            await running.wait_for(lambda: running.server.chat.broker.connection_count == 0)
        finally:
            await client.close()

    await with_server(make_config(tmp_path, server={"max_message_bytes": 1024}), body)


# -- 4. slow consumer --------------------------------------------------------------------------


SLOW_SERVER = {"send_buffer_bytes": 65536}
SLOW_LIMITS = {**FAST_LIMITS, "max_content_chars": 60000}
BIG = "x" * 50000


async def release(client: Client) -> tuple[int | None, str | None]:
    """Let a stalled client read again and drain it to the close."""
    client.ws.transport.resume_reading()
    try:
        return await closed_with(client, timeout=10)
    finally:
        await client.close()


async def flood_room(running: RunningServer, sender: Client, room: int, count: int,
                     until: Callable[[], bool] | None = None) -> int:
    """Send ``count`` big messages one ack at a time (stopping early once ``until()``)."""
    for i in range(count):
        ack = await sender.request(send_frame(room, f"{i} {BIG}"), "message_ack")
        assert ack["type"] == "message_ack", ack
        if until is not None and until():
            return i + 1
    return count


@pytest.mark.asyncio
async def test_slow_consumer_is_closed_1008(tmp_path: Path) -> None:
    """A reader whose unsent data passes send_buffer_bytes is closed with 1008 'slow consumer'."""

    async def body(running: RunningServer) -> None:
        room = await running.create_room("busy", [1, 2])
        sender = await running.connect(1)
        stalled = await stalled_client(running, 2, room)
        try:
            stats = running.server.chat.stats
            await flood_room(running, sender, room, 300, until=lambda: stats.slow_consumer_closes > 0)
            metrics = await http_get(f"{running.http_url}/metrics")
            assert metric(metrics, "unichatd_send_queue_drops") == 1
        finally:
            code, reason = await release(stalled)
            await sender.close()
        assert (code, reason) == (1008, "slow consumer")

    await with_server(make_config(tmp_path, server=SLOW_SERVER, limits=SLOW_LIMITS), body)


@pytest.mark.asyncio
async def test_stalled_consumer_is_disconnected_and_leaves_rooms(tmp_path: Path) -> None:
    """A slow consumer that stays stalled is dropped (healthz count, room) within the close timeout."""

    async def body(running: RunningServer) -> None:
        room = await running.create_room("busy", [1, 2])
        sender = await running.connect(1)
        stalled = await stalled_client(running, 2, room)
        far_end = server_side(running, stalled)
        hub = running.server.chat.broker
        try:
            stats = running.server.chat.stats
            await flood_room(running, sender, room, 300, until=lambda: stats.slow_consumer_closes > 0)
            await eventually(lambda: far_end.protocol.close_sent is not None, timeout=1)
            sent = far_end.protocol.close_sent
            assert (sent.code, sent.reason) == (1008, "slow consumer")
            deadline = time.monotonic() + CLOSE_TIMEOUT + 2
            health: dict[str, Any] = {}
            while time.monotonic() < deadline:
                health = orjson.loads(await http_get(f"{running.http_url}/healthz"))
                if health["connections"] == 1:
                    break
                await asyncio.sleep(0.2)
            assert health["connections"] == 1, (
                f"stalled connection still open {CLOSE_TIMEOUT + 2:.0f} s after its 1008 close: {health}"
            )
            assert len(hub.subscribers(room)) == 0
        finally:
            await release(stalled)
            await sender.close()

    await with_server(make_config(tmp_path, server=SLOW_SERVER, limits=SLOW_LIMITS), body)


@pytest.mark.asyncio
async def test_stalled_consumer_does_not_delay_others(tmp_path: Path) -> None:
    """While one subscriber is stalled, another gets every message of a busy room within a second."""

    async def body(running: RunningServer) -> None:
        room = await running.create_room("busy", [1, 2, 3])
        sender, fast = await running.connect(1), await running.connect(3)
        await fast.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        stalled = await stalled_client(running, 2, room)
        sent_at: dict[int, float] = {}
        latency: dict[int, float] = {}
        count = 150

        async def read_fast() -> None:
            while len(latency) < count:
                frame = await fast.recv_type("new_message")
                seq = int(frame["message"]["content"].split(" ", 1)[0])
                latency[seq] = time.monotonic() - sent_at[seq]

        reader = asyncio.create_task(read_fast())
        try:
            for i in range(count):
                sent_at[i] = time.monotonic()
                ack = await sender.request(send_frame(room, f"{i} {BIG}"), "message_ack")
                assert ack["type"] == "message_ack", ack
            async with asyncio.timeout(WAIT):
                await reader
            assert running.server.chat.stats.slow_consumer_closes == 1, "the stalled client was never cut"
            assert sorted(latency) == list(range(count))
            assert max(latency.values()) < 1.0, f"max latency {max(latency.values()):.3f} s"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await release(stalled)
            await sender.close()
            await fast.close()

    await with_server(make_config(tmp_path, server=SLOW_SERVER, limits=SLOW_LIMITS), body)


# -- 5. heartbeats -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_silent_peer_is_dropped_and_leaves_rooms(tmp_path: Path) -> None:
    """A peer that stops answering pings gets 1011 after interval+timeout and then leaves its rooms."""

    async def body(running: RunningServer) -> None:
        room = await running.create_room("beat", [1, 2])
        hub = running.server.chat.broker
        alive = await running.connect(1)
        silent = await running.connect(2, ping_interval=None, close_timeout=1)
        try:
            for client in (alive, silent):
                await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
            assert hub.connection_count == 2
            assert len(hub.subscribers(room)) == 2
            far_end = server_side(running, silent)
            silent.ws.transport.pause_reading()
            # 1 s until the ping, 1 s for its pong, then the library fails the connection with 1011 ...
            await eventually(lambda: far_end.protocol.close_sent is not None, timeout=1 + 1 + 1)
            assert far_end.protocol.close_sent.code == 1011
            # ... and drops it once the peer closes TCP or the close timeout passes.
            await eventually(lambda: hub.connection_count == 1, timeout=CLOSE_TIMEOUT + 1.5)
            assert [s.user_id for s in hub.subscribers(room)] == [1], "the dropped peer is still in its room"
            pong = await alive.request({"type": "ping"}, "pong")
            assert pong["type"] == "pong"
            assert hub.connection_count == 1
        finally:
            silent.ws.transport.resume_reading()
            await silent.close()
            await alive.close()

    await with_server(make_config(tmp_path, server={"ping_interval": 1, "ping_timeout": 1}), body)


@pytest.mark.asyncio
async def test_a_peer_that_answered_and_then_stops_is_closed_within_interval_plus_timeout(tmp_path: Path) -> None:
    """A client that answers pings stays; once it stops answering, the server sends 1011
    no later than ping_interval + ping_timeout after it went silent."""
    interval, timeout = 1.0, 0.5

    async def body(running: RunningServer) -> None:
        peer = await running.connect(1, ping_interval=None, close_timeout=1)
        try:
            far_end = server_side(running, peer)
            await asyncio.sleep(3 * interval)  # its library answers every ping: it stays
            assert far_end.state.name == "OPEN"
            assert (await peer.request({"type": "ping"}, "pong"))["type"] == "pong"
            silent_at = time.monotonic()
            peer.ws.transport.pause_reading()
            await eventually(lambda: far_end.protocol.close_sent is not None, timeout=interval + timeout + 1)
            waited = time.monotonic() - silent_at
            close_sent = far_end.protocol.close_sent
            assert (close_sent.code, close_sent.reason) == (1011, "keepalive ping timeout")
            # (the keepalive's tick, the polling above and a loaded machine's scheduling aside)
            assert waited <= interval + timeout + TICK + 0.2, waited
        finally:
            peer.ws.transport.resume_reading()
            await peer.close()

    await with_server(make_config(tmp_path, server={"ping_interval": interval, "ping_timeout": timeout}), body)


@pytest.mark.asyncio
async def test_pongs_to_the_keepalive_skip_the_frame_parser(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle client's pongs are noted without websockets' frame parser (the keepalive's
    cheap path), and the client stays connected through many pings."""
    parsed: list[bytes] = []
    parse = WebSocketConnection.data_received

    def counting(self: Any, data: bytes) -> None:
        if isinstance(self, AnswersPings):  # (the server's end; the client's runs here too)
            parsed.append(data)
        parse(self, data)

    monkeypatch.setattr(WebSocketConnection, "data_received", counting)

    async def body(running: RunningServer) -> None:
        peer = await running.connect(1, ping_interval=None, close_timeout=1)
        try:
            far_end = server_side(running, peer)
            parsed.clear()
            await asyncio.sleep(1.0)  # (five pings, each answered by the client's library)
            assert far_end.state.name == "OPEN"
            assert parsed == [], "a pong went through websockets' parser"
            assert (await peer.request({"type": "ping"}, "pong"))["type"] == "pong"
            assert parsed, "frames from the client still reach websockets"
        finally:
            await peer.close()

    await with_server(make_config(tmp_path, server={"ping_interval": 0.2, "ping_timeout": 0.5}), body)


def pong_lookalike() -> tuple[bytes, bytes]:
    """A masked text frame's header and a 10-byte payload that, on the wire, is exactly a
    client's pong to the keepalive's ping (and reads as ASCII once unmasked)."""
    rng = random.Random(16)
    for _ in range(1_000_000):
        pong_mask, text_mask = rng.randbytes(4), rng.randbytes(4)
        wire = b"\x8a\x84" + pong_mask + bytes(b ^ m for b, m in zip(b"beat", pong_mask, strict=True))
        if all(0x20 <= w ^ text_mask[i % 4] < 0x7f for i, w in enumerate(wire)):
            return b"\x81\x8a" + text_mask, wire
    raise AssertionError("no mask found")


@pytest.mark.asyncio
async def test_a_pong_lookalike_inside_a_frame_is_payload(tmp_path: Path) -> None:
    """The pong is read without the parser only between frames: the same ten bytes as the
    payload of a frame whose header came in an earlier read are that frame's payload."""
    header, payload = pong_lookalike()

    async def body(running: RunningServer) -> None:
        peer = await running.connect(1, ping_interval=None, close_timeout=1)
        try:
            far_end = server_side(running, peer)
            far_end.awaiting_pong = True  # (as if a ping were out)
            peer.ws.transport.write(header)
            await eventually(lambda: not far_end.protocol.reader.buffer, timeout=2)
            await asyncio.sleep(0.05)  # (the header is read on its own)
            peer.ws.transport.write(payload)
            error = await peer.recv_type("error")
            assert error["code"] == "invalid_json"  # (the frame's unmasked payload: ten ASCII bytes)
            assert far_end.awaiting_pong
        finally:
            await peer.close()

    await with_server(make_config(tmp_path, server={"ping_interval": 0}), body)


@pytest.mark.asyncio
async def test_ping_interval_zero_disables_the_keepalive(tmp_path: Path) -> None:
    """operations.md: `ping_interval = 0` disables pings, so a peer that would never answer one stays."""

    async def body(running: RunningServer) -> None:
        peer = await running.connect(1, ping_interval=None, close_timeout=1)
        try:
            far_end = server_side(running, peer)
            peer.ws.transport.pause_reading()
            await asyncio.sleep(1.5)  # (five ping_timeouts)
            peer.ws.transport.resume_reading()
            assert far_end.state.name == "OPEN"
            assert (await peer.request({"type": "ping"}, "pong"))["type"] == "pong"
        finally:
            peer.ws.transport.resume_reading()
            await peer.close()

    await with_server(make_config(tmp_path, server={"ping_interval": 0, "ping_timeout": 0.3}), body)


# -- 6. token lifetime -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_token_expiry_closes_4001(server: RunningServer) -> None:
    """A connection whose token expires is closed with 4001 'token expired' at its exp."""
    started = time.monotonic()
    client = await connect_url(server.url, 1, ttl=2)
    try:
        code, reason = await closed_with(client, timeout=4)
        elapsed = time.monotonic() - started
        assert (code, reason) == (4001, "token expired")
        assert 0.9 <= elapsed <= 3.0, elapsed
    finally:
        await client.close()






# -- 7. live admin changes ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_added_member_can_subscribe_within_2s(server: RunningServer) -> None:
    """A member added while the server runs can subscribe within 2 s."""
    room = await server.create_room("grow", [1])
    client = await server.connect(2)
    try:
        denied = await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        assert denied["code"] == "access_denied", denied
        admin = server.admin()
        try:
            admin.add_members(room, [2])
        finally:
            admin.close()
        started = time.monotonic()
        while True:
            reply = await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
            if reply["type"] == "subscribed":
                break
            assert reply["code"] == "access_denied", reply
            assert time.monotonic() - started < 2.0, "added member still denied after 2 s"
            await asyncio.sleep(0.05)
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_removed_member_is_unsubscribed_and_denied(server: RunningServer) -> None:
    """A removed member gets unsubscribed(removed_from_room) within 2 s, then access_denied."""
    room = await server.create_room("shrink", [1, 2])
    owner, leaver = await server.connect(1), await server.connect(2)
    try:
        await leaver.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        admin = server.admin()
        try:
            admin.remove_members(room, [2])
        finally:
            admin.close()
        gone = await leaver.recv_type("unsubscribed", timeout=2.0)
        assert gone == {"type": "unsubscribed", "room_id": room, "reason": "removed_from_room",
                        "timestamp": gone["timestamp"]}, gone
        await owner.request(send_frame(room, "after removal"), "message_ack")
        await leaver.no_frame(0.3)  # in particular, no new_message of the room it left
        for request in (send_frame(room, "let me in"), {"type": "subscribe_room", "room_id": room}):
            reply = await leaver.request(request, "message_ack", "subscribed")
            assert reply["type"] == "error", reply
            assert reply["code"] == "access_denied", reply
    finally:
        await owner.close()
        await leaver.close()


# -- 8. graceful shutdown -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sigterm_closes_1001_and_exits_0(daemon_factory: Any, tmp_path: Path) -> None:
    """SIGTERM: clients see 1001, the process exits 0, and acked messages are in the database."""
    daemon = daemon_factory()
    created = run_cli("room", "create", "bye", "--member", "1", "--config", str(daemon.config_path),
                      cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    room = int(created.stdout)
    client = await connect_url(daemon.url, 1)
    try:
        async with asyncio.timeout(WAIT):
            while True:
                reply = await client.request(send_frame(room, "before"), "message_ack")
                if reply["type"] == "message_ack":
                    break
                assert reply["code"] == "access_denied", reply  # the daemon polls for new rooms
                await asyncio.sleep(0.1)
        acked = reply["message"]["id"]
        daemon.proc.send_signal(signal.SIGTERM)
        code, _ = await closed_with(client, timeout=10)
        assert code == 1001
        returncode = await asyncio.to_thread(daemon.proc.wait, 15)
        assert returncode == 0
    finally:
        await client.close()
    database = daemon.config_path.parent / "chat.db"
    stored = db_rows(database, "SELECT content FROM messages WHERE id = ?", acked)
    assert stored == [("before",)]


# -- 9. bad input never hurts -----------------------------------------------------------------------


class BackgroundServer:
    """An in-process unichatd on its own event loop thread, shared by the examples of a property test."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.running: RunningServer | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="unichatd-bg", daemon=True)

    def start(self) -> RunningServer:
        self._thread.start()
        assert self._ready.wait(15), "background server did not start"
        if self._error is not None:
            raise self._error
        assert self.running is not None
        return self.running

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001  (reported by start()/stop())
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.running = await start_server(self.config)
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await self.running.server.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "background server did not stop"
        if self._error is not None:
            raise self._error


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("fuzz")
    config = make_config(directory, limits=FAST_LIMITS)
    admin = AdminStore(config.database_path)
    try:
        admin.create_room("mine", "group", [1, 2])
        admin.create_room("foreign", "group", [2])
    finally:
        admin.close()
    background = BackgroundServer(config)
    running = background.start()
    try:
        yield running
    finally:
        background.stop()


BIG_INTS = st.sampled_from([
    0, -1, 1, 2, 3, 2**31, 2**53 + 1, MAX_ID, MAX_ID + 1, -MAX_ID, -MAX_ID - 1, -(2**63) - 1,
    2**64 - 1, 2**64, 10**30, -(10**30),
])
EDGE_TEXT = st.sampled_from([
    "", " ", "\t\n ", "\x00", "\ufeff", "\u202e", "\U0001f600" * 10, "\ud800", "\udfff", "a\u0301",
    "\uffff", "x" * 65, "x" * 4001, "1", "null", "room_id", "<script>", "'; DROP TABLE messages; --",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), BIG_INTS, st.floats(), st.text(max_size=30), EDGE_TEXT,
)
def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # (a def, not a lambda over two lines: hypothesis reads the source to check that the
    # argument is used, and cannot always find a multi-line lambda's)
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | EDGE_TEXT, inner, max_size=4)


VALUES = st.recursive(SCALARS, _containers, max_leaves=12)
FIELDS = ("room_id", "last_message_id", "content", "reply_to", "client_msg_id", "message_ids",
          "before_id", "after_id", "limit", "token", "request_id", "is_typing")
FIELD_VALUES = st.one_of(VALUES, st.integers(1, 3), BIG_INTS, st.lists(st.integers(0, 5), max_size=3),
                         st.text(min_size=1, max_size=10))


@st.composite
def json_frames(draw: st.DrawFn) -> str:
    frame: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        frame["type"] = draw(st.sampled_from(REQUEST_TYPES) | VALUES)
    frame.update(draw(st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=5)))
    frame.update(draw(st.dictionaries(st.text(max_size=6), VALUES, max_size=2)))
    body: Any = frame if draw(st.integers(0, 9)) else draw(VALUES)
    ascii_only = draw(st.booleans())
    try:
        return json.dumps(body, ensure_ascii=ascii_only).encode().decode()
    except UnicodeEncodeError:  # a lone surrogate cannot travel unescaped
        return json.dumps(body, ensure_ascii=True)


TOKENS = st.text(max_size=9) | st.sampled_from([token(1), token(2), token(1, ttl=-60), token(1)[:-2], "x.y"])
PLAUSIBLE_FIELDS = {
    "room_id": st.integers(1, 3) | BIG_INTS,
    "content": st.text(min_size=1, max_size=30) | EDGE_TEXT,
    "reply_to": st.integers(1, 80) | BIG_INTS,
    "client_msg_id": st.text(min_size=1, max_size=10) | EDGE_TEXT,
    "message_ids": st.lists(st.integers(1, 80) | BIG_INTS, max_size=5),
    "before_id": st.integers(0, 80) | BIG_INTS,
    "after_id": st.integers(0, 80) | BIG_INTS,
    "last_message_id": st.integers(0, 80) | BIG_INTS,
    "limit": st.integers(-1, 101) | BIG_INTS,
    "token": TOKENS,
    "request_id": st.text(max_size=70) | st.integers() | BIG_INTS,
}


REQUEST_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # type -> (required, optional)
    "subscribe_room": (("room_id",), ("last_message_id",)),
    "unsubscribe_room": (("room_id",), ()),
    "send_message": (("room_id", "content"), ("reply_to", "client_msg_id")),
    "mark_read": (("room_id",), ("message_ids",)),
    "typing": (("room_id",), ()),
    "stop_typing": (("room_id",), ()),
    "get_room_list": ((), ()),
    "get_history": (("room_id",), ("before_id", "after_id", "limit")),
    "refresh_token": (("token",), ()),
    "ping": ((), ()),
}


@st.composite
def plausible_frames(draw: st.DrawFn) -> str:
    """Mostly well-typed requests (to reach the handlers), sometimes with a field missing or junk."""
    kind = draw(st.sampled_from(REQUEST_TYPES))
    frame: dict[str, Any] = {"type": kind}
    required, optional = REQUEST_FIELDS.get(kind, ((), ()))
    for name in required:
        if draw(st.integers(0, 9)):
            frame[name] = draw(PLAUSIBLE_FIELDS[name])
    for name in (*optional, "request_id"):
        if draw(st.booleans()):
            frame[name] = draw(PLAUSIBLE_FIELDS[name])
    if draw(st.integers(0, 3)) == 0:
        frame[draw(st.sampled_from(FIELDS))] = draw(VALUES)
    return json.dumps(frame, ensure_ascii=True)


RAW_TEXT = st.one_of(
    st.text(max_size=50),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"type":' * n + '"ping"' + "}" * n),
    st.sampled_from(["", "{", "}", "[]", "null", "1e400", "-1e400", "NaN", "123456789012345678901234567890",
                     '{"type": "ping"} {"type": "ping"}', '{"type": "ping", "type": "ping"}', "\ufeff{}",
                     '{"type": "ping", "request_id": 1e400}', '{"type":"send_message","room_id":1.0}']),
)
FRAMES = st.one_of(plausible_frames(), plausible_frames(), json_frames(), RAW_TEXT, st.binary(max_size=64))


def _expect_reply(raw: str | bytes) -> tuple[bool, Any]:
    """Whether the frame must get a direct reply, and the request_id that reply must carry."""
    if isinstance(raw, bytes):
        return True, None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True, None
    if not isinstance(parsed, dict):
        return True, None
    rid = parsed.get("request_id")
    valid_rid = (isinstance(rid, str) and len(rid) <= 64) or (
        isinstance(rid, int) and not isinstance(rid, bool) and -MAX_ID <= rid <= MAX_ID
    )
    silent_ok = parsed.get("type") in ("typing", "stop_typing")
    return not silent_ok, rid if valid_rid else None


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=st.lists(FRAMES, min_size=1, max_size=4))
def test_bad_input_never_hurts(fuzz_server: RunningServer, frames: list[str | bytes]) -> None:
    """Any frame gets a defined error or a normal reply, never internal_error or a leak; ping works after."""
    with sync_connect(f"{fuzz_server.url}?token={token(1)}", open_timeout=WAIT, close_timeout=2) as ws:
        assert orjson.loads(ws.recv(timeout=WAIT))["type"] == "connection_established"
        for n, raw in enumerate(frames):
            size = len(raw.encode()) if isinstance(raw, str) else len(raw)
            if size > 60000:
                continue
            ws.send(raw)
            probe = f"probe-{n}-{time.monotonic_ns()}"
            ws.send(orjson.dumps({"type": "ping", "request_id": probe}).decode())
            needs_reply, rid = _expect_reply(raw)
            # Replies need not come in request order (an ack follows the commit), so read until
            # both the probe's pong and, when one is due, the fuzz frame's reply have arrived.
            direct: list[dict[str, Any]] = []
            probed = False
            while not probed or (needs_reply and not direct):
                text = ws.recv(timeout=WAIT)
                frame = orjson.loads(text)
                assert isinstance(frame, dict), text
                assert isinstance(frame.get("type"), str), text
                assert TIMESTAMP.match(frame.get("timestamp", "")), text
                if frame["type"] == "pong" and frame.get("request_id") == probe:
                    probed = True
                    continue
                if frame["type"] not in BROADCAST_TYPES:
                    direct.append(frame)
                if frame["type"] == "error":
                    assert frame["code"] in ERROR_CODES, (raw, frame)
                    assert frame["code"] != "internal_error", (raw, frame)
                    assert isinstance(frame["message"], str), frame
                    assert not LEAKS.search(frame["message"]), frame
                    assert "retry_after_ms" not in frame or frame["code"] == "rate_limited", frame
            if isinstance(raw, bytes):
                assert [f.get("code") for f in direct] == ["unsupported_frame"], direct
            if rid is not None and direct:
                assert any(f.get("request_id") == rid for f in direct), (raw, direct)


@pytest.mark.asyncio
async def test_compression_is_not_negotiated(server: RunningServer) -> None:
    """A client offering permessage-deflate gets no extension (no per-connection zlib state, no bombs)."""
    ws = await asyncio.wait_for(
        websockets.connect(f"{server.url}?token={server.token(1)}", compression="deflate"), 5
    )
    try:
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert ws.protocol.extensions == []
    finally:
        await ws.close()
