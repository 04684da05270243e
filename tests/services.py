"""The real PostgreSQL and Redis the scale-out tests run against: a database of their
own (``unichatd_test``) and, in it, a schema per test, so runs never see each other's
rows; and a Redis key prefix per test.

Outside CI a machine without PostgreSQL skips these tests, saying so; under ``CI=true``
a missing service fails them (``.ci/run`` starts it first).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

SERVER = os.environ.get("UNICHATD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
DATABASE = "unichatd_test"
_schemas = itertools.count(1)


async def _admin_connection(database: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(f"{SERVER}/{database}", timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL at {SERVER} does not answer: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


async def _ensure_database() -> None:
    conn = await _admin_connection("postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            try:
                await conn.execute(f"CREATE DATABASE {DATABASE}")
            except asyncpg.DuplicateDatabaseError:
                pass  # (another run made it meanwhile)
    finally:
        await conn.close()


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A URL whose connections live in a new, empty schema; dropped afterwards."""
    await _ensure_database()
    schema = f"t{os.getpid()}_{next(_schemas)}"
    conn = await _admin_connection(DATABASE)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield f"{SERVER}/{DATABASE}?search_path={schema}"
    finally:
        if conn.is_closed():  # (a test that restarted PostgreSQL)
            conn = await _admin_connection(DATABASE)
        await asyncio.wait_for(conn.execute(f"DROP SCHEMA {schema} CASCADE"), 30)
        await conn.close()


def postgres_rows(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of ``query``, read on a thread of its own (callable from a running loop)."""
    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return [tuple(row) for row in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, fetch()).result(timeout=30)


REDIS = os.environ.get("UNICHATD_TEST_REDIS", "redis://127.0.0.1:6379/0")
_prefixes = itertools.count(1)


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own for one test's processes; their keys are deleted after."""
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(REDIS, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        reason = f"Redis at {REDIS} does not answer: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    prefix = f"unichatd-test-{os.getpid()}-{next(_prefixes)}"
    try:
        yield prefix
    finally:
        with contextlib.suppress(RedisError, OSError):
            keys = [key async for key in client.scan_iter(f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
        await client.aclose()


def restart_redis(down_for: float) -> None:
    """Stop the machine's Redis (it keeps nothing on disk), wait, start it again with the
    machine's own command, and wait until it answers."""
    import subprocess
    import time

    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], capture_output=True,
                   timeout=10, check=False)
    time.sleep(down_for)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
                    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
                    "--logfile", "/var/log/redis/ci.log"], capture_output=True, timeout=10, check=True)
    _wait_for(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"])


def restart_postgres() -> None:
    """Restart the machine's PostgreSQL cluster and wait until it accepts connections."""
    import subprocess

    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   capture_output=True, timeout=60, check=True)
    _wait_for(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"])


def _wait_for(command: list[str], within: float = 30) -> None:
    import subprocess
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if subprocess.run(command, capture_output=True, timeout=10, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{command[0]} did not answer within {within} s")
