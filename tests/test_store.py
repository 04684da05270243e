"""The store contract: every test here runs against both stores, SQLite (the embedded
default) and PostgreSQL, through the ``MessageStore`` interface alone — group commit,
idempotency, counts, revisions, search, rooms, files, the webhook outbox."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.services import postgres_schema
from unichatd.errors import StoreError
from unichatd.interfaces import MessageStore
from unichatd.models import Change, NewMessage, Refusal, RoomChanged
from unichatd.protocol.search import parse_query
from unichatd.store import SqliteStore
from unichatd.store.postgres import PostgresStore, migrate_database

pytestmark = pytest.mark.asyncio
WAIT = 10

StoreFactory = Callable[..., MessageStore]


@pytest_asyncio.fixture(params=[pytest.param("sqlite", marks=pytest.mark.unit),
                                pytest.param("postgres", marks=pytest.mark.socket)])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of stores on one fresh database (each call a new store, as after a restart)."""
    if request.param == "sqlite":
        yield lambda **options: SqliteStore(tmp_path / "chat.db", **options)
        return
    async with postgres_schema() as url:
        await migrate_database(url)
        yield lambda **options: PostgresStore(url, **options)


@pytest_asyncio.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[MessageStore]:
    opened = new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _message(room: int, sender: int, text: str, client_msg_id: str | None = None, *, reply_to: int | None = None,
             **fields: object) -> NewMessage:
    return NewMessage(room, sender, f"user{sender}", "", text, reply_to, client_msg_id,
                      **fields)  # type: ignore[arg-type]


async def _room(store: MessageStore, members: list[int], name: str = "r") -> int:
    created = await asyncio.wait_for(store.create_room(name, "group", None, members), WAIT)
    return created.room_id


async def _send(store: MessageStore, room: int, sender: int, text: str, **fields: Any) -> int:
    stored = await asyncio.wait_for(store.append_message(_message(room, sender, text, **fields)), WAIT)
    return stored.message.id


def _changed(outcome: Change | Refusal) -> Change:
    assert isinstance(outcome, Change), outcome
    return outcome


# -- group commit ---------------------------------------------------------------------


async def test_concurrent_submissions_share_one_transaction(store: MessageStore) -> None:
    """Messages submitted together commit in one batch, in order, with increasing ids."""
    room = await _room(store, [1])
    before = store.batch_sizes.count
    futures = [store.append_message(_message(room, 1, f"m{i}")) for i in range(50)]
    stored = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    ids = [s.message.id for s in stored]
    assert ids == sorted(ids)
    assert len(set(ids)) == 50
    assert store.batch_sizes.count == before + 1
    page, _ = await store.history(room, before_id=None, after_id=None, limit=100)
    assert [m.content for m in page] == [f"m{i}" for i in range(50)]


async def test_repeated_client_msg_id_in_one_batch_is_stored_once(store: MessageStore) -> None:
    """Two sends with one client_msg_id in the same batch give one row; the second is marked not created."""
    room = await _room(store, [1])
    first, second = await asyncio.wait_for(asyncio.gather(
        store.append_message(_message(room, 1, "a", "dup")),
        store.append_message(_message(room, 1, "a again", "dup")),
    ), WAIT)
    page, _ = await store.history(room, before_id=None, after_id=None, limit=10)
    assert (first.created, second.created) == (True, False)
    assert second.message.id == first.message.id
    assert [m.content for m in page] == ["a"]


async def test_a_repeated_client_msg_id_after_a_restart_answers_the_original(new_store: StoreFactory) -> None:
    """The idempotency key lives in the database: a store opened later (another process,
    a restart) answers a resend with the original message, and stores nothing."""
    first = new_store()
    await first.open()
    try:
        room = await _room(first, [1, 2])
        original = await first.append_message(_message(room, 1, "once", "key-1"))
    finally:
        await first.close()
    second = new_store()
    await second.open()
    try:
        again = await asyncio.wait_for(second.append_message(_message(room, 1, "once", "key-1")), WAIT)
        other_sender = await second.append_message(_message(room, 2, "same key, other sender", "key-1"))
        page, _ = await second.history(room, before_id=None, after_id=None, limit=10)
    finally:
        await second.close()
    assert (again.created, again.message.id) == (False, original.message.id)
    assert other_sender.created
    assert [m.id for m in page] == [original.message.id, other_sender.message.id]


