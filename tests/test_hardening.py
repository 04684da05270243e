"""Holes, defects and stumbles found by trying unichatd from outside (issue 9), one test each.

Each test names the item it pins down; all run against a real server over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import sqlite3
import stat
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import (
    SIGNING_KEY,
    WAIT,
    Client,
    RunningServer,
    make_config,
    start_server,
)
from unichatd import routes
from unichatd.app import build_server
from unichatd.config import LogConfig
from unichatd.log import configure_logging
from unichatd.store import SqliteStore

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[RunningServer]:
    server = await start_server(make_config(tmp_path, **sections))
    try:
        yield server
    finally:
        await server.server.stop()


async def raw_http(port: int, request: bytes, timeout: float = WAIT) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is; return the status, the headers (last value wins) and the body."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = b""
            if status != 101 and "content-length" in headers and not request.startswith(b"HEAD"):
                body = await reader.readexactly(int(headers["content-length"]))
            return status, headers, body
        finally:
            writer.close()


def handshake(path: str, *extra: str, host: str = "127.0.0.1") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(url: str, **kwargs: Any) -> Client:
    ws = await asyncio.wait_for(websockets.connect(url, **kwargs), WAIT)
    client = Client(ws)
    return client


# -- 1. memory stays flat whatever paths are asked -------------------------------------


async def test_01_made_up_static_paths_cost_no_memory(tmp_path: Path) -> None:
    """Thousands of distinct made-up /static/ paths leave the server's memory where it was."""
    async with running(tmp_path) as srv:
        port = srv.server.port

        async def ask(count: int, prefix: str) -> None:
            for index in range(count):
                status, _, _ = await raw_http(port, f"GET /static/{prefix}{index}.js HTTP/1.1\r\nHost: x\r\n\r\n"
                                              .encode())
                assert status == 404

        await ask(100, "warm")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await ask(1500, "made-up-path-with-some-length-")
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 100_000, f"grew by {grown} bytes for 1,500 unknown paths"


# -- 2. connection limits under concurrency ------------------------------------------------


async def test_02_concurrent_handshakes_respect_connection_limits(tmp_path: Path) -> None:
    """40 simultaneous handshakes: at most max_connections_per_user of one user, max_connections in all."""
    async with running(tmp_path, server={"max_connections": 10, "max_connections_per_user": 4}) as srv:

        async def attempt(user_id: int) -> websockets.ClientConnection | int:
            try:
                return await asyncio.wait_for(websockets.connect(f"{srv.url}?token={srv.token(user_id)}"), WAIT)
            except InvalidStatus as exc:
                return exc.response.status_code

        same_user = await asyncio.gather(*(attempt(7001) for _ in range(40)))
        opened = [ws for ws in same_user if not isinstance(ws, int)]
        assert len(opened) == 4
        assert {status for status in same_user if isinstance(status, int)} == {429}
        many_users = await asyncio.gather(*(attempt(8000 + index) for index in range(40)))
        opened_too = [ws for ws in many_users if not isinstance(ws, int)]
        assert len(opened) + len(opened_too) == 10
        assert {status for status in many_users if isinstance(status, int)} == {503}
        for ws in opened + opened_too:
            await ws.close()
        # Closed connections give their places back.
        await srv.wait_for(lambda: srv.server.admission.total == 0)
        again = await srv.connect(7001)
        await again.close()


# -- 3. duplicate headers ------------------------------------------------------------------


@pytest.mark.parametrize("duplicated", ["Authorization: Bearer x", "Origin: http://127.0.0.1", "Upgrade: websocket",
                                        "Host: 127.0.0.1"])
