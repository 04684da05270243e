"""Uploaded files on disk: uploads in progress, the daily quota, and what a download reads
(protocol.md §6.3).

An upload is written to a temporary file in ``storage.files_dir`` and renamed to its
final name only once every byte arrived and the size matches; the row that makes it
visible is committed after the rename.  An upload that is abandoned leaves neither.
The names on disk are random; the name the user gave lives in the database only, so
nothing a client sends ever becomes part of a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from .config import LimitsConfig
from .errors import ClientError, ErrorCode, RateLimited
from .interfaces import MessageStore
from .models import FileRef, StoredFile
from .protocol import now_ms

log = structlog.get_logger("unichatd.files")

TEMPORARY_PREFIX = ".upload-"
DAY_MS = 86_400_000
IDLE_TIMEOUT = 60.0
"""Seconds an upload may go without a byte before it is abandoned."""


@dataclass(slots=True, eq=False)
class Upload:
    """One upload in progress, on one connection."""

    id: str
    user_id: int
    name: str
    size: int
    content_type: str
    path: Path
    fd: int
    received: int = 0
    last_progress: float = 0.0
    over: bool = False


class FileStore:
    """The files directory and the uploads being written into it."""

    def __init__(self, directory: Path, store: MessageStore) -> None:
        self.directory = directory
        self._store = store
        self._reserved: dict[int, int] = {}
        """user id → bytes of their uploads in progress (they count toward the quota)."""

    def open(self) -> None:
        """Delete what interrupted uploads left (the directory is made by the first upload)."""
        if not self.directory.is_dir():
            return
        for leftover in self.directory.glob(TEMPORARY_PREFIX + "*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                log.info("upload.leftover_deleted", path=str(leftover))

    async def begin(self, user_id: int, name: str, size: int, content_type: str, limits: LimitsConfig,
                    now: float) -> Upload:
        if size > limits.max_file_bytes:
            raise ClientError(ErrorCode.INVALID_MESSAGE,
                              f"field 'size' is larger than the limit of {limits.max_file_bytes} bytes")
        # Reserved before the quota is read: uploads starting at once on several
        # connections of one user each see the others'.
        self._reserved[user_id] = self._reserved.get(user_id, 0) + size
        try:
            await self._check_quota(user_id, size, limits.upload_bytes_per_day)
            upload_id = secrets.token_hex(16)
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.directory / f"{TEMPORARY_PREFIX}{upload_id}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except BaseException:
            self._unreserve(user_id, size)
            raise
        return Upload(upload_id, user_id, name, size, content_type, path, fd, last_progress=now)

    def _unreserve(self, user_id: int, size: int) -> None:
        left = self._reserved.get(user_id, 0) - size
        if left > 0:
            self._reserved[user_id] = left
        else:
            self._reserved.pop(user_id, None)

    async def _check_quota(self, user_id: int, size: int, quota: int) -> None:
        """Over the quota (this upload reserved already): ``rate_limited``, with the wait
        until enough of the last 24 hours' uploads leave the window."""
        now = now_ms()
        recent = await self._store.uploads_since(user_id, now - DAY_MS)
        excess = sum(stored for _, stored in recent) + self._reserved.get(user_id, 0) - quota
        if excess <= 0:
            return
        if size > quota:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"the daily upload quota is {quota} bytes")
        freed = 0
        wait_ms = DAY_MS
        for created_ms, stored in recent:
            freed += stored
            if freed >= excess:
                wait_ms = created_ms + DAY_MS - now
                break
        raise RateLimited(max(1, wait_ms), message=f"daily upload quota of {quota} bytes reached")

    def write(self, upload: Upload, data: bytes, now: float) -> None:
        """Append a binary frame's bytes (page-cache writes of at most one frame each)."""
        if upload.received + len(data) > upload.size:
            raise ClientError(ErrorCode.INVALID_MESSAGE,
                              f"size mismatch: more than the {upload.size} bytes announced")
        view = memoryview(data)
        while view:
            view = view[os.write(upload.fd, view):]
        upload.received += len(data)
        if data:
            upload.last_progress = now

    async def finish(self, upload: Upload) -> FileRef:
        """Make the complete upload a stored file; the upload is over either way."""
        try:
            if upload.received != upload.size:
                raise ClientError(ErrorCode.INVALID_MESSAGE,
                                  f"size mismatch: {upload.received} bytes received, {upload.size} announced")
            final = self.directory / upload.id
            fd, upload.fd = upload.fd, -1  # the thread owns it now (and closes it)
            await asyncio.to_thread(_seal, fd, upload.path, final)
            try:
                return await self._store.store_file(upload.user_id, upload.name, upload.size, upload.content_type,
                                                    upload.id)
            except BaseException:
                final.unlink(missing_ok=True)
                raise
        finally:
            self.abandon(upload)

    def abandon(self, upload: Upload) -> None:
        """Forget the upload and delete what it wrote (nothing left once it was stored)."""
        if upload.over:
            return
        upload.over = True
        if upload.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(upload.fd)
            upload.fd = -1
        with contextlib.suppress(OSError):
            upload.path.unlink()
        self._unreserve(upload.user_id, upload.size)

    async def readable(self, file_id: int, name: str, user_id: int, may_see_room: Callable[[int], bool], *,
                       read: bool = True) -> tuple[StoredFile, bytes] | None:
        """The file (named ``name``) and its bytes (none unless ``read``) when ``user_id``
        may download it, else None."""
        stored = await self._store.stored_file(file_id)
        if stored is None or stored.file.name != name:
            return None
        if stored.uploader_id != user_id and not any(may_see_room(room_id) for room_id in stored.room_ids):
            return None
        path = self.directory / stored.storage_key
        try:
            data = await asyncio.to_thread(path.read_bytes) if read else b""
        except OSError:
            data = None
        if data is None or not (read or path.is_file()):
            log.warning("file.missing", file_id=file_id, storage_key=stored.storage_key)
            return None
        return stored, data


def copy_files(source: Path, target: Path) -> int:
    """Copy the stored files (never an upload in progress) for a backup; returns how many."""
    if not source.is_dir():
        return 0
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    copied = 0
    for path in source.iterdir():
        if path.name.startswith(TEMPORARY_PREFIX) or not path.is_file():
            continue
        shutil.copy2(path, target / path.name)
        copied += 1
    return copied


def _seal(fd: int, temporary: Path, final: Path) -> None:
    """Flush the bytes to disk, then give the file its final name."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, final)


