"""One chat space, several servers (operations.md, "More than one process"): three
servers in this process, each with its own store connections, bus and memory — exactly
what separate processes have — on one PostgreSQL schema and one Redis prefix.  Clients
spread over them must see what one server shows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from tests.conftest import FAST_SENDS, Client, RunningServer, make_config, wait_until
from tests.services import postgres_schema, redis_prefix
from tests.test_webhooks import ALL_EVENTS, SECRET, Receiver
from unichatd.config import WebhookConfig
from unichatd.models import NewMessage
from unichatd.store.postgres import PostgresStore, migrate_database

pytestmark = pytest.mark.asyncio
WAIT = 5.0
API_KEY = "a" * 40


class Cluster:
    def __init__(self, servers: list[RunningServer], url: str) -> None:
        self.servers = servers
        self.url = url

    def __getitem__(self, index: int) -> RunningServer:
        return self.servers[index]

    async def room(self, name: str, members: list[int]) -> int:
        """A room made the CLI way, once every server knows it."""
        room_id = (await self.servers[0].rooms((name, members)))[0]
        for server in self.servers:
            await wait_until(partial(_knows, server, room_id, members), WAIT)
        return room_id

    async def agree(self, room_id: int, user_id: int, unread: int) -> None:
        """Wait until every server counts ``unread`` for the user."""
        for server in self.servers:
            await wait_until(partial(_unread_is, server, room_id, user_id, unread), WAIT)


def _knows(server: RunningServer, room_id: int, members: list[int]) -> bool:
    directory = server.server.chat.directory
    return all(directory.is_participant(room_id, member) for member in members)


def _unread_is(server: RunningServer, room_id: int, user_id: int, unread: int) -> bool:
    return server.server.chat.directory.unread(room_id, user_id) == unread


async def _cluster(tmp_path: Path, count: int = 3, webhooks: tuple[WebhookConfig, ...] = (),
                   **sections: dict[str, Any]) -> AsyncIterator[Cluster]:
    async with postgres_schema() as url, redis_prefix() as prefix:
        await migrate_database(url)
        servers = []
        try:
            for index in range(count):
                home = tmp_path / f"server{index}"
                home.mkdir()
                config = make_config(home, **{"limits": FAST_SENDS, **sections}, storage={"database": url},
                                     cluster={"broker": "redis://127.0.0.1:6379/0", "prefix": prefix})
                config = dataclasses.replace(config, webhooks=webhooks)
                servers.append(await RunningServer(config, name_format="{}").start())
            yield Cluster(servers, url)
        finally:
            for server in servers:
                await server.close()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async for running in _cluster(tmp_path):
        yield running


async def _subscribed(client: Client, room_id: int) -> None:
    await client.request({"type": "subscribe_room", "room_id": room_id}, "subscribed")


async def _next(client: Client, kind: str, **match: Any) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            frame = await client.recv()
            if frame["type"] == kind and all(frame.get(key) == value for key, value in match.items()):
                return frame


async def _send(client: Client, room_id: int, content: str) -> dict[str, Any]:
    ack = await client.request({"type": "send_message", "room_id": room_id, "content": content}, "message_ack")
    assert ack["type"] == "message_ack", ack
    return ack["message"]  # type: ignore[no-any-return]


def _unread(server: RunningServer, room_id: int, user_id: int) -> int:
    return server.server.chat.directory.unread(room_id, user_id)


async def test_messages_reach_subscribers_on_every_server_in_commit_order(cluster: Cluster) -> None:
    """Senders on all three servers, readers on all three: every reader hears every
    message once, in id order, and ids follow the order of the acks."""
    room = await cluster.room("team", [1, 2, 3])
    readers = [await cluster[index].connect(user) for index, user in enumerate((1, 2, 3))]
    senders = [await cluster[index].connect(user) for index, user in enumerate((2, 3, 1))]
    for client in readers:
        await _subscribed(client, room)
    sent = [await _send(sender, room, f"{round_}") for round_ in range(5) for sender in senders]
    ids = [message["id"] for message in sent]
    assert ids == sorted(ids)
    for client in readers:
        heard = [(await _next(client, "new_message"))["message"]["id"] for _ in ids]
        assert heard == ids


async def test_unread_counts_and_read_markers_agree_on_every_server(cluster: Cluster) -> None:
    """Bob is connected to two servers; messages come from the other two; his read marker,
    moved on one server, moves his counts on all three — exact, never off by one."""
    room = await cluster.room("team", [1, 2, 3])
    alice, carol = await cluster[0].connect(1), await cluster[2].connect(3)
    bob_here, bob_there = await cluster[1].connect(2), await cluster[2].connect(2)
    messages = [await _send(alice if n % 2 else carol, room, f"m{n}") for n in range(6)]
    await cluster.agree(room, 2, 6)
    update = await _next(bob_there, "room_updated", room_id=room)
    assert update["updates"]["unread_count"] >= 1
    await bob_here.request({"type": "mark_read", "room_id": room, "message_ids": [messages[3]["id"]]},
                           "read_marked")
    await cluster.agree(room, 2, 2)
    await _next(bob_there, "room_updated", room_id=room)
    listed = await bob_there.request({"type": "get_room_list"}, "room_list")
    assert [r["unread_count"] for r in listed["rooms"] if r["id"] == room] == [2]
    await _send(alice, room, "one more")
    await cluster.agree(room, 2, 3)
    assert [_unread(server, room, 1) for server in cluster.servers] == [3, 3, 3]  # (carol's three)


async def test_edits_reactions_deletes_and_threads_reach_every_server(cluster: Cluster) -> None:
    room = await cluster.room("team", [1, 2])
    alice, bob = await cluster[0].connect(1), await cluster[1].connect(2)
    for client in (alice, bob):
        await _subscribed(client, room)
    message = await _send(alice, room, "first")
    await _next(bob, "new_message")
    await alice.request({"type": "edit_message", "room_id": room, "message_id": message["id"],
                         "content": "first!"}, "message_updated")
    assert (await _next(bob, "message_updated"))["message"]["content"] == "first!"
    await bob.request({"type": "add_reaction", "room_id": room, "message_id": message["id"], "emoji": "👍"},
                      "reactions_updated")
    reacted = await _next(alice, "reactions_updated")
    assert [(r["emoji"], r["user_ids"]) for r in reacted["reactions"]] == [("👍", [2])]
    await bob.request({"type": "send_message", "room_id": room, "content": "reply", "reply_to": message["id"]},
                      "message_ack")
    thread = await _next(alice, "thread_updated")
    assert (thread["root_id"], thread["reply_count"]) == (message["id"], 1)
    await alice.request({"type": "delete_message", "room_id": room, "message_id": message["id"]},
                        "message_deleted")
    assert (await _next(bob, "message_deleted"))["message_id"] == message["id"]


async def test_typing_crosses_servers_and_expires_without_its_origin(cluster: Cluster, monkeypatch: Any) -> None:
    import unichatd.chat

    monkeypatch.setattr(unichatd.chat, "TYPING_TIMEOUT", 1.0)
    room = await cluster.room("team", [1, 2])
    alice, bob = await cluster[0].connect(1), await cluster[1].connect(2)
    await _subscribed(bob, room)
    await alice.send({"type": "typing", "room_id": room})
    started = await _next(bob, "typing", user_id=1)
    assert started["is_typing"] is True
    await alice.send({"type": "stop_typing", "room_id": room})
    assert (await _next(bob, "typing", user_id=1))["is_typing"] is False
    # The origin's timer is gone with it; bob's server expires the typing on its own.
    await alice.send({"type": "typing", "room_id": room})
    await _next(bob, "typing", user_id=1, is_typing=True)
    cluster[0].server.chat._typing.clear()  # noqa: SLF001  (as if alice's server had died)
    stopped = await _next(bob, "typing", user_id=1)
    assert stopped["is_typing"] is False


async def test_presence_counts_a_user_online_while_any_server_has_them(cluster: Cluster, monkeypatch: Any) -> None:
    import unichatd.presence

    monkeypatch.setattr(unichatd.presence, "GRACE", 0.3)
    await cluster.room("pair", [1, 2])
    watcher = await cluster[2].connect(1)
    on_a = await cluster[0].connect(2)
    assert (await _next(watcher, "presence", user_id=2))["online"] is True
    on_b = await cluster[1].connect(2)
    await on_a.close()
    await asyncio.sleep(1.0)  # (past the grace: server 0 has told the others it has no connection of user 2)
    for server in cluster.servers:
        assert server.server.chat.presence.is_online(2)
    await watcher.no_frame(within=0.3, ignore=("room_updated",))
    await on_b.close()
    offline = await _next(watcher, "presence", user_id=2)
    assert offline["online"] is False
    assert offline["last_seen"] is not None


async def test_a_process_that_stops_beating_takes_its_users_offline(cluster: Cluster, monkeypatch: Any) -> None:
    import unichatd.cluster

    monkeypatch.setattr(unichatd.cluster, "PEER_TIMEOUT", 1.5)
    await cluster.room("pair", [1, 2])
    watcher = await cluster[2].connect(1)
    await cluster[0].connect(2)
    await _next(watcher, "presence", user_id=2, online=True)
    # Server 0 falls silent without a goodbye (as a process killed with -9 would).
    silent = cluster[0].server.chat.cluster
    assert silent is not None
    silent.bus.publish = lambda event: None  # type: ignore[method-assign]
    offline = await asyncio.wait_for(_next(watcher, "presence", user_id=2, online=False), 8)
    assert offline["last_seen"] is not None


async def test_a_commit_nobody_published_reaches_live_subscribers_within_5_seconds(cluster: Cluster) -> None:
    """A process killed between its commit and its publish: the message is in the database
    and no event ever comes.  Every server finds the gap and fans the message out from the
    database, then goes on in order; the unread counts take it in."""
    room = await cluster.room("team", [1, 2, 3])
    watchers = [await cluster[index].connect(user) for index, user in enumerate((1, 2, 3))]
    for client in watchers:
        await _subscribed(client, room)
    silent = PostgresStore(cluster.url)  # a writer on the database that tells no one
    await silent.open()
    try:
        lost = await asyncio.wait_for(silent.append_message(NewMessage(room, 3, "3", "", "lost in transit", None,
                                                                       None)), WAIT)
    finally:
        await silent.close()
    for client in watchers:
        arrived = await asyncio.wait_for(_next(client, "new_message"), 5)
        assert arrived["message"]["id"] == lost.message.id
    after = await _send(watchers[0], room, "and then")
    for client in watchers:
        assert (await _next(client, "new_message"))["message"]["id"] == after["id"]
    await cluster.agree(room, 2, 2)


async def test_send_limits_are_shared_by_the_servers(tmp_path: Path) -> None:
    """A burst of 4: two sends through one server and two through another use it up; the
    fifth is refused wherever it goes."""
    limits = {"messages_per_second": 0.01, "message_burst": 4}
    async for cluster in _cluster(tmp_path, 2, limits=limits):
        room = await cluster.room("team", [1])
        here, there = await cluster[0].connect(1), await cluster[1].connect(1)
        for client in (here, there, here, there):
            await _send(client, room, "within the burst")
        refused = await there.request({"type": "send_message", "room_id": room, "content": "over"}, "message_ack")
        assert (refused["type"], refused["code"]) == ("error", "rate_limited")


def _post(server: RunningServer, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    api = server.server.api
    assert api is not None
    request = urllib.request.Request(f"http://127.0.0.1:{api.port}{path}", method="POST",
                                     data=orjson.dumps(body or {}),
                                     headers={"Authorization": f"Bearer {API_KEY}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as answer:  # noqa: S310  (127.0.0.1)
            raw = answer.read()
            return answer.status, orjson.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


async def test_the_server_api_acts_on_connections_of_every_server(tmp_path: Path) -> None:
    """Through one server's API: a notification counts and reaches the user's connections
    on all of them; a new member is live on the others; a revocation closes them all."""
    async for cluster in _cluster(tmp_path, 3, api={"api_key": API_KEY, "port": 0}):
        room = await cluster.room("team", [1])
        devices = [await cluster[index].connect(2) for index in range(3)]
        status, body = await asyncio.to_thread(_post, cluster[0], "/api/users/2/notify", {"payload": {"n": 1}})
        assert (status, body) == (200, {"delivered": 3})
        for device in devices:
            assert (await _next(device, "notification"))["payload"] == {"n": 1}
        status, _ = await asyncio.to_thread(_post, cluster[0], f"/api/rooms/{room}/members", {"user_ids": [2]})
        assert status in (200, 201, 204)
        await _next(devices[2], "room_updated", room_id=room)
        await devices[2].request({"type": "subscribe_room", "room_id": room}, "subscribed")
        status, _ = await asyncio.to_thread(_post, cluster[0], "/api/users/2/revoke")
        assert status == 204
        for device in devices:
            with contextlib.suppress(Exception):
                while True:
                    await device.recv(timeout=WAIT)
            assert device.ws.close_code == 4001


async def test_healthz_is_503_while_the_broker_cannot_be_reached_and_sends_still_commit(tmp_path: Path) -> None:
    async with postgres_schema() as url:
        await migrate_database(url)
        config = make_config(tmp_path, storage={"database": url},
                             cluster={"broker": "redis://127.0.0.1:1/0", "prefix": "unichatd-test-nowhere"})
        server = await RunningServer(config).start()
        try:
            def health() -> tuple[int, Any]:
                try:
                    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=WAIT) as answer:  # noqa: S310
                        return answer.status, orjson.loads(answer.read())
                except urllib.error.HTTPError as error:
                    return error.code, orjson.loads(error.read())

            status, body = await asyncio.to_thread(health)
            assert status == 503
            assert (body["status"], body["database"], body["broker"]) == ("unavailable", "ok", "unreachable")
            room = (await server.rooms(("team", [1])))[0]
            client = await server.connect(1)
            sent = await _send(client, room, "committed without Redis")
            page = await client.request({"type": "get_history", "room_id": room}, "history")
            assert [m["id"] for m in page["messages"]] == [sent["id"]]
        finally:
            await server.close()


def _received(receiver: Receiver, kind: str, count: int) -> bool:
    return len(receiver.events(kind)) >= count


async def test_each_webhook_event_is_delivered_once_whatever_the_number_of_servers(tmp_path: Path) -> None:
    """Every server runs the webhook deliverer, but only the one holding the database's
    lock delivers: the receiver gets each event once."""
    receiver = await Receiver().start()
    try:
        hooks = (WebhookConfig(receiver.url, tuple(ALL_EVENTS), SECRET),)
        async for cluster in _cluster(tmp_path, 3, webhooks=hooks):
            room = await cluster.room("team", [1, 2])
            senders = [await cluster[index].connect(1) for index in range(3)]
            sent = [await _send(sender, room, f"from server {index}") for index, sender in enumerate(senders)]
            await wait_until(partial(_received, receiver, "message_created", len(sent)), 10)
            await asyncio.sleep(1.5)  # (a second deliverer would have sent its copies by now)
            created = [event["data"]["id"] for event in receiver.events("message_created")]
            assert created == [message["id"] for message in sent]
            assert len(receiver.events("room_created")) == 1
    finally:
        await receiver.stop()
