"""The ``storm`` scenario: every idle connection drops and reconnects within a few seconds
while a rate run goes on, and what that costs the busy rooms.

A network blip, a proxy restart or a laptop lid: all clients lose their connection at
about the same time and come back with their reconnect backoff.  Each idle connection
drops at a random moment of the first ``--storm-seconds`` of the run and reconnects
(handshake, authentication, its subscriptions again) after a random backoff of up to
``--backoff`` seconds, so all are back within the window.  Those away longer than
presence's grace are announced offline and online again to everyone who shares a room
with them.  Two servers side by side in one run: the same idle connections attached
quietly, and with the storm; delivery latency of the busy rooms for both.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from typing import Any

import orjson

from unichatd.auth import mint_token

from .harness import (
    IDLE_USER_BASE,
    ClientReport,
    StartGate,
    idle_rooms_of,
    raise_fd_limit,
)
from .idle import idle_client
from .mixed import rate_with_clients_attached, server_with_rooms

STORM_DELAY = 2.0
"""Seconds into the measured part of the rate run when the storm starts."""


async def storm_client(job: dict[str, Any], gate: StartGate) -> ClientReport:
    """Attach like an idle client; when the storm is called, drop every connection and
    reconnect each after its backoff."""
    import websockets

    report = ClientReport()
    start_at = await gate.ready_and_wait()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    semaphore = asyncio.Semaphore(job["concurrency"])
    subs, base = job["subs"], job["room_base"]

    async def attach(index: int) -> Any:
        user = IDLE_USER_BASE + 1 + index
        token = mint_token(job["key"], user, f"u{user}", ttl=3600)
        async with semaphore:
            ws = await websockets.connect(f"{job['url']}?token={token}", compression=None,
                                          ping_interval=None, open_timeout=60, max_queue=None)
            await ws.recv()
            for room in idle_rooms_of(index, subs, job["idle_rooms"]):
                await ws.send(orjson.dumps({"type": "subscribe_room", "room_id": base + 1 + room}).decode())
            got = 0
            while got < subs:
                raw = str(await asyncio.wait_for(ws.recv(), 60))
                if raw.startswith('{"type":"subscribed"'):
                    got += 1
                elif raw.startswith('{"type":"error"'):
                    report.errors[orjson.loads(raw).get("code", "?")] += 1
                    got += 1
        return ws

    connections = dict(zip(job["indices"], await asyncio.gather(*(attach(i) for i in job["indices"])), strict=True))
    drains = [asyncio.ensure_future(_drain(ws)) for ws in connections.values()]
    job["subscribed"].release()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, job["storm"].wait, job["hold"])
    storm_started = time.monotonic()
    rng = random.Random(job["indices"][0] if job["indices"] else 0)
    window, backoff = job["storm_seconds"], job["backoff"]

    async def drop_and_return(index: int) -> None:
        drop_at = rng.uniform(0, window - backoff)
        back_at = drop_at + rng.uniform(0, backoff)
        await asyncio.sleep(drop_at)
        connections[index].transport.abort()
        await asyncio.sleep(max(0.0, back_at - (time.monotonic() - storm_started)))
        try:
            connections[index] = await attach(index)
            drains.append(asyncio.ensure_future(_drain(connections[index])))
            report.extra["reconnected"] = report.extra.get("reconnected", 0) + 1
        except Exception as exc:  # noqa: BLE001  (counted, reported)
            report.errors[f"reconnect:{type(exc).__name__}"] += 1

    await asyncio.gather(*(drop_and_return(index) for index in connections))
    report.extra["storm_wall_s"] = time.monotonic() - storm_started
    report.extra["connections"] = len(connections)
    await loop.run_in_executor(None, job["release"].wait, job["hold"])
    for ws in connections.values():
        ws.transport.abort()
    for task in drains:
        task.cancel()
    return report


async def _drain(ws: Any) -> None:
    """Read what the server sends (presence, room updates), as a client does."""
    try:
        async for _ in ws:
            pass
    except Exception:  # noqa: BLE001, S110  (the connection was dropped on purpose)
        pass


def scenario_storm(args: argparse.Namespace) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    conns = args.conns
    # Old and new connections overlap for a moment on both ends.
    if conns + args.rooms * args.members + 1000 > fd_limit:
        conns = fd_limit - args.rooms * args.members - 1000
        print(f"unichatd bench: --conns exceeds this machine's open-files limit ({fd_limit}); using {conns}",
              file=sys.stderr)
    if args.duration < args.storm_seconds + STORM_DELAY + 2:
        args.duration = args.storm_seconds + STORM_DELAY + 2
    runs = {"quiet": _run(args, conns, storm=False), "storm": _run(args, conns, storm=True)}
    summary = {
        label: {**run["delivery_latency_ms"], "acked_per_s": run["acked_per_s"], "errors": run["errors"],
                "reconnected": int(run["idle_report"].get("reconnected", 0)),
                "storm_wall_s": round(run["idle_report"].get("storm_wall_s", 0.0) / max(1, args.procs), 2)}
        for label, run in runs.items()
    }
    return {
        "scenario": "storm", "conns": conns, "subs": args.subs, "idle_rooms": args.idle_rooms, "rate": args.rate,
        "rooms": args.rooms, "members": args.members, "duration_s": args.duration,
        "storm_seconds": args.storm_seconds, "backoff_s": args.backoff,
        "delivery_ms": summary, "runs": runs,
        "errors": sum(run["errors"] for run in runs.values()),
    }


def _run(args: argparse.Namespace, conns: int, *, storm: bool) -> dict[str, Any]:
    import multiprocessing as mp

    with server_with_rooms(args, conns) as server:
        if not storm:
            return rate_with_clients_attached(server, args, conns, idle_client)
        signal = mp.get_context("spawn").Event()

        def start_storm_soon() -> None:
            threading.Timer(args.warmup + STORM_DELAY, signal.set).start()

        return rate_with_clients_attached(
            server, args, conns, storm_client,
            extra={"storm": signal, "storm_seconds": args.storm_seconds, "backoff": args.backoff},
            on_rate_started=start_storm_soon)
