"""The ``idle`` scenario: many connections that only subscribe, and what each costs."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from unichatd.auth import mint_token

from .harness import (
    BENCH_KEY,
    IDLE_USER_BASE,
    BenchServer,
    ClientReport,
    Job,
    StartGate,
    create_idle_rooms,
    healthz,
    idle_rooms_of,
    process_rss_kb,
    raise_fd_limit,
    run_clients,
    split,
)


async def idle_client(job: dict[str, Any], gate: StartGate) -> ClientReport:
    import websockets

    report = ClientReport()
    start_at = await gate.ready_and_wait()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    semaphore = asyncio.Semaphore(job["concurrency"])
    connections: list[Any] = []
    handshake_started = time.perf_counter()

    async def open_one(index: int) -> None:
        user = IDLE_USER_BASE + 1 + index
        token = mint_token(job["key"], user, f"u{user}", ttl=3600)
        async with semaphore:
            ws = await websockets.connect(f"{job['url']}?token={token}", compression=None,
                                          ping_interval=None, open_timeout=60, max_queue=4)
            await ws.recv()
        connections.append((ws, index))

    await asyncio.gather(*(open_one(i) for i in job["indices"]))
    handshake_seconds = time.perf_counter() - handshake_started
    subscribe_started = time.perf_counter()
    subs, base = job["subs"], job["room_base"]

    async def subscribe(ws: Any, index: int) -> None:
        async with semaphore:
            for room in idle_rooms_of(index, subs, job["idle_rooms"]):
                await ws.send(orjson.dumps({"type": "subscribe_room", "room_id": base + 1 + room}).decode())
            got = 0
            while got < subs:
                raw = await asyncio.wait_for(ws.recv(), 60)
                if raw.startswith('{"type":"subscribed"'):
                    got += 1
                elif raw.startswith('{"type":"error"'):
                    report.errors[orjson.loads(raw).get("code", "?")] += 1
                    got += 1

    await asyncio.gather(*(subscribe(ws, index) for ws, index in connections))
    report.extra = {"handshake_seconds": handshake_seconds,
                    "subscribe_seconds": time.perf_counter() - subscribe_started,
                    "connections": len(connections)}
    # Hold the connections open (websockets answers the server's pings) until the parent
    # has measured what it measures with them attached.
    if job.get("subscribed") is not None:
        job["subscribed"].release()
    release = job.get("release")
    if release is None:
        await asyncio.sleep(job["hold"])
    else:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, job["hold"])
    for ws, _ in connections:
        ws.transport.abort()
    return report


def scenario_idle(args: argparse.Namespace) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    conns = args.conns
    if conns + 200 > fd_limit:
        print(f"unichatd bench: --conns {conns} exceeds this machine's open-files limit ({fd_limit}); "
              f"using {fd_limit - 500}", file=sys.stderr)
        conns = fd_limit - 500
    room_base = args.rooms
    with tempfile.TemporaryDirectory(prefix="unichatd-bench-") as tmp:
        server = BenchServer(Path(tmp), relay=args.relay, cpu=args.server_cpu)
        if not args.relay:
            admin = server.admin()
            for r in range(room_base):  # the fanout rooms come first, as in wsload's layout
                admin.create_room(f"bench-{r + 1}", "group", [])
            create_idle_rooms(admin, conns, args.subs, args.idle_rooms)
            admin.close()
        server.start()
        try:
            time.sleep(1.0)
            assert server.pid is not None
            rss_before = process_rss_kb(server.pid)
            hold = 8.0 + conns / 1000
            indices = list(range(conns))
            jobs = [
                {"url": server.url, "key": BENCH_KEY, "indices": part, "concurrency": 64,
                 "idle_rooms": args.idle_rooms, "subs": args.subs, "room_base": room_base,
                 "hold": hold, "cpu": args.client_cpu}
                for part in split(indices, args.procs)
            ]
            samples: dict[str, int] = {"peak": rss_before, "connected": 0}

            def sample_while_open() -> None:
                # Read the server's memory while every connection is open and subscribed.
                assert server.pid is not None
                deadline = time.time() + hold + 60
                while time.time() < deadline:
                    samples["peak"] = max(samples["peak"], process_rss_kb(server.pid))
                    connected = healthz(server.port).get("connections", 0)
                    samples["connected"] = max(samples["connected"], connected)
                    if connected >= conns:
                        time.sleep(1.0)
                        samples["peak"] = max(samples["peak"], process_rss_kb(server.pid))
                        return
                    time.sleep(0.2)

            report = run_clients(idle_client, [Job(job) for job in jobs], timeout=hold + 120,
                                 on_started=sample_while_open)
            peak, connected = samples["peak"], samples["connected"]
        finally:
            server.stop()
    handshake_s = report.extra.get("handshake_seconds", math.nan) / max(1, len(jobs))
    subscribe_s = report.extra.get("subscribe_seconds", math.nan) / max(1, len(jobs))
    return {
        "scenario": "idle", "target": "relay" if args.relay else "unichatd",
        "conns": conns, "subs": args.subs, "connected": connected,
        "server_rss_before_kb": rss_before, "server_rss_after_kb": peak,
        "bytes_per_conn": round((peak - rss_before) * 1024 / max(1, conns)),
        "handshake_rate": round(conns / handshake_s, 1) if handshake_s else math.nan,
        "subscribe_rate": round(conns * args.subs / subscribe_s, 1) if subscribe_s else math.nan,
        "errors": sum(report.errors.values()), "error_codes": dict(report.errors),
    }

