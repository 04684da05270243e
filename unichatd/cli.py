"""The ``unichatd`` command line (operations.md): serve, init, token, room, stop, status.

Stdout carries only what each command promises, so scripts can use it; messages for
people go to stderr.  Exit codes: 0 success, 1 runtime failure, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sqlite3
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .auth import mint_token
from .config import (
    Config,
    load_config,
    load_keyring,
    load_tls,
    render_config,
    with_overrides,
    write_private_file,
)
from .errors import ConfigError
from .instance import AlreadyServing, Instance, running_instance
from .store import AdminStore, StoreError

ROOM_TYPES = ("group", "direct")
"""``group``: any number of participants; ``direct``: a conversation of exactly two."""
BACKUP_PREFIX = "unichatd-"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Failure(Exception):
    """A runtime failure reported on stderr with exit code 1."""


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
    serve.add_argument("--db", metavar="PATH", help="SQLite database file")

    commands.add_parser("init", parents=[config_option],
                        help="write a commented config with a fresh signing key")
    commands.add_parser("check-config", parents=[config_option],
                        help="validate the config and the signing key")

    token = commands.add_parser("token", parents=[config_option], help="mint a session token")
    token.add_argument("user_id", type=_positive_int, metavar="USER_ID")
    token.add_argument("--name", required=True, metavar="USERNAME")
    token.add_argument("--first-name", default="", metavar="F")
    token.add_argument("--ttl", type=_positive_int, metavar="SECONDS")

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

    from .bench import add_arguments as add_bench_arguments

    bench = commands.add_parser("bench", parents=[config_option], help="run the load benchmark")
    add_bench_arguments(bench)

    send = commands.add_parser("send", parents=[config_option],
                               help="post a message to a room and print its id")
    send.add_argument("room_id", type=_positive_int, metavar="ROOM_ID")
    send.add_argument("content", metavar="TEXT")
    send.add_argument("--as", dest="user_id", type=_positive_int, required=True, metavar="USER_ID")
    send.add_argument("--reply-to", type=_positive_int, metavar="MESSAGE_ID")
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

    commands.add_parser("stop", parents=[config_option], help="stop the running server")
    status = commands.add_parser("status", parents=[config_option], help="ask the running server's /healthz")
    _add_address_options(status)
    return parser


def _add_address_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="the server's address (default: the server running on the "
                                       "configured database, else server.host)")
    parser.add_argument("--port", type=_port, help="the server's port (default: as for --host)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_path: str | None = getattr(args, "config", None)
    try:
        if args.command == "init":
            return _init(config_path)
        if args.command == "bench":
            from .bench import run as run_bench

            return run_bench(args)
        config = load_config(config_path)
        handler = _COMMANDS[args.command]
        return handler(config, args)
    except ConfigError as exc:
        print(f"unichatd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (_Failure, StoreError, AlreadyServing) as exc:
        print(f"unichatd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except sqlite3.Error as exc:
        print(f"unichatd: database error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _init(config_path: str | None) -> int:
    import secrets

    path = Path(config_path or "unichatd.toml")
    try:
        write_private_file(path, render_config(secrets.token_hex(32)))
    except FileExistsError:
        raise ConfigError(str(path), None, "already exists; refusing to overwrite") from None
    except OSError as exc:
        raise _Failure(f"cannot write {path}: {exc.strerror}") from None
    print(path)
    return EXIT_OK


def _serve(config: Config, args: argparse.Namespace) -> int:
    from .log import configure_logging
    from .server import run

    overrides = {"host": args.host, "port": args.port, "database": args.db}
    config = with_overrides(config, **overrides)
    configure_logging(config.log)
    keys = load_keyring(config, create=True)
    import structlog

    log = structlog.get_logger("unichatd.cli")
    if config.source == "<embedded defaults>":
        log.warning("config.embedded_defaults", key_file=str(config.key_path),
                    database=str(config.database_path))
    try:
        run(config, keys, overrides)
    except OSError as exc:
        raise _Failure(f"cannot serve on {config.server.host}:{config.server.port}: "
                       f"{exc.strerror or exc}") from None
    return EXIT_OK


def _check_config(config: Config, args: argparse.Namespace) -> int:
    load_keyring(config, create=False)
    load_tls(config)
    print(f"{config.source}: ok", file=sys.stderr)
    return EXIT_OK


def _token(config: Config, args: argparse.Namespace) -> int:
    keys = load_keyring(config, create=True)
    ttl = args.ttl if args.ttl is not None else config.auth.token_ttl
    print(mint_token(keys, args.user_id, args.name, first_name=args.first_name, ttl=ttl))
    return EXIT_OK


def _room(config: Config, args: argparse.Namespace) -> int:
    store = AdminStore(config.database_path)
    try:
        if args.room_command == "create":
            if not args.name.strip():
                raise ConfigError("command line", "NAME", "room name must not be empty")
            if args.room_type not in ROOM_TYPES:
                raise ConfigError("command line", "--type", f"must be one of {', '.join(ROOM_TYPES)}")
            if args.room_type == "direct" and len(set(args.member)) != 2:
                raise ConfigError("command line", "--member", "a direct room has exactly two members")
            print(store.create_room(args.name, args.room_type, args.member))
        elif args.room_command in ("add", "remove"):
            change = store.add_members if args.room_command == "add" else store.remove_members
            try:
                change(args.room_id, args.user_ids)
            except LookupError as exc:
                raise _Failure(str(exc.args[0])) from None
        else:
            _print_rooms(store)
    finally:
        store.close()
    return EXIT_OK


def _print_rooms(store: AdminStore) -> None:
    rows = [("ID", "NAME", "TYPE", "MESSAGES", "PARTICIPANTS")]
    for room in store.list_rooms():
        members = ", ".join(f"{name}({uid})" for uid, name in room.participants)
        rows.append((str(room.id), room.name, room.room_type, str(room.message_count), members))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[4])


def _backup(config: Config, args: argparse.Namespace) -> int:
    target = Path(args.path).resolve()
    if args.path.endswith("/"):  # a directory, made if need be (cron's first run)
        target.mkdir(parents=True, exist_ok=True)
    rotate = target.is_dir()
    if rotate:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = target / f"{BACKUP_PREFIX}{stamp}.db"
        for extra in range(1, 100):  # two backups within the same second
            if not target.exists():
                break
            target = target.with_name(f"{BACKUP_PREFIX}{stamp}-{extra}.db")
    elif args.keep is not None:
        raise ConfigError("command line", "--keep", f"needs PATH to be a directory; {target} is not one")
    if target.exists():
        raise _Failure(f"{target} already exists; refusing to overwrite")
    store = AdminStore(config.database_path)
    try:
        store.backup(target)
    except FileExistsError:
        raise _Failure(f"{target} already exists; refusing to overwrite") from None
    finally:
        store.close()
    print(target)
    if rotate and args.keep is not None:
        copies = sorted(target.parent.glob(f"{BACKUP_PREFIX}*.db"), key=lambda path: path.stat().st_mtime_ns)
        for old in copies[:-args.keep]:
            old.unlink(missing_ok=True)
    return EXIT_OK


def _export(config: Config, args: argparse.Namespace) -> int:
    import orjson

    store = AdminStore(config.database_path)
    try:
        if not store.room_exists(args.room_id):
            raise _Failure(f"room {args.room_id} does not exist")
        out = sys.stdout.buffer
        for message in store.export_room(args.room_id):
            out.write(orjson.dumps(message.to_wire()) + b"\n")
        out.flush()
    except BrokenPipeError:  # `unichatd export 1 | head` is fine; keep Python's exit quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        store.close()
    return EXIT_OK


def _stop(config: Config, args: argparse.Namespace) -> int:
    pid_file = config.server.pid_file
    if pid_file:
        path = config.resolve(pid_file)
        try:
            pid = int(path.read_text().strip())
        except FileNotFoundError:
            raise _Failure(f"{path} does not exist: is the server running?") from None
        except ValueError:
            raise _Failure(f"{path} does not hold a process id") from None
    else:
        # Without a pid file, the server is the one holding the database's lock.
        instance = running_instance(config.database_path)
        if instance is None:
            raise _Failure(f"no server is running on {config.database_path}")
        pid = instance.pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        if pid_file:
            config.resolve(pid_file).unlink(missing_ok=True)
        raise _Failure(f"no process {pid}" + (f" (stale {pid_file} removed)" if pid_file else "")) from None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return EXIT_OK
        time.sleep(0.05)
    raise _Failure(f"process {pid} did not exit within 30 s")


def _server_address(config: Config, args: argparse.Namespace) -> Instance:
    """Where the server is: --host/--port, else the server running on this database, else
    the config's address."""
    running = running_instance(config.database_path)
    if running is not None:
        base = running
    else:
        server = config.server
        base = Instance(0, server.host, server.port, server.path, bool(server.tls_cert))
    return dataclasses.replace(base, host=args.host or base.host,
                               port=args.port if args.port is not None else base.port)


