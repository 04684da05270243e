"""The WebSocket handshake and the plain HTTP endpoints (protocol.md §1, operations.md "HTTP").

Every test talks to a real server on 127.0.0.1 over real sockets, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import SIGNING_KEY, WAIT, Client, RunningServer, make_config, start_server, wait_until

pytestmark = pytest.mark.asyncio

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
AUTH_REQUIRED = "authentication required"
TOKEN_EXPIRED = "token expired"
_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512,
            "RS256": hashlib.sha256}


# -- helpers -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(claims: dict[str, Any], *, key: str = SIGNING_KEY, alg: str = "HS256") -> str:
    """A JWT built by hand (so any header or claim can be forged); HMAC-signed unless alg is none."""
    header = {"alg": alg, "typ": "JWT"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    digest = _DIGESTS.get(alg)
    signature = b"" if digest is None else hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for user 42; a change to None removes that claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "42", "name": "john", "iat": now, "exp": now + 3600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def ws_url(server: RunningServer, path: str | None = None, token: str | None = None) -> str:
    url = f"ws://127.0.0.1:{server.server.port}{path or server.config.server.path}"
    return url if token is None else f"{url}?token={token}"


async def open_client(url: str, **kwargs: Any) -> Client:
    ws = await asyncio.wait_for(websockets.connect(url, **kwargs), WAIT)
    return Client(ws)


async def established(url: str, **kwargs: Any) -> dict[str, Any]:
    """Connect, return the first frame, close."""
    client = await open_client(url, **kwargs)
    try:
        return await client.recv()
    finally:
        await client.close()


async def auth_close(url: str, **kwargs: Any) -> tuple[int | None, str | None]:
    """Connect, expect the server to close before sending anything; return (code, reason)."""
    async with asyncio.timeout(WAIT):
        ws = await websockets.connect(url, **kwargs)
        try:
            frame = await ws.recv()
        except ConnectionClosed:
            return ws.close_code, ws.close_reason
        finally:
            await ws.close()
    pytest.fail(f"received {frame!r} before the close")


async def handshake_status(url: str, **kwargs: Any) -> int:
    """The HTTP status of a refused handshake (fails if the handshake succeeds)."""
    with pytest.raises(InvalidStatus) as info:
        await asyncio.wait_for(_open_and_close(url, **kwargs), WAIT)
    return info.value.response.status_code


async def _open_and_close(url: str, **kwargs: Any) -> None:
    ws = await websockets.connect(url, **kwargs)
    await ws.close()


def _http_get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=WAIT) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()
        finally:
            exc.close()


async def http_get(server: RunningServer, path: str) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(_http_get, f"{server.http_url}{path}")


async def healthz(server: RunningServer) -> dict[str, Any]:
    status, _, body = await http_get(server, "/healthz")
    assert status == 200
    parsed: dict[str, Any] = json.loads(body)
    return parsed


async def metric(server: RunningServer, name: str) -> float:
    status, _, body = await http_get(server, "/metrics")
    assert status == 200
    found = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.MULTILINE)
    assert found is not None, f"{name} not in /metrics:\n{body.decode()}"
    return float(found.group(1))


async def eventually(predicate: Any, timeout: float = WAIT) -> None:
    await wait_until(predicate, timeout, interval=0.05)


@contextlib.asynccontextmanager
async def custom_server(tmp_path: Path, **server_section: Any) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(tmp_path, server=server_section))
    try:
        yield running
    finally:
        await running.server.stop()


# -- where the token comes from ------------------------------------------------------


async def test_token_from_query_parameter(server: RunningServer) -> None:
    """A valid token in the `token` query parameter is accepted."""
    hello = await established(ws_url(server, token=server.token(7, "alice")))
    assert hello["type"] == "connection_established"
    assert hello["user_id"] == 7


async def test_token_from_bearer_header(server: RunningServer) -> None:
    """A valid token in `Authorization: Bearer` is accepted."""
    headers = {"Authorization": f"Bearer {server.token(8, 'bob')}"}
    hello = await established(ws_url(server), additional_headers=headers)
    assert hello["type"] == "connection_established"
    assert hello["user_id"] == 8


async def test_token_from_cookie(server: RunningServer) -> None:
    """A valid token in the `unichat_token` cookie is accepted."""
    headers = {"Cookie": f"unichat_token={server.token(9, 'carol')}"}
    hello = await established(ws_url(server), additional_headers=headers)
    assert hello["type"] == "connection_established"
    assert hello["user_id"] == 9


async def test_token_from_cookie_among_other_cookies(server: RunningServer) -> None:
    """The `unichat_token` cookie is found when the browser sends other cookies with it."""
    headers = {"Cookie": f"theme=dark; unichat_token={server.token(9, 'carol')}; lang=en"}
    hello = await established(ws_url(server), additional_headers=headers)
    assert hello["type"] == "connection_established"
    assert hello["user_id"] == 9


async def test_handcrafted_hs256_token_is_accepted(server: RunningServer) -> None:
    """A hand-built HS256 token with only sub/name/exp is accepted (the forging helper is sound)."""
    token = craft(claims(iat=None))
    hello = await established(ws_url(server, token=token))
    assert hello["type"] == "connection_established"
    assert hello["user_id"] == 42


async def test_query_parameter_beats_header(server: RunningServer) -> None:
    """With a token in the query and in the Authorization header, the query's is used."""
    headers = {"Authorization": f"Bearer {server.token(2, 'header')}"}
    hello = await established(ws_url(server, token=server.token(1, "query")), additional_headers=headers)
    assert hello["user_id"] == 1


