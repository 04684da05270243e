"""The script client (unichatd.client) and the `send` / `tail` commands built on it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, make_config, run_cli, start_server, write_config
from unichatd.auth import mint_token
from unichatd.client import ChatClient, ClientRequestError, ConnectionLost
from unichatd.store import AdminStore


@pytest.mark.asyncio
async def test_send_waits_for_the_ack_and_returns_the_stored_message(tmp_path: Path) -> None:
    """send() returns the acknowledged message, which history then holds."""
    running = await start_server(make_config(tmp_path))
    try:
        room = await running.create_room("ops", [1])
        async with ChatClient(running.url, running.token(1, "bot")) as chat:
            message = await chat.send(room, "deploy finished")
            page = await chat.history(room)
        assert message["content"] == "deploy finished"
        assert message["client_msg_id"]
        assert [m["id"] for m in page["messages"]] == [message["id"]]
    finally:
        await running.server.stop()


@pytest.mark.asyncio
async def test_request_errors_raise_with_the_code(tmp_path: Path) -> None:
    """An error reply raises ClientRequestError carrying the protocol's code."""
    running = await start_server(make_config(tmp_path))
    try:
        async with ChatClient(running.url, running.token(1)) as chat:
            with pytest.raises(ClientRequestError) as caught:
                await chat.send(99, "nobody here")
        assert caught.value.code == "access_denied"
    finally:
        await running.server.stop()


@pytest.mark.asyncio
async def test_iteration_yields_live_messages_of_subscribed_rooms(tmp_path: Path) -> None:
    """Messages sent by others come out of the async iteration as new_message events."""
    running = await start_server(make_config(tmp_path))
    try:
        room = await running.create_room("ops", [1, 2])
        async with ChatClient(running.url, running.token(1)) as reader, \
                ChatClient(running.url, running.token(2)) as writer:
            await reader.subscribe(room)
            sent = await writer.send(room, "ping from 2")
            event = await reader.next_event(timeout=5)
            while event["type"] != "new_message":
                event = await reader.next_event(timeout=5)
        assert event["message"]["id"] == sent["id"]
    finally:
        await running.server.stop()


@pytest.mark.asyncio
async def test_reconnects_after_a_restart_and_catches_up_once_each(tmp_path: Path) -> None:
    """After a server restart the client reconnects and yields the messages sent meanwhile, once each."""
    config = make_config(tmp_path, server={"port": free_port()})
    running = await start_server(config)
    room = await running.create_room("ops", [1, 2])
    reader = ChatClient(running.url, running.token(1), initial_backoff=0.05, max_backoff=0.2)
    await reader.connect()
    try:
        await reader.subscribe(room)
        async with ChatClient(running.url, running.token(2), reconnect=False) as writer:
            before = await writer.send(room, "before")
        await running.server.stop()
        running = await start_server(config)
        async with ChatClient(running.url, running.token(2), reconnect=False) as writer:
            missed = [await writer.send(room, f"missed {i}") for i in range(3)]
        seen: list[int] = []
        async with asyncio.timeout(10):
            while len(seen) < 4:
                event = await reader.next_event()
                if event["type"] == "new_message":
                    seen.append(event["message"]["id"])
        await asyncio.sleep(0.3)
        while not reader._events.empty():  # nothing further, in particular no duplicate
            event = await reader.next_event(timeout=1)
            assert event["type"] != "new_message", event
        assert seen == [before["id"], *(m["id"] for m in missed)]
        assert reader.reconnects == 1
    finally:
        await reader.close()
        await running.server.stop()


