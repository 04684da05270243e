"""``unichatd bench``: the project's own load benchmark.

Each scenario starts a server (unichatd, or the bare relay in ``bench/relay.py``) on a
fresh temporary database holding the rooms it needs, pins it to one core, and drives it
from separate client processes pinned to the other core, over 127.0.0.1.  It prints a
table for people and one JSON line for scripts.

The clients are Python too (websockets + uvloop), so on a 2-core machine they can be
the bottleneck: every result carries ``client_cpu_pct`` and a warning when the client
core was saturated.  ``bench/crosscheck.py`` drives an external C load generator (wsload)
over the same scenarios.

The room layout matches wsload's: rooms 1..R, room r holds users (r-1)*M+1 .. r*M, and
the first S members of each room send.  Idle connection i is user 1000001+i.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .auth import mint_token
from .store import AdminStore

BENCH_KEY = "bench-signing-key-" + "0" * 32
IDLE_USER_BASE = 1_000_000
RELAY_PATH = Path(__file__).resolve().parent.parent / "bench" / "relay.py"


# ---------------------------------------------------------------------------
# Results


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": round(at(0.50), 3), "p95": round(at(0.95), 3), "p99": round(at(0.99), 3),
            "max": round(ordered[-1], 3)}


@dataclass
class ClientReport:
    acked: int = 0
    deliveries: int = 0
    room_updates: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ack_ms: list[float] = field(default_factory=list)
    delivery_ms: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: ClientReport) -> None:
        self.acked += other.acked
        self.deliveries += other.deliveries
        self.room_updates += other.room_updates
        self.errors.update(other.errors)
        self.ack_ms.extend(other.ack_ms)
        self.delivery_ms.extend(other.delivery_ms)
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        for key, value in other.extra.items():
            self.extra[key] = self.extra.get(key, 0) + value


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _process_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------
# The server under test


class BenchServer:
    """unichatd (or the bare relay) in a subprocess on a fresh database."""

    def __init__(self, workdir: Path, *, relay: bool, cpu: int | None, url: str | None = None) -> None:
        self.workdir = workdir
        self.relay = relay
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = _free_port()
        self.external_url = url
        self.db_path = workdir / "bench.db"

    @property
    def url(self) -> str:
        return self.external_url or f"ws://127.0.0.1:{self.port}/ws/chat/"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def admin(self) -> AdminStore:
        return AdminStore(self.db_path)

    def start(self) -> None:
        if self.external_url:
            return
        if self.relay:
            if not RELAY_PATH.is_file():
                raise SystemExit(f"unichatd bench: the bare relay {RELAY_PATH} is missing "
                                 "(run from a checkout)")
            command = [sys.executable, str(RELAY_PATH), "--port", str(self.port)]
        else:
            config = self.workdir / "bench.toml"
            config.write_text(
                f'[server]\nport = {self.port}\nmax_connections = 100000\nmax_connections_per_user = 100\n'
                f'[auth]\nsigning_key = "{BENCH_KEY}"\n[storage]\ndatabase = "{self.db_path}"\n'
                "[limits]\nmessages_per_second = 1000000\nmessage_burst = 1000000\n"
                "frames_per_second = 1000000\nframe_burst = 1000000\n[log]\nlevel = \"warning\"\n"
            )
            command = [sys.executable, "-m", "unichatd", "serve", "--config", str(config)]
        cpu = self.cpu

        def setup() -> None:
            _pin(cpu)
            _raise_fd_limit()

        self.proc = subprocess.Popen(command, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=None, preexec_fn=setup)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("unichatd bench: the server exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("unichatd bench: the server did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_fanout_rooms(admin: AdminStore, rooms: int, members: int) -> None:
    for room in range(1, rooms + 1):
        first = (room - 1) * members + 1
        admin.create_room(f"bench-{room}", "group", list(range(first, first + members)))


# ---------------------------------------------------------------------------
# Client processes


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

    def send(ws: Any, room: int, sent_ns: int) -> None:
        nonlocal seq
        seq += 1
        frame = {"type": "send_message", "room_id": room, "content": _content(job.size, sent_ns, seq)}
        # Fire and forget: websockets queues the frame; the loop is never blocked on one peer.
        asyncio.ensure_future(ws.send(orjson.dumps(frame).decode()))

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
    cpu_before, wall_before = _cpu_seconds(), time.time()
    if job.rate_per_sender == 0:
        for ws, room in senders:
            for _ in range(job.window):
                send(ws, room, time.monotonic_ns())
    else:
        await _open_loop(senders, job, stop_at, send)
    await asyncio.sleep(max(0.0, stop_at - time.time()))
    await asyncio.sleep(0.5)  # let in-flight deliveries land (they count only inside the window)
    report.cpu_seconds = _cpu_seconds() - cpu_before
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


class StartGate:
    """Lets every client process finish its setup before any of them starts measuring."""

    def __init__(self, ctx: Any) -> None:
        self._ready = ctx.Semaphore(0)
        self._go = ctx.Event()
        self._start_at = ctx.Value("d", 0.0)

    async def ready_and_wait(self) -> float:
        """Report ready; return the common start time once the parent opens the gate."""
        self._ready.release()
        await asyncio.get_running_loop().run_in_executor(None, self._go.wait, 600)
        return float(self._start_at.value)

    def open_when_ready(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(count):
            if not self._ready.acquire(timeout=max(0.1, deadline - time.monotonic())):
                raise SystemExit("unichatd bench: the clients did not get ready in time")
        self._start_at.value = time.time() + 0.3
        self._go.set()


def _run_in_process(target: Any, job: Any, gate: StartGate, queue: Any) -> None:
    _pin(job.cpu)
    _raise_fd_limit()
    try:
        import uvloop

        report = uvloop.run(target(job, gate))
    except Exception as exc:  # reported to the parent, which fails the run
        report = ClientReport(errors=Counter({f"client: {exc!r}"[:200]: 1}))
        gate._ready.release()
    queue.put(report)


def run_clients(target: Any, jobs: list[Any], timeout: float, on_started: Any = None) -> ClientReport:
    """Run ``target(job, gate)`` in one process per job; merge their reports."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    gate = StartGate(ctx)
    procs = [ctx.Process(target=_run_in_process, args=(target, job, gate, queue)) for job in jobs]
    for proc in procs:
        proc.start()
    total = ClientReport()
    try:
        gate.open_when_ready(len(procs), timeout)
        if on_started is not None:
            on_started()
        for _ in procs:
            total.merge(queue.get(timeout=timeout))
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    return total


