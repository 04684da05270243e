"""The store on its own: group commit, idempotency, and one request never failing another's batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from unichatd.errors import StoreError
from unichatd.models import NewMessage, Refusal
from unichatd.store import AdminStore, SqliteStore

pytestmark = pytest.mark.asyncio


def _room(tmp_path: Path, members: list[int]) -> tuple[Path, int]:
    db = tmp_path / "chat.db"
    admin = AdminStore(db)
    try:
        room = admin.create_room("r", "group", members)
    finally:
        admin.close()
    return db, room


def _message(room: int, sender: int, text: str, client_msg_id: str | None = None) -> NewMessage:
    return NewMessage(room, sender, f"user{sender}", "", text, None, client_msg_id)


async def test_concurrent_submissions_share_one_transaction(tmp_path: Path) -> None:
    """Messages submitted together commit in one batch, in order, with increasing ids."""
    db, room = _room(tmp_path, [1])
    store = SqliteStore(db)
    await store.open()
    try:
        futures = [store.append_message(_message(room, 1, f"m{i}")) for i in range(50)]
        stored = await asyncio.wait_for(asyncio.gather(*futures), 10)
        ids = [s.message.id for s in stored]
        assert ids == sorted(ids)
        assert len(set(ids)) == 50
        assert store.batch_sizes.count == 1
        assert store.batch_sizes.total == 50
    finally:
        await store.close()


async def test_repeated_client_msg_id_in_one_batch_is_stored_once(tmp_path: Path) -> None:
    """Two sends with one client_msg_id in the same batch give one row; the second is marked not created."""
    db, room = _room(tmp_path, [1])
    store = SqliteStore(db)
    await store.open()
    try:
        first, second = await asyncio.wait_for(asyncio.gather(
            store.append_message(_message(room, 1, "a", "dup")),
            store.append_message(_message(room, 1, "a again", "dup")),
        ), 10)
        page, _ = await store.history(room, before_id=None, after_id=None, limit=10)
    finally:
        await store.close()
    assert (first.created, second.created) == (True, False)
    assert second.message.id == first.message.id
    assert [m.content for m in page] == ["a"]


async def test_mark_read_by_a_non_participant_does_not_fail_the_batch(tmp_path: Path) -> None:
    """A read marker for someone no longer in the room answers None; the batch's messages still commit."""
    db, room = _room(tmp_path, [1])
    store = SqliteStore(db)
    await store.open()
    try:
        message = store.append_message(_message(room, 1, "kept"))
        read = store.mark_read(room, 99, ())
        stored, marker = await asyncio.wait_for(asyncio.gather(message, read), 10)
        page, _ = await store.history(room, before_id=None, after_id=None, limit=10)
    finally:
        await store.close()
    assert marker is None
    assert stored.created
    assert [m.id for m in page] == [stored.message.id]


async def test_writes_after_close_fail_with_a_store_error(tmp_path: Path) -> None:
    """A write submitted after close() gets a failed future (StoreError), never an exception
    raised at the submitter."""
    db, room = _room(tmp_path, [1])
    store = SqliteStore(db)
    await store.open()
    await store.close()
    future = store.append_message(_message(room, 1, "late"))
    with pytest.raises(StoreError, match="closing"):
        await asyncio.wait_for(future, 5)


async def test_numbers_are_never_given_twice_even_after_retention_and_a_restart(tmp_path: Path) -> None:
    """Ids and revisions share one counter that outlives the rows: after retention deleted
    the messages holding the largest numbers, a restarted store still gives new ones, and
    the search index still takes the new messages."""
    from unichatd.protocol.search import parse_query

    db, room = _room(tmp_path, [1])
    store = SqliteStore(db)
    await store.open()
    try:
        sent = [await store.append_message(_message(room, 1, f"old{n} word")) for n in range(3)]
        change = await store.react(room, sent[-1].message.id, 1, "👍", True)
        assert not isinstance(change, Refusal)
        highest = change.message.revision
        assert await store.prune(room, 2**62, 100) == 3
    finally:
        await store.close()
    store = SqliteStore(db)
    await store.open()
    try:
        fresh = (await store.append_message(_message(room, 1, "fresh word"))).message
        assert fresh.id > highest
        assert fresh.revision == fresh.id
        hits, _ = await store.search([room], parse_query("word"), other_rooms=[], before_id=None, limit=10)
        assert [message.id for message, _ in hits] == [fresh.id]
    finally:
        await store.close()