async def test_mark_read_by_a_non_participant_does_not_fail_the_batch(store: MessageStore) -> None:
    """A read marker for someone not in the room answers None; the batch's messages still commit."""
    room = await _room(store, [1])
    message = store.append_message(_message(room, 1, "kept"))
    read = store.mark_read(room, 99, ())
    stored, marker = await asyncio.wait_for(asyncio.gather(message, read), WAIT)
    page, _ = await store.history(room, before_id=None, after_id=None, limit=10)
    assert marker is None
    assert stored.created
    assert [m.id for m in page] == [stored.message.id]


async def test_a_failing_write_fails_alone(store: MessageStore) -> None:
    """A write the database refuses (a message to a room that does not exist) fails its own
    submitter with a StoreError; the writes batched with it commit."""
    room = await _room(store, [1])
    good = store.append_message(_message(room, 1, "fine"))
    bad = store.append_message(_message(room + 1000, 1, "nowhere"))
    also_good = store.append_message(_message(room, 1, "fine too"))
    results = await asyncio.wait_for(asyncio.gather(good, bad, also_good, return_exceptions=True), WAIT)
    assert isinstance(results[1], StoreError)
    page, _ = await store.history(room, before_id=None, after_id=None, limit=10)
    assert [m.content for m in page] == ["fine", "fine too"]


async def test_writes_after_close_fail_with_a_store_error(new_store: StoreFactory) -> None:
    """A write submitted after close() gets a failed future (StoreError), never an exception
    raised at the submitter."""
    store = new_store()
    await store.open()
    room = await _room(store, [1])
    await store.close()
    future = store.append_message(_message(room, 1, "late"))
    with pytest.raises(StoreError, match="closing"):
        await asyncio.wait_for(future, 5)


async def test_numbers_are_never_given_twice_even_after_retention_and_a_restart(new_store: StoreFactory) -> None:
    """Ids and revisions share one counter that outlives the rows: after retention deleted
    the messages holding the largest numbers, a restarted store still gives new ones, and
    search still finds the new messages."""
    store = new_store()
    await store.open()
    try:
        room = await _room(store, [1])
        sent = [await store.append_message(_message(room, 1, f"old{n} word")) for n in range(3)]
        highest = _changed(await store.react(room, sent[-1].message.id, 1, "👍", True)).message.revision
        assert await store.prune(room, 2**62, 100) == 3
    finally:
        await store.close()
    store = new_store()
    await store.open()
    try:
        fresh = (await store.append_message(_message(room, 1, "fresh word"))).message
        assert fresh.id > highest
        assert fresh.revision == fresh.id
        hits, _ = await store.search([room], parse_query("word"), other_rooms=[], before_id=None, limit=10)
        assert [message.id for message, _ in hits] == [fresh.id]
        snapshot = await store.load_rooms([room])
        assert snapshot.rooms[room].pruned_through == sent[-1].message.id
    finally:
        await store.close()


# -- reading state ---------------------------------------------------------------------


async def test_unread_and_mention_counts_follow_sends_deletes_and_markers(store: MessageStore) -> None:
    """Per-user counts in the snapshot: others' messages above the marker, tombstones not
    counted, mentions of the user counted apart; mark_read moves the marker and answers
    the new counts."""
    room = await _room(store, [1, 2, 3])
    first = await _send(store, room, 1, "hello")
    await _send(store, room, 1, "hi @user2", mentions=(2,))
    third = await _send(store, room, 2, "answer")
    gone = await _send(store, room, 3, "oops")
    _changed(await store.delete_message(room, gone, 3))
    snapshot = await store.load_rooms()
    record = snapshot.rooms[room]
    assert record.unread == {1: 1, 2: 2, 3: 3}
    assert record.mentions == {2: 1}
    assert record.last_message is not None
    assert record.last_message.id == third
    assert snapshot.users[2] == ("user2", "")
    read = await store.mark_read(room, 2, [first])
    assert read is not None
    assert (read.last_read_id, read.unread_count, read.moved, read.mention_count) == (first, 1, True, 1)
    read = await store.mark_read(room, 2, [])
    assert read is not None
    assert (read.last_read_id, read.unread_count, read.mention_count) == (gone, 0, 0)
    again = await store.mark_read(room, 2, [first])
    assert again is not None
    assert (again.last_read_id, again.moved) == (gone, False)


