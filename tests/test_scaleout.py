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

from tests.conftest import SIGNING_KEY, DaemonProcess, free_port, run_cli, wait_until
from tests.services import postgres_schema, redis_prefix, restart_postgres, restart_redis
from unichatd.auth import mint_token
from unichatd.store.postgres import PostgresAdmin, PostgresStore, migrate_database

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


async def _health(url: str) -> tuple[int, dict[str, Any]]:
    def get() -> tuple[int, dict[str, Any]]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:  # noqa: S310  (127.0.0.1)
                return answer.status, orjson.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read())

    return await asyncio.to_thread(get)


@pytest.mark.process
async def test_a_redis_restart_loses_nothing_and_delivery_goes_on(tmp_path: Path) -> None:
    """Redis stops mid-run: sends still commit and are acked, the other process's
    subscribers still get them (from the database), /healthz says the broker is away;
    Redis comes back: events flow again, every message heard once, in order."""
    from tests.test_cluster import _cluster

    async for cluster in _cluster(tmp_path, 2):
        await _through_a_redis_restart(cluster)


async def _through_a_redis_restart(cluster: Any) -> None:
    room = await cluster.room("team", [1, 2])
    sender, listener = await cluster[0].connect(1), await cluster[1].connect(2)
    await listener.request({"type": "subscribe_room", "room_id": room}, "subscribed")
    heard: list[int] = []

    async def listen() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frame = await listener.recv(timeout=60)
                if frame["type"] == "new_message":
                    heard.append(frame["message"]["id"])

    listening = asyncio.create_task(listen())
    acked: list[int] = []

    async def send(count: int) -> None:
        for n in range(count):
            ack = await sender.request({"type": "send_message", "room_id": room, "content": f"{n}"},
                                       "message_ack")
            assert ack["type"] == "message_ack", ack
            acked.append(ack["message"]["id"])

    await send(5)
    restart = asyncio.create_task(asyncio.to_thread(restart_redis, 4.0))
    await asyncio.sleep(1.0)
    status, health = await _health(cluster[1].http_url)
    assert (status, health["broker"]) == (503, "unreachable")
    await send(5)  # (Redis is down)
    await wait_until(lambda: len(heard) >= len(acked), 8)
    await restart
    await wait_until(lambda: all(server.server.chat.health(0)["broker"] == "ok" for server in cluster.servers), 10)
    await send(5)
    await wait_until(lambda: len(heard) >= len(acked), 8)
    await asyncio.sleep(0.5)
    listening.cancel()
    assert heard == acked
    assert (await _health(cluster[1].http_url))[0] == 200


@pytest.mark.process
async def test_a_postgresql_restart_loses_no_acked_message_and_stores_no_duplicate(tmp_path: Path) -> None:
    """PostgreSQL restarts under a sender that retries what was not acked with the same
    client_msg_id, as clients do: acks resume when it is back, and the room holds each
    acked message once."""
    from tests.conftest import RunningServer, make_config

    async with postgres_schema() as url:
        await migrate_database(url)
        server = await RunningServer(make_config(tmp_path, storage={"database": url},
                                                 limits={"messages_per_second": 1000,
                                                         "message_burst": 1000})).start()
        try:
            room = (await server.rooms(("team", [1])))[0]
            client = await server.connect(1)
            acked: dict[str, int] = {}

            async def send_until_acked(key: str) -> None:
                async with asyncio.timeout(60):
                    while True:
                        with contextlib.suppress(TimeoutError):
                            reply = await client.request({"type": "send_message", "room_id": room,
                                                          "content": key, "client_msg_id": key}, "message_ack",
                                                         timeout=10)
                            if reply["type"] == "message_ack":
                                acked[key] = reply["message"]["id"]
                                return
                        await asyncio.sleep(0.2)

            restart = asyncio.create_task(asyncio.to_thread(restart_postgres))
            for n in range(30):
                await send_until_acked(f"m{n}")
                await asyncio.sleep(0.05)
            await restart
            for n in range(30, 35):
                await send_until_acked(f"m{n}")
            rows = server.stored(room)
        finally:
            await server.close()
    assert len(acked) == 35
    contents = [content for _, _, content in rows]
    assert sorted(contents) == sorted(acked)  # each acked message once, nothing else
    assert [row_id for row_id, _, _ in rows] == sorted(acked.values())


def _cli_config(home: Path, database: str) -> Path:
    path = home / "unichatd.toml"
    path.write_text(f'[auth]\nsigning_key = "{SIGNING_KEY}"\n[storage]\ndatabase = "{database}"\n'
                    '[log]\nlevel = "warning"\n')
    return path


@pytest.mark.process
async def test_migrate_and_copy_move_a_sqlite_installation_to_postgresql(tmp_path: Path) -> None:
    """`unichatd migrate` prepares the PostgreSQL schema (a server or room command before it
    is refused, naming the fix); `unichatd copy` moves rooms, members, messages with their
    reactions and read markers; a second copy into the now non-empty database is refused."""
    from unichatd.models import NewMessage
    from unichatd.store import AdminStore, SqliteStore

    sqlite_home, postgres_home = tmp_path / "sqlite", tmp_path / "postgres"
    sqlite_home.mkdir()
    postgres_home.mkdir()
    database = sqlite_home / "unichatd.db"
    admin = AdminStore(database)
    room = admin.create_room("team", "group", [1, 2])
    admin.close()
    store = SqliteStore(database)
    await store.open()
    try:
        sent = [await store.append_message(NewMessage(room, 1, "user1", "", f"m{n}", None, f"k{n}"))
                for n in range(3)]
        await store.react(room, sent[0].message.id, 2, "🎉", True)
        await store.mark_read(room, 2, [sent[1].message.id])
    finally:
        await store.close()
    async with postgres_schema() as url:
        config = _cli_config(postgres_home, url)
        refused = await asyncio.to_thread(run_cli, "room", "list", "--config", str(config), cwd=postgres_home)
        assert refused.returncode == 1
        assert "unichatd migrate" in refused.stderr
        migrated = await asyncio.to_thread(run_cli, "migrate", "--config", str(config), cwd=postgres_home)
        assert migrated.returncode == 0, migrated.stderr
        copied = await asyncio.to_thread(run_cli, "copy", "--from", str(database), "--to", url, cwd=postgres_home)
        assert copied.returncode == 0, copied.stderr
        assert "copied 3 messages, 1 rooms" in copied.stderr
        again = await asyncio.to_thread(run_cli, "copy", "--from", str(database), "--to", url, cwd=postgres_home)
        assert again.returncode == 1
        assert "empty" in again.stderr
        listed = await asyncio.to_thread(run_cli, "room", "list", "--config", str(config), cwd=postgres_home)
        assert "team" in listed.stdout
        moved = PostgresStore(url)
        await moved.open()
        try:
            page, _ = await moved.history(room, before_id=None, after_id=None, limit=10)
            snapshot = await moved.load_rooms([room])
            resent = await moved.append_message(NewMessage(room, 1, "user1", "", "m0", None, "k0"))
            fresh = await moved.append_message(NewMessage(room, 1, "user1", "", "new", None, None))
        finally:
            await moved.close()
    assert [(m.id, m.content) for m in page] == [(s.message.id, s.message.content) for s in sent]
    assert [(r.emoji, r.user_ids) for r in page[0].reactions] == [("🎉", (2,))]
    assert snapshot.rooms[room].markers[2] == sent[1].message.id
    assert snapshot.rooms[room].unread[2] == 1
    assert (resent.created, resent.message.id) == (False, sent[0].message.id)  # (the idempotency keys came along)
    assert fresh.message.id > max(s.message.id for s in sent)