async def test_header_beats_cookie(server: RunningServer) -> None:
    """With a token in the Authorization header and in the cookie, the header's is used."""
    headers = {"Authorization": f"Bearer {server.token(2, 'header')}",
               "Cookie": f"unichat_token={server.token(3, 'cookie')}"}
    hello = await established(ws_url(server), additional_headers=headers)
    assert hello["user_id"] == 2


async def test_query_parameter_beats_cookie(server: RunningServer) -> None:
    """With a token in the query and in the cookie, the query's is used."""
    headers = {"Cookie": f"unichat_token={server.token(3, 'cookie')}"}
    hello = await established(ws_url(server, token=server.token(1, "query")), additional_headers=headers)
    assert hello["user_id"] == 1


# -- refused tokens --------------------------------------------------------------------


BAD_TOKENS: dict[str, Any] = {
    "malformed": lambda: "this-is-not-a-jwt",
    "three_garbage_segments": lambda: "abc.def.ghi",
    "wrong_signature": lambda: craft(claims(), key="x" * 40),
    "alg_none": lambda: craft(claims(), alg="none"),
    "alg_hs384": lambda: craft(claims(), alg="HS384"),
    "alg_hs512": lambda: craft(claims(), alg="HS512"),
    "alg_rs256_with_hmac_signature": lambda: craft(claims(), alg="RS256"),
    "nbf_in_future": lambda: craft(claims(nbf=int(time.time()) + 3600)),
    "missing_sub": lambda: craft(claims(sub=None)),
    "non_decimal_sub": lambda: craft(claims(sub="abc")),
    "fractional_sub": lambda: craft(claims(sub="4.2")),
    "negative_sub": lambda: craft(claims(sub="-5")),
    "numeric_not_string_sub": lambda: craft(claims(sub=42)),
    "missing_name": lambda: craft(claims(name=None)),
    "missing_exp": lambda: craft(claims(exp=None)),
}


async def test_missing_token_closes_4001(server: RunningServer) -> None:
    """No token at all: the upgrade is accepted, then closed with 4001 before any frame."""
    assert await auth_close(ws_url(server)) == (4001, AUTH_REQUIRED)


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_closes_4001(server: RunningServer, kind: str) -> None:
    """Each kind of invalid token closes with 4001 `authentication required` before any frame."""
    assert await auth_close(ws_url(server, token=BAD_TOKENS[kind]())) == (4001, AUTH_REQUIRED)