@pytest.mark.asyncio
async def test_edit_delete_react_thread_search_and_changes(tmp_path: Path) -> None:
    """The v1.1 message requests, each through its ChatClient method."""
    running = await start_server(make_config(tmp_path))
    try:
        room = await running.create_room("ops", [1, 2])
        async with ChatClient(running.url, running.token(1, "bot")) as chat:
            root = await chat.send(room, "deploy started")
            edited = await chat.edit(room, root["id"], "deploy started on host-3")
            assert edited["edited_at"] is not None
            assert await chat.react(room, root["id"], "🚀") == [{"emoji": "🚀", "count": 1, "user_ids": [1]}]
            assert await chat.react(room, root["id"], "🚀", add=False) == []
            reply = await chat.send(room, "deploy finished", reply_to=root["id"])
            thread = await chat.thread(room, root["id"])
            assert [m["id"] for m in thread["messages"]] == [reply["id"]]
            found = await chat.search("host", room_id=room)
            assert [m["id"] for m in found["messages"]] == [root["id"]]
            deleted = await chat.delete(room, reply["id"])
            assert deleted["message_id"] == reply["id"]
            changes = await chat.changes(room, root["revision"])
            assert {m["id"] for m in changes["messages"]} == {root["id"], reply["id"]}
            with pytest.raises(ClientRequestError) as caught:
                await chat.edit(room, reply["id"], "again")
            assert caught.value.code == "not_found"
    finally:
        await running.server.stop()


@pytest.mark.asyncio
async def test_changes_missed_while_away_come_out_after_a_reconnect(tmp_path: Path) -> None:
    """An edit and a reaction made while the client was disconnected come out as
    message_updated events once it reconnects (subscribe_room with since_revision)."""
    config = make_config(tmp_path, server={"port": free_port()})
    running = await start_server(config)
    room = await running.create_room("ops", [1, 2])
    reader = ChatClient(running.url, running.token(1), initial_backoff=0.05, max_backoff=0.2)
    await reader.connect()
    try:
        await reader.subscribe(room)
        async with ChatClient(running.url, running.token(2), reconnect=False) as writer:
            first = await writer.send(room, "first")
        async with asyncio.timeout(5):
            while (await reader.next_event())["type"] != "new_message":
                pass
        await running.server.stop()
        running = await start_server(config)
        async with ChatClient(running.url, running.token(2), reconnect=False) as writer:
            await writer.edit(room, first["id"], "first, edited")
            await writer.react(room, first["id"], "👍")
        async with asyncio.timeout(10):
            event = await reader.next_event()
            while event["type"] != "message_updated":
                event = await reader.next_event()
        assert event["message"]["content"] == "first, edited"
        assert event["message"]["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [2]}]
        assert reader.reconnects == 1
    finally:
        await reader.close()
        await running.server.stop()


@pytest.mark.asyncio
async def test_refused_token_is_a_permanent_failure(tmp_path: Path) -> None:
    """A 4001 close is reported as ConnectionLost instead of retried forever."""
    running = await start_server(make_config(tmp_path))
    try:
        bad = mint_token("x" * 40, 1, "mallory")
        with pytest.raises(ConnectionLost) as caught:
            await ChatClient(running.url, bad).connect()
        assert caught.value.code == 4001
    finally:
        await running.server.stop()


@pytest.mark.process
def test_cli_send_prints_the_id_and_tail_prints_the_message(tmp_path: Path) -> None:
    """`unichatd send` posts and prints the id; `unichatd tail --since 0 --json` prints it."""
    port = free_port()
    config = write_config(tmp_path, port)
    admin = AdminStore(tmp_path / "chat.db")
    room = admin.create_room("ops", "group", [1, 2])
    admin.close()
    server = subprocess.Popen([sys.executable, "-m", "unichatd", "serve", "--config", str(config)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = None
        for _ in range(100):
            status = run_cli("status", "--config", str(config), cwd=tmp_path)
            if status.returncode == 0:
                break
            time.sleep(0.1)
        assert status is not None
        assert status.returncode == 0
        sent = run_cli("send", str(room), "--as", "1", "build 42 is green", "--config", str(config),
                       cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        message_id = int(sent.stdout.strip())
        tail = subprocess.Popen(
            [sys.executable, "-m", "unichatd", "tail", str(room), "--as", "2", "--since", "0", "--json",
             "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert tail.stdout is not None
            line = tail.stdout.readline()
        finally:
            tail.kill()
            tail.communicate(timeout=10)
        assert f'"id":{message_id}' in line
        assert "build 42 is green" in line
        refused = run_cli("send", "999", "--as", "1", "x", "--config", str(config), cwd=tmp_path)
        assert refused.returncode == 1
        assert "access_denied" in refused.stderr
    finally:
        server.terminate()
        server.communicate(timeout=15)
