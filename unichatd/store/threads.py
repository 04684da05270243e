"""One SQLite connection on a thread of its own, called from the event loop.

sqlite3 blocks, so each of the daemon's connections (writer, reader, checkpointer)
lives on a one-worker executor, and the loop awaits whole units of work there: one
thread hop per group commit or per read, not one per statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class ConnectionThread:
    """A connection opened, used and closed on its own thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"unichatd-{name}")
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, path: Path, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Connect (autocommit: transactions are explicit) and run ``setup`` on the new connection."""
        self._loop = asyncio.get_running_loop()

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                setup(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            self._conn = await self._loop.run_in_executor(self._executor, connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``fn(connection)`` on the connection's thread."""
        conn, loop = self._conn, self._loop
        assert conn is not None, "connection is not open"
        assert loop is not None, "connection is not open"
        return loop.run_in_executor(self._executor, fn, conn)

    async def close(self) -> None:
        """Close the connection on its thread, then end the thread."""
        conn, self._conn = self._conn, None
        if conn is not None:
            assert self._loop is not None
            await self._loop.run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
