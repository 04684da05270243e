"""What every scenario shares: the server under test, client processes started
together, and the figures they report."""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from unichatd.store import AdminStore

if TYPE_CHECKING:
    from unichatd.store.postgres import PostgresAdmin

BENCH_KEY = "bench-signing-key-" + "0" * 32
IDLE_USER_BASE = 1_000_000
RELAY_PATH = Path(__file__).resolve().parent / "relay.py"



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


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def process_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------
# The server under test


class BenchServer:
    """unichatd (or the bare relay) in a subprocess on a fresh database."""

    def __init__(self, workdir: Path, *, relay: bool, cpu: int | None, url: str | None = None,
                 ping_interval: float | None = None, extra_config: str = "", database: str | None = None) -> None:
        self.workdir = workdir
        self.postgres = PostgresSchema(database) if database else None
        """With a ``postgresql://`` database: a schema of its own in it for this run."""
        self.extra_config = extra_config
        """TOML appended to unichatd's config (whole tables: ``[api]``, ``[[webhooks]]``)."""
        self.relay = relay
        self.cpu = cpu
        self.ping_interval = ping_interval
        """``server.ping_interval`` for unichatd; None keeps the default."""
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

    @property
    def database(self) -> str:
        return self.postgres.url if self.postgres is not None else str(self.db_path)

    def admin(self) -> AdminStore | PostgresAdmin:
        if self.postgres is not None:
            from unichatd.store.postgres import PostgresAdmin

            return PostgresAdmin(self.postgres.url)
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
            heartbeat = "" if self.ping_interval is None else f"ping_interval = {self.ping_interval}\n"
            config.write_text(
                f'[server]\nport = {self.port}\nmax_connections = 100000\nmax_connections_per_user = 100\n'
                f'{heartbeat}'
                f'[auth]\nsigning_key = "{BENCH_KEY}"\n[storage]\ndatabase = "{self.database}"\n'
                "[limits]\nmessages_per_second = 1000000\nmessage_burst = 1000000\n"
                "frames_per_second = 1000000\nframe_burst = 1000000\n[log]\nlevel = \"warning\"\n"
                + self.extra_config
            )
            command = [sys.executable, "-m", "unichatd", "serve", "--config", str(config)]
        cpu = self.cpu

        def setup() -> None:
            pin(cpu)
            raise_fd_limit()

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
        if self.postgres is not None:
            self.postgres.drop()


class PostgresSchema:
    """A fresh, migrated schema in a PostgreSQL database, for one run (dropped after)."""

    def __init__(self, database: str) -> None:
        self.base = database
        self.name = f"bench_{os.getpid()}_{int(time.time())}"
        separator = "&" if "?" in database else "?"
        self.url = f"{database}{separator}search_path={self.name}"
        asyncio.run(self._create())

    async def _create(self) -> None:
        import asyncpg

        from unichatd.store.postgres import migrate_database

        conn = await asyncpg.connect(self.base)
        try:
            await conn.execute(f"CREATE SCHEMA {self.name}")
        finally:
            await conn.close()
        await migrate_database(self.url)

    def drop(self) -> None:
        async def drop() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.base)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")
            finally:
                await conn.close()

        asyncio.run(drop())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_fanout_rooms(admin: AdminStore | PostgresAdmin, rooms: int, members: int) -> None:
    for room in range(1, rooms + 1):
        first = (room - 1) * members + 1
        admin.create_room(f"bench-{room}", "group", list(range(first, first + members)))


def idle_rooms_of(index: int, subs: int, idle_rooms: int) -> list[int]:
    """The idle rooms (counted from 0) idle connection ``index`` is in, as wsload lays them out."""
    step = max(1, idle_rooms // subs)
    return [(index + k * step) % idle_rooms for k in range(subs)]


def create_idle_rooms(admin: AdminStore, conns: int, subs: int, idle_rooms: int) -> None:
    """The idle rooms, after the fan-out rooms: idle connection i is user 1000001+i."""
    members: dict[int, list[int]] = {r: [] for r in range(idle_rooms)}
    for index in range(conns):
        for room in idle_rooms_of(index, subs, idle_rooms):
            members[room].append(IDLE_USER_BASE + 1 + index)
    for room in range(idle_rooms):
        admin.create_room(f"idle-{room + 1}", "group", members[room])


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


def run_in_process(target: Any, job: Any, gate: StartGate, queue: Any) -> None:
    pin(job.cpu)
    raise_fd_limit()
    try:
        import uvloop

        report = uvloop.run(target(job, gate))
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which fails the run)
        report = ClientReport(errors=Counter({f"client: {exc!r}"[:200]: 1}))
        gate._ready.release()
    queue.put(report)


def run_clients(target: Any, jobs: list[Any], timeout: float, on_started: Any = None) -> ClientReport:
    """Run ``target(job, gate)`` in one process per job; merge their reports."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    gate = StartGate(ctx)
    procs = [ctx.Process(target=run_in_process, args=(target, job, gate, queue)) for job in jobs]
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



class Job(dict):  # type: ignore[type-arg]
    """A dict job that also answers ``.cpu`` for the process runner."""

    @property
    def cpu(self) -> int | None:
        value = self.get("cpu")
        return int(value) if value is not None else None


def healthz(port: int) -> dict[str, Any]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result
    except OSError:
        return {}


def split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]
