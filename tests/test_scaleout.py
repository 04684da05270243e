"""Three ``unichatd serve`` processes on one PostgreSQL database and one Redis, clients
spread over them, a burst of sends from all — and ``kill -9`` of one process in the
middle of it (operations.md: no acknowledged message is lost; readers catch up elsewhere
with no gap and no duplicate)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from tests.conftest import SIGNING_KEY, DaemonProcess, free_port, wait_until
from tests.services import postgres_schema, redis_prefix
from unichatd.auth import mint_token
from unichatd.store.postgres import PostgresAdmin, migrate_database

pytestmark = pytest.mark.asyncio
WAVES, WAVE = 3, 10
WAIT = 10.0


def _config(home: Path, port: int, url: str, prefix: str) -> Path:
    path = home / "unichatd.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[auth]\nsigning_key = "{SIGNING_KEY}"\n'
        f'[storage]\ndatabase = "{url}"\n[cluster]\nbroker = "redis://127.0.0.1:6379/0"\nprefix = "{prefix}"\n'
        '[limits]\nmessages_per_second = 10000\nmessage_burst = 10000\n[log]\nlevel = "warning"\n')
    return path


def _create_room(url: str, members: list[int]) -> int:
    admin = PostgresAdmin(url)
    try:
        return admin.create_room("burst", "group", members)
    finally:
        admin.close()


async def _connect(daemon: DaemonProcess, user_id: int) -> Any:
    token = mint_token(SIGNING_KEY, user_id, f"user{user_id}")
    ws = await asyncio.wait_for(websockets.connect(f"{daemon.url}?token={token}", close_timeout=1), WAIT)
    hello = orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert hello["type"] == "connection_established"
    return ws


class Reader:
    """A user who only reads: every message id, live or caught up, in the order heard."""

    def __init__(self, user_id: int, room: int) -> None:
        self.user_id, self.room = user_id, room
        self.heard: list[int] = []
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None

    async def join(self, daemon: DaemonProcess) -> None:
        self.ws = await _connect(daemon, self.user_id)
        request: dict[str, Any] = {"type": "subscribe_room", "room_id": self.room}
        if self.heard:
            request["last_message_id"] = self.heard[-1]
        await self.ws.send(orjson.dumps(request).decode())
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = orjson.loads(raw)
                if frame["type"] == "new_message":
                    self.heard.append(frame["message"]["id"])
                elif frame["type"] == "history":
                    assert not frame["has_more"]
                    self.heard.extend(message["id"] for message in frame["messages"])


async def _burst(daemon: DaemonProcess, user_id: int, room: int, acked: list[int],
                 after_first_wave: asyncio.Event | None = None) -> None:
    """WAVES waves of WAVE pipelined sends; the acked ids go to ``acked``."""
    with contextlib.suppress(websockets.ConnectionClosed, OSError):
        ws = await _connect(daemon, user_id)
        for wave in range(WAVES):
            for n in range(WAVE):
                await ws.send(orjson.dumps({"type": "send_message", "room_id": room, "content": f"{wave}.{n}",
                                            "client_msg_id": f"{user_id}-{wave}-{n}"}).decode())
            if wave == 1 and after_first_wave is not None:
                after_first_wave.set()  # (the second wave is in flight: its process dies now)
            waiting = WAVE
            while waiting:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))
                if frame["type"] == "message_ack":
                    acked.append(frame["message"]["id"])
                    waiting -= 1
        await ws.close()


@pytest.mark.process
async def test_a_burst_over_three_processes_survives_a_kill_9(tmp_path: Path) -> None:
    async with postgres_schema() as url, redis_prefix() as prefix:
        await migrate_database(url)
        room = await asyncio.to_thread(_create_room, url, [1, 2, 3, 4, 5, 6])
        daemons = []
        try:
            for index in range(3):
                home = tmp_path / f"process{index}"
                home.mkdir()
                port = free_port()
                daemon = DaemonProcess(_config(home, port, url, prefix), port)
                await asyncio.to_thread(daemon.start)
                daemons.append(daemon)
            readers = [Reader(4 + index, room) for index in range(3)]
            for reader, daemon in zip(readers, daemons, strict=True):
                await reader.join(daemon)
            await asyncio.sleep(0.5)  # (subscribed everywhere before the first send)
            acked: list[int] = []
            dying = asyncio.Event()
            bursts = [asyncio.create_task(_burst(daemon, 1 + index, room, acked, dying if index == 0 else None))
                      for index, daemon in enumerate(daemons)]
            await asyncio.wait_for(dying.wait(), WAIT)
            assert daemons[0].proc is not None
            daemons[0].proc.kill()  # SIGKILL, mid-burst
            await asyncio.wait_for(asyncio.gather(*bursts), 30)
            # The reader of the dead process reconnects to another and catches up.
            await asyncio.sleep(0.5)
            await readers[0].join(daemons[1])
            everything = sorted(acked)
            await wait_until(lambda: all(set(everything) <= set(reader.heard) for reader in readers), 15)
            await asyncio.sleep(0.5)  # (anything more that would come, a duplicate say, comes now)
        finally:
            for daemon in daemons:
                await asyncio.to_thread(daemon.stop)
    assert len(everything) >= 2 * WAVES * WAVE + WAVE  # (the others' all, and the dead one's first wave)
    assert len(set(everything)) == len(everything)
    for reader in readers:
        assert len(reader.heard) == len(set(reader.heard)), f"reader {reader.user_id} heard a message twice"
        assert reader.heard == sorted(reader.heard), f"reader {reader.user_id} heard out of order"
        assert set(everything) <= set(reader.heard)
