"""Shared test fixtures: a real unichatd on 127.0.0.1 (free port, temp SQLite file) and a client.

Every wait is bounded: ``Client.recv`` and friends take a timeout (default 5 s), so a
missing frame fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection

from tests import browsing
from tests.services import postgres_rows
from unichatd.app import build_server, open_admin
from unichatd.auth import mint_token
from unichatd.config import Config, parse_config
from unichatd.server import UnichatServer
from unichatd.store import AdminStore

SIGNING_KEY = "k" * 40
WAIT = 5.0

# -- test tiers ---------------------------------------------------------------------------
# Every test belongs to exactly one tier (pyproject.toml registers them): `unit` runs no
# socket and no real clock, `socket` a real server in this process, `process` the daemon or
# the CLI in a subprocess, `browser` Chromium, `bench` the load benchmark.  A test says its
# tier with a marker; otherwise its fixtures or its file decide.

TIERS = ("unit", "socket", "process", "browser", "bench")
FILE_TIERS = {
    "test_config.py": "unit", "test_core.py": "unit", "test_framing.py": "unit", "test_hub.py": "unit",
    "test_keepalive.py": "unit", "test_limits.py": "unit", "test_protocol.py": "unit", "test_store.py": "unit",
    "test_client.py": "socket", "test_data.py": "socket", "test_handshake.py": "socket",
    "test_hardening.py": "socket", "test_messaging.py": "socket", "test_operations.py": "socket",
    "test_regressions.py": "socket", "test_reliability.py": "socket", "test_smoke.py": "socket",
    "test_cli.py": "process", "test_hardening_cli.py": "process",
    "test_web.py": "browser", "test_web_access.py": "browser", "test_web_load.py": "browser",
    "test_web_lifecycle.py": "browser",
    "test_web_serving.py": "socket", "test_lifecycle.py": "socket", "test_search_query.py": "unit",
    "test_people.py": "socket", "test_files.py": "socket", "test_web_people.py": "browser",
    "test_bench.py": "bench",
    "test_api.py": "socket", "test_webhooks.py": "socket", "test_legacy.py": "socket", "test_signin.py": "socket",
    "test_api_schema.py": "process", "test_web_signin.py": "browser",
    "test_postgres.py": "socket", "test_cluster.py": "socket", "test_scaleout.py": "process",
}
FIXTURE_TIERS = {"daemon_factory": "process", "embedded": "process", "browser": "browser"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marked = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if len(marked) > 1:
            raise pytest.UsageError(f"{item.nodeid}: in more than one test tier: {sorted(marked)}")
        if marked:
            continue
        fixtures = getattr(item, "fixturenames", ())
        tier = next((FIXTURE_TIERS[name] for name in fixtures if name in FIXTURE_TIERS),
                    FILE_TIERS.get(item.path.name))
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: no test tier (add the file to FILE_TIERS or mark the test)")
        item.add_marker(tier)


@pytest.fixture(autouse=True)
def _unit_tests_open_no_sockets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tier's promise, kept: a test there that connects or listens fails."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a unit test opened a network socket; it belongs to the socket tier")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "bind", refuse)


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"signing_key": SIGNING_KEY},
        "storage": {"database": str(tmp_path / "chat.db")},
        "log": {"level": "warning"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw, source=str(tmp_path / "test.toml"), base_dir=tmp_path)


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time stands still until :meth:`advance` moves it, firing the timers that fall due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = time.time() - self.now  # (tokens carry real times)
        self.fired = 0
        """Timer callbacks run so far (each is one turn of a real event loop)."""
        self._timers: list[tuple[float, int, FakeTimer, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._timers, (self.now + delay, next(self._order), timer, callback, args))
        return timer

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            due, _, timer, callback, args = heapq.heappop(self._timers)
            self.now = due
            if not timer.cancelled:
                self.fired += 1
                callback(*args)
        self.now = until


class Client:
    """A protocol client over a real WebSocket, with bounded waits."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            await self.ws.send(orjson.dumps(frame).decode())
        else:
            await self.ws.send(frame)

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        frame: dict[str, Any] = orjson.loads(raw)
        return frame

    async def recv_type(self, *types: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next frame of one of ``types``, skipping others (e.g. room_updated)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] in types:
                    return frame

    async def request(self, frame: dict[str, Any], *types: str, timeout: float = WAIT) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv_type(*types, "error", timeout=timeout)

    async def no_frame(self, within: float = 0.3, ignore: tuple[str, ...] = ("room_updated", "presence")) -> None:
        """Assert that no frame (other than ``ignore``) arrives within ``within`` seconds
        (room list updates and presence come whenever others connect or write)."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await self.recv(left)
            except TimeoutError:
                return
            assert frame["type"] in ignore, f"unexpected frame {frame}"

    async def close(self) -> None:
        await self.ws.close()


class RunningServer:
    """A real unichatd on 127.0.0.1 (started on first use) and the clients a test opened.

    Rooms created before the server starts are written the CLI way into the database and
    loaded at startup, so a test skips the wait for the server's membership poll;
    :meth:`close` closes every client, then the server.
    """

    def __init__(self, config: Config, *, client_class: type[Client] = Client, name_format: str = "user{}",
                 connect_options: dict[str, Any] | None = None) -> None:
        self.config = config
        self.key = config.auth.signing_key or SIGNING_KEY
        self.client_class = client_class
        self.name_format = name_format
        self.connect_options = connect_options or {}
        self.clients: list[Client] = []
        self._server: UnichatServer | None = None

    async def start(self) -> RunningServer:
        if self._server is None:
            server = build_server(self.config, self.key)
            await server.start()
            self._server = server
        return self

    @property
    def server(self) -> UnichatServer:
        assert self._server is not None, "server not started"
        return self._server

    @property
    def broker(self) -> Any:
        return self.server.chat.broker

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}{self.config.server.path}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def token(self, user_id: int, name: str | None = None, **kwargs: Any) -> str:
        return mint_token(self.key, user_id, name or self.name_format.format(user_id), **kwargs)

    async def connect(self, user_id: int, name: str | None = None, *, first_name: str = "", ttl: int = 86400,
                      **options: Any) -> Any:
        """Connect as ``user_id`` and consume (and check) ``connection_established``."""
        await self.start()
        name = name or self.name_format.format(user_id)
        token = self.token(user_id, name, first_name=first_name, ttl=ttl)
        ws = await asyncio.wait_for(
            websockets.connect(f"{self.url}?token={token}", **{**self.connect_options, **options}), WAIT
        )
        client = self.client_class(ws)
        self.clients.append(client)
        hello = await client.recv()
        assert hello == {"type": "connection_established", "user_id": user_id, "username": name,
                         "timestamp": hello["timestamp"]}, hello
        return client

    def admin(self) -> AdminStore:
        return AdminStore(self.config.database_path)

    def _create_rooms(self, specs: tuple[tuple[str, list[int]], ...], room_type: str) -> list[int]:
        admin = open_admin(self.config)
        try:
            return [admin.create_room(name, room_type, members) for name, members in specs]
        finally:
            admin.close()

    async def rooms(self, *specs: tuple[str, list[int]], room_type: str = "group") -> list[int]:
        """Create rooms the CLI way; once the server runs, wait until it knows all of them."""
        if self.config.database_url:  # (the CLI's PostgreSQL admin runs an event loop of its own)
            ids = await asyncio.to_thread(self._create_rooms, specs, room_type)
        else:
            ids = self._create_rooms(specs, room_type)
        if self._server is not None:
            directory = self._server.chat.directory
            await self.wait_for(lambda: all(
                room_id in directory.rooms and all(directory.is_participant(room_id, m) for m in members)
                for room_id, (_, members) in zip(ids, specs, strict=True)
            ))
        return ids

    async def create_room(self, name: str, members: list[int], room_type: str = "group") -> int:
        return (await self.rooms((name, members), room_type=room_type))[0]

    def stored(self, room_id: int) -> list[tuple[int, int, str]]:
        """(id, sender_id, content) of the room's messages in the database, by id."""
        if self.config.database_url:
            return postgres_rows(self.config.database_url, "SELECT id, sender_id, content FROM messages "
                                                           "WHERE room_id = $1 ORDER BY id", room_id)
        with contextlib.closing(sqlite3.connect(self.config.database_path)) as conn:
            return conn.execute(
                "SELECT id, sender_id, content FROM messages WHERE room_id = ? ORDER BY id", (room_id,)
            ).fetchall()

    def stored_ids(self, room_id: int) -> list[int]:
        return [row[0] for row in self.stored(room_id)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        await wait_until(predicate, timeout)

    async def close(self) -> None:
        # Concurrently, and bounded: a client left with unread frames by a failed test closes slowly.
        await asyncio.gather(*(client.close() for client in self.clients))
        if self._server is not None:
            await self._server.stop()


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(tmp_path))
    try:
        yield running
    finally:
        await running.close()


