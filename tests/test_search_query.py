"""The search box's language (protocol.md §6.1, "Search") without a server: what each
query means, and that no query, whatever it holds, reaches SQLite as FTS5 syntax."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unichatd.protocol.search import MAX_QUERY_CHARS, QueryError, SearchTerm, parse_query
from unichatd.store import queries
from unichatd.store.fulltext import expression
from unichatd.store.operations import index_messages
from unichatd.store.schema import configure, migrate


def test_words_prefixes_and_phrases() -> None:
    assert parse_query("Release cafe") == (SearchTerm("Release"), SearchTerm("cafe"))
    assert parse_query("rel*") == (SearchTerm("rel", prefix=True),)
    assert parse_query('"release candidate" today') == (SearchTerm("release candidate"), SearchTerm("today"))
    assert parse_query('"release cand"*') == (SearchTerm("release cand", prefix=True),)
    # Operators are text: their words are searched for, their signs dropped; words joined
    # by anything but white space are a phrase, as the index splits them.
    assert parse_query("NEAR(a b)") == (SearchTerm("NEAR a"), SearchTerm("b"))
    assert parse_query("content:x -y") == (SearchTerm("content x"), SearchTerm("y"))
    assert parse_query("OR") == (SearchTerm("OR"),)
    assert parse_query("under_score e-ma*") == (SearchTerm("under score"), SearchTerm("e ma", prefix=True))


@pytest.mark.parametrize("query", ["", "  ", "*", "-", "^", '""', "🎉", "_", '"', 'a "b', "x" * (MAX_QUERY_CHARS + 1),
                                   " ".join(["w"] * 17), "e*", "word x*", '"a b"*'])
def test_queries_that_cannot_be_searched_are_refused(query: str) -> None:
    with pytest.raises(QueryError):
        parse_query(query)


def test_every_term_is_quoted_for_fts5() -> None:
    terms = (SearchTerm('say "hi"'), SearchTerm("pre", prefix=True))
    assert expression(terms, [3, 17]) == 'content : ("say ""hi""" "pre"*) AND room_id : ("3" OR "17")'
    # The shorter list names the rooms: a user in most rooms excludes the few others.
    assert expression(terms, [3, 17], [5]) == 'content : ("say ""hi""" "pre"*) NOT room_id : ("5")'
    assert expression(terms, [3, 17], []) == 'content : ("say ""hi""" "pre"*)'


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path_factory.mktemp("search") / "chat.db", isolation_level=None)
    configure(conn)
    migrate(conn)
    conn.execute("INSERT INTO users(id, username, first_name, updated_ms) VALUES (1, 'a', '', 0)")
    conn.execute("INSERT INTO rooms(id, name, room_type, created_ms) VALUES (1, 'r', 'group', 0), "
                 "(2, 's', 'group', 0), (3, 't', 'group', 0)")
    conn.executemany(
        "INSERT INTO messages(room_id, sender_id, content, created_ms) VALUES (?, 1, ?, 0)",
        [(1, "near or not: content matters"), (1, 'quote " and * star NEAR(x y)'), (2, "secret in room two"),
         (1, "Ünïcödé façade naïve"), (1, "under_score and-dash"), (3, "near a third room")],
    )
    index_messages(conn, 1000)
    return conn


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80) | st.lists(st.sampled_from(
    ['"', "*", "-", "^", "(", ")", ":", "NEAR", "OR", "AND", "NOT", "content", "room_id", "{", "}", "+", " ",
     "a", "near", "secret", "2", "_", "é", "\x00", "\\"]), max_size=12).map("".join))
def test_no_query_makes_sqlite_fail_or_crosses_rooms(index: sqlite3.Connection, query: str) -> None:
    try:
        terms = parse_query(query)
    except QueryError:
        return
    # The user's rooms named (an OR), and every room but the others (a NOT).
    for mine, others in (([1], [2, 3]), ([1, 3], [2])):
        hits, _ = queries.search(index, expression(terms, mine, others), None, 20)
        assert all(message.room_id in mine for message, _ in hits)


def test_folding_and_snippets(index: sqlite3.Connection) -> None:
    hits, _ = queries.search(index, expression(parse_query("unicode FACADE"), [1]), None, 20)
    assert [snippet for _, snippet in hits] == ["[Ünïcödé] [façade] naïve"]
    hits, _ = queries.search(index, expression(parse_query("under_score"), [1]), None, 20)
    assert len(hits) == 1
    hits, _ = queries.search(index, expression(parse_query("score_under"), [1]), None, 20)
    assert hits == []  # a phrase: the words in this order
    hits, _ = queries.search(index, expression(parse_query("secret"), [1]), None, 20)
    assert hits == []
    for mine, others in (([1], [2, 3]), ([1, 3], [2]), ([1, 2, 3], [])):
        hits, _ = queries.search(index, expression(parse_query("near"), mine, others), None, 20)
        assert sorted(message.room_id for message, _ in hits) == [1, 1, 3][:3 if 3 in mine else 2], mine


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "chat.db", isolation_level=None)
    configure(conn)
    migrate(conn)
    migrate(conn)
    assert conn.execute("SELECT through FROM search_index").fetchone() == (0,)


def test_retention_after_deletes_keeps_the_index_whole(tmp_path: Path) -> None:
    """Messages deleted (tombstones) before or after indexing, then pruned, leave the
    external-content index consistent (FTS5's integrity-check)."""
    from unichatd.store.operations import DeleteMessage, MessageIds, Prune

    conn = sqlite3.connect(tmp_path / "chat.db", isolation_level=None)
    configure(conn)
    migrate(conn)
    conn.execute("INSERT INTO users(id, username, first_name, updated_ms) VALUES (1, 'a', '', 0)")
    conn.execute("INSERT INTO rooms(id, name, room_type, created_ms) VALUES (1, 'r', 'group', 0)")
    conn.executemany("INSERT INTO messages(id, revision, room_id, sender_id, content, created_ms) "
                     "VALUES (?, ?, 1, 1, ?, 0)", [(n, n, f"word{n} common") for n in range(1, 7)])
    ids = MessageIds(100)
    index_messages(conn, 3)  # 1–3 indexed, 4–6 not yet
    for message_id in (2, 5):
        DeleteMessage(1, message_id, 1).run(conn, ids)
    index_messages(conn, 1000)
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    hits, _ = queries.search(conn, expression(parse_query("common"), [1]), None, 20)
    assert [message.id for message, _ in hits] == [6, 4, 3, 1]
    assert Prune(1, 1, 4).run(conn, ids) == 4
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    hits, _ = queries.search(conn, expression(parse_query("common"), [1]), None, 20)
    assert [message.id for message, _ in hits] == [6]