async def test_history_pages_both_ways(store: MessageStore) -> None:
    room = await _room(store, [1])
    ids = [await _send(store, room, 1, f"m{n}") for n in range(7)]
    latest, more = await store.history(room, before_id=None, after_id=None, limit=3)
    assert ([m.id for m in latest], more) == (ids[4:], True)
    older, more = await store.history(room, before_id=ids[4], after_id=None, limit=3)
    assert ([m.id for m in older], more) == (ids[1:4], True)
    oldest, more = await store.history(room, before_id=ids[1], after_id=None, limit=3)
    assert ([m.id for m in oldest], more) == (ids[:1], False)
    after, more = await store.history(room, before_id=None, after_id=ids[2], limit=3)
    assert ([m.id for m in after], more) == (ids[3:6], True)


# -- changes to messages ---------------------------------------------------------------


async def test_edits_reactions_and_deletes_take_new_revisions_found_by_changes(store: MessageStore) -> None:
    room = await _room(store, [1, 2])
    first = await _send(store, room, 1, "first")
    second = await _send(store, room, 1, "second")
    assert await store.edit_message(room, first, 2, "not mine", ()) is Refusal.FORBIDDEN
    edited = _changed(await store.edit_message(room, first, 1, "first, edited", ()))
    assert edited.message.content == "first, edited"
    assert edited.message.edited_ms is not None
    assert edited.message.revision > second
    # Reactions keep the order of each emoji's first use, also when its first user takes it back.
    _changed(await store.react(room, second, 1, "👍", True))
    _changed(await store.react(room, second, 2, "🎉", True))
    _changed(await store.react(room, second, 2, "👍", True))
    unchanged = _changed(await store.react(room, second, 2, "👍", True))
    assert not unchanged.changed
    reacted = _changed(await store.react(room, second, 1, "👍", False))
    assert [(r.emoji, r.user_ids) for r in reacted.message.reactions] == [("👍", (2,)), ("🎉", (2,))]
    assert await store.delete_message(room, second, 2) is Refusal.FORBIDDEN
    deleted = _changed(await store.delete_message(room, second, 1))
    assert deleted.message.deleted
    assert deleted.message.content == ""
    assert deleted.message.reactions == ()
    assert deleted.latest is not None
    assert deleted.latest.id == first
    assert not _changed(await store.delete_message(room, second, 1)).changed
    assert await store.react(room, second, 1, "👍", True) is Refusal.NOT_FOUND
    found, more = await store.changes(room, since_revision=second, through_id=None, limit=10)
    assert not more
    assert [(m.id, m.revision) for m in found] == [(first, edited.message.revision),
                                                   (second, deleted.message.revision)]
    later = await _send(store, room, 2, "third")
    found, _ = await store.changes(room, since_revision=deleted.message.revision, through_id=None, limit=10)
    assert [m.id for m in found] == [later]
    found, _ = await store.changes(room, since_revision=0, through_id=second, limit=10)
    assert [m.id for m in found] == [first, second]


async def test_replies_count_on_their_thread_root(store: MessageStore) -> None:
    room = await _room(store, [1, 2])
    root = await _send(store, room, 1, "root")
    reply = await store.append_message(_message(room, 2, "reply", reply_to=root, thread_root_id=root))
    assert reply.thread is not None
    assert (reply.thread.root_id, reply.thread.reply_count) == (root, 1)
    nested = await _send(store, room, 1, "nested", reply_to=reply.message.id, thread_root_id=root)
    assert await store.reply_target(nested) == (room, root)
    assert await store.reply_target(root + 1000) is None
    thread = await store.thread(room, nested, after_id=None, limit=10)
    assert thread is not None
    head, replies, more = thread
    assert (head.id, head.reply_count, [m.id for m in replies], more) == (root, 2, [reply.message.id, nested], False)
    assert await store.thread(room + 1000, root, after_id=None, limit=10) is None


# -- search ------------------------------------------------------------------------------