def _tls_context(config: Config, instance: Instance) -> ssl.SSLContext | None:
    """For a local TLS server: its own certificate is trusted, whatever name it carries."""
    if not instance.tls:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    # The configured certificate itself is trusted, even without its issuer at hand.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if config.server.tls_cert:
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_verify_locations(config.resolve(config.server.tls_cert))
    return context


def _status(config: Config, args: argparse.Namespace) -> int:
    instance = _server_address(config, args)
    url = f"{instance.http_url}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5, context=_tls_context(config, instance)) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise _Failure(f"no server answers at {url}: {exc}") from None
    print(body)
    return EXIT_OK


def _client_for(config: Config, args: argparse.Namespace) -> tuple[str, str, ssl.SSLContext | None]:
    """The server's URL, a short-lived token for ``args.user_id`` under their stored name,
    and the TLS context to reach it with."""
    keys = load_keyring(config, create=False)
    admin = AdminStore(config.database_path)
    try:
        username, first_name = admin.user_names(args.user_id)
    finally:
        admin.close()
    instance = _server_address(config, args)
    token = mint_token(keys, args.user_id, username, first_name=first_name, ttl=3600)
    return instance.ws_url, token, _tls_context(config, instance)


def _send(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    from .client import ChatClient, ClientRequestError, ConnectionLost

    url, token, tls = _client_for(config, args)

    async def post() -> int:
        async with ChatClient(url, token, reconnect=False, ssl=tls) as chat:
            message = await chat.send(args.room_id, args.content, reply_to=args.reply_to)
            return int(message["id"])

    try:
        print(asyncio.run(post()))
    except ClientRequestError as exc:
        raise _Failure(f"the server refused the message: {exc}") from None
    except (ConnectionLost, OSError, TimeoutError) as exc:
        raise _Failure(f"cannot reach the server at {url}: {exc}") from None
    return EXIT_OK


def _tail(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from .client import ChatClient, ClientRequestError, ConnectionLost

    url, token, tls = _client_for(config, args)

    def show(message: dict[str, object]) -> None:
        if args.json:
            print(orjson.dumps(message).decode(), flush=True)
        else:
            sender = message["sender"]
            name = sender["username"] if isinstance(sender, dict) else "?"
            print(f"{message['timestamp']} #{message['id']} {name}: {message['content']}", flush=True)

    async def follow() -> None:
        async with ChatClient(url, token, ssl=tls) as chat:
            await chat.subscribe(args.room_id, args.since)
            async for event in chat:
                if event["type"] == "new_message" and event["room_id"] == args.room_id:
                    show(event["message"])
                elif event["type"] == "unsubscribed" and event.get("room_id") == args.room_id:
                    raise _Failure(f"unsubscribed from room {args.room_id}: {event.get('reason', '')}")

    try:
        asyncio.run(follow())
    except ClientRequestError as exc:
        raise _Failure(f"the server refused: {exc}") from None
    except (ConnectionLost, OSError, TimeoutError) as exc:
        raise _Failure(f"cannot reach the server at {url}: {exc}") from None
    return EXIT_OK


_COMMANDS = {
    "serve": _serve,
    "check-config": _check_config,
    "token": _token,
    "room": _room,
    "backup": _backup,
    "export": _export,
    "send": _send,
    "tail": _tail,
    "stop": _stop,
    "status": _status,
}
