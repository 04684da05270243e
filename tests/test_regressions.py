"""Regression tests: each pins a defect found in review (keepalive, batches, closing, catch-up, client).

Real sockets through tests/conftest.py; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.conftest import (
    SIGNING_KEY,
    Client,
    RunningServer,
    free_port,
    make_config,
    stalled_client,
    start_server,
    wait_until,
)
from unichatd.auth import mint_token
from unichatd.client import ChatClient
from unichatd.models import NewMessage
from unichatd.store import AdminStore, SqliteStore

pytestmark = pytest.mark.asyncio
WAIT = 5.0
BIG = "x" * 50000


def _message(room: int, sender: int, text: str) -> NewMessage:
    return NewMessage(room, sender, f"user{sender}", "", text, None, None)


def _room(db: Path, members: list[int]) -> int:
    admin = AdminStore(db)
    try:
        return admin.create_room("r", "group", members)
    finally:
        admin.close()


async def _eventually(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def _server_side(running: RunningServer, client: Client) -> Any:
    port = client.ws.local_address[1]
    assert running.server._ws is not None
    (conn,) = [c for c in running.server._ws.all_connections if c.remote_address[1] == port]
    return conn


# -- store.py: group commit ------------------------------------------------------------------


async def test_one_bad_op_does_not_fail_other_requests_in_the_batch(tmp_path: Path) -> None:
    """A user upsert that SQLite refuses (lone surrogate in a token's `name`) rolls back the
    whole group commit: another user's message submitted in the same tick fails with it."""
    db = tmp_path / "chat.db"
    room = _room(db, [1])
    store = SqliteStore(db)
    await store.open()
    try:
        good = store.append_message(_message(room, 1, "unrelated"))
        bad = store.upsert_user(2, "bad\ud800name", "")
        await asyncio.wait([good, bad], timeout=WAIT)  # type: ignore[type-var]  # (two result types)
        bad.exception()  # (expected to fail; retrieved)
        assert good.exception() is None, f"unrelated message failed: {good.exception()!r}"
    finally:
        await asyncio.wait_for(store.close(), WAIT)


async def test_close_does_not_hang_after_a_failed_batch(tmp_path: Path) -> None:
    """close() right after a submission whose batch fails: the writer loops back to wait on
    an event nobody sets again (the `continue` skips the closing check), so close() hangs."""
    db = tmp_path / "chat.db"
    _room(db, [1])
    store = SqliteStore(db)
    await store.open()
    bad = store.upsert_user(2, "bad\ud800name", "")
    try:
        async with asyncio.timeout(WAIT):  # (not wait_for: it would let the writer run first)
            await store.close()
    except TimeoutError:
        pytest.fail("Store.close() hung after a failed batch")
    finally:
        with contextlib.suppress(BaseException):
            bad.exception()
        writer = store._writer
        task = writer._task if writer is not None else None
        if task is not None and not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), 1) if task is not None else None
        store._writer = None  # (cancelled by the timeout above) close the connections
        await asyncio.wait_for(store.close(), WAIT)


# -- server.py: keepalive --------------------------------------------------------------------


async def test_one_paused_reader_does_not_stop_keepalive_for_everyone(tmp_path: Path) -> None:
    """A reader with more than websockets' 32 KiB write limit unsent (but under
    send_buffer_bytes) makes `await conn.ping()` wait on drain forever: the single
    heartbeat task stops, so a silent peer is never dropped with 1011."""
    config = make_config(
        tmp_path,
        server={"ping_interval": 1, "ping_timeout": 1, "send_buffer_bytes": 64 << 20},
        limits={"messages_per_second": 1000, "message_burst": 1000, "max_content_chars": 60000},
    )
    running = await start_server(config)
    clients: list[Client] = []
    try:
        room = await running.create_room("busy", [1, 2, 3])
        sender = await running.connect(1)
        clients.append(sender)
        stalled = await stalled_client(running, 2, room)
        clients.append(stalled)
        stalled_end = _server_side(running, stalled)
        for i in range(400):  # until the kernel buffers are full and the transport pauses
            ack = await sender.request({"type": "send_message", "room_id": room, "content": f"{i} {BIG}"},
                                       "message_ack")
            assert ack["type"] == "message_ack", ack
            if stalled_end.paused:
                break
        assert stalled_end.paused
        assert stalled_end.protocol.close_sent is None
        silent = await running.connect(3, ping_interval=None, close_timeout=1)
        clients.append(silent)
        far_end = _server_side(running, silent)
        silent.ws.transport.pause_reading()
        dropped = await _eventually(lambda: far_end.protocol.close_sent is not None, timeout=5.0)
        silent.ws.transport.resume_reading()
        assert dropped, "silent peer not dropped within 5 s (ping_interval=1, ping_timeout=1)"
        assert far_end.protocol.close_sent.code == 1011
    finally:
        for client in clients:
            client.ws.transport.resume_reading()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(), WAIT)
        await running.server.stop()