async def test_search_folds_case_and_accents_and_takes_prefixes_and_phrases(store: MessageStore) -> None:
    room = await _room(store, [1])
    other = await _room(store, [1], "other")
    cafe = await _send(store, room, 1, "Meet at the Café at noon")
    release = await _send(store, room, 1, "the release is out")
    await _send(store, other, 1, "cafe in the other room")
    gone = await _send(store, room, 1, "cafe deleted soon")
    _changed(await store.delete_message(room, gone, 1))

    async def found(query: str, rooms: list[int], others: list[int]) -> list[int]:
        hits, _ = await store.search(rooms, parse_query(query), other_rooms=others, before_id=None, limit=10)
        return [message.id for message, _ in hits]

    assert await found("CAFE", [room], [other]) == [cafe]
    assert await found("cafe", [room, other], []) == [cafe + 2, cafe]
    assert await found("rele*", [room], [other]) == [release]
    assert await found("rele", [room], [other]) == []
    assert await found('"the release"', [room], [other]) == [release]
    assert await found('"release the"', [room], [other]) == []
    assert await found("café noon", [room], [other]) == [cafe]
    hits, _ = await store.search([room], parse_query("cafe"), other_rooms=[other], before_id=None, limit=10)
    assert "[Café]" in hits[0][1]
    paged, more = await store.search([room, other], parse_query("cafe"), other_rooms=[], before_id=cafe + 2,
                                     limit=10)
    assert ([m.id for m, _ in paged], more) == ([cafe], False)


# -- rooms --------------------------------------------------------------------------------


async def test_rooms_members_and_the_membership_log(store: MessageStore) -> None:
    created = await store.create_room("team", "group", 1, [2])
    assert isinstance(created, RoomChanged)
    room = created.room_id
    snapshot = await store.load_rooms([room])
    assert (snapshot.rooms[room].owner_id, sorted(snapshot.rooms[room].markers)) == (1, [1, 2])
    assert await store.change_room(room, 2, "rename", name="mine") is Refusal.NOT_OWNER
    assert await store.change_room(room, 9, "add", user_ids=[3]) is Refusal.NOT_FOUND
    added = await store.change_room(room, 1, "add", user_ids=[3])
    renamed = await store.change_room(room, 1, "rename", name="the team")
    left = await store.change_room(room, 1, "leave")
    assert isinstance(added, RoomChanged)
    assert isinstance(renamed, RoomChanged)
    assert isinstance(left, RoomChanged)
    assert await store.change_room(room, 1, "leave") is Refusal.NOT_FOUND
    log = await store.membership_changes(created.log_id - 1)
    assert [(c.room_id, c.user_id, c.change) for c in log][-3:] == [(room, 3, "add"), (room, None, "rename"),
                                                                   (room, 1, "leave")]
    assert [c.log_id for c in log] == sorted(c.log_id for c in log)
    assert left.log_id == log[-1].log_id
    snapshot = await store.load_rooms([room])
    record = snapshot.rooms[room]
    assert (record.name, record.owner_id, sorted(record.markers)) == ("the team", None, [2, 3])
    owner = await store.host_change_room(room, "owner", owner_id=4)
    assert isinstance(owner, RoomChanged)
    assert (await store.load_rooms([room])).rooms[room].owner_id == 4
    assert await store.host_change_room(room + 1000, "add", user_ids=[5]) is Refusal.NOT_FOUND


async def test_one_direct_room_per_pair_whoever_opens_it(store: MessageStore) -> None:
    first, second = await asyncio.wait_for(asyncio.gather(store.open_direct(1, 2), store.open_direct(2, 1)), WAIT)
    assert first.room_id == second.room_id
    snapshot = await store.load_rooms([first.room_id])
    assert snapshot.rooms[first.room_id].direct_pair == (1, 2)
    assert await store.host_change_room(first.room_id, "add", user_ids=[3]) is Refusal.DIRECT_ROOM
    assert await store.change_room(first.room_id, 1, "leave") == RoomChanged(first.room_id, first.log_id + 1)
    back = await store.open_direct(2, 1)
    assert back.room_id == first.room_id
    assert sorted((await store.load_rooms([first.room_id])).rooms[first.room_id].markers) == [1, 2]


async def test_a_new_member_starts_with_the_past_read(store: MessageStore) -> None:
    room = await _room(store, [1])
    await _send(store, room, 1, "before")
    await store.host_change_room(room, "add", user_ids=[2])
    await _send(store, room, 1, "after")
    assert (await store.load_rooms([room])).rooms[room].unread[2] == 1


# -- users, files, webhooks ----------------------------------------------------------------


