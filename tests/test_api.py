"""The server API (api.md) over a real HTTP client: every endpoint, its status codes and
error shape, and its effect on live connections."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import websockets

from tests.conftest import WAIT, RunningServer, make_config
from unichatd.auth import verify_token

API_KEY = "a" * 43

pytestmark = pytest.mark.asyncio


class Api:
    """A bounded HTTP client for the API port."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, body: Any = None, *, key: str | None = API_KEY,
                   raw: bytes | None = None, params: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        data: Any = io.BytesIO(raw) if raw is not None else None  # (a large body as a stream, as aiohttp asks)
        if body is not None:
            data = orjson.dumps(body)
        async with asyncio.timeout(WAIT), self.session.request(
            method, self.base + path, data=data, headers=headers, params=params
        ) as response:
            text = await response.read()
            if response.status == 204:
                assert text == b""
                return 204, None
            assert response.content_type == "application/json", (response.status, text)
            return response.status, orjson.loads(text)


def assert_error(answer: tuple[int, Any], status: int, code: str, mentions: str = "") -> None:
    got, body = answer
    assert got == status, body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert mentions in body["error"]["message"], body
    assert "Traceback" not in body["error"]["message"]
    assert "SQL" not in body["error"]["message"]


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = make_config(tmp_path, api={"api_key": API_KEY, "port": 0}, limits={"max_content_chars": 100})
    server = RunningServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest_asyncio.fixture
async def api(running: RunningServer) -> AsyncIterator[Api]:
    assert running.server.api is not None
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{running.server.api.port}")


# -- authentication and errors ----------------------------------------------------------


async def test_every_request_needs_the_key_in_the_header(api: Api) -> None:
    assert_error(await api.call("GET", "/api/rooms/1", key=None), 401, "unauthorized")
    assert_error(await api.call("GET", "/api/rooms/1", key="b" * 43), 401, "unauthorized")
    assert_error(await api.call("GET", "/api/rooms/1", key=API_KEY[:-1]), 401, "unauthorized")
    # In the query string it is refused, with or without the header.
    assert_error(await api.call("GET", "/api/rooms/1", key=None, params={"api_key": API_KEY}), 401, "unauthorized")
    assert_error(await api.call("GET", "/api/rooms/1", params={"key": API_KEY}), 401, "unauthorized")
    assert_error(await api.call("GET", "/api/nothing", key=None), 401, "unauthorized")
    assert_error(await api.call("GET", "/api/nothing"), 404, "not_found")
    assert_error(await api.call("GET", "/api/rooms/abc"), 404, "not_found")
    assert_error(await api.call("GET", "/api/rooms/99999999999999999999"), 404, "not_found")
    status, document = await api.call("GET", "/api/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1")
    assert "/api/rooms/{id}/messages" in document["paths"]


async def test_bodies_are_checked_with_clear_errors(api: Api) -> None:
    assert_error(await api.call("POST", "/api/rooms", raw=b"{not json"), 400, "invalid_request", "JSON")
    assert_error(await api.call("POST", "/api/rooms", body=[1, 2]), 400, "invalid_request", "object")
    assert_error(await api.call("POST", "/api/rooms", body={}), 422, "invalid_request", "name")
    assert_error(await api.call("POST", "/api/rooms", body={"name": 5}), 422, "invalid_request", "name")
    assert_error(await api.call("POST", "/api/rooms", body={"name": "x", "member_ids": [0]}), 422,
                 "invalid_request", "member_ids")
    assert_error(await api.call("POST", "/api/rooms", body={"name": "x", "colour": "red"}), 422,
                 "invalid_request", "colour")
    assert_error(await api.call("POST", "/api/rooms", body={"name": "x", "room_type": "channel"}), 422,
                 "invalid_request", "room_type")
    assert_error(await api.call("POST", "/api/tokens", raw=b'{"user_id": 1, "name": "\\ud800"}'), 400,
                 "invalid_request")
    big = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    assert_error(await api.call("POST", "/api/rooms", raw=big), 413, "payload_too_large")
    status, body = await api.call("DELETE", "/api/rooms")
    assert status == 405
    assert body["error"]["code"] == "method_not_allowed"


# -- tokens and users ---------------------------------------------------------------------


