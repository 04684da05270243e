"""The write half of a store, whatever its database: each write is an operation value
(``operations``) handed to the group-commit writer, and its future resolves after the
commit that holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TypeVar

from ..errors import StoreError
from ..metrics import BATCH_BOUNDS, LATENCY_BOUNDS, Histogram
from ..models import Change, FileRef, NewMessage, ReadResult, Refusal, Resynced, RoomChanged, Snapshot, Stored
from .operations import (
    AppendMessage,
    Barrier,
    ChangeRoom,
    CreateRoom,
    DeleteMessage,
    EditMessage,
    HostChangeRoom,
    LoadRooms,
    MarkRead,
    OpenDirect,
    Operation,
    Prune,
    React,
    Resync,
    RevokeUser,
    SetLastSeen,
    StoreFile,
    UpsertUser,
    WebhookProgress,
)
from .writer import CommitGate, GroupCommitWriter

T = TypeVar("T")


class WritingStore:
    """The writes of :class:`~unichatd.interfaces.MessageStore`, through ``self._writer``
    (set by the backend's ``open``)."""

    def __init__(self) -> None:
        self._writer: GroupCommitWriter | None = None
        self.batch_sizes = Histogram(BATCH_BOUNDS)
        """Operations per group-commit transaction (for metrics)."""
        self.write_latency = Histogram(LATENCY_BOUNDS)
        """Seconds per group-commit transaction, the hop to the database included (for metrics)."""

    def set_commit_gate(self, gate: CommitGate) -> None:
        """From now on each committed batch is answered through ``gate`` (``cluster``)."""
        assert self._writer is not None, "the store is not open"
        self._writer.gate = gate

    # -- writes (each resolved after the commit that holds it) -------------------

    def _submit(self, operation: Operation[T]) -> asyncio.Future[T]:
        if self._writer is None:  # (closed, or never opened): the submitter gets the error
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            future.set_exception(StoreError("store is closing"))
            return future
        return self._writer.submit(operation)

    def append_message(self, message: NewMessage) -> asyncio.Future[Stored]:
        """Store a message; resolves to it (or to the original, for a repeated client_msg_id)."""
        return self._submit(AppendMessage(message))

    def mark_read(self, room_id: int, user_id: int, message_ids: Sequence[int]) -> asyncio.Future[ReadResult | None]:
        """Move the user's read marker; resolves to None when they are not a participant."""
        return self._submit(MarkRead(room_id, user_id, tuple(message_ids)))

    def edit_message(self, room_id: int, message_id: int, user_id: int, content: str,
                     mentions: tuple[int, ...]) -> asyncio.Future[Change | Refusal]:
        return self._submit(EditMessage(room_id, message_id, user_id, content, mentions))

    def delete_message(self, room_id: int, message_id: int, user_id: int) -> asyncio.Future[Change | Refusal]:
        return self._submit(DeleteMessage(room_id, message_id, user_id))

    def react(self, room_id: int, message_id: int, user_id: int, emoji: str,
              add: bool) -> asyncio.Future[Change | Refusal]:
        return self._submit(React(room_id, message_id, user_id, emoji, add))

    def upsert_user(self, user_id: int, username: str, first_name: str) -> asyncio.Future[None]:
        return self._submit(UpsertUser(user_id, (username, first_name)))

    def prune(self, room_id: int, before_ms: int, limit: int) -> asyncio.Future[int]:
        """Delete up to ``limit`` of the room's oldest messages created before ``before_ms``.

        Resolves to how many were deleted; a small ``limit`` keeps each transaction short,
        so live writes queued meanwhile wait at most one such batch.
        """
        return self._submit(Prune(room_id, before_ms, limit))

    def set_last_seen(self, seen: Sequence[tuple[int, int]]) -> asyncio.Future[None]:
        return self._submit(SetLastSeen(tuple(seen)))

    def create_room(self, name: str, room_type: str, owner_id: int | None,
                    member_ids: Sequence[int]) -> asyncio.Future[RoomChanged]:
        return self._submit(CreateRoom(name, room_type, owner_id, tuple(member_ids)))

    def host_change_room(self, room_id: int, change: str, *, user_ids: Sequence[int] = (), name: str = "",
                         owner_id: int | None = None) -> asyncio.Future[RoomChanged | Refusal]:
        return self._submit(HostChangeRoom(room_id, change, tuple(user_ids), name, owner_id))

    def revoke_user(self, user_id: int, before_ms: int) -> asyncio.Future[None]:
        return self._submit(RevokeUser(user_id, before_ms))

    def webhook_progress(self, cursors: Sequence[tuple[str, int]], prune_through: int,
                         prune_limit: int = 10_000) -> asyncio.Future[int]:
        return self._submit(WebhookProgress(tuple(cursors), prune_through, prune_limit))

    def open_direct(self, user_id: int, other_id: int) -> asyncio.Future[RoomChanged]:
        return self._submit(OpenDirect(user_id, other_id))

    def change_room(self, room_id: int, user_id: int, change: str, *, user_ids: Sequence[int] = (),
                    name: str = "") -> asyncio.Future[RoomChanged | Refusal]:
        return self._submit(ChangeRoom(room_id, user_id, change, tuple(user_ids), name))

    def store_file(self, uploader_id: int, name: str, size: int, content_type: str,
                   storage_key: str) -> asyncio.Future[FileRef]:
        return self._submit(StoreFile(uploader_id, name, size, content_type, storage_key))

    def load_rooms(self, room_ids: Iterable[int] | None = None) -> asyncio.Future[Snapshot]:
        """Rooms with participants, markers, unread counts and last messages (all if None),
        in the writer's sequence: exact as of the commits resolved before it."""
        return self._submit(LoadRooms(None if room_ids is None else tuple(room_ids)))

    def resync(self, after: int) -> asyncio.Future[Resynced]:
        """Every room as of now, and the messages created or changed after number ``after``."""
        return self._submit(Resync(after))

    def flush(self) -> asyncio.Future[None]:
        """Resolves once every write submitted before it has committed and been answered."""
        return self._submit(Barrier())