async def test_bad_token_in_header_closes_4001(server: RunningServer) -> None:
    """A badly signed Bearer token closes with 4001 before any frame."""
    headers = {"Authorization": f"Bearer {craft(claims(), key='x' * 40)}"}
    assert await auth_close(ws_url(server), additional_headers=headers) == (4001, AUTH_REQUIRED)


async def test_expired_token_closes_token_expired(server: RunningServer) -> None:
    """An expired token closes with 4001 and reason `token expired` before any frame."""
    token = craft(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 60))
    assert await auth_close(ws_url(server, token=token)) == (4001, TOKEN_EXPIRED)


async def test_refused_token_leaves_no_connection(server: RunningServer) -> None:
    """A connection closed for its token is not counted as a live connection."""
    await auth_close(ws_url(server, token="garbage"))
    assert (await healthz(server))["connections"] == 0


# -- success ---------------------------------------------------------------------------


async def test_connection_established_carries_identity(server: RunningServer) -> None:
    """The first frame is `connection_established` with the token's user id and username."""
    hello = await established(ws_url(server, token=server.token(42, "john")))
    assert hello["type"] == "connection_established"
    assert hello["user_id"] == 42
    assert hello["username"] == "john"
    assert TIMESTAMP.match(hello["timestamp"]), hello["timestamp"]


# -- paths and origins -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/ws/chat/extra", "/ws/", "/WS/CHAT/"])
async def test_other_path_gets_404(server: RunningServer, path: str) -> None:
    """A WebSocket handshake on any path but the configured one (with or without its
    trailing slash) gets HTTP 404."""
    assert await handshake_status(ws_url(server, path, token=server.token(1))) == 404


async def test_configured_path_is_served(tmp_path: Path) -> None:
    """With `server.path` set, that path is the endpoint and the default one gets 404."""
    async with custom_server(tmp_path, path="/chat/live") as srv:
        hello = await established(ws_url(srv, "/chat/live", token=srv.token(1)))
        assert hello["type"] == "connection_established"
        assert await handshake_status(ws_url(srv, "/ws/chat/", token=srv.token(1))) == 404


async def test_foreign_origin_gets_403(tmp_path: Path) -> None:
    """With allowed_origins set, a handshake from an unlisted Origin gets HTTP 403."""
    async with custom_server(tmp_path, allowed_origins=["https://chat.example.com"]) as srv:
        url = ws_url(srv, token=srv.token(1))
        assert await handshake_status(url, origin="https://evil.example.net") == 403


async def test_listed_origin_is_accepted(tmp_path: Path) -> None:
    """With allowed_origins set, a handshake from a listed Origin is accepted."""
    allowed = ["https://a.example", "https://chat.example.com"]
    async with custom_server(tmp_path, allowed_origins=allowed) as srv:
        hello = await established(ws_url(srv, token=srv.token(1)), origin="https://chat.example.com")
        assert hello["type"] == "connection_established"


async def test_missing_origin_is_accepted(tmp_path: Path) -> None:
    """With allowed_origins set, a handshake without an Origin header is accepted."""
    async with custom_server(tmp_path, allowed_origins=["https://chat.example.com"]) as srv:
        hello = await established(ws_url(srv, token=srv.token(1)))
        assert hello["type"] == "connection_established"


async def test_foreign_origin_refused_when_list_empty(server: RunningServer) -> None:
    """With allowed_origins empty (the default), only the server's own origin is accepted
    (protocol.md v1.1 §1): any other Origin gets HTTP 403."""
    assert await handshake_status(ws_url(server, token=server.token(1)), origin="https://anything.example") == 403
    own = f"http://127.0.0.1:{server.server.port}"
    hello = await established(ws_url(server, token=server.token(1)), origin=own)
    assert hello["type"] == "connection_established"


# -- HTTP endpoints --------------------------------------------------------------------


async def test_healthz_reports_status(server: RunningServer) -> None:
    """GET /healthz answers 200 JSON with status, connections, rooms_active and uptime_s."""
    status, content_type, body = await http_get(server, "/healthz")
    assert status == 200
    assert content_type.startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["connections"] == 0
    assert health["rooms_active"] == 0
    assert isinstance(health["uptime_s"], int | float)
    assert health["uptime_s"] >= 0