async def test_a_token_minted_by_the_api_opens_a_connection(running: RunningServer, api: Api) -> None:
    status, body = await api.call("POST", "/api/tokens", {"user_id": 42, "name": "john", "first_name": "John",
                                                         "ttl": 600})
    assert status == 201
    assert body["expires_at"].endswith("Z")
    identity = verify_token(body["token"], running.key)
    assert (identity.user_id, identity.username, identity.first_name) == (42, "john", "John")
    assert body["expires_at"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(identity.expires_at)))
    assert_error(await api.call("POST", "/api/tokens", {"user_id": 42}), 422, "invalid_request", "name")
    assert_error(await api.call("POST", "/api/tokens", {"user_id": 42, "name": "j", "ttl": 0}), 422,
                 "invalid_request", "ttl")
    assert_error(await api.call("POST", "/api/tokens", {"user_id": "42", "name": "j"}), 422,
                 "invalid_request", "user_id")
    async with websockets.connect(f"{running.url}?token={body['token']}") as ws:
        hello = await asyncio.wait_for(ws.recv(), WAIT)
        assert '"connection_established"' in str(hello)


async def test_put_user_names_them_before_they_connect(running: RunningServer, api: Api) -> None:
    status, user = await api.call("PUT", "/api/users/7", {"username": "ada", "first_name": "Ada"})
    assert status == 200
    assert user == {"id": 7, "username": "ada", "first_name": "Ada", "online": False, "last_seen": None}
    status, room = await api.call("POST", "/api/rooms", {"name": "ops", "member_ids": [7]})
    assert status == 201
    assert room["participants"][0]["username"] == "ada"
    assert_error(await api.call("PUT", "/api/users/7", {"first_name": "Ada"}), 422, "invalid_request", "username")


# -- rooms ----------------------------------------------------------------------------------


async def test_a_room_created_with_members_appears_in_their_room_lists(running: RunningServer, api: Api) -> None:
    alice = await running.connect(1)
    status, room = await api.call("POST", "/api/rooms", {"name": "job 12", "member_ids": [1, 2], "owner_id": 1})
    assert status == 201
    assert room["name"] == "job 12"
    assert room["room_type"] == "group"
    assert room["owner_id"] == 1
    assert {p["id"] for p in room["participants"]} == {1, 2}
    assert "unread_count" not in room
    update = await alice.recv_type("room_updated")
    assert update["room_id"] == room["id"]
    rooms = await alice.request({"type": "get_room_list"}, "room_list")
    assert [r["id"] for r in rooms["rooms"]] == [room["id"]]
    status, fetched = await api.call("GET", f"/api/rooms/{room['id']}")
    assert status == 200
    assert fetched == room
    assert_error(await api.call("GET", "/api/rooms/999"), 404, "not_found")


async def test_patch_renames_and_gives_an_owner(running: RunningServer, api: Api) -> None:
    room_id = await running.create_room("old", [1, 2])
    alice = await running.connect(1)
    status, room = await api.call("PATCH", f"/api/rooms/{room_id}", {"name": "new", "owner_id": 3})
    assert status == 200
    assert room["name"] == "new"
    assert room["owner_id"] == 3
    assert 3 in {p["id"] for p in room["participants"]}  # (an owner is a participant)
    update = await alice.recv_type("room_updated")
    assert update["updates"]["name"] == "new"
    status, room = await api.call("PATCH", f"/api/rooms/{room_id}", {"owner_id": None})
    assert status == 200
    assert room["owner_id"] is None
    assert_error(await api.call("PATCH", "/api/rooms/999", {"name": "x"}), 404, "not_found")


async def test_members_added_and_removed_hear_it_at_once(running: RunningServer, api: Api) -> None:
    room_id = await running.create_room("r", [1])
    bob = await running.connect(2)
    status, room = await api.call("POST", f"/api/rooms/{room_id}/members", {"user_ids": [2, 3]})
    assert status == 200
    assert {p["id"] for p in room["participants"]} == {1, 2, 3}
    assert (await bob.recv_type("room_updated"))["room_id"] == room_id
    await bob.request({"type": "subscribe_room", "room_id": room_id}, "subscribed")
    assert (await api.call("DELETE", f"/api/rooms/{room_id}/members/2"))[0] == 204
    gone = await bob.recv_type("unsubscribed")
    assert gone["room_id"] == room_id
    assert gone["reason"] == "removed_from_room"
    denied = await bob.request({"type": "send_message", "room_id": room_id, "content": "hi"}, "error")
    assert denied["code"] == "access_denied"
    assert_error(await api.call("POST", "/api/rooms/999/members", {"user_ids": [2]}), 404, "not_found")
    assert_error(await api.call("DELETE", "/api/rooms/999/members/2"), 404, "not_found")
    assert_error(await api.call("POST", f"/api/rooms/{room_id}/members", {"user_ids": []}), 422,
                 "invalid_request", "user_ids")


