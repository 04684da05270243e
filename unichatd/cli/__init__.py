"""The ``unichatd`` command line (operations.md): the parser, and the exit codes.

Stdout carries only what each command promises, so scripts can use it; messages for
people go to stderr.  Exit codes: 0 success, 1 runtime failure, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence

from ..config import load_config
from ..errors import ConfigError, UnichatError
from . import local, remote

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return value


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before and after the subcommand; SUPPRESS keeps a later
    # parser's absent option from erasing an earlier one's value.
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                               help="config file (default: $UNICHATD_CONFIG, ./unichatd.toml, "
                                    "/etc/unichatd/unichatd.toml, embedded defaults)")
    parser = argparse.ArgumentParser(prog="unichatd", parents=[config_option],
                                     description="A small real-time chat daemon.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[config_option], help="run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=_port)
    serve.add_argument("--db", metavar="PATH", help="SQLite database file, or a postgresql:// URL")

    commands.add_parser("init", parents=[config_option],
                        help="write a commented config with a fresh signing key")
    commands.add_parser("check-config", parents=[config_option],
                        help="validate the config and the signing key")

    token = commands.add_parser("token", parents=[config_option], help="mint a session token")
    token.add_argument("user_id", type=_positive_int, metavar="USER_ID")
    token.add_argument("--name", required=True, metavar="USERNAME")
    token.add_argument("--first-name", default="", metavar="F")
    token.add_argument("--ttl", type=_positive_int, metavar="SECONDS")

    invite = commands.add_parser("invite", parents=[config_option],
                                 help="print a sign-in link for the web client")
    invite.add_argument("user_id", type=_positive_int, metavar="USER_ID")
    invite.add_argument("--name", required=True, metavar="USERNAME")
    invite.add_argument("--first-name", default="", metavar="F")
    invite.add_argument("--ttl", type=_positive_int, metavar="SECONDS")

    room = commands.add_parser("room", parents=[config_option], help="manage rooms")
    room_commands = room.add_subparsers(dest="room_command", required=True, metavar="ACTION")
    create = room_commands.add_parser("create", parents=[config_option], help="create a room")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--type", default="group", dest="room_type", metavar="TYPE",
                        help="group (default) or direct (exactly two members)")
    create.add_argument("--member", type=_positive_int, action="append", default=[],
                        metavar="USER_ID")
    for action, text in (("add", "add participants"), ("remove", "remove participants")):
        change = room_commands.add_parser(action, parents=[config_option], help=text)
        change.add_argument("room_id", type=_positive_int, metavar="ROOM_ID")
        change.add_argument("user_ids", type=_positive_int, nargs="+", metavar="USER_ID")
    room_commands.add_parser("list", parents=[config_option], help="list rooms")

    # The benchmark lives outside the runtime package: its options are its own.
    commands.add_parser("bench", add_help=False, help="run the load benchmark (unichatd bench --help)")

    send = commands.add_parser("send", parents=[config_option],
                               help="post a message to a room and print its id")
    send.add_argument("room_id", type=_positive_int, metavar="ROOM_ID")
    send.add_argument("content", metavar="TEXT", nargs="?", default="",
                      help="the message (may be left out with --file)")
    send.add_argument("--as", dest="user_id", type=_positive_int, required=True, metavar="USER_ID")
    send.add_argument("--reply-to", type=_positive_int, metavar="MESSAGE_ID")
    send.add_argument("--file", action="append", default=[], metavar="PATH",
                      help="attach a file (repeat for several, at most 10)")
    _add_address_options(send)
    tail = commands.add_parser("tail", parents=[config_option], help="print a room's messages as they arrive")
    _add_address_options(tail)
    tail.add_argument("room_id", type=_positive_int, metavar="ROOM_ID")
    tail.add_argument("--as", dest="user_id", type=_positive_int, required=True, metavar="USER_ID")
    tail.add_argument("--since", type=int, default=None, metavar="MESSAGE_ID",
                      help="also print the messages after this id")
    tail.add_argument("--json", action="store_true", help="one JSON message object a line")

    backup = commands.add_parser("backup", parents=[config_option],
                                 help="write a consistent copy of the database (safe while serving)")
    backup.add_argument("path", metavar="PATH",
                        help="a new file, or a directory (an existing one, or PATH ending in /) "
                             "to write a timestamped copy into")
    backup.add_argument("--keep", type=_positive_int, metavar="N",
                        help="with a directory: keep the N newest copies, delete older ones")
    export = commands.add_parser("export", parents=[config_option],
                                 help="print a room's messages as JSON Lines, oldest first")
    export.add_argument("room_id", type=_positive_int, metavar="ROOM_ID")

    commands.add_parser("migrate", parents=[config_option],
                        help="create or upgrade the schema of the configured database")
    copy = commands.add_parser("copy", parents=[config_option],
                               help="copy a SQLite database into an empty PostgreSQL one")
    copy.add_argument("--from", dest="source", required=True, metavar="SQLITE_PATH")
    copy.add_argument("--to", dest="target", required=True, metavar="POSTGRES_URL")

    commands.add_parser("stop", parents=[config_option], help="stop the running server")
    status = commands.add_parser("status", parents=[config_option], help="ask the running server's /healthz")
    _add_address_options(status)
    return parser


def _add_address_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="the server's address (default: the server running on the "
                                       "configured database, else server.host)")
    parser.add_argument("--port", type=_port, help="the server's port (default: as for --host)")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    bench_at = _bench_position(arguments)
    # What follows `bench` is the benchmark's own command line, passed on as typed.
    parser = build_parser()
    args, extra = parser.parse_known_args(arguments if bench_at is None else arguments[:bench_at + 1])
    if extra:
        if getattr(args, "command", None) == "send" and not args.content and len(extra) == 1:
            # `send ROOM --as USER TEXT`: argparse settles the optional TEXT before the options.
            args.content = extra[0]
        else:
            parser.error("unrecognized arguments: " + " ".join(extra))
    config_path: str | None = getattr(args, "config", None)
    try:
        if bench_at is not None:
            return _bench(arguments[bench_at + 1:])
        if args.command == "init":
            return local.init(config_path)
        config = load_config(config_path)
        handler = _COMMANDS[args.command]
        return handler(config, args)
    except ConfigError as exc:
        print(f"unichatd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnichatError as exc:  # CommandFailed, StoreError, AlreadyServing
        print(f"unichatd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except sqlite3.Error as exc:
        print(f"unichatd: database error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _bench_position(arguments: list[str]) -> int | None:
    """Where the command ``bench`` stands (after an optional ``--config``), or None."""
    index = 0
    while index < len(arguments) and arguments[index].startswith("--config"):
        index += 1 if "=" in arguments[index] else 2
    if index < len(arguments) and arguments[index] == "bench":
        return index
    return None


def _bench(argv: list[str]) -> int:
    try:
        # (installed from bench/ by a package-dir mapping mypy cannot follow)
        from unichatd_bench.cli import main as bench_main  # type: ignore[import-not-found]
    except ImportError:
        print("unichatd: the load harness (unichatd_bench, from bench/ of the source tree) is not installed",
              file=sys.stderr)
        return EXIT_FAILURE
    status: int = bench_main(argv)
    return status


_COMMANDS = {
    "serve": local.serve,
    "check-config": local.check_config,
    "token": local.token,
    "invite": local.invite,
    "room": local.room,
    "backup": local.backup,
    "export": local.export,
    "migrate": local.migrate,
    "copy": local.copy,
    "send": remote.send,
    "tail": remote.tail,
    "stop": remote.stop,
    "status": remote.status,
}
