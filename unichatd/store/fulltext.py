"""Search terms → an FTS5 query over ``messages_fts`` (see the schema's migration 3).

Every term becomes an FTS5 string, so nothing a user types is read as FTS5 syntax;
the room filter is a second column of the index, matched in the same query.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..protocol.search import SearchTerm


def _string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def expression(terms: Sequence[SearchTerm], room_ids: Sequence[int]) -> str:
    words = " ".join(_string(term.text) + ("*" if term.prefix else "") for term in terms)
    rooms = " OR ".join(_string(str(room_id)) for room_id in room_ids)
    return f"content : ({words}) AND room_id : ({rooms})"
