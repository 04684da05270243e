"""The fan-out scenarios: ``fanout`` (closed loop), ``rate`` (open loop) and ``ceiling``
(unichatd beside the bare relay)."""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from unichatd.auth import mint_token

from .harness import (
    BENCH_KEY,
    BenchServer,
    ClientReport,
    StartGate,
    cpu_seconds,
    create_fanout_rooms,
    percentiles,
    process_cpu,
    run_clients,
    split,
)


@dataclass
class FanoutJob:
    url: str
    key: str
    rooms: list[int]
    members: int
    senders: int
    window: int
    size: int
    duration: float
    warmup: float
    rate_per_sender: float = 0.0
    """0: closed loop (window in flight); else open loop at this rate per sender."""
    cpu: int | None = None


def _content(size: int, sent_ns: int, seq: int) -> str:
    head = f"~B~{sent_ns}~{seq}~"
    return head + "x" * max(0, size - len(head))


def _sent_ns(raw: str) -> int:
    start = raw.index("~B~") + 3
    return int(raw[start:raw.index("~", start)])


async def _fanout_client(job: FanoutJob, gate: StartGate) -> ClientReport:
    import websockets

    report = ClientReport()
    semaphore = asyncio.Semaphore(64)

    async def join(room: int, index: int) -> Any:
        user = (room - 1) * job.members + 1 + index
        token = mint_token(job.key, user, f"u{user}", ttl=3600)
        async with semaphore:
            ws = await websockets.connect(f"{job.url}?token={token}", compression=None,
                                          max_queue=None, ping_interval=None, open_timeout=60)
            await asyncio.wait_for(ws.recv(), 60)
            await ws.send(orjson.dumps({"type": "subscribe_room", "room_id": room}).decode())
            while '"subscribed"' not in (await asyncio.wait_for(ws.recv(), 60))[:40]:
                pass
        return ws

    places = [(room, index) for room in job.rooms for index in range(job.members)]
    clients = await asyncio.gather(*(join(room, index) for room, index in places))
    senders = [(ws, room) for ws, (room, index) in zip(clients, places, strict=True) if index < job.senders]
    start_at = await gate.ready_and_wait()
    measuring_from = start_at + job.warmup
    stop_at = start_at + job.warmup + job.duration
    await asyncio.sleep(max(0.0, start_at - time.time()))
    seq = 0
    sending: set[asyncio.Future[None]] = set()

    def send(ws: Any, room: int, sent_ns: int) -> None:
        nonlocal seq
        seq += 1
        frame = {"type": "send_message", "room_id": room, "content": _content(job.size, sent_ns, seq)}
        # Fire and forget: websockets queues the frame; the loop is never blocked on one peer.
        task = asyncio.ensure_future(ws.send(orjson.dumps(frame).decode()))
        sending.add(task)
        task.add_done_callback(sending.discard)

    async def reader(ws: Any, room: int | None) -> None:
        try:
            async for raw in ws:
                now_ns = time.monotonic_ns()
                measuring = measuring_from <= time.time() < stop_at
                head = raw[:24]
                if head.startswith('{"type":"new_message"'):
                    if measuring:
                        report.deliveries += 1
                        report.delivery_ms.append((now_ns - _sent_ns(raw)) / 1e6)
                elif head.startswith('{"type":"message_ack"'):
                    if measuring:
                        report.acked += 1
                        report.ack_ms.append((now_ns - _sent_ns(raw)) / 1e6)
                    if room is not None and job.rate_per_sender == 0 and time.time() < stop_at:
                        send(ws, room, time.monotonic_ns())
                elif head.startswith('{"type":"room_updated"'):
                    if measuring:
                        report.room_updates += 1
                elif head.startswith('{"type":"error"'):
                    report.errors[orjson.loads(raw).get("code", "?")] += 1
        except websockets.ConnectionClosed:
            pass

    sender_rooms = {id(ws): room for ws, room in senders}
    readers = [asyncio.ensure_future(reader(ws, sender_rooms.get(id(ws)))) for ws in clients]
    cpu_before, wall_before = cpu_seconds(), time.time()
    if job.rate_per_sender == 0:
        for ws, room in senders:
            for _ in range(job.window):
                send(ws, room, time.monotonic_ns())
    else:
        await _open_loop(senders, job, stop_at, send)
    await asyncio.sleep(max(0.0, stop_at - time.time()))
    await asyncio.sleep(0.5)  # let in-flight deliveries land (they count only inside the window)
    report.cpu_seconds = cpu_seconds() - cpu_before
    report.wall_seconds = time.time() - wall_before
    for ws in clients:
        await ws.close()
    for task in readers:
        task.cancel()
    return report


