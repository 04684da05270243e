"""The chat protocol end to end on the PostgreSQL store: the protocol tests of
test_messaging and test_people, collected here again and run with the server's database
in PostgreSQL (a schema of their own per test)."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests import test_messaging, test_people
from tests.conftest import FAST_SENDS, RunningServer, make_config
from tests.services import postgres_schema
from unichatd.store.postgres import migrate_database

SQLITE_ONLY = re.compile(r"\.admin\(|database_path|sqlite|SqliteStore|AdminStore|monkeypatch|tmp_path")
"""What marks a test as one that opens the SQLite file or builds a server of its own."""

pytestmark = pytest.mark.asyncio


def _collect_protocol_tests() -> None:
    """The modules' tests and their own fixtures, but ``chat`` and ``fast_chat`` (below)."""
    for module in (test_messaging, test_people):
        for name, member in vars(module).items():
            if getattr(member, "__module__", None) != module.__name__ or name in ("chat", "fast_chat"):
                continue
            if hasattr(member, "_fixture_function_marker") or hasattr(member, "_pytestfixturefunction") \
                    or type(member).__name__ == "FixtureFunctionDefinition":
                globals()[name] = member
            elif name.startswith("test_") and not SQLITE_ONLY.search(inspect.getsource(member)):
                assert name not in globals(), name
                globals()[name] = member


_collect_protocol_tests()


@pytest_asyncio.fixture
async def chat(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Each module's own ``chat`` server, on PostgreSQL."""
    async for harness in _postgres_server(request, tmp_path):
        yield harness


@pytest_asyncio.fixture
async def fast_chat(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    async for harness in _postgres_server(request, tmp_path, limits=test_messaging.FAST_LIMITS):
        yield harness


async def _postgres_server(request: pytest.FixtureRequest, tmp_path: Path,
                           **sections: dict[str, Any]) -> AsyncIterator[RunningServer]:
    options: dict[str, Any] = test_messaging.CHECKED
    if request.function.__module__ == test_people.__name__:
        sections, options = {"limits": FAST_SENDS}, {"name_format": "{}"}
    async with postgres_schema() as url:
        await migrate_database(url)
        harness = RunningServer(make_config(tmp_path, **sections, storage={"database": url}), **options)
        try:
            yield harness
        finally:
            await harness.close()
