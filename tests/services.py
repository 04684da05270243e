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
