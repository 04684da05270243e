"""The SQLite schema, its migrations, and how every connection to the database is set up."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreError

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        first_name TEXT NOT NULL DEFAULT '',
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        room_type TEXT NOT NULL DEFAULT 'group',
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE participants (
        room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id),
        last_read_id INTEGER NOT NULL DEFAULT 0,
        joined_ms INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX participants_by_user ON participants(user_id);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        sender_id INTEGER NOT NULL REFERENCES users(id),
        content TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        reply_to INTEGER,
        message_type TEXT NOT NULL DEFAULT 'text',
        client_msg_id TEXT
    );
    -- History pages and "messages after the marker" walk this index, and sender_id makes
    -- unread counts an index-only scan.
    CREATE INDEX messages_by_room ON messages(room_id, id, sender_id);
    CREATE UNIQUE INDEX messages_client_msg_id
        ON messages(sender_id, room_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
    CREATE TABLE membership_log (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL,
        user_id INTEGER,
        change TEXT NOT NULL
    );
    """,
    # 2: retention remembers, per room, the newest message id it deleted.
    """
    ALTER TABLE rooms ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def configure(conn: sqlite3.Connection) -> None:
    # WAL + synchronous=NORMAL: a committed transaction survives a crash of the
    # process (it is in the WAL file before COMMIT returns); on power loss the last
    # transactions before the crash may be lost, never corrupted.  See docs/reliability.md.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE … COMMIT`` (rolled back on any exception) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk does): a second ROLLBACK would
        # fail and hide the real cause.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def create_private(path: Path) -> None:
    """Make sure a data file is readable by its owner alone (mode 0600).

    SQLite gives the WAL and shared-memory files the mode of the database file, so a
    database created here keeps all three private; an older one is tightened.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    except OSError:
        return  # (a directory we cannot write: SQLite reports it with the path)
    for existing in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            mode = existing.stat().st_mode
            if mode & 0o077:
                existing.chmod(mode & 0o700)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` (``PRAGMA user_version``)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this unichatd ({SCHEMA_VERSION})"
        )
    for number in range(version, SCHEMA_VERSION):
        with immediate(conn):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number + 1}")


def open_sync(path: Path) -> sqlite3.Connection:
    """A configured, migrated connection for the CLI (autocommit; explicit transactions)."""
    create_private(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        configure(conn)
        migrate(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    return conn