# -- session.py: spec conformance ------------------------------------------------------------


async def test_frame_rate_limited_error_echoes_request_id_and_room_id(tmp_path: Path) -> None:
    """protocol.md §2/§4: the error reply carries the frame's request_id (and room_id). The
    per-connection frame limit answers before parsing, so both are missing."""
    running = await start_server(make_config(tmp_path, limits={"frames_per_second": 0.01, "frame_burst": 3}))
    try:
        room = await running.create_room("r", [1])
        client = await running.connect(1)
        try:
            for i in range(3):
                await client.request({"type": "ping", "request_id": f"p{i}"}, "pong")
            await client.send({"type": "get_history", "room_id": room, "request_id": "h"})
            error = await client.recv_type("error")
            assert error["code"] == "rate_limited", error
            assert error.get("request_id") == "h", error
            assert error.get("room_id") == room, error
        finally:
            await client.close()
    finally:
        await running.server.stop()


async def test_binary_frames_are_rate_limited_too(tmp_path: Path) -> None:
    """protocol-notes: every frame of any type is limited per connection. Binary frames
    bypass the bucket and flood guard: 40 of them get 40 unsupported_frame replies and the
    connection is never limited or closed."""
    running = await start_server(make_config(tmp_path, limits={"frames_per_second": 0.01, "frame_burst": 5}))
    try:
        client = await running.connect(1)
        try:
            for _ in range(40):
                await client.send(b"\x00")
            codes: list[str] = []
            with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
                while len(codes) < 40:
                    codes.append((await client.recv(timeout=1.0))["code"])
            assert "rate_limited" in codes or client.ws.close_code == 1008, codes
        finally:
            await client.close()
    finally:
        await running.server.stop()


async def test_frames_after_server_close_are_not_executed(tmp_path: Path) -> None:
    """After the server closed a connection with 4001 `token expired`, frames the peer sends
    before answering the close are still handled: an expired session stores and broadcasts."""
    running = await start_server(make_config(tmp_path))
    try:
        room = await running.create_room("r", [1, 2])
        watcher = await running.connect(2)
        await watcher.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        ws = await asyncio.wait_for(websockets.connect(
            f"{running.url}?token={mint_token(SIGNING_KEY, 1, 'user1', ttl=1)}", close_timeout=1), WAIT)
        expired = Client(ws)
        try:
            assert (await expired.recv())["type"] == "connection_established"
            far_end = _server_side(running, expired)
            ws.transport.pause_reading()  # the close frame is not read, so not answered yet
            assert await _eventually(lambda: far_end.protocol.close_sent is not None, timeout=3.0)
            assert far_end.protocol.close_sent.code == 4001
            await expired.send({"type": "send_message", "room_id": room, "content": "after expiry"})
            with contextlib.suppress(TimeoutError):
                frame = await watcher.recv_type("new_message", timeout=1.0)
                pytest.fail(f"expired session's message was stored and broadcast: {frame}")
        finally:
            ws.transport.resume_reading()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), WAIT)
            await watcher.close()
    finally:
        await running.server.stop()


