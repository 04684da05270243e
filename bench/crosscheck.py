"""Cross-check ``unichatd bench`` with the C load generator wsload (a single C file, not
part of this repository: nothing else needs it).

Builds nothing itself: compile wsload first (see its README), then e.g.

    python bench/crosscheck.py --wsload /tmp/wsload fanout --rooms 100 --members 10 --window 1
    python bench/crosscheck.py --wsload /tmp/wsload fanout --target relay
    python bench/crosscheck.py --wsload /tmp/wsload idle --conns 18000 --subs 5
    python bench/crosscheck.py --wsload /tmp/wsload mixed --conns 15000 --rate 1000 --duration 45
    python bench/crosscheck.py --wsload /tmp/wsload storm --conns 18000 --rate 1000 --duration 20

It lays out the rooms wsload expects on a fresh database, starts the server pinned to
core 0, runs wsload pinned to core 1, and prints wsload's JSON line with the target added.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from unichatd_bench.harness import BENCH_KEY, BenchServer, create_fanout_rooms, create_idle_rooms


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wsload", required=True, help="path to the compiled wsload binary")
    parser.add_argument("scenario", choices=["fanout", "rate", "idle", "mixed", "storm"])
    parser.add_argument("--target", choices=["unichatd", "relay"], default="unichatd")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--subs", type=int, default=5)
    parser.add_argument("--idle-rooms", type=int, default=100)
    parser.add_argument("--ping-interval", type=float, default=None,
                        help="the server's ping_interval (mixed: in the heartbeat-on run)")
    parser.add_argument("--runs", default="no-idle,off,on",
                        help="mixed: which servers to run, in this order (no-idle, off: idle connections "
                             "with the heartbeat off, on: with it on)")
    parser.add_argument("--storm-at", type=float, default=4.0,
                        help="storm: seconds into the rate run when every idle connection drops")
    args, passthrough = parser.parse_known_args()
    if args.scenario == "storm":
        return _storm(args, passthrough)
    if args.scenario != "mixed":
        return _one_run(args, passthrough, idle=args.conns if args.scenario == "idle" else 0,
                        ping_interval=args.ping_interval, label=args.target)
    runs = {"no-idle": ("no idle", 0, args.ping_interval), "off": ("idle, heartbeat off", args.conns, 0),
            "on": ("idle, heartbeat on", args.conns, args.ping_interval)}
    chosen = args.runs.split(",")
    if any(name not in runs for name in chosen):
        parser.error(f"--runs: a comma-separated list of {', '.join(runs)}")
    status = 0
    for name in chosen:
        label, idle, ping_interval = runs[name]
        status |= _one_run(args, passthrough, idle=idle, ping_interval=ping_interval, label=label)
    return status


def _one_run(args: argparse.Namespace, passthrough: list[str], *, idle: int, ping_interval: float | None,
             label: str) -> int:
    with tempfile.TemporaryDirectory(prefix="unichatd-crosscheck-") as tmp:
        server = BenchServer(Path(tmp), relay=args.target == "relay", cpu=0, ping_interval=ping_interval)
        if args.target == "unichatd":
            admin = server.admin()
            create_fanout_rooms(admin, args.rooms, args.members)
            if idle or args.scenario == "mixed":  # (mixed: the same rooms in all three runs)
                create_idle_rooms(admin, idle, args.subs, args.idle_rooms)
            admin.close()
        server.start()
        holder: subprocess.Popen[str] | None = None
        try:
            base = ["taskset", "-c", "1", args.wsload]
            target = ["--url", server.url, "--key", BENCH_KEY, "--server-pid", str(server.pid),
                      "--rooms", str(args.rooms), "--members", str(args.members), "--label", label]
            idle_options = ["--conns", str(idle), "--subs", str(args.subs),
                            "--idle-rooms", str(args.idle_rooms), "--room-base", str(args.rooms)]
            if args.scenario == "idle":
                command = base + ["idle"] + target + idle_options
            else:
                command = base + [args.scenario if args.scenario != "mixed" else "rate"] + target
                if idle:
                    # The idle connections stay attached (wsload answers pings) while the rate run goes on.
                    holder = subprocess.Popen(base + ["idle"] + target + idle_options + ["--settle", "100000"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                              preexec_fn=raise_fd_limit)
                    _wait_attached(holder)
            completed = subprocess.run(command + passthrough, capture_output=True, text=True,
                                       preexec_fn=raise_fd_limit, timeout=900)
        finally:
            if holder is not None:
                holder.terminate()
                holder.wait(10)
            server.stop()
    sys.stderr.write(completed.stderr)
    print(completed.stdout.strip())
    return completed.returncode


def _storm(args: argparse.Namespace, passthrough: list[str]) -> int:
    """A rate run while ``--conns`` idle connections are attached; at ``--storm-at`` the
    process holding them dies (every connection drops at once) and a new one connects
    them all again as fast as wsload can, while the rate run goes on."""
    import threading
    import time

    with tempfile.TemporaryDirectory(prefix="unichatd-crosscheck-") as tmp:
        server = BenchServer(Path(tmp), relay=False, cpu=0)
        admin = server.admin()
        create_fanout_rooms(admin, args.rooms, args.members)
        create_idle_rooms(admin, args.conns, args.subs, args.idle_rooms)
        admin.close()
        server.start()
        base = ["taskset", "-c", "1", args.wsload]
        target = ["--url", server.url, "--key", BENCH_KEY, "--server-pid", str(server.pid),
                  "--rooms", str(args.rooms), "--members", str(args.members)]
        idle_options = ["--conns", str(args.conns), "--subs", str(args.subs), "--idle-rooms", str(args.idle_rooms),
                        "--room-base", str(args.rooms), "--settle", "100000", "--connect-concurrency", "256"]
        holders: list[subprocess.Popen[str]] = []
        timing: dict[str, float] = {}

        def hold() -> subprocess.Popen[str]:
            holder = subprocess.Popen(base + ["idle"] + target + idle_options + ["--label", "storm"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      preexec_fn=raise_fd_limit)
            holders.append(holder)
            return holder

        def storm() -> None:
            time.sleep(args.storm_at)
            started = time.monotonic()
            holders[0].kill()  # every idle connection drops at once
            _wait_attached(hold())
            timing["reconnect_s"] = time.monotonic() - started

        try:
            _wait_attached(hold())
            stormer = threading.Thread(target=storm)
            stormer.start()
            completed = subprocess.run(base + ["rate"] + target + ["--label", "rate during storm"] + passthrough,
                                       capture_output=True, text=True, preexec_fn=raise_fd_limit, timeout=900)
            stormer.join(300)
        finally:
            for holder in holders:
                holder.kill()
                holder.wait(10)
            server.stop()
    sys.stderr.write(completed.stderr)
    print(completed.stdout.strip())
    print(f"all {args.conns} idle connections back {timing.get('reconnect_s', float('nan')):.1f} s after they dropped",
          file=sys.stderr)
    return completed.returncode


def _wait_attached(holder: subprocess.Popen[str]) -> None:
    """Until wsload reports its idle connections connected and subscribed."""
    assert holder.stderr is not None
    for line in holder.stderr:
        sys.stderr.write(line)
        if " subscriptions in " in line:
            return
    raise SystemExit("crosscheck: the idle wsload ended before its connections attached")


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    raise SystemExit(main())