async def test_a_direct_rooms_members_do_not_change(running: RunningServer, api: Api) -> None:
    status, room = await api.call("POST", "/api/rooms", {"name": "dm", "room_type": "direct", "member_ids": [1, 2]})
    assert status == 201
    assert room["room_type"] == "direct"
    again = await api.call("POST", "/api/rooms", {"name": "dm", "room_type": "direct", "member_ids": [2, 1]})
    assert again == (201, room)  # one direct room per pair
    assert_error(await api.call("POST", f"/api/rooms/{room['id']}/members", {"user_ids": [3]}), 409, "conflict")
    assert_error(await api.call("DELETE", f"/api/rooms/{room['id']}/members/1"), 409, "conflict")
    assert_error(await api.call("POST", "/api/rooms", {"name": "dm", "room_type": "direct", "member_ids": [1]}),
                 422, "invalid_request", "member_ids")
    # Refused whole: the name does not change either.
    assert_error(await api.call("PATCH", f"/api/rooms/{room['id']}", {"name": "ours", "owner_id": 1}), 409,
                 "conflict")
    assert (await api.call("GET", f"/api/rooms/{room['id']}"))[1]["name"] == room["name"]
    status, renamed = await api.call("PATCH", f"/api/rooms/{room['id']}", {"name": "ours"})
    assert status == 200
    assert renamed["name"] == "ours"


# -- messages ---------------------------------------------------------------------------------


async def test_a_system_message_is_committed_and_broadcast(running: RunningServer, api: Api) -> None:
    room_id = await running.create_room("r", [1, 2])
    alice = await running.connect(1)
    await alice.request({"type": "subscribe_room", "room_id": room_id}, "subscribed")
    status, message = await api.call("POST", f"/api/rooms/{room_id}/messages", {"content": "Job 12 was approved"})
    assert status == 201
    assert message["message_type"] == "system"
    assert message["sender"] is None
    assert running.stored(room_id) == [(message["id"], 0, "Job 12 was approved")]  # committed before the answer
    pushed = await alice.recv_type("new_message")
    assert pushed["message"] == message
    rooms = await alice.request({"type": "get_room_list"}, "room_list")
    assert rooms["rooms"][0]["unread_count"] == 1
    status, page = await api.call("GET", f"/api/rooms/{room_id}/messages")
    assert status == 200
    assert page == {"messages": [message], "has_more": False}


async def test_a_message_on_behalf_of_a_user_and_its_retry(running: RunningServer, api: Api) -> None:
    room_id = await running.create_room("r", [1, 2])
    bob = await running.connect(2)
    await bob.request({"type": "subscribe_room", "room_id": room_id}, "subscribed")
    body = {"content": "hello @user2", "sender_id": 1, "client_msg_id": "c-1"}
    status, first = await api.call("POST", f"/api/rooms/{room_id}/messages", body)
    assert status == 201
    assert first["sender"]["id"] == 1
    assert first["message_type"] == "text"
    assert first["mentions"] == [2]
    status, again = await api.call("POST", f"/api/rooms/{room_id}/messages", body)
    assert status == 200
    assert again["id"] == first["id"]
    assert len(running.stored(room_id)) == 1
    assert (await bob.recv_type("new_message"))["message"]["id"] == first["id"]
    await bob.no_frame(ignore=("room_updated", "presence"))
    status, reply = await api.call("POST", f"/api/rooms/{room_id}/messages",
                                   {"content": "re", "reply_to": first["id"]})
    assert status == 201
    assert reply["thread_root_id"] == first["id"]
    assert_error(await api.call("POST", f"/api/rooms/{room_id}/messages", {"content": "x", "sender_id": 9}),
                 422, "invalid_request", "sender_id")
    assert_error(await api.call("POST", f"/api/rooms/{room_id}/messages", {"content": "x", "reply_to": 999}),
                 422, "invalid_request", "reply_to")
    assert_error(await api.call("POST", f"/api/rooms/{room_id}/messages", {"content": "x" * 101}),
                 422, "invalid_request", "content")
    assert_error(await api.call("POST", f"/api/rooms/{room_id}/messages", {"content": "  "}),
                 422, "invalid_request", "content")
    assert_error(await api.call("POST", "/api/rooms/999/messages", {"content": "x"}), 404, "not_found")


