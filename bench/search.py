"""The ``search`` scenario: one-word full-text searches on a big database.

The database holds ``--messages`` messages spread over ``--list-rooms`` rooms, each a
few words drawn from a vocabulary with a Zipf-like spread, so some words are in a tenth
of all messages and others in a handful.  Three users search over a real connection, one
query at a time: a participant of every room, of half of them (the costliest room filter:
the longest list either way), and of a few (the index must then skip the other rooms'
matches).  (The latencies travel in the report's
``ack_ms`` and ``delivery_ms`` lists.)  Words are drawn from every frequency
band; latency is measured from the request to its ``search_results``.
"""

from __future__ import annotations

import argparse
import asyncio
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

VOCABULARY = 20_000
WORDS_PER_MESSAGE = (4, 14)
FEW_ROOMS = 5
"""Rooms of the third searcher."""
EVERY_ROOM_USER, FEW_ROOMS_USER, SENDER, HALF_ROOMS_USER = 1, 2, 3, 4


def word(rank: int) -> str:
    """The vocabulary's word of this rank: pronounceable, distinct, 5 to 9 letters."""
    syllables = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "hu", "jo")
    out = []
    number = rank
    for _ in range(3):
        number, digit = divmod(number, len(syllables))
        out.append(syllables[digit])
    return "".join(out) + "x" * (rank % 4)


def build_search_db(path: Path, *, messages: int, rooms: int, seed: int = 11) -> list[str]:
    """Fill the database; returns query words from every frequency band."""
    admin = AdminStore(path)
    room_ids = []
    for index in range(rooms):
        members = [EVERY_ROOM_USER, SENDER] + ([FEW_ROOMS_USER] if index < FEW_ROOMS else []) + (
            [HALF_ROOMS_USER] if index % 2 else [])
        room_ids.append(admin.create_room(f"room-{index}", "group", members))
    rng = random.Random(seed)
    # Zipf-like: rank r is drawn with weight 1/r.
    weights = [1.0 / rank for rank in range(1, VOCABULARY + 1)]
    cumulative: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    now = time.time_ns() // 1_000_000

    def rows() -> Iterator[tuple[int, int, str, int]]:
        for seq in range(messages):
            count = rng.randint(*WORDS_PER_MESSAGE)
            ranks = rng.choices(range(VOCABULARY), cum_weights=cumulative, k=count)
            yield (room_ids[seq % rooms], SENDER, " ".join(word(rank) for rank in ranks), now + seq // 100)

    admin.import_messages(rows())
    admin.close()
    # Query words: the most common ones, then spread over the ranks down to the rarest.
    bands = [0, 1, 2, 5, 10, 30, 100, 300, 1000, 3000, 10_000, VOCABULARY - 1]
    return [word(rank) for rank in bands]


async def _search_client(job: dict[str, Any], gate: StartGate) -> ClientReport:
    import websockets

    report = ClientReport()
    await gate.ready_and_wait()
    rng = random.Random(5)
    half: list[float] = []
    for user_id, key, timings in ((EVERY_ROOM_USER, "every_room", report.ack_ms),
                                  (HALF_ROOMS_USER, "half_rooms", half),
                                  (FEW_ROOMS_USER, "few_rooms", report.delivery_ms)):
        token = mint_token(job["key"], user_id, f"u{user_id}", ttl=3600)
        found = 0
        async with websockets.connect(f"{job['url']}?token={token}", compression=None, max_size=None) as ws:
            await ws.recv()
            for number in range(job["queries"]):
                query = rng.choice(job["words"])
                request = {"type": "search_messages", "query": query, "request_id": number}
                started = time.perf_counter()
                await ws.send(orjson.dumps(request).decode())
                while True:
                    reply = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                    if reply.get("request_id") == number:
                        break
                timings.append((time.perf_counter() - started) * 1000)
                if reply["type"] == "error":
                    report.errors[reply["code"]] += 1
                else:
                    found += len(reply["messages"])
        report.extra[f"{key}_results"] = found
    # (report.extra holds numbers, summed over client processes; this scenario runs one)
    for name, value in percentiles(half).items():
        report.extra[f"half_rooms_{name}"] = value
    return report


def scenario_search(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="unichatd-bench-") as tmp:
        server = BenchServer(Path(tmp), relay=False, cpu=args.server_cpu)
        built = time.perf_counter()
        words = build_search_db(server.db_path, messages=args.messages, rooms=args.list_rooms)
        build_seconds = time.perf_counter() - built
        server.start()
        try:
            job = Job({"url": server.url, "key": BENCH_KEY, "queries": args.queries, "words": words,
                       "cpu": args.client_cpu})
            report = run_clients(_search_client, [job], timeout=900)
        finally:
            server.stop()
    return {
        "scenario": "search", "messages": args.messages, "rooms": args.list_rooms,
        "build_s": round(build_seconds, 1), "queries": args.queries,
        "every_room_ms": percentiles(report.ack_ms),
        "every_room_results": report.extra.get("every_room_results"),
        "half_rooms_ms": {name: report.extra.get(f"half_rooms_{name}") for name in ("p50", "p95", "p99", "max")},
        "half_rooms_results": report.extra.get("half_rooms_results"),
        f"{FEW_ROOMS}_rooms_ms": percentiles(report.delivery_ms),
        f"{FEW_ROOMS}_rooms_results": report.extra.get("few_rooms_results"),
        "errors": sum(report.errors.values()), "error_codes": dict(report.errors),
    }
