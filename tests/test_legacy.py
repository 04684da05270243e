"""The endpoints kept for clients built one socket per room (api.md, last section)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import orjson
import pytest
import websockets

from tests.conftest import WAIT, Client, RunningServer, make_config

pytestmark = pytest.mark.asyncio
API_KEY = "b" * 40


async def open_client(url: str) -> Client:
    return Client(await asyncio.wait_for(websockets.connect(url), WAIT))


async def closed_with(url: str) -> tuple[int | None, str | None, list[str]]:
    """Open ``url`` and read until the server closes: (code, reason, frame types seen)."""
    seen = []
    async with websockets.connect(url) as ws:
        try:
            while True:
                seen.append(orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"])
        except websockets.ConnectionClosed:
            return ws.close_code, ws.close_reason, seen


async def test_the_per_room_endpoint_is_subscribed_to_its_room(server: RunningServer) -> None:
    room_id, other = await server.rooms(("r", [1, 2]), ("o", [1, 2]))
    legacy = await open_client(f"ws://127.0.0.1:{server.server.port}/ws/chat/{room_id}/?token={server.token(1)}")
    server.clients.append(legacy)
    assert (await legacy.recv())["type"] == "connection_established"
    subscribed = await legacy.recv()
    assert subscribed == {"type": "subscribed", "room_id": room_id, "timestamp": subscribed["timestamp"]}
    bob = await server.connect(2)
    await bob.request({"type": "send_message", "room_id": room_id, "content": "hello"}, "message_ack")
    assert (await legacy.recv_type("new_message"))["message"]["content"] == "hello"
    # Everything else works as on /ws/chat/: another room, by request.
    await legacy.request({"type": "subscribe_room", "room_id": other}, "subscribed")
    await bob.request({"type": "send_message", "room_id": other, "content": "there"}, "message_ack")
    assert (await legacy.recv_type("new_message"))["room_id"] == other
    # Without the trailing slash too.
    plain = await open_client(f"ws://127.0.0.1:{server.server.port}/ws/chat/{room_id}?token={server.token(2)}")
    server.clients.append(plain)
    assert (await plain.recv())["type"] == "connection_established"
    assert (await plain.recv_type("subscribed"))["room_id"] == room_id


async def test_a_room_the_user_may_not_see_closes_with_4003(server: RunningServer) -> None:
    room_id = await server.create_room("r", [1])
    base = f"ws://127.0.0.1:{server.server.port}/ws/chat"
    assert await closed_with(f"{base}/{room_id}/?token={server.token(2)}") == (4003, "access denied", [])
    assert await closed_with(f"{base}/999/?token={server.token(1)}") == (4003, "access denied", [])
    assert await closed_with(f"{base}/{room_id}/?token=bad") == (4001, "authentication required", [])


async def test_the_notifications_endpoint_carries_notifications_only(tmp_path: Path) -> None:
    running = RunningServer(make_config(tmp_path, api={"api_key": API_KEY, "port": 0}))
    await running.start()
    try:
        room_id = await running.create_room("r", [1, 2])
        base = f"ws://127.0.0.1:{running.server.port}/ws/notifications"
        listener = await open_client(f"{base}/1/?token={running.token(1)}")
        running.clients.append(listener)
        assert (await listener.recv())["type"] == "connection_established"
        bob = await running.connect(2)
        await bob.request({"type": "send_message", "room_id": room_id, "content": "not for the listener"},
                          "message_ack")
        assert running.server.api is not None
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{running.server.api.port}/api/users/1/notify",
            json={"payload": {"job": 12}}, headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 200
            assert await response.json() == {"delivered": 1}
        frame = await listener.recv()
        assert frame["type"] == "notification"
        assert frame["payload"] == {"job": 12}
        await listener.send({"type": "get_room_list"})  # (requests are not taken here)
        await listener.no_frame(ignore=())
        flooder = await open_client(f"{base}/1/?token={running.token(1)}")
        assert (await flooder.recv())["type"] == "connection_established"
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(1000):
                await flooder.send({"type": "ping"})
        async with asyncio.timeout(WAIT):
            await flooder.ws.wait_closed()
        assert (flooder.ws.close_code, flooder.ws.close_reason) == (1008, "rate limit exceeded")
        assert await closed_with(f"{base}/2/?token={running.token(1)}") == (4003, "access denied", [])
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{running.server.api.port}/api/users/1/revoke",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 204
        async with asyncio.timeout(WAIT):
            await listener.ws.wait_closed()
        assert (listener.ws.close_code, listener.ws.close_reason) == (4001, "token revoked")
    finally:
        await running.close()
