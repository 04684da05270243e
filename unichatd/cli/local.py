"""The commands that work on the files and the database themselves: init, serve,
check-config, token, room, backup, export, migrate, copy."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..auth import mint_token
from ..config import EMBEDDED, Config, files_beside, load_tls, render_config, with_overrides
from ..errors import CommandFailed, ConfigError
from ..files import copy_files
from ..keys import load_api_key, load_keyring, write_private_file
from ..store import AdminStore

if TYPE_CHECKING:
    from ..store.postgres import PostgresAdmin

EXIT_OK = 0
ROOM_TYPES = ("group", "direct")
"""``group``: any number of participants; ``direct``: a conversation of exactly two."""
BACKUP_PREFIX = "unichatd-"


API_KEY_FILE = "unichatd-api.key"


def init(config_path: str | None) -> int:
    """Write a commented config holding a fresh signing key, and the server API's key in
    a file of its own beside it (both mode 0600)."""
    import secrets

    path = Path(config_path or "unichatd.toml")
    api_key_path = path.parent / API_KEY_FILE
    if path.exists():
        raise ConfigError(str(path), None, "already exists; refusing to overwrite")
    try:
        write_private_file(api_key_path, secrets.token_urlsafe(32) + "\n")
    except FileExistsError:
        pass  # (kept: an application may already use it)
    except OSError as exc:
        raise CommandFailed(f"cannot write {api_key_path}: {exc.strerror}") from None
    try:
        write_private_file(path, render_config(secrets.token_hex(32), API_KEY_FILE))
    except FileExistsError:
        raise ConfigError(str(path), None, "already exists; refusing to overwrite") from None
    except OSError as exc:
        raise CommandFailed(f"cannot write {path}: {exc.strerror}") from None
    print(path)
    return EXIT_OK


def serve(config: Config, args: argparse.Namespace) -> int:
    from ..app import run
    from ..log import configure_logging

    overrides = {"host": args.host, "port": args.port, "database": args.db}
    config = with_overrides(config, **overrides)
    configure_logging(config.log)
    keys = load_keyring(config, create=True)
    import structlog

    log = structlog.get_logger("unichatd.cli")
    if config.source == EMBEDDED:
        log.warning("config.embedded_defaults", key_file=str(config.key_path),
                    database=config.database_name)
    try:
        run(config, keys, overrides)
    except OSError as exc:
        raise CommandFailed(f"cannot serve on {config.server.host}:{config.server.port}: "
                       f"{exc.strerror or exc}") from None
    return EXIT_OK


def check_config(config: Config, args: argparse.Namespace) -> int:
    load_keyring(config, create=False)
    load_tls(config)
    load_api_key(config)
    print(f"{config.source}: ok", file=sys.stderr)
    return EXIT_OK


def token(config: Config, args: argparse.Namespace) -> int:
    keys = load_keyring(config, create=True)
    ttl = args.ttl if args.ttl is not None else config.auth.token_ttl
    print(mint_token(keys, args.user_id, args.name, first_name=args.first_name, ttl=ttl))
    return EXIT_OK


def invite(config: Config, args: argparse.Namespace) -> int:
    """A sign-in link for the web client: the token rides in the fragment, which browsers
    never send to a server (nor put in a Referer)."""
    keys = load_keyring(config, create=True)
    ttl = args.ttl if args.ttl is not None else config.auth.token_ttl
    token = mint_token(keys, args.user_id, args.name, first_name=args.first_name, ttl=ttl)
    print(f"{config.public_url}/#token={token}")
    return EXIT_OK


def room(config: Config, args: argparse.Namespace) -> int:
    store = open_admin(config)
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
            change(args.room_id, args.user_ids)
        else:
            _print_rooms(store)
    finally:
        store.close()
    return EXIT_OK


def _print_rooms(store: AdminStore | PostgresAdmin) -> None:
    rows = [("ID", "NAME", "TYPE", "MESSAGES", "PARTICIPANTS")]
    for room in store.list_rooms():
        members = ", ".join(f"{name}({uid})" for uid, name in room.participants)
        rows.append((str(room.id), room.name, room.room_type, str(room.message_count), members))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[4])


def backup(config: Config, args: argparse.Namespace) -> int:
    if config.database_url:
        raise CommandFailed("backup copies a SQLite database; back a PostgreSQL one up with pg_dump "
                            "(and copy the files directory beside it)")
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
        raise CommandFailed(f"{target} already exists; refusing to overwrite")
    store = AdminStore(config.database_path)
    try:
        store.backup(target)
    except FileExistsError:
        raise CommandFailed(f"{target} already exists; refusing to overwrite") from None
    finally:
        store.close()
    # After the database's snapshot: every file it names is complete on disk by then.
    copy_files(config.files_path, files_beside(target))
    print(target)
    if rotate and args.keep is not None:
        copies = sorted(target.parent.glob(f"{BACKUP_PREFIX}*.db"), key=lambda path: path.stat().st_mtime_ns)
        for old in copies[:-args.keep]:
            old.unlink(missing_ok=True)
            shutil.rmtree(files_beside(old), ignore_errors=True)
    return EXIT_OK


def export(config: Config, args: argparse.Namespace) -> int:
    import orjson

    from ..protocol import message_object

    store = open_admin(config)
    try:
        if not store.room_exists(args.room_id):
            raise CommandFailed(f"room {args.room_id} does not exist")
        out = sys.stdout.buffer
        for message in store.export_room(args.room_id):
            out.write(orjson.dumps(message_object(message)) + b"\n")
        out.flush()
    except BrokenPipeError:  # `unichatd export 1 | head` is fine; keep Python's exit quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        store.close()
    return EXIT_OK


def open_admin(config: Config) -> AdminStore | PostgresAdmin:
    from ..app import open_admin as open_configured

    return open_configured(config)


def migrate(config: Config, args: argparse.Namespace) -> int:
    """Bring the configured database's schema up to date (SQLite does it on every open)."""
    import asyncio

    from ..store import open_sync
    from ..store.postgres import migrate_database

    if not config.database_url:
        open_sync(config.database_path).close()
        print(f"{config.database_name}: schema is current", file=sys.stderr)
        return EXIT_OK
    before, after = asyncio.run(migrate_database(config.database_url))
    if before == after:
        print(f"{config.database_name}: schema is current", file=sys.stderr)
    else:
        print(f"{config.database_name}: schema version {before} -> {after}", file=sys.stderr)
    return EXIT_OK


def copy(config: Config, args: argparse.Namespace) -> int:
    """Move a single-host installation over: every row of a SQLite database into an empty,
    migrated PostgreSQL database (the uploaded files stay where ``files_dir`` says)."""
    from ..config import POSTGRES_SCHEMES
    from ..store.postgres import PostgresAdmin

    if not args.target.startswith(POSTGRES_SCHEMES):
        raise ConfigError("command line", "--to", "must be a postgresql:// URL")
    source = Path(args.source).expanduser().resolve()
    admin = PostgresAdmin(args.target)
    try:
        counts = admin.copy_from(source)
    finally:
        admin.close()
    print(f"copied {counts['messages']} messages, {counts['rooms']} rooms and {counts['users']} users "
          f"from {source}", file=sys.stderr)
    return EXIT_OK