async def test_users_names_revocations_and_last_seen(store: MessageStore) -> None:
    await store.upsert_user(7, "Alice", "Alice A.")
    await store.upsert_user(8, "bob", "Albert")
    await store.upsert_user(9, "carol", "")
    await store.upsert_user(7, "alice", "Alice")
    assert [u.id for u in await store.find_users("al", 10)] == [7, 8]
    assert [u.username for u in await store.find_users("", 2)] == ["alice", "bob"]
    assert await store.find_users("%", 10) == []
    assert [(u.id, u.username) for u in await store.users_by_id([9, 7, 99])] == [(7, "alice"), (9, "carol")]
    await store.revoke_user(8, 5000)
    await store.revoke_user(8, 3000)
    await store.revoke_user(10, 1000)
    assert await store.revocations() == {8: 5000, 10: 1000}
    await store.set_last_seen([(7, 123456)])
    assert (await store.load_rooms()).last_seen == {7: 123456}


async def test_files_are_kept_and_posted(store: MessageStore) -> None:
    room = await _room(store, [1])
    first = await store.store_file(1, "a.txt", 3, "text/plain", f"key-{random.random()}")
    second = await store.store_file(1, "b.png", 5, "image/png", f"key-{random.random()}")
    theirs = await store.store_file(2, "c.txt", 1, "text/plain", f"key-{random.random()}")
    assert await store.files_of(1, [second.id, theirs.id, first.id]) == [second, first]
    assert [size for _, size in await store.uploads_since(1, 0)] == [3, 5]
    await _send(store, room, 1, "look", attachments=(first,))
    kept = await store.stored_file(first.id)
    assert kept is not None
    assert (kept.file, kept.uploader_id, kept.room_ids) == (first, 1, (room,))
    assert await store.stored_file(theirs.id + 1000) is None
    page, _ = await store.history(room, before_id=None, after_id=None, limit=1)
    assert page[0].attachments == (first,)


async def test_the_outbox_holds_events_in_commit_order(new_store: StoreFactory) -> None:
    store = new_store(webhook_events=frozenset({"message_created", "message_updated"}))
    await store.open()
    try:
        cursors, start = await store.webhook_cursors()
        room = await _room(store, [1])
        sent = await _send(store, room, 1, "hello")
        _changed(await store.edit_message(room, sent, 1, "hello!", ()))
        await store.host_change_room(room, "add", user_ids=[2])
        events, reached = await store.webhook_events(start, ["room_created", "message_created", "message_updated",
                                                             "member_added"], 10)
        assert [event for _, event, _, _ in events] == ["room_created", "message_created", "message_updated",
                                                        "member_added"]
        assert reached == events[-1][0]
        only, reached_too = await store.webhook_events(start, ["member_added"], 10)
        assert [event for _, event, _, _ in only] == ["member_added"]
        assert reached_too == reached
        assert await store.webhook_progress([("http://receiver", reached)], reached) == 4
        cursors, _ = await store.webhook_cursors()
        assert cursors == {"http://receiver": reached}
    finally:
        await store.close()


# -- several stores on one database (PostgreSQL: several processes) ---------------------


@pytest.mark.socket
async def test_ids_become_visible_in_order_while_three_stores_commit_to_one_room() -> None:
    """The classic trap of a shared database: a larger id visible before a smaller one has
    committed would make a reader that pages with ``after_id`` skip the smaller one for
    good.  Three stores (three processes' worth of connections) commit bursts into one room
    while a reader follows it with ``after_id``: it sees every message, once, in id order."""
    async with postgres_schema() as url:
        await migrate_database(url)
        stores = [PostgresStore(url) for _ in range(3)]
        for opened in stores:
            await opened.open()
        try:
            room = await _room(stores[0], [1, 2, 3])
            seen: list[int] = []
            writing = True

            async def follow() -> None:
                last = 0
                while True:
                    still_writing = writing
                    page, _ = await stores[1].history(room, before_id=None, after_id=last, limit=100)
                    seen.extend(message.id for message in page)
                    if page:
                        last = page[-1].id
                    elif not still_writing:
                        return

            async def write(store: MessageStore, sender: int) -> None:
                for burst in range(40):
                    await asyncio.gather(*(store.append_message(_message(room, sender, f"{burst}.{n}"))
                                           for n in range(random.randint(1, 8))))

            reader = asyncio.create_task(follow())
            await asyncio.wait_for(asyncio.gather(*(write(store, index + 1)
                                                    for index, store in enumerate(stores))), 60)
            writing = False
            await asyncio.wait_for(reader, 30)
            everything, _ = await stores[2].history(room, before_id=None, after_id=0, limit=10_000)
        finally:
            for opened in stores:
                await opened.close()
    assert len(everything) > 120
    assert seen == [message.id for message in everything]