async def test_history_pages_as_get_history(running: RunningServer, api: Api) -> None:
    room_id = await running.create_room("r", [1])
    ids = []
    for number in range(5):
        ids.append((await api.call("POST", f"/api/rooms/{room_id}/messages", {"content": f"m{number}"}))[1]["id"])
    status, page = await api.call("GET", f"/api/rooms/{room_id}/messages", params={"limit": "2"})
    assert status == 200
    assert [m["id"] for m in page["messages"]] == ids[3:]
    assert page["has_more"]
    status, page = await api.call("GET", f"/api/rooms/{room_id}/messages",
                                  params={"before_id": str(ids[3]), "limit": "2"})
    assert [m["id"] for m in page["messages"]] == ids[1:3]
    status, page = await api.call("GET", f"/api/rooms/{room_id}/messages", params={"after_id": str(ids[2])})
    assert [m["id"] for m in page["messages"]] == ids[3:]
    assert not page["has_more"]
    assert_error(await api.call("GET", f"/api/rooms/{room_id}/messages", params={"limit": "0"}), 422,
                 "invalid_request", "limit")
    assert_error(await api.call("GET", f"/api/rooms/{room_id}/messages", params={"limit": "101"}), 422,
                 "invalid_request", "limit")
    assert_error(await api.call("GET", f"/api/rooms/{room_id}/messages",
                                params={"before_id": "5", "after_id": "1"}), 422, "invalid_request")
    assert_error(await api.call("GET", f"/api/rooms/{room_id}/messages", params={"before_id": "x"}), 422,
                 "invalid_request", "before_id")
    assert_error(await api.call("GET", "/api/rooms/999/messages"), 404, "not_found")


# -- presence, notify, revoke ---------------------------------------------------------------------


async def test_presence_and_notify_reach_the_users_connections(running: RunningServer, api: Api) -> None:
    first, second = await running.connect(5), await running.connect(5)
    status, presence = await api.call("GET", "/api/presence", params={"user_ids": "5,6"})
    assert status == 200
    assert [(u["id"], u["online"]) for u in presence["users"]] == [(5, True)]
    status, body = await api.call("POST", "/api/users/5/notify", {"payload": {"kind": "job", "id": 12}})
    assert status == 200
    assert body == {"delivered": 2}
    for client in (first, second):
        frame = await client.recv_type("notification")
        assert frame["payload"] == {"kind": "job", "id": 12}
    assert (await api.call("POST", "/api/users/6/notify", {"payload": {}})) == (200, {"delivered": 0})
    assert_error(await api.call("POST", "/api/users/5/notify", {"payload": {"x": "y" * 17000}}), 422,
                 "invalid_request", "payload")
    assert_error(await api.call("POST", "/api/users/5/notify", {"payload": [1]}), 422, "invalid_request", "payload")
    assert_error(await api.call("GET", "/api/presence"), 422, "invalid_request", "user_ids")
    assert_error(await api.call("GET", "/api/presence", params={"user_ids": "1,,2"}), 422, "invalid_request")


async def test_revoke_closes_connections_and_refuses_older_tokens_after_a_restart(tmp_path: Path) -> None:
    running = RunningServer(make_config(tmp_path, api={"api_key": API_KEY, "port": 0}))
    await running.start()
    try:
        assert running.server.api is not None
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{running.server.api.port}")
            old_token = running.token(8)
            client = await running.connect(8)
            assert (await api.call("POST", "/api/users/8/revoke"))[0] == 204
            async with asyncio.timeout(WAIT):
                await client.ws.wait_closed()
            assert (client.ws.close_code, client.ws.close_reason) == (4001, "token revoked")
            _, minted = await api.call("POST", "/api/tokens", {"user_id": 8, "name": "user8"})
    finally:
        await running.close()

    again = RunningServer(running.config)
    await again.start()
    try:
        async with websockets.connect(f"{again.url}?token={old_token}") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
            assert (ws.close_code, ws.close_reason) == (4001, "token revoked")
        async with websockets.connect(f"{again.url}?token={minted['token']}") as ws:
            assert '"connection_established"' in str(await asyncio.wait_for(ws.recv(), WAIT))
            await ws.send(f'{{"type": "refresh_token", "token": "{old_token}"}}')
            refused = str(await asyncio.wait_for(ws.recv(), WAIT))
            assert '"error"' in refused
            assert "revoked" in refused
    finally:
        await again.close()


async def test_metrics_count_api_requests(running: RunningServer, api: Api) -> None:
    await api.call("GET", "/api/rooms/999")
    await api.call("GET", "/api/rooms/999", key=None)
    await api.call("PROPFIND", "/api/rooms/1")
    async with aiohttp.ClientSession() as session, session.get(f"{running.http_url}/metrics") as response:
        text = await response.text()
    assert 'unichatd_api_requests_total{method="GET",route="/api/rooms/{id}",status="404"} 1.0' in text
    assert 'status="401"} 1.0' in text
    assert 'method="other"' in text
    assert "unichatd_api_request_seconds_count 3.0" in text
    assert "unichatd_webhook_retries_total 0.0" in text