async def _open_loop(senders: list[Any], job: FanoutJob, stop_at: float, send: Any) -> None:
    """Send at fixed intended times; the timestamp is the intended time, not the actual one."""
    interval_ns = int(1e9 / job.rate_per_sender)
    origin = time.monotonic_ns()
    # Spread senders over one interval so the load is smooth.
    offsets = [int(i * interval_ns / max(1, len(senders))) for i in range(len(senders))]
    next_due = [origin + off for off in offsets]
    while time.time() < stop_at:
        now = time.monotonic_ns()
        soonest = min(next_due)
        if soonest > now:
            await asyncio.sleep((soonest - now) / 1e9)
            continue
        for index, (ws, room) in enumerate(senders):
            while next_due[index] <= now:
                send(ws, room, next_due[index])
                next_due[index] += interval_ns



def scenario_fanout(args: argparse.Namespace, *, relay: bool = False, rate: float = 0.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="unichatd-bench-") as tmp:
        server = BenchServer(Path(tmp), relay=relay, cpu=args.server_cpu, url=args.url,
                             database=None if relay else args.database)
        if not relay and not args.url:
            admin = server.admin()
            create_fanout_rooms(admin, args.rooms, args.members)
            admin.close()
        server.start()
        try:
            result = drive_fanout(server, args, rate=rate)
        finally:
            server.stop()
    return {"scenario": result.pop("scenario"), "target": "relay" if relay else "unichatd", **result}


def drive_fanout(server: BenchServer, args: argparse.Namespace, *, rate: float = 0.0) -> dict[str, Any]:
    """Run the fan-out clients (closed loop, or open loop at ``rate``) against ``server``."""
    rooms = list(range(1, args.rooms + 1))
    per_sender = rate / (args.rooms * args.senders) if rate else 0.0
    jobs = [
        FanoutJob(server.url, args.key or BENCH_KEY, part, args.members, args.senders, args.window,
                  args.size, args.duration, args.warmup, per_sender, args.client_cpu)
        for part in split(rooms, args.procs)
    ]
    cpu_before = process_cpu(server.pid) if server.pid else 0.0
    report = run_clients(_fanout_client, jobs, timeout=args.duration + args.warmup + 120)
    server_cpu = (process_cpu(server.pid) - cpu_before) if server.pid else math.nan
    measured = args.duration
    result: dict[str, Any] = {
        "scenario": "rate" if rate else "fanout",
        "rooms": args.rooms, "members": args.members, "senders": args.senders,
        "window": args.window, "size": args.size, "duration_s": args.duration,
        "acked_per_s": round(report.acked / measured, 1),
        "deliveries_per_s": round(report.deliveries / measured, 1),
        "room_updates_per_s": round(report.room_updates / measured, 1),
        "ack_latency_ms": percentiles(report.ack_ms),
        "delivery_latency_ms": percentiles(report.delivery_ms),
        "errors": sum(report.errors.values()),
        "error_codes": dict(report.errors),
        "client_cpu_pct": round(100 * report.cpu_seconds / max(report.wall_seconds, 1e-9), 1),
        "server_cpu_s": round(server_cpu, 2),
    }
    if rate:
        result["rate"] = rate
    return result


def scenario_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    ours = scenario_fanout(args)
    relay = scenario_fanout(args, relay=True)
    ratio = ours["deliveries_per_s"] / relay["deliveries_per_s"] if relay["deliveries_per_s"] else math.nan
    return {"scenario": "ceiling", "unichatd": ours, "relay": relay,
            "deliveries_ratio": round(ratio, 3),
            "errors": ours["errors"] + relay["errors"]}


