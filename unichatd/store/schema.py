"""The SQLite schema, its migrations, and how every connection to the database is set up."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import StoreError


def _thread_roots(conn: sqlite3.Connection) -> None:
    """Give every reply of a v1 database the root of its thread.

    A reply always follows what it answers, so one pass in id order knows each parent's
    root (a parent that is not itself a reply is the root).
    """
    roots: dict[int, int] = {}
    updates: list[tuple[int, int]] = []
    for message_id, reply_to in conn.execute(
        "SELECT id, reply_to FROM messages WHERE reply_to IS NOT NULL ORDER BY id"
    ):
        root = roots.get(reply_to, reply_to)
        roots[message_id] = root
        updates.append((root, message_id))
    conn.executemany("UPDATE messages SET thread_root_id = ? WHERE id = ?", updates)


def _direct_pairs(conn: sqlite3.Connection) -> None:
    """Give the direct rooms the CLI made before v1.1 their pair's key (the oldest room of
    a pair keeps it), so create_direct finds them instead of making another."""
    taken: set[str] = set()
    rows = conn.execute(
        "SELECT r.id, MIN(p.user_id), MAX(p.user_id) FROM rooms r JOIN participants p ON p.room_id = r.id "
        "WHERE r.room_type = 'direct' GROUP BY r.id HAVING COUNT(*) = 2 ORDER BY r.id"
    ).fetchall()
    for room_id, low, high in rows:
        key = f"{low}:{high}"
        if key not in taken:
            taken.add(key)
            conn.execute("UPDATE rooms SET direct_key = ? WHERE id = ?", (key, room_id))


MigrationStep = str | Callable[[sqlite3.Connection], None]
Migration = MigrationStep | tuple[MigrationStep, ...]

MIGRATIONS: tuple[Migration, ...] = (
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
    # 3: protocol v1.1's message lifecycle: edits, tombstones, reactions, threads,
    # mentions, revisions and full-text search.
    (
        """
        ALTER TABLE rooms ADD COLUMN owner_id INTEGER;
        ALTER TABLE messages ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE messages ADD COLUMN edited_ms INTEGER;
        ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE messages ADD COLUMN thread_root_id INTEGER;
        ALTER TABLE messages ADD COLUMN reply_count INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE messages ADD COLUMN last_reply_ms INTEGER;
        -- The mentioned user ids, comma separated, and the reactions as JSON
        -- ([[emoji, [user ids]], ...]): a history page reads them with the row.
        ALTER TABLE messages ADD COLUMN mentions TEXT;
        ALTER TABLE messages ADD COLUMN reactions TEXT;
        -- 1 once the message changed after its creation (edit, delete, reaction, reply).
        ALTER TABLE messages ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
        -- Ids grow in commit order within a room, so they are valid first revisions.
        UPDATE messages SET revision = id;
        -- The last number given as a message id or a revision (they share one counter),
        -- kept here because retention may delete the rows that held the largest ones:
        -- a number is never given twice.
        CREATE TABLE message_numbers (last INTEGER NOT NULL);
        INSERT INTO message_numbers SELECT MAX(
            (SELECT COALESCE(MAX(id), 0) FROM messages), (SELECT COALESCE(MAX(pruned_through), 0) FROM rooms));
        -- Partial indexes: a new message (not deleted, not changed, not a reply) touches
        -- none of them, so a send writes the same index entries as in v1.
        CREATE INDEX messages_deleted ON messages(room_id, id, sender_id) WHERE deleted = 1;
        CREATE INDEX messages_changed ON messages(room_id, revision) WHERE changed = 1;
        CREATE INDEX messages_by_thread ON messages(thread_root_id, id) WHERE thread_root_id IS NOT NULL;
        -- rowid order is the order of first use that reactions lists keep.
        CREATE TABLE reactions (
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            emoji TEXT NOT NULL,
            user_id INTEGER NOT NULL,
            UNIQUE (message_id, emoji, user_id)
        );
        -- Who is mentioned where: mention counts are "mentions above the read marker".
        CREATE TABLE mentions (
            room_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            PRIMARY KEY (room_id, user_id, message_id)
        ) WITHOUT ROWID;
        CREATE INDEX mentions_by_message ON mentions(message_id);
        """,
        _thread_roots,
        """
        UPDATE messages SET
            reply_count = (SELECT COUNT(*) FROM messages r WHERE r.thread_root_id = messages.id),
            last_reply_ms = (SELECT MAX(r.created_ms) FROM messages r WHERE r.thread_root_id = messages.id)
        WHERE id IN (SELECT thread_root_id FROM messages WHERE thread_root_id IS NOT NULL);
        -- The search index reads the text from messages (external content): words are
        -- case- and accent-folded; the room id is a column of its own, so a search is
        -- limited to the user's rooms inside the index.
        CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, room_id, content='messages', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2'
        );
        INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
        -- New messages are indexed in the background, in large batches, not inside the
        -- commit that acknowledges them (see operations.IndexMessages): `through` is the
        -- newest message id the index holds.
        CREATE TABLE search_index (through INTEGER NOT NULL);
        INSERT INTO search_index SELECT COALESCE(MAX(id), 0) FROM messages;
        -- Changes to indexed messages, by any path (edits and deletes, retention, a room's
        -- cascade), keep the index in step; a message not indexed yet is indexed later as
        -- it then is.
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
        WHEN old.id <= (SELECT through FROM search_index) BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content, room_id)
                VALUES ('delete', old.id, old.content, old.room_id);
        END;
        CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
        WHEN old.id <= (SELECT through FROM search_index) BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content, room_id)
                VALUES ('delete', old.id, old.content, old.room_id);
            INSERT INTO messages_fts(rowid, content, room_id) VALUES (new.id, new.content, new.room_id);
        END;
        """,
    ),
    # 4: protocol v1.1's people, rooms and files: presence's last_seen, one direct room
    # per pair, files and the messages that show them.
    ("""
    ALTER TABLE users ADD COLUMN last_seen_ms INTEGER;
    CREATE INDEX users_by_username ON users(username COLLATE NOCASE);
    CREATE INDEX users_by_first_name ON users(first_name COLLATE NOCASE);
    -- "<smaller user id>:<larger>": the unique index is what makes create_direct give
    -- one room per pair, whoever asks first.
    ALTER TABLE rooms ADD COLUMN direct_key TEXT;
    CREATE UNIQUE INDEX rooms_direct ON rooms(direct_key) WHERE direct_key IS NOT NULL;
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        uploader_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        storage_key TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL
    );
    -- The daily upload quota sums a user's files of the last 24 hours.
    CREATE INDEX files_by_uploader ON files(uploader_id, created_ms);
    -- Where a file was posted: who may download it.  A deleted or pruned message takes
    -- its rows along.
    CREATE TABLE file_posts (
        file_id INTEGER NOT NULL REFERENCES files(id),
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        room_id INTEGER NOT NULL,
        PRIMARY KEY (file_id, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX file_posts_by_message ON file_posts(message_id);
    -- The message's file objects as JSON ([[id, name, size, content_type], ...]), read
    -- with the row like its reactions.
    ALTER TABLE messages ADD COLUMN attachments TEXT;
    """, _direct_pairs),
    # 5: the host application's server API and webhooks (api.md): system messages have
    # user 0 as their sender row, revocations, and the webhook outbox.
    """
    INSERT OR IGNORE INTO users(id, username, first_name, updated_ms) VALUES (0, 'system', '', 0);
    -- Tokens of the user issued (iat, in ms) before this are refused.
    ALTER TABLE users ADD COLUMN revoked_before_ms INTEGER;
    -- Every event a webhook may want, written in the transaction of the change it
    -- describes; `body` is the JSON POSTed, `seq` the delivery order.
    CREATE TABLE webhook_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event TEXT NOT NULL,
        body BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );
    -- How far each receiver (by URL) has taken the events.
    CREATE TABLE webhook_cursors (
        url TEXT PRIMARY KEY,
        through INTEGER NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> Iterator[str]:
    """The complete SQL statements of ``script`` (trigger bodies hold semicolons of their own)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending
            pending = ""
    if pending.strip() and not pending.strip().startswith("--"):
        yield pending


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
        migration = MIGRATIONS[number]
        steps = migration if isinstance(migration, tuple) else (migration,)
        with immediate(conn):
            for step in steps:
                if isinstance(step, str):
                    for statement in statements(step):
                        conn.execute(statement)
                else:
                    step(conn)
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
