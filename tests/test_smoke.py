"""End-to-end smoke: two users chat in one room."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer

pytestmark = pytest.mark.asyncio


async def test_two_users_chat(server: RunningServer) -> None:
    """A message sent by one participant is acked to them and delivered to the other."""
    room = await server.create_room("general", [1, 2])
    alice, bob = await server.connect(1, "alice"), await server.connect(2, "bob")
    subscribed = await bob.request({"type": "subscribe_room", "room_id": room, "request_id": 7}, "subscribed")
    assert subscribed == {**subscribed, "type": "subscribed", "room_id": room, "request_id": 7}
    ack = await alice.request({"type": "send_message", "room_id": room, "content": "hi"}, "message_ack")
    assert ack["message"]["content"] == "hi"
    delivered = await bob.recv_type("new_message")
    assert delivered["message"] == ack["message"]
    await alice.close()
    await bob.close()
