"""The ``mixed`` scenario: a rate run while many idle connections stay attached.

It measures what the idle connections cost everyone else: delivery latency of the busy
rooms with none attached, with N attached and the heartbeat off, and with N attached
and the heartbeat on (the default interval, or ``--ping-interval``), three servers
side by side in one run.  The idle connections answer pings as any client library does.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unichatd.config import ServerConfig

from .fanout import drive_fanout
from .harness import (
    BENCH_KEY,
    BenchServer,
    Job,
    create_fanout_rooms,
    create_idle_rooms,
    raise_fd_limit,
    run_clients,
    split,
)
from .idle import idle_client

DEFAULT_DURATION = 45.0
"""Seconds measured when ``--duration`` is not given: past two default heartbeat intervals."""


def scenario_mixed(args: argparse.Namespace) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    conns = args.conns
    if conns + args.rooms * args.members + 500 > fd_limit:
        conns = fd_limit - args.rooms * args.members - 500
        print(f"unichatd bench: --conns exceeds this machine's open-files limit ({fd_limit}); using {conns}",
              file=sys.stderr)
    runs = {
        "no_idle": _run(args, idle=0, ping_interval=args.ping_interval),
        "idle_heartbeat_off": _run(args, idle=conns, ping_interval=0),
        "idle_heartbeat_on": _run(args, idle=conns, ping_interval=args.ping_interval),
    }
    summary = {
        label: {"idle": run["idle_connections"], "ping_interval": run["ping_interval"],
                **run["delivery_latency_ms"], "acked_per_s": run["acked_per_s"], "errors": run["errors"]}
        for label, run in runs.items()
    }
    return {
        "scenario": "mixed", "conns": conns, "subs": args.subs, "rate": args.rate,
        "rooms": args.rooms, "members": args.members, "duration_s": args.duration,
        "delivery_ms": summary, "runs": runs,
        "errors": sum(run["errors"] for run in runs.values()),
    }


@contextlib.contextmanager
def server_with_rooms(args: argparse.Namespace, idle: int, ping_interval: float | None = None) -> Iterator[BenchServer]:
    """A server on a fresh database with the rate run's rooms and ``idle`` connections' rooms."""
    with tempfile.TemporaryDirectory(prefix="unichatd-bench-") as tmp:
        server = BenchServer(Path(tmp), relay=False, cpu=args.server_cpu, ping_interval=ping_interval)
        admin = server.admin()
        create_fanout_rooms(admin, args.rooms, args.members)
        create_idle_rooms(admin, idle, args.subs, args.idle_rooms)
        admin.close()
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _run(args: argparse.Namespace, *, idle: int, ping_interval: float | None) -> dict[str, Any]:
    """One server: attach ``idle`` connections, then the rate run; their figures."""
    with server_with_rooms(args, idle, ping_interval) as server:
        result = _rate_with_idle_attached(server, args, idle)
    result["idle_connections"] = idle
    result["ping_interval"] = ServerConfig().ping_interval if ping_interval is None else ping_interval
    return result


def _rate_with_idle_attached(server: BenchServer, args: argparse.Namespace, idle: int) -> dict[str, Any]:
    if idle == 0:
        return drive_fanout(server, args, rate=args.rate)
    return rate_with_clients_attached(server, args, idle, idle_client)


def rate_with_clients_attached(server: BenchServer, args: argparse.Namespace, idle: int,
                               client: Callable[..., Any], *, extra: dict[str, Any] | None = None,
                               on_rate_started: Callable[[], None] | None = None) -> dict[str, Any]:
    """Attach ``idle`` connections run by ``client`` (in their own processes), then the
    rate run; ``extra`` goes into each client job, ``on_rate_started`` runs as the rate
    run starts.  Returns the rate run's figures (and the idle clients' report)."""
    ctx = mp.get_context("spawn")
    subscribed = ctx.Semaphore(0)
    release = ctx.Event()
    hold = args.duration + args.warmup + 600
    jobs = [
        Job({"url": server.url, "key": BENCH_KEY, "indices": part, "concurrency": 64,
             "idle_rooms": args.idle_rooms, "subs": args.subs, "room_base": args.rooms,
             "hold": hold, "cpu": args.client_cpu, "subscribed": subscribed, "release": release,
             **(extra or {})})
        for part in split(list(range(idle)), args.procs)
    ]
    measured: dict[str, Any] = {}

    def measure_once_attached() -> None:
        try:
            for _ in jobs:
                if not subscribed.acquire(timeout=300):
                    raise SystemExit("unichatd bench: the idle connections did not attach within 300 s")
            if on_rate_started is not None:
                on_rate_started()
            measured.update(drive_fanout(server, args, rate=args.rate))
        finally:
            release.set()

    # The idle clients run (and answer pings) in their own processes while this thread
    # runs the rate clients.
    worker = threading.Thread(target=measure_once_attached, name="bench-rate")
    idle_report = run_clients(client, jobs, timeout=hold + 120, on_started=worker.start)
    worker.join(60)
    if not measured:
        raise SystemExit("unichatd bench: the rate run did not finish")
    attached = int(idle_report.extra.get("connections", 0))
    idle_errors = sum(idle_report.errors.values()) + (idle - attached)
    measured["idle_attached"] = attached
    measured["errors"] += idle_errors
    measured["error_codes"].update({f"idle:{code}": count for code, count in idle_report.errors.items()})
    measured["idle_report"] = idle_report.extra
    return measured
