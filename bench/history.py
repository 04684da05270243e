"""The ``history`` scenario: history pages, room lists and a catch-up on a big database."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from unichatd.auth import mint_token
from unichatd.store import AdminStore

from .harness import BENCH_KEY, BenchServer, ClientReport, Job, StartGate, percentiles, run_clients


def build_history_db(path: Path, *, big_room_messages: int, list_rooms: int, catchup_messages: int) -> int:
    """Room 1: the big room; rooms 2..list_rooms+1: user 1's room list; then the catch-up room."""
    admin = AdminStore(path)
    admin.create_room("big", "group", [1, 2])
    for index in range(list_rooms):
        admin.create_room(f"list-{index}", "group", [1, 3])
    catchup_room = admin.create_room("catch-up", "group", [1, 2])
    now = time.time_ns() // 1_000_000

    def rows() -> Iterator[tuple[int, int, str, int]]:
        for seq in range(big_room_messages):
            yield (1, 1 + seq % 2, f"message {seq} " + "x" * 40, now)
        for room in range(2, list_rooms + 2):
            yield (room, 3, f"hello room {room}", now + room)
        for seq in range(catchup_messages):
            yield (catchup_room, 2, f"missed {seq}", now)

    admin.import_messages(rows())
    admin.close()
    return catchup_room


async def _history_client(job: dict[str, Any], gate: StartGate) -> ClientReport:
    import websockets

    report = ClientReport()
    await gate.ready_and_wait()
    token = mint_token(job["key"], 1, "u1", ttl=3600)
    async with websockets.connect(f"{job['url']}?token={token}", compression=None, max_size=None) as ws:
        await ws.recv()

        async def call(frame: dict[str, Any], kind: str) -> dict[str, Any]:
            await ws.send(orjson.dumps(frame).decode())
            while True:
                reply: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if reply["type"] in (kind, "error"):
                    if reply["type"] == "error":
                        report.errors[reply["code"]] += 1
                    return reply

        rng = random.Random(7)
        page_ms: list[float] = []
        top = job["big_room_top"]
        for _ in range(job["pages"]):
            before = rng.randint(100, top)
            started = time.perf_counter()
            await call({"type": "get_history", "room_id": 1, "before_id": before, "limit": 50}, "history")
            page_ms.append((time.perf_counter() - started) * 1000)
        list_ms: list[float] = []
        for _ in range(job["lists"]):
            started = time.perf_counter()
            reply = await call({"type": "get_room_list"}, "room_list")
            list_ms.append((time.perf_counter() - started) * 1000)
        report.extra["rooms_in_list"] = len(reply.get("rooms", []))
        # Catch-up: subscribe with the last id seen before the gap, then page on until has_more is false.
        started = time.perf_counter()
        reply = await call({"type": "subscribe_room", "room_id": job["catchup_room"],
                            "last_message_id": job["catchup_after"]}, "history")
        received = len(reply["messages"])
        while reply.get("has_more"):
            reply = await call({"type": "get_history", "room_id": job["catchup_room"],
                                "after_id": reply["messages"][-1]["id"], "limit": 100}, "history")
            received += len(reply["messages"])
        report.extra["catchup_ms"] = (time.perf_counter() - started) * 1000
        report.extra["catchup_received"] = received
        report.ack_ms, report.delivery_ms = page_ms, list_ms
    return report


def scenario_history(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="unichatd-bench-") as tmp:
        server = BenchServer(Path(tmp), relay=False, cpu=args.server_cpu)
        built = time.perf_counter()
        catchup_room = build_history_db(server.db_path, big_room_messages=args.messages,
                                        list_rooms=args.list_rooms, catchup_messages=args.catchup)
        build_seconds = time.perf_counter() - built
        admin = server.admin()
        first_missed = admin.first_message_id(catchup_room)
        admin.close()
        server.start()
        try:
            job = Job({"url": server.url, "key": BENCH_KEY, "pages": args.pages, "lists": args.lists,
                        "big_room_top": args.messages, "catchup_room": catchup_room,
                        "catchup_after": (first_missed or 1) - 1, "cpu": args.client_cpu})
            report = run_clients(_history_client, [job], timeout=600)
        finally:
            server.stop()
    return {
        "scenario": "history", "messages": args.messages, "build_s": round(build_seconds, 1),
        "history_page_ms": percentiles(report.ack_ms),
        "room_list_rooms": report.extra.get("rooms_in_list"),
        "room_list_ms": percentiles(report.delivery_ms),
        "catchup_messages": report.extra.get("catchup_received"),
        "catchup_ms": round(report.extra.get("catchup_ms", math.nan), 1),
        "errors": sum(report.errors.values()), "error_codes": dict(report.errors),
    }