async def start_server(config: Config) -> RunningServer:
    return await RunningServer(config).start()


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT,
                     interval: float = 0.02) -> None:
    """Poll ``predicate`` (plain or async) until it holds; past ``timeout``, TimeoutError.

    What the tests wait for is state in another task or process, with no event to await.
    """
    async with asyncio.timeout(timeout):
        while True:
            held = predicate()
            if await held if inspect.isawaitable(held) else held:
                return
            await asyncio.sleep(interval)


async def stalled_client(running: RunningServer, user_id: int, room: int) -> Client:
    """A subscribed client with a tiny receive buffer that stops reading."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so the server's buffer fills fast
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", running.server.port))
        ws = await asyncio.wait_for(websockets.connect(
            f"{running.url}?token={running.token(user_id)}", sock=sock, ping_interval=None,
            max_queue=None, close_timeout=1,
        ), WAIT)
    except BaseException:
        sock.close()
        raise
    client = Client(ws)
    assert (await client.recv())["type"] == "connection_established"
    subscribed = await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
    assert subscribed["type"] == "subscribed", subscribed
    ws.transport.pause_reading()
    return client


# -- the daemon as a separate process (for signals, kill -9 and the CLI) -------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unichatd", *args],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def write_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "unichatd.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\npid_file = "{tmp_path / "unichatd.pid"}"\n'
        f'{extra}\n[auth]\nsigning_key = "{SIGNING_KEY}"\n'
        f'[storage]\ndatabase = "chat.db"\n[log]\nlevel = "warning"\n'
    )
    return path


def wait_listening(proc: subprocess.Popen[bytes], port: int, within: float = 15) -> None:
    """Until ``proc`` listens on ``port``; fails (with its stderr when piped) if it exits first."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr is not None else ""
            raise AssertionError(f"server exited with {proc.returncode}: {stderr}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server did not listen on {port} within {within} s")


