"""Administration from the CLI: synchronous, on its own connection.

The daemon learns of every room and membership change from ``membership_log``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import DirectRoom, NoSuchRoom
from ..models import Message, Refusal, RoomSummary
from . import membership, queries
from .operations import index_messages
from .queries import MESSAGES_WITH_SENDER, last_number, message_from_row
from .schema import immediate, open_sync

_IMPORT_SQL = "INSERT INTO messages(id, revision, room_id, sender_id, content, created_ms) VALUES (?,?,?,?,?,?)"


class AdminStore:
    """Room and participant changes made by the CLI, each logged for the running daemon."""

    def __init__(self, path: Path) -> None:
        self.conn = open_sync(path)

    def close(self) -> None:
        self.conn.close()

    def create_room(self, name: str, room_type: str, members: Sequence[int]) -> int:
        """A new room; for ``direct`` (two members), the pair's one direct room, new or not."""
        with immediate(self.conn) as conn:
            if room_type == "direct":
                first, second = sorted(set(members))  # (the CLI checked there are two)
                return membership.direct_room(conn, first, second).room_id
            return membership.create_room(conn, name, room_type, members).room_id

    def room_exists(self, room_id: int) -> bool:
        return membership.room_exists(self.conn, room_id)

    def add_members(self, room_id: int, user_ids: Sequence[int]) -> None:
        self._change(room_id, "add", user_ids)

    def remove_members(self, room_id: int, user_ids: Sequence[int]) -> None:
        self._change(room_id, "remove", user_ids)

    def _change(self, room_id: int, change: str, user_ids: Sequence[int]) -> None:
        """As the server API's change (the same function): refused for a missing or direct room."""
        with immediate(self.conn) as conn:
            outcome = membership.host_change(conn, room_id, change, user_ids=user_ids)
            if outcome is Refusal.NOT_FOUND:
                raise NoSuchRoom(room_id)
            if outcome is Refusal.DIRECT_ROOM:
                raise DirectRoom(room_id)

    def import_messages(self, rows: Iterable[tuple[int, int, str, int]], *, chunk: int = 50_000) -> None:
        """Bulk-load (room_id, sender_id, content, created_ms) rows, e.g. to seed a benchmark.

        Only for a database no daemon is serving: the daemon assigns message ids itself.
        Ids (and revisions, which share their counter) continue after the largest given.
        """
        with immediate(self.conn) as conn:
            numbers = itertools.count(last_number(conn) + 1)
            batch: list[tuple[int, int, int, int, str, int]] = []
            for room_id, sender_id, content, created_ms in rows:
                number = next(numbers)
                batch.append((number, number, room_id, sender_id, content, created_ms))
                if len(batch) >= chunk:
                    conn.executemany(_IMPORT_SQL, batch)
                    batch.clear()
            conn.executemany(_IMPORT_SQL, batch)
            conn.execute("UPDATE message_numbers SET last = ?", (next(numbers) - 1,))
            while index_messages(conn, 100_000):
                pass

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole database, taken while the daemon keeps writing.

        ``VACUUM INTO`` reads one snapshot (WAL lets writers go on) and writes a compact,
        self-contained file.  The target is created here first, empty and private (0600),
        which VACUUM INTO accepts; an existing target raises FileExistsError.
        """
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self.conn.execute("VACUUM INTO ?", (str(target),))
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    def export_room(self, room_id: int, *, chunk: int = 1000) -> Iterator[Message]:
        """Every message of the room, oldest first, fetched ``chunk`` rows at a time."""
        after = 0
        while True:
            rows = self.conn.execute(
                MESSAGES_WITH_SENDER + "WHERE m.room_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
                (room_id, after, chunk),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield message_from_row(row)
            after = rows[-1][0]

    def user_names(self, user_id: int) -> tuple[str, str]:
        """(username, first_name) as last seen in a token, or the placeholder name."""
        return queries.user_names(self.conn, user_id)

    def first_message_id(self, room_id: int) -> int | None:
        row = self.conn.execute("SELECT MIN(id) FROM messages WHERE room_id = ?", (room_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def list_rooms(self) -> list[RoomSummary]:
        summaries = []
        for room_id, name, room_type in self.conn.execute(
            "SELECT id, name, room_type FROM rooms ORDER BY id"
        ).fetchall():
            members = self.conn.execute(
                "SELECT u.id, u.username FROM participants p JOIN users u ON u.id = p.user_id "
                "WHERE p.room_id = ? ORDER BY u.id",
                (room_id,),
            ).fetchall()
            count = self.conn.execute(
                "SELECT COUNT(*) FROM messages WHERE room_id = ?", (room_id,)
            ).fetchone()[0]
            summaries.append(RoomSummary(room_id, name, room_type, members, count))
        return summaries
