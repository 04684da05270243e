"""The webhook outbox (api.md, "Outgoing webhooks"): each event is written to
``webhook_events`` inside the transaction of the change it describes, so a committed
change always has its event and a rolled-back one never does.

Membership events are written by ``membership`` (every path that changes rooms goes
through it, the CLI's included); message events by the group-commit writer, from the
results of the batch it is about to commit, and only when a webhook wants them (a send
is the hot path).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from ..models import Change, Stored
from ..protocol.frames import format_timestamp, message_object
from .schema import now_ms

EVENTS = ("message_created", "message_updated", "message_deleted", "room_created", "member_added",
          "member_removed")
MESSAGE_EVENTS = frozenset({"message_created", "message_updated", "message_deleted"})


def add(conn: sqlite3.Connection, event: str, data: dict[str, Any]) -> None:
    """Queue one event; its id is unique for good (receivers drop repeats by it)."""
    now = now_ms()
    body = orjson.dumps({"event": event, "id": f"evt_{uuid.uuid4().hex}", "timestamp": format_timestamp(now),
                         "data": data})
    conn.execute("INSERT INTO webhook_events(event, body, created_ms) VALUES (?, ?, ?)", (event, body, now))


def record_writes(conn: sqlite3.Connection, results: Iterable[Any], wanted: frozenset[str]) -> None:
    """The message events among a batch's results (new messages, edits, reactions, deletes)."""
    for result in results:
        if isinstance(result, Stored):
            if result.created and "message_created" in wanted:
                add(conn, "message_created", message_object(result.message))
        elif isinstance(result, Change) and result.changed:
            event = "message_deleted" if result.message.deleted else "message_updated"
            if event in wanted:
                add(conn, event, message_object(result.message))


def room_data(conn: sqlite3.Connection, room_id: int) -> dict[str, Any]:
    """A room as a ``room_created`` event shows it, as the transaction sees it."""
    name, room_type, owner_id, created_ms = conn.execute(
        "SELECT name, room_type, owner_id, created_ms FROM rooms WHERE id = ?", (room_id,)).fetchone()
    participants = [{"id": user_id, "username": username, "first_name": first_name}
                    for user_id, username, first_name in conn.execute(
                        "SELECT u.id, u.username, u.first_name FROM participants p JOIN users u ON u.id = p.user_id "
                        "WHERE p.room_id = ? ORDER BY u.id", (room_id,))]
    return {"id": room_id, "name": name, "room_type": room_type, "owner_id": owner_id,
            "created_at": format_timestamp(created_ms), "participants": participants}