class DaemonProcess:
    """``python -m unichatd serve`` in a subprocess, waited on until it listens."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unichatd", "serve", "--config", str(self.config_path)],
            cwd=self.config_path.parent, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        wait_listening(self.proc, self.port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def factory(extra: str = "") -> DaemonProcess:
        port = free_port()
        daemon = DaemonProcess(write_config(tmp_path, port, extra), port)
        daemon.start()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.stop()


# -- the browser tier ---------------------------------------------------------------------


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    browsing.require_chromium()
    browsing.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=browsing.CHROMIUM, args=browsing.CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


FAST_SENDS = {"messages_per_second": 10_000, "message_burst": 10_000}
"""Limits for tests that send faster than the default rate limit allows."""


@pytest_asyncio.fixture
async def chat(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server, started on first use; a user is named as the test names them (or by their bare id)."""
    running = RunningServer(make_config(tmp_path, limits=FAST_SENDS), name_format="{}")
    try:
        yield running
    finally:
        await running.close()


@pytest_asyncio.fixture
async def chat_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server for browser tests, whose helpers fill rooms faster than the default rate limit."""
    running = await start_server(make_config(tmp_path, server={"port": free_port()}, limits=FAST_SENDS))
    try:
        yield running
    finally:
        await running.server.stop()
