"""Cross-check ``unichatd bench`` with the C load generator wsload (a single C file, not
part of this repository: nothing else needs it).

Builds nothing itself: compile wsload first (see its README), then e.g.

    python bench/crosscheck.py --wsload /tmp/wsload fanout --rooms 100 --members 10 --window 1
    python bench/crosscheck.py --wsload /tmp/wsload fanout --target relay
    python bench/crosscheck.py --wsload /tmp/wsload idle --conns 18000 --subs 5

It lays out the rooms wsload expects on a fresh database, starts the server pinned to
core 0, runs wsload pinned to core 1, and prints wsload's JSON line with the target added.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from unichatd_bench.harness import BENCH_KEY, IDLE_USER_BASE, BenchServer, create_fanout_rooms


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wsload", required=True, help="path to the compiled wsload binary")
    parser.add_argument("scenario", choices=["fanout", "rate", "idle"])
    parser.add_argument("--target", choices=["unichatd", "relay"], default="unichatd")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--subs", type=int, default=5)
    parser.add_argument("--idle-rooms", type=int, default=100)
    args, passthrough = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="unichatd-crosscheck-") as tmp:
        server = BenchServer(Path(tmp), relay=args.target == "relay", cpu=0)
        if args.target == "unichatd":
            admin = server.admin()
            create_fanout_rooms(admin, args.rooms, args.members)
            if args.scenario == "idle":
                members: dict[int, list[int]] = {r: [] for r in range(args.idle_rooms)}
                step = args.idle_rooms // args.subs
                for i in range(args.conns):
                    for k in range(args.subs):
                        members[(i + k * step) % args.idle_rooms].append(IDLE_USER_BASE + 1 + i)
                for r in range(args.idle_rooms):
                    admin.create_room(f"idle-{r + 1}", "group", members[r])
            admin.close()
        server.start()
        try:
            command = ["taskset", "-c", "1", args.wsload, args.scenario, "--url", server.url, "--key", BENCH_KEY,
                       "--server-pid", str(server.pid), "--rooms", str(args.rooms), "--members", str(args.members),
                       "--label", args.target]
            if args.scenario == "idle":
                command += ["--conns", str(args.conns), "--subs", str(args.subs),
                            "--idle-rooms", str(args.idle_rooms), "--room-base", str(args.rooms)]
            completed = subprocess.run(command + passthrough, capture_output=True, text=True,
                                       preexec_fn=raise_fd_limit, timeout=900)
        finally:
            server.stop()
    sys.stderr.write(completed.stderr)
    print(completed.stdout.strip())
    return completed.returncode


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    raise SystemExit(main())