async def test_03_duplicate_security_headers_get_400(tmp_path: Path, duplicated: str,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """A security-relevant header sent twice is a 400 with a JSON body, and no traceback is logged."""
    async with running(tmp_path) as srv:
        status, headers, body = await raw_http(srv.server.port, handshake("/ws/chat/", duplicated, duplicated))
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert orjson.loads(body)["error"] == "bad_request"
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert "ERROR" not in captured.err


async def test_03_duplicate_cookie_headers_are_one_cookie_list(tmp_path: Path) -> None:
    """Two Cookie headers are read as one list (RFC 6265): the token in either is found."""
    async with running(tmp_path) as srv:
        token = srv.token(5)
        status, _, _ = await raw_http(srv.server.port, handshake(
            "/ws/chat/", "Cookie: theme=dark", f"Cookie: unichat_token={token}"))
        assert status == 101


# -- 4. /metrics and methods -----------------------------------------------------------------


async def test_04_non_ascii_metrics_bearer_is_401(tmp_path: Path) -> None:
    """/metrics with a non-ASCII bearer value answers 401, not 500."""
    async with running(tmp_path, server={"metrics_token": "s3cret-token"}) as srv:
        request = "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr\u00e9t\r\n\r\n".encode("latin-1")
        status, headers, _ = await raw_http(srv.server.port, request)
        assert status == 401
        assert headers["www-authenticate"] == "Bearer"
        good = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\n\r\n"
        assert (await raw_http(srv.server.port, good))[0] == 200


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/healthz", "/metrics", "/favicon.ico"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_04_other_methods_get_405(tmp_path: Path, path: str, method: str) -> None:
    """Methods other than GET and HEAD on the plain routes answer 405 with Allow."""
    async with running(tmp_path) as srv:
        status, headers, body = await raw_http(srv.server.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        assert orjson.loads(body)["error"] == "method_not_allowed"


async def test_04_head_answers_headers_only(tmp_path: Path) -> None:
    """HEAD / answers the page's headers, with its length, and no body."""
    async with running(tmp_path) as srv:
        status, headers, _ = await raw_http(srv.server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        assert int(headers["content-length"]) > 100
        assert headers["content-type"].startswith("text/html")


class _Peer:
    def __init__(self, address: str) -> None:
        self.remote_address = (address, 40000)


@pytest.mark.parametrize(("token", "loopback_only", "address", "authorization", "expected"), [
    ("", False, "127.0.0.1", None, None),
    ("", False, "::1", None, None),
    ("", False, "192.0.2.7", None, 403),         # no token: loopback only, by default
    ("t" * 20, False, "192.0.2.7", None, 401),
    ("t" * 20, False, "192.0.2.7", "Bearer " + "t" * 20, None),
    ("t" * 20, True, "192.0.2.7", "Bearer " + "t" * 20, 403),
    ("t" * 20, False, "127.0.0.1", None, 401),
])
async def test_04_metrics_are_loopback_only_unless_a_token_is_set(
    tmp_path: Path, token: str, loopback_only: bool, address: str, authorization: str | None, expected: int | None
) -> None:
    """Without metrics_token, /metrics answers loopback clients only; with it, whoever has the token."""
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    server = build_server(make_config(tmp_path, server={"metrics_token": token,
                                                         "metrics_loopback_only": loopback_only}), SIGNING_KEY)
    headers = Headers([("Host", "x")] + ([("Authorization", authorization)] if authorization else []))
    refusal = server.endpoints._metrics_refusal(_Peer(address), Request("/metrics", headers))  # type: ignore[arg-type]
    assert (refusal.status_code if refusal is not None else None) == expected


# -- 5. the origin rule and the session cookie -------------------------------------------


async def test_05_default_accepts_only_the_servers_own_origin(tmp_path: Path) -> None:
    """With allowed_origins empty, only an Origin equal to the Host (name and port) passes."""
    async with running(tmp_path) as srv:
        port = srv.server.port
        url = f"{srv.url}?token={srv.token(3)}"
        own = await connect(url, origin=f"http://127.0.0.1:{port}")
        assert (await own.recv())["type"] == "connection_established"
        await own.close()
        for foreign in (f"http://127.0.0.1:{port + 1}", "http://evil.example", "null",
                        f"https://127.0.0.1.evil.example:{port}"):
            with pytest.raises(InvalidStatus) as info:
                await connect(url, origin=foreign)
            assert info.value.response.status_code == 403, foreign


async def test_05_sibling_subdomain_is_foreign(tmp_path: Path) -> None:
    """A page on a sibling subdomain of the same site is refused (403)."""
    async with running(tmp_path) as srv:
        host = f"chat.example.com:{srv.server.port}"
        request = handshake(f"/ws/chat/?token={srv.token(3)}", f"Origin: http://evil.example.com:{srv.server.port}",
                            host=host)
        assert (await raw_http(srv.server.port, request))[0] == 403
        same = handshake(f"/ws/chat/?token={srv.token(3)}", f"Origin: http://{host}", host=host)
        assert (await raw_http(srv.server.port, same))[0] == 101


async def test_05_public_url_origin_and_star(tmp_path: Path) -> None:
    """server.public_url's origin is the server's own; allowed_origins = ["*"] accepts any origin."""
    async with running(tmp_path, server={"public_url": "https://chat.example.com"}) as srv:
        client = await connect(f"{srv.url}?token={srv.token(3)}", origin="https://chat.example.com")
        assert (await client.recv())["type"] == "connection_established"
        await client.close()
    async with running(tmp_path, server={"allowed_origins": ["*"]}) as srv:
        client = await connect(f"{srv.url}?token={srv.token(3)}", origin="https://anywhere.example")
        assert (await client.recv())["type"] == "connection_established"
        await client.close()


async def test_05_session_sets_an_httponly_cookie(tmp_path: Path) -> None:
    """GET /session with a Bearer token sets an HttpOnly, SameSite=Strict cookie that signs the socket in."""
    async with running(tmp_path) as srv:
        token = srv.token(12, "carol")
        status, headers, body = await raw_http(
            srv.server.port, f"GET /session HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        assert status == 200
        assert orjson.loads(body)["user_id"] == 12
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"unichat_token={token};")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        bad = await raw_http(srv.server.port, b"GET /session HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n")
        assert bad[0] == 401
        cleared = await raw_http(srv.server.port, b"DELETE /session HTTP/1.1\r\nHost: x\r\n\r\n")
        assert cleared[0] == 200
        assert "Max-Age=0" in cleared[1]["set-cookie"]
        foreign = await raw_http(srv.server.port, (
            f"GET /session HTTP/1.1\r\nHost: 127.0.0.1:{srv.server.port}\r\nOrigin: http://evil.example\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode())
        assert foreign[0] == 403


# -- 6. a member added by the CLI can subscribe at once ---------------------------------


async def test_06_member_added_by_cli_subscribes_at_once(server: RunningServer) -> None:
    """A member added with `room add` while the server runs subscribes and sends at once."""
    room = await server.create_room("later", [1])
    bob = await server.connect(2)
    admin = server.admin()
    try:
        admin.add_members(room, [2])
    finally:
        admin.close()
    reply = await bob.request({"type": "subscribe_room", "room_id": room}, "subscribed")
    assert reply["type"] == "subscribed", reply
    ack = await bob.request({"type": "send_message", "room_id": room, "content": "hi"}, "message_ack")
    assert ack["type"] == "message_ack"


# -- 7. limits compose -------------------------------------------------------------------------


async def test_07_frame_limit_never_refuses_sends_the_message_limit_allows(tmp_path: Path) -> None:
    """With a generous message rate, 300 pipelined sends are all acked despite a lower frame limit."""
    async with running(tmp_path, limits={"messages_per_second": 100000, "message_burst": 100000,
                                         "frames_per_second": 20, "frame_burst": 20}) as srv:
        room = await srv.create_room("bots", [1])
        bot = await srv.connect(1)
        for index in range(300):
            await bot.send({"type": "send_message", "room_id": room, "content": f"m{index}",
                            "client_msg_id": f"c{index}"})
        acked = 0
        while acked < 300:
            frame = await bot.recv_type("message_ack", "error")
            assert frame["type"] == "message_ack", frame
            acked += 1
        # Other frames still count against the frame limit.
        codes = []
        for _ in range(40):
            await bot.send({"type": "ping"})
        for _ in range(40):
            frame = await bot.recv_type("pong", "error")
            codes.append(frame.get("code"))
        assert "rate_limited" in codes


# -- 8. reply order ------------------------------------------------------------------------------


async def test_08_replies_come_in_request_order(tmp_path: Path) -> None:
    """Four pipelined sends over a burst of three: three acks, then the fourth's rate_limited
    error carrying its client_msg_id; a ping after them is answered last."""
    async with running(tmp_path, limits={"messages_per_second": 0.01, "message_burst": 3}) as srv:
        room = await srv.create_room("order", [1])
        alice = await srv.connect(1)
        for index in range(4):
            await alice.send({"type": "send_message", "room_id": room, "content": f"m{index}",
                              "client_msg_id": f"c{index}"})
        await alice.send({"type": "ping", "request_id": "p"})
        replies = [await alice.recv_type("message_ack", "error", "pong") for _ in range(5)]
        assert [frame["type"] for frame in replies] == ["message_ack"] * 3 + ["error", "pong"]
        assert [frame["client_msg_id"] for frame in replies[:4]] == ["c0", "c1", "c2", "c3"]
        assert replies[3]["code"] == "rate_limited"


async def test_08_send_errors_carry_client_msg_id(server: RunningServer) -> None:
    """An error answering a send_message carries its client_msg_id (invalid, foreign room)."""
    room = await server.create_room("mine", [1])
    alice = await server.connect(1)
    empty = await alice.request({"type": "send_message", "room_id": room, "content": "  ",
                                 "client_msg_id": "e1"}, "message_ack")
    assert (empty["code"], empty["client_msg_id"]) == ("invalid_message", "e1")
    foreign = await alice.request({"type": "send_message", "room_id": room + 100, "content": "x",
                                   "client_msg_id": "e2"}, "message_ack")
    assert (foreign["code"], foreign["client_msg_id"]) == ("access_denied", "e2")


# -- 10. a heartbeat that never waits on one peer ------------------------------------------


async def test_10_peer_near_the_high_water_mark_does_not_block_the_heartbeat(tmp_path: Path) -> None:
    """A peer whose buffer sits just under the high-water mark does not stop dead peers being dropped."""
    async with running(tmp_path, server={"ping_interval": 0.3, "ping_timeout": 0.6, "send_buffer_bytes": 1 << 26},
                       limits={"messages_per_second": 100000, "message_burst": 100000}) as srv:
        room = await srv.create_room("busy", [1, 2, 3])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", srv.server.port))
        stalled = Client(await asyncio.wait_for(websockets.connect(
            f"{srv.url}?token={srv.token(2)}", sock=sock, ping_interval=None, max_queue=None, close_timeout=1), WAIT))
        assert (await stalled.recv())["type"] == "connection_established"
        await stalled.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        stalled.ws.transport.pause_reading()
        sender = await srv.connect(1)
        conns = {c.remote_address[1]: c for c in srv.server._ws.connections}  # type: ignore[union-attr]
        stalled_conn = conns[sock.getsockname()[1]]
        stalled_conn.transport.set_write_buffer_limits(high=1 << 30)  # not paused while it fills
        # Fill the stalled peer's server-side buffer, then put its high-water mark just above it.
        for index in range(1500):
            await sender.send({"type": "send_message", "room_id": room, "content": "x" * 3000,
                               "client_msg_id": f"f{index}"})
        for _ in range(1500):
            assert (await sender.recv_type("message_ack", "error", timeout=10))["type"] == "message_ack"
        await srv.wait_for(lambda: stalled_conn.transport.get_write_buffer_size() > 10_000, timeout=10)
        await asyncio.sleep(0.1)
        size = stalled_conn.transport.get_write_buffer_size()
        stalled_conn.transport.set_write_buffer_limits(high=size + 3, low=1)
        assert not stalled_conn.paused
        # A dead peer: connected, then it neither reads nor answers pings.
        dead = await srv.connect(3, ping_interval=None)
        dead.ws.transport.pause_reading()
        dead_conn = next(c for c in srv.server._ws.connections  # type: ignore[union-attr]
                         if c.remote_address[1] == dead.ws.local_address[1])
        try:
            await srv.wait_for(lambda: dead_conn.state.name in ("CLOSING", "CLOSED"), timeout=3.0)
        finally:
            for client in (sender, dead, stalled):
                client.ws.transport.abort()
                with contextlib.suppress(Exception):
                    await client.ws.wait_closed()
            sock.close()


# -- 11. a full disk -------------------------------------------------------------------------------


async def test_11_full_disk_logs_the_cause_once_and_closes_cleanly(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """With the disk full, sends get internal_error and the log names the real cause once; with
    the database read-only, a new user connecting is closed with 1011; never a traceback."""
    configure_logging(LogConfig(level="warning"))
    async with running(tmp_path, limits={"messages_per_second": 1000, "message_burst": 1000}) as srv:
        room = await srv.create_room("full", [1])
        alice = await srv.connect(1)
        store = srv.server.store
        assert isinstance(store, SqliteStore)

        def fill(conn: sqlite3.Connection) -> None:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")

        await store._writer_thread.call(fill)
        errors = []
        for index in range(30):
            reply = await alice.request({"type": "send_message", "room_id": room, "content": "y" * 3000,
                                         "client_msg_id": f"d{index}"}, "message_ack")
            if reply["type"] == "error":
                errors.append(reply)
        assert errors
        assert {e["code"] for e in errors} == {"internal_error"}
        assert all(e["client_msg_id"].startswith("d") for e in errors)

        def read_only(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA query_only = 1")

        await store._writer_thread.call(read_only)
        newcomer = await connect(f"{srv.url}?token={srv.token(99, 'newbie')}")
        with pytest.raises(ConnectionClosed):
            await newcomer.recv()
        assert newcomer.ws.close_code == 1011
        assert newcomer.ws.close_reason == "database unavailable"
    err = capfd.readouterr().err
    assert err.count("database or disk is full") == 1, err
    assert err.count("attempt to write a readonly database") == 1, err
    assert "cannot rollback" not in err
    assert "Traceback" not in err


# -- 12. absurd claims and renamed users ------------------------------------------------------


@pytest.mark.parametrize("claims", [
    {"sub": "9" * 5000, "name": "x"},
    {"sub": "42", "name": "x", "exp": 10**17},
    {"sub": "42", "name": "x", "exp": 1e300},
    {"sub": "42", "name": "x", "exp": float("inf")},
    {"sub": "42", "name": "x", "nbf": 10**30},
    {"sub": "42", "name": "x", "iat": 10**30},
])
async def test_12_absurd_claims_close_with_4001(server: RunningServer, claims: dict[str, Any]) -> None:
    """Signed tokens with absurd claims close with 4001, and refresh_token answers invalid_message."""
    import jwt

    payload = {"exp": int(time.time()) + 3600, **claims}
    token = jwt.encode(payload, SIGNING_KEY, algorithm="HS256")
    client = await connect(f"{server.url}?token={token}")
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 4001
    alice = await server.connect(42)
    reply = await alice.request({"type": "refresh_token", "token": token}, "token_refreshed")
    assert reply["code"] == "invalid_message"


async def test_12_refresh_with_a_new_name_is_stored(server: RunningServer) -> None:
    """refresh_token with another name changes the user's name in history too."""
    room = await server.create_room("names", [5])
    user = await server.connect(5, "oldname")
    await user.request({"type": "send_message", "room_id": room, "content": "before"}, "message_ack")
    await user.request({"type": "refresh_token", "token": server.token(5, "newname")}, "token_refreshed")
    history = await user.request({"type": "get_history", "room_id": room}, "history")
    assert [m["sender"]["username"] for m in history["messages"]] == ["newname"]


# -- 13. leaks ---------------------------------------------------------------------------------------


async def test_13_send_bucket_is_forgotten_after_the_last_disconnect(tmp_path: Path) -> None:
    """A user's send bucket is dropped once they are gone and it has refilled."""
    async with running(tmp_path, limits={"messages_per_second": 100, "message_burst": 5}) as srv:
        room = await srv.create_room("b", [1])
        alice = await srv.connect(1)
        for index in range(3):
            await alice.request({"type": "send_message", "room_id": room, "content": f"{index}"}, "message_ack")
        assert 1 in srv.server.chat._send_buckets
        await alice.close()
        await srv.wait_for(lambda: 1 not in srv.server.chat._send_buckets, timeout=2.0)


async def test_13_client_reconnect_survives_subscribe_during_resubscribe(server: RunningServer) -> None:
    """ChatClient: a subscribe made while the reconnect loop re-subscribes does not kill the reader."""
    from unichatd.client import ChatClient

    admin = server.admin()
    try:
        rooms = [admin.create_room(f"r{index}", "group", [1]) for index in range(6)]
        extras = [admin.create_room(f"extra{index}", "group", [1]) for index in range(200)]
    finally:
        admin.close()
    await server.wait_for(lambda: server.server.chat.directory.is_participant(rooms[-1] + 200, 1))

    class SlowWriter(ChatClient):
        async def _write(self, frame: dict[str, Any]) -> None:
            await super()._write(frame)
            await asyncio.sleep(0.02)  # room for another task between re-subscribes

    async with SlowWriter(server.url, server.token(1), initial_backoff=0.01, request_timeout=WAIT) as chat:
        for room in rooms:
            await chat.subscribe(room)
        for conn in list(server.server._ws.connections):  # type: ignore[union-attr]
            await conn.close(1012, "restart")
        # Subscribes keep starting, each without waiting for the last (with last_message_id,
        # the room is recorded before the request is written: a new key while the
        # reconnect loop walks the rooms).
        started: list[asyncio.Future[Any]] = []
        try:
            for room in extras:
                if chat.reconnects:
                    break
                started.append(asyncio.ensure_future(chat.subscribe(room, last_message_id=0)))
                await asyncio.sleep(0.005)
        finally:
            for task in started:
                task.cancel()
            await asyncio.gather(*started, return_exceptions=True)
        assert chat.reconnects == 1, "the reader died while re-subscribing"
        assert chat._reader is not None
        assert not chat._reader.done()
        assert (await chat.ping())["type"] == "pong"


async def test_13_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    """A start that fails after the listener opened (unwritable pid file) closes it and frees the lock."""
    from unichatd.errors import ConfigError

    port = _free_port()
    config = make_config(tmp_path, server={"port": port, "pid_file": str(tmp_path / "missing" / "x.pid")})
    server = build_server(config, SIGNING_KEY)
    with pytest.raises(ConfigError, match="server.pid_file"):
        await server.start()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    again = await start_server(make_config(tmp_path))  # the database lock was released
    await again.server.stop()


async def test_13_reload_changes_the_stdlib_log_level() -> None:
    """configure_logging (as SIGHUP calls it) sets the stdlib level every time, not only the first."""
    root = logging.getLogger()
    before = root.level
    try:
        configure_logging(LogConfig(level="error"))
        assert root.level == logging.ERROR
        configure_logging(LogConfig(level="warning"))
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)


async def test_13_in_process_server_leaves_gc_settings_alone(tmp_path: Path) -> None:
    """Starting a server in a process does not freeze objects or change the GC thresholds."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    async with running(tmp_path):
        assert gc.get_threshold() == thresholds
        assert gc.get_freeze_count() == frozen


# -- 14. private data files ------------------------------------------------------------------------


async def test_14_database_and_wal_are_private(tmp_path: Path) -> None:
    """The database, its WAL and shared-memory files are created 0600."""
    async with running(tmp_path) as srv:
        room = await srv.create_room("p", [1])
        alice = await srv.connect(1)
        await alice.request({"type": "send_message", "room_id": room, "content": "x"}, "message_ack")
        database = srv.config.database_path
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 21. small things -------------------------------------------------------------------------------


async def test_21_ws_path_without_trailing_slash_is_accepted(server: RunningServer) -> None:
    """/ws/chat (no trailing slash) is the same endpoint as /ws/chat/."""
    client = await connect(f"ws://127.0.0.1:{server.server.port}/ws/chat?token={server.token(4)}")
    assert (await client.recv())["type"] == "connection_established"
    await client.close()


async def test_21_unknown_type_suggests_the_right_one(server: RunningServer) -> None:
    """`subscribe` is answered with unknown_type suggesting subscribe_room and help."""
    client = await server.connect(4)
    reply = await client.request({"type": "subscribe", "room_id": 1}, "never")
    assert reply["code"] == "unknown_type"
    assert "'subscribe_room'" in reply["message"]
    assert "help" in reply["message"]


async def test_21_favicon_is_served(server: RunningServer) -> None:
    """/favicon.ico answers an icon, not 404."""
    status, headers, body = await raw_http(server.server.port, b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["content-type"] == "image/svg+xml"
    assert body.startswith(b"<svg")


async def test_21_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    """A second server on the same SQLite database refuses to start, naming the lock and the holder."""
    from unichatd.errors import AlreadyServing

    async with running(tmp_path):
        second = build_server(make_config(tmp_path), SIGNING_KEY)
        with pytest.raises(AlreadyServing, match=f"process {os.getpid()}"):
            await second.start()


async def test_routes_origin_rule_cases() -> None:
    """The origin rule compares host names and ports, with the scheme's default port."""
    allowed = routes.origin_allowed
    assert allowed("http://example.com", "example.com", (), "")
    assert allowed("https://example.com", "example.com", (), "")
    assert allowed("http://[::1]:8000", "[::1]:8000", (), "")
    assert allowed("HTTP://Example.COM:80", "example.com", (), "")
    assert not allowed("http://example.com:8080", "example.com", (), "")
    assert not allowed("http://a.example.com", "b.example.com", (), "")
    assert allowed("https://chat.example.com", "127.0.0.1:8000", (), "https://chat.example.com/")
    assert not allowed("https://chat.example.com", None, (), "")
    assert allowed(None, None, (), "")
