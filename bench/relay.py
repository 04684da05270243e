"""The ceiling: a bare relay on unichatd's own stack (websockets + uvloop + orjson).

It speaks just enough of the protocol for ``unichatd bench`` and wsload — subscribe,
send, ack, broadcast — with no storage, no token check, no validation, no room lists.
Whatever unichatd does beyond this costs the difference the ``ceiling`` scenario shows.

    python bench/relay.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import signal
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[int, set[ServerConnection]] = {}
ids = itertools.count(1)


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def _user(path: str) -> tuple[int, str]:
    token = parse_qs(urlsplit(path).query).get("token", [""])[0]
    payload = token.split(".")[1] if token.count(".") == 2 else ""
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)) or b"{}")
    return int(claims.get("sub", 0)), str(claims.get("name", ""))


async def handler(ws: ServerConnection) -> None:
    user_id, username = _user(ws.request.path if ws.request else "")
    joined: set[int] = set()
    await ws.send(orjson.dumps({"type": "connection_established", "user_id": user_id,
                                "username": username, "timestamp": _timestamp()}).decode())
    try:
        async for raw in ws:
            frame: dict[str, Any] = orjson.loads(raw)
            kind = frame.get("type")
            if kind == "send_message":
                room = frame["room_id"]
                stamp = _timestamp()
                message = {"id": next(ids), "room_id": room, "content": frame["content"],
                           "sender": {"id": user_id, "username": username, "first_name": ""},
                           "timestamp": stamp, "reply_to": None, "message_type": "text",
                           "client_msg_id": frame.get("client_msg_id")}
                ws.protocol.send_text(orjson.dumps({"type": "message_ack", "room_id": room,
                                                    "client_msg_id": message["client_msg_id"],
                                                    "message": message, "timestamp": stamp}))
                ws.send_data()
                broadcast(rooms.get(room, ()), orjson.dumps(
                    {"type": "new_message", "room_id": room, "message": message, "timestamp": stamp}
                ), text=True)
            elif kind == "subscribe_room":
                room = frame["room_id"]
                rooms.setdefault(room, set()).add(ws)
                joined.add(room)
                await ws.send(orjson.dumps({"type": "subscribed", "room_id": room,
                                            "timestamp": _timestamp()}).decode())
            elif kind == "ping":
                await ws.send(orjson.dumps({"type": "pong", "timestamp": _timestamp()}).decode())
    finally:
        for room in joined:
            rooms[room].discard(ws)


async def main(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65536):
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8001)
    uvloop.run(main(parser.parse_args().port))
