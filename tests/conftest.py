"""Shared test fixtures: a real unichatd on 127.0.0.1 (free port, temp SQLite file) and a client.

Every wait is bounded: ``Client.recv`` and friends take a timeout (default 5 s), so a
missing frame fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection

from unichatd.auth import mint_token
from unichatd.config import Config, parse_config
from unichatd.server import UnichatServer
from unichatd.store import AdminStore

SIGNING_KEY = "k" * 40
WAIT = 5.0


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

    async def no_frame(self, within: float = 0.3, ignore: tuple[str, ...] = ("room_updated",)) -> None:
        """Assert that no frame (other than ``ignore``) arrives within ``within`` seconds."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await self.recv(left)
            except TimeoutError:
                return
            assert frame["type"] in ignore, f"unexpected frame {frame}"

    async def close(self) -> None:
        await self.ws.close()


@dataclasses.dataclass
class RunningServer:
    server: UnichatServer
    config: Config
    key: str = SIGNING_KEY

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}{self.config.server.path}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def token(self, user_id: int, name: str | None = None, **kwargs: Any) -> str:
        return mint_token(self.key, user_id, name or f"user{user_id}", **kwargs)

    async def connect(self, user_id: int, name: str | None = None, **kwargs: Any) -> Client:
        """Connect as ``user_id`` and consume ``connection_established``."""
        ws = await asyncio.wait_for(
            websockets.connect(f"{self.url}?token={self.token(user_id, name)}", **kwargs), WAIT
        )
        client = Client(ws)
        hello = await client.recv()
        assert hello["type"] == "connection_established", hello
        return client

    def admin(self) -> AdminStore:
        return AdminStore(self.config.database_path)

    async def create_room(self, name: str, members: list[int], room_type: str = "group") -> int:
        """Create a room through the CLI's store and wait until the server knows it."""
        admin = self.admin()
        try:
            room_id = admin.create_room(name, room_type, members)
        finally:
            admin.close()
        await self.wait_for(lambda: all(
            self.server.chat.directory.is_participant(room_id, m) for m in members
        ) and room_id in self.server.chat.directory.rooms)
        return room_id

    async def wait_for(self, predicate: Any, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(tmp_path))
    try:
        yield running
    finally:
        await running.server.stop()


async def start_server(config: Config) -> RunningServer:
    server = UnichatServer(config, config.auth.signing_key or SIGNING_KEY)
    await server.start()
    return RunningServer(server, config, config.auth.signing_key or SIGNING_KEY)


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
    import socket

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
        deadline = time.monotonic() + 15
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start listening within 15 s")

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