# ---------------------------------------------------------------------------
# Scenarios


def _split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def scenario_fanout(args: argparse.Namespace, *, relay: bool = False, rate: float = 0.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="unichatd-bench-") as tmp:
        server = BenchServer(Path(tmp), relay=relay, cpu=args.server_cpu, url=args.url)
        if not relay and not args.url:
            admin = server.admin()
            create_fanout_rooms(admin, args.rooms, args.members)
            admin.close()
        server.start()
        try:
            rooms = list(range(1, args.rooms + 1))
            per_sender = rate / (args.rooms * args.senders) if rate else 0.0
            jobs = [
                FanoutJob(server.url, args.key or BENCH_KEY, part, args.members, args.senders, args.window,
                          args.size, args.duration, args.warmup, per_sender, args.client_cpu)
                for part in _split(rooms, args.procs)
            ]
            cpu_before = _process_cpu(server.pid) if server.pid else 0.0
            report = run_clients(_fanout_client, jobs, timeout=args.duration + args.warmup + 120)
            server_cpu = (_process_cpu(server.pid) - cpu_before) if server.pid else math.nan
        finally:
            server.stop()
    measured = args.duration
    result: dict[str, Any] = {
        "scenario": "rate" if rate else "fanout",
        "target": "relay" if relay else "unichatd",
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


async def _idle_client(job: dict[str, Any], gate: StartGate) -> ClientReport:
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
    rooms, subs, base = job["idle_rooms"], job["subs"], job["room_base"]

    async def subscribe(ws: Any, index: int) -> None:
        async with semaphore:
            for k in range(subs):
                room = base + 1 + (index + k * (rooms // subs)) % rooms
                await ws.send(orjson.dumps({"type": "subscribe_room", "room_id": room}).decode())
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
    # Hold the connections open until the parent has read the server's memory.
    await asyncio.sleep(job["hold"])
    for ws, _ in connections:
        ws.transport.abort()
    return report


def scenario_idle(args: argparse.Namespace) -> dict[str, Any]:
    fd_limit = _raise_fd_limit()
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
            members: dict[int, list[int]] = {r: [] for r in range(args.idle_rooms)}
            for i in range(conns):
                for k in range(args.subs):
                    members[(i + k * (args.idle_rooms // args.subs)) % args.idle_rooms].append(
                        IDLE_USER_BASE + 1 + i)
            for r in range(room_base):  # the fanout rooms come first, as in wsload's layout
                admin.create_room(f"bench-{r + 1}", "group", [])
            for r in range(args.idle_rooms):
                admin.create_room(f"idle-{r + 1}", "group", members[r])
            admin.close()
        server.start()
        try:
            time.sleep(1.0)
            assert server.pid is not None
            rss_before = _process_rss_kb(server.pid)
            hold = 8.0 + conns / 1000
            indices = list(range(conns))
            jobs = [
                {"url": server.url, "key": BENCH_KEY, "indices": part, "concurrency": 64,
                 "idle_rooms": args.idle_rooms, "subs": args.subs, "room_base": room_base,
                 "hold": hold, "cpu": args.client_cpu}
                for part in _split(indices, args.procs)
            ]
            samples: dict[str, int] = {"peak": rss_before, "connected": 0}

            def sample_while_open() -> None:
                # Read the server's memory while every connection is open and subscribed.
                assert server.pid is not None
                deadline = time.time() + hold + 60
                while time.time() < deadline:
                    samples["peak"] = max(samples["peak"], _process_rss_kb(server.pid))
                    connected = _healthz(server.port).get("connections", 0)
                    samples["connected"] = max(samples["connected"], connected)
                    if connected >= conns:
                        time.sleep(1.0)
                        samples["peak"] = max(samples["peak"], _process_rss_kb(server.pid))
                        return
                    time.sleep(0.2)

            report = run_clients(_idle_client, [_Job(job) for job in jobs], timeout=hold + 120,
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


class _Job(dict):  # type: ignore[type-arg]
    """A dict job that also answers ``.cpu`` for _run_in_process."""

    @property
    def cpu(self) -> int | None:
        value = self.get("cpu")
        return int(value) if value is not None else None


def _healthz(port: int) -> dict[str, Any]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result
    except OSError:
        return {}


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
            job = _Job({"url": server.url, "key": BENCH_KEY, "pages": args.pages, "lists": args.lists,
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


def scenario_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    ours = scenario_fanout(args)
    relay = scenario_fanout(args, relay=True)
    ratio = ours["deliveries_per_s"] / relay["deliveries_per_s"] if relay["deliveries_per_s"] else math.nan
    return {"scenario": "ceiling", "unichatd": ours, "relay": relay,
            "deliveries_ratio": round(ratio, 3),
            "errors": ours["errors"] + relay["errors"]}


# ---------------------------------------------------------------------------
# Command line


QUICK = {"rooms": 5, "members": 3, "duration": 2.0, "warmup": 0.5, "conns": 200, "idle_rooms": 10,
         "messages": 20_000, "list_rooms": 20, "catchup": 1_000, "pages": 50, "lists": 10}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", choices=["fanout", "rate", "idle", "history", "ceiling"])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds (for CI)")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="rate: messages/s in all")
    parser.add_argument("--conns", type=int, default=18_000, help="idle: connections")
    parser.add_argument("--subs", type=int, default=5, help="idle: rooms per connection")
    parser.add_argument("--idle-rooms", type=int, default=100)
    parser.add_argument("--relay", action="store_true", help="idle: measure the bare relay instead")
    parser.add_argument("--messages", type=int, default=1_000_000, help="history: big room size")
    parser.add_argument("--list-rooms", type=int, default=200)
    parser.add_argument("--catchup", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--url", help="target a running server instead (needs --key and its rooms)")
    parser.add_argument("--key", help="the running server's signing key")


def run(args: argparse.Namespace) -> int:
    if args.quick:
        defaults = {action.dest: action.default for action in _parser()._actions}
        for name, value in QUICK.items():
            if getattr(args, name) == defaults.get(name):
                setattr(args, name, value)
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = None
    scenario = args.scenario
    if scenario == "fanout":
        result = scenario_fanout(args)
    elif scenario == "rate":
        result = scenario_fanout(args, rate=args.rate)
    elif scenario == "idle":
        result = scenario_idle(args)
    elif scenario == "history":
        result = scenario_history(args)
    else:
        result = scenario_ceiling(args)
    _print_table(result)
    print(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode())
    return 0 if result.get("errors", 0) == 0 else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unichatd bench")
    add_arguments(parser)
    return parser


def _print_table(result: dict[str, Any], indent: str = "") -> None:
    width = shutil.get_terminal_size((100, 20)).columns
    for key, value in result.items():
        if isinstance(value, dict) and key in ("unichatd", "relay"):
            print(f"{indent}{key}:", file=sys.stderr)
            _print_table(value, indent + "  ")
            continue
        text = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
        print(f"{indent}{key:<22} {text}"[:width], file=sys.stderr)
    cpu = result.get("client_cpu_pct")
    if isinstance(cpu, float) and cpu >= 90:
        print(f"{indent}WARNING: the client used {cpu}% of its core: it, not the server, may be the "
              "bottleneck; cross-check with bench/crosscheck.py and a C load generator", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))
