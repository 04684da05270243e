"""The running server's lock file: one server per database, and where it listens.

``serve`` holds an exclusive ``flock`` on ``<database>.lock`` for as long as it runs and
writes into it its pid and the address it listens on.  A second ``serve`` on the same
database is refused (two writers would each assign message ids of their own); ``stop``,
``status``, ``send`` and ``tail`` read the file to find the server, whatever port it was
given on its command line.  The kernel drops the lock with the process, so a server
killed with ``kill -9`` leaves a file that no longer counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from .errors import AlreadyServing


@dataclass(frozen=True, slots=True)
class Instance:
    """A running server, as its lock file describes it."""

    pid: int
    host: str
    port: int
    path: str
    tls: bool = False

    @property
    def local_host(self) -> str:
        """The address to reach it from this machine (a wildcard listens on loopback too)."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.local_host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.local_host}:{self.port}{self.path}"


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class InstanceLock:
    """Held by the serving process from start to exit."""

    def __init__(self, database: Path) -> None:
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise AlreadyServing(self.path, holder.pid if holder else None) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def publish(self, instance: Instance) -> None:
        """Say where this server listens (once the port is known)."""
        assert self._fd is not None
        data = orjson.dumps(asdict(instance)) + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked while still locked, so no one reads a half-gone file as a server.
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def running_instance(database: Path) -> Instance | None:
    """The server holding ``database``'s lock, or None when none runs."""
    try:
        fd = os.open(lock_path(database), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)  # held: a server runs
        return None  # a leftover of a server that is gone
    finally:
        os.close(fd)


def _read(fd: int) -> Instance | None:
    try:
        raw = orjson.loads(os.pread(fd, 4096, 0))
        return Instance(int(raw["pid"]), str(raw["host"]), int(raw["port"]), str(raw["path"]),
                        bool(raw.get("tls", False)))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
