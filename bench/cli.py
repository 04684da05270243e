"""``unichatd bench``: the command line of the load benchmark."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

import orjson

from .fanout import scenario_ceiling, scenario_fanout
from .history import scenario_history
from .idle import scenario_idle
from .mixed import DEFAULT_DURATION, scenario_mixed
from .search import scenario_search
from .storm import scenario_storm
from .webhooks import scenario_webhooks

# ---------------------------------------------------------------------------
# Command line


QUICK = {"rooms": 5, "members": 3, "duration": 2.0, "warmup": 0.5, "conns": 200, "idle_rooms": 10,
         "messages": 20_000, "list_rooms": 20, "catchup": 1_000, "pages": 50, "lists": 10, "queries": 50,
         "ping_interval": 1.0, "storm_seconds": 3.0, "backoff": 1.0}


MIXED_CONNS = 15_000
"""Idle connections in ``mixed`` when ``--conns`` is not given."""
STORM_CONNS = 19_000
"""Connections that drop and come back in ``storm`` when ``--conns`` is not given."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", choices=["fanout", "rate", "idle", "mixed", "history", "search", "ceiling",
                                                   "storm", "webhooks"])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds (for CI)")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0,
                        help=f"seconds measured (mixed: {DEFAULT_DURATION:g} unless given)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="rate: messages/s in all")
    parser.add_argument("--conns", type=int, default=18_000,
                        help=f"idle: connections (mixed: {MIXED_CONNS:,} unless given)")
    parser.add_argument("--subs", type=int, default=5, help="idle: rooms per connection")
    parser.add_argument("--idle-rooms", type=int, default=100)
    parser.add_argument("--relay", action="store_true", help="idle: measure the bare relay instead")
    parser.add_argument("--ping-interval", type=float, default=None,
                        help="mixed: the server's ping_interval in the heartbeat-on run (default: its default)")
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="history: big room size; search: messages in all")
    parser.add_argument("--list-rooms", type=int, default=200, help="history: rooms in the list; search: rooms")
    parser.add_argument("--queries", type=int, default=1000, help="search: queries per searcher")
    parser.add_argument("--catchup", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--storm-seconds", type=float, default=10.0,
                        help="storm: every idle connection drops and is back within this window")
    parser.add_argument("--backoff", type=float, default=6.0,
                        help="storm: longest reconnect backoff (past presence's 5 s grace, some are "
                             "announced offline and online again)")
    parser.add_argument("--url", help="target a running server instead (needs --key and its rooms)")
    parser.add_argument("--database", metavar="POSTGRES_URL",
                        help="the server under test on PostgreSQL (a schema of its own in this database)")
    parser.add_argument("--key", help="the running server's signing key")
    parser.add_argument("--config", help=argparse.SUPPRESS)  # (accepted as by every command; not used)


def run(args: argparse.Namespace) -> int:
    defaults = {action.dest: action.default for action in _parser()._actions}
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == defaults.get(name):
                setattr(args, name, value)
    elif args.scenario == "mixed":
        if args.duration == defaults["duration"]:
            args.duration = DEFAULT_DURATION
        if args.conns == defaults["conns"]:
            args.conns = MIXED_CONNS
    elif args.scenario == "storm" and args.conns == defaults["conns"]:
        args.conns = STORM_CONNS
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = None
    scenario = args.scenario
    if scenario == "fanout":
        result = scenario_fanout(args)
    elif scenario == "rate":
        result = scenario_fanout(args, rate=args.rate)
    elif scenario == "idle":
        result = scenario_idle(args)
    elif scenario == "mixed":
        result = scenario_mixed(args)
    elif scenario == "history":
        result = scenario_history(args)
    elif scenario == "search":
        result = scenario_search(args)
    elif scenario == "storm":
        result = scenario_storm(args)
    elif scenario == "webhooks":
        result = scenario_webhooks(args)
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
        if isinstance(value, dict) and key in ("unichatd", "relay", "delivery_ms", "api") or key in (
                "quiet", "storm", "without_webhook", "with_webhook"):
            print(f"{indent}{key}:", file=sys.stderr)
            _print_table(value, indent + "  ")
            continue
        if key == "runs":
            continue  # (in full in the JSON line)
        text = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
        print(f"{indent}{key:<22} {text}"[:width], file=sys.stderr)
    cpu = result.get("client_cpu_pct")
    if isinstance(cpu, float) and cpu >= 90:
        print(f"{indent}WARNING: the client used {cpu}% of its core: it, not the server, may be the "
              "bottleneck; cross-check with bench/crosscheck.py and a C load generator", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))