async def test_healthz_counts_live_connections(server: RunningServer) -> None:
    """/healthz `connections` follows connections as they open and close."""
    alice, bob = await server.connect(1), await server.connect(2)
    try:
        assert (await healthz(server))["connections"] == 2
        await bob.close()

        async def one_left() -> bool:
            return bool((await healthz(server))["connections"] == 1)

        await eventually(one_left)
    finally:
        await alice.close()
        await bob.close()


async def test_healthz_counts_active_rooms(server: RunningServer) -> None:
    """/healthz `rooms_active` counts rooms with at least one subscriber."""
    room = await server.create_room("general", [1])
    client = await server.connect(1)
    try:
        reply = await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        assert reply["type"] == "subscribed"
        assert (await healthz(server))["rooms_active"] == 1
    finally:
        await client.close()


async def test_metrics_is_prometheus_text(server: RunningServer) -> None:
    """GET /metrics answers 200 in Prometheus text format with the connection gauge."""
    status, content_type, body = await http_get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert "# TYPE unichatd_connections gauge" in text
    assert "unichatd_messages_stored_total" in text


async def test_metrics_counts_connections(server: RunningServer) -> None:
    """/metrics `unichatd_connections` is the number of open connections."""
    alice, bob = await server.connect(1), await server.connect(2)
    try:
        assert await metric(server, "unichatd_connections") == 2
    finally:
        await alice.close()
        await bob.close()


async def test_metrics_counts_stored_messages(server: RunningServer) -> None:
    """/metrics `unichatd_messages_stored_total` grows with each acknowledged message."""
    room = await server.create_room("general", [1])
    client = await server.connect(1)
    try:
        assert await metric(server, "unichatd_messages_stored_total") == 0
        for text in ("one", "two"):
            ack = await client.request({"type": "send_message", "room_id": room, "content": text},
                                       "message_ack")
            assert ack["type"] == "message_ack"
        assert await metric(server, "unichatd_messages_stored_total") == 2
    finally:
        await client.close()


async def test_unknown_http_path_gets_404(server: RunningServer) -> None:
    """A plain GET on a path that is neither the endpoint nor an HTTP endpoint gets 404."""
    status, _, _ = await http_get(server, "/nope")
    assert status == 404


# -- connection limits -----------------------------------------------------------------


async def test_per_user_limit_refuses_with_429(tmp_path: Path) -> None:
    """A user already at max_connections_per_user gets HTTP 429 for one more."""
    async with custom_server(tmp_path, max_connections_per_user=2) as srv:
        first, second = await srv.connect(1), await srv.connect(1)
        try:
            assert await handshake_status(ws_url(srv, token=srv.token(1))) == 429
        finally:
            await first.close()
            await second.close()


async def test_per_user_limit_spares_other_users(tmp_path: Path) -> None:
    """Another user still connects while one user is at max_connections_per_user."""
    async with custom_server(tmp_path, max_connections_per_user=1) as srv:
        first = await srv.connect(1)
        try:
            hello = await established(ws_url(srv, token=srv.token(2)))
            assert hello["type"] == "connection_established"
        finally:
            await first.close()


async def test_max_connections_refuses_with_503(tmp_path: Path) -> None:
    """With max_connections open, one more handshake gets HTTP 503."""
    async with custom_server(tmp_path, max_connections=2) as srv:
        first, second = await srv.connect(1), await srv.connect(2)
        try:
            assert await handshake_status(ws_url(srv, token=srv.token(3))) == 503
        finally:
            await first.close()
            await second.close()


# -- frames ----------------------------------------------------------------------------




async def test_connection_usable_after_binary_frame(server: RunningServer) -> None:
    """After a binary frame the connection stays open and answers the next request."""
    client = await server.connect(1)
    try:
        await client.send(b"\x00\x01\x02")
        assert (await client.recv())["code"] == "unsupported_frame"
        pong = await client.request({"type": "ping", "request_id": "p1"}, "pong")
        assert pong["type"] == "pong"
        assert pong["request_id"] == "p1"
    finally:
        await client.close()