async def test_member_removed_during_catch_up_is_not_told_subscribed(tmp_path: Path) -> None:
    """A member removed while its subscribe catch-up read is in flight gets
    unsubscribed(removed_from_room) and then `subscribed` + history, though the hub no longer
    holds the subscription (and the client now believes it is subscribed)."""
    running = await start_server(make_config(tmp_path))
    try:
        room = await running.create_room("r", [1, 2])
        store = running.server.store
        original = store.history
        slow = asyncio.Event()

        async def slow_history(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("after_id") is not None and not slow.is_set():
                slow.set()
                await asyncio.sleep(1.5)  # long enough for the 0.5 s membership poll
            return await original(*args, **kwargs)

        store.history = slow_history  # type: ignore[method-assign]
        client = await running.connect(2)
        try:
            await client.send({"type": "subscribe_room", "room_id": room, "last_message_id": 0})
            async with asyncio.timeout(WAIT):
                await slow.wait()
            admin = running.admin()
            try:
                admin.remove_members(room, [2])
            finally:
                admin.close()
            frames = []
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(await client.recv(timeout=2.5))
            kinds = [f["type"] for f in frames if f["type"] != "room_updated"]
            if "unsubscribed" in kinds:
                assert "subscribed" not in kinds[kinds.index("unsubscribed"):], kinds
        finally:
            await client.close()
    finally:
        await running.server.stop()


# -- client.py --------------------------------------------------------------------------------


async def test_client_resubscribe_does_not_replay_old_history(tmp_path: Path) -> None:
    """subscribe(room) without last_message_id records 0 as the last id seen; after a
    reconnect the room is re-subscribed with last_message_id=0 and every old message of the
    room comes out of the iteration as a new_message."""
    config = make_config(tmp_path, server={"port": free_port()})
    running = await start_server(config)
    room = await running.create_room("ops", [1, 2])
    async with ChatClient(running.url, running.token(2), reconnect=False) as writer:
        old = [await writer.send(room, f"old {i}") for i in range(3)]
    reader = ChatClient(running.url, running.token(1), initial_backoff=0.05, max_backoff=0.2)
    await reader.connect()
    try:
        await reader.subscribe(room)
        await running.server.stop()
        running = await start_server(config)
        await wait_until(lambda: reader.reconnects >= 1)
        await asyncio.sleep(0.5)
        replayed = []
        while not reader._events.empty():
            event = await reader.next_event(timeout=1)
            if event["type"] == "new_message":
                replayed.append(event["message"]["id"])
        assert not replayed, f"old messages {replayed} (sent before subscribing: {[m['id'] for m in old]}) replayed"
    finally:
        await reader.close()
        await running.server.stop()


async def test_client_catch_up_paging_keeps_messages_older_than_a_live_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reconnect with more than 100 missed messages, the client pages on with
    get_history; a live new_message that arrives before the page moves the room's high-water
    mark past the page, and _emit_message then drops every paged message as 'already seen'."""
    original = SqliteStore.history
    first_page_after: list[int] = []

    async def slow_pages(self: SqliteStore, room_id: int, **kwargs: Any) -> Any:
        after = kwargs.get("after_id")
        if after is not None and first_page_after and after != first_page_after[0]:
            await asyncio.sleep(1.0)  # the page-on request: a live message overtakes it
        return await original(self, room_id, **kwargs)

    config = make_config(tmp_path, server={"port": free_port()})
    running = await start_server(config)
    room = await running.create_room("ops", [1, 2])
    reader = ChatClient(running.url, running.token(1), initial_backoff=0.05, max_backoff=0.2)
    await reader.connect()
    try:
        await reader.subscribe(room)
        async with ChatClient(running.url, running.token(2), reconnect=False) as writer:
            first = await writer.send(room, "first")
        async with asyncio.timeout(WAIT):
            while (await reader.next_event())["type"] != "new_message":
                pass
        await running.server.stop()
        admin = AdminStore(config.database_path)  # the daemon is down: a bulk import is allowed
        try:
            admin.import_messages((room, 2, f"missed {i}", int(time.time() * 1000)) for i in range(150))
        finally:
            admin.close()
        first_page_after.append(first["id"])
        monkeypatch.setattr(SqliteStore, "history", slow_pages)
        running = await start_server(config)
        await wait_until(lambda: reader.reconnects >= 1)
        await asyncio.sleep(0.3)  # catch-up history (100, has_more) is in; the page is pending
        async with ChatClient(running.url, running.token(2), reconnect=False) as writer:
            live = await writer.send(room, "live")
        seen: list[int] = []
        with contextlib.suppress(TimeoutError):
            while True:
                event = await reader.next_event(timeout=2.0)
                if event["type"] == "new_message":
                    seen.append(event["message"]["id"])
        expected = list(range(first["id"] + 1, first["id"] + 151)) + [live["id"]]
        missing = sorted(set(expected) - set(seen))
        assert not missing, f"{len(missing)} missed messages never came out of the iteration: {missing[:5]}..."
    finally:
        await reader.close()
        await running.server.stop()
