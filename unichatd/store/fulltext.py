"""Search terms → an FTS5 query over ``messages_fts`` (see the schema's migration 3).

Every term becomes an FTS5 string, so nothing a user types is read as FTS5 syntax;
the room filter is a second column of the index, matched in the same query: the user's
rooms, or — when that list is the longer one — every room but the others, since an OR
of many rooms costs the index more than a NOT of a few.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..protocol.search import SearchTerm


def _string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def expression(terms: Sequence[SearchTerm], room_ids: Sequence[int],
               other_rooms: Sequence[int] | None = None) -> str:
    """The query for ``terms`` in ``room_ids``; ``other_rooms``, when known, are all the
    rooms not in it, and the shorter of the two lists is used."""
    words = f"content : ({' '.join(_string(term.text) + ('*' if term.prefix else '') for term in terms)})"
    if other_rooms is not None and len(other_rooms) < len(room_ids):
        if not other_rooms:
            return words
        return f"{words} NOT room_id : ({_any(other_rooms)})"
    return f"{words} AND room_id : ({_any(room_ids)})"


def _any(room_ids: Sequence[int]) -> str:
    return " OR ".join(_string(str(room_id)) for room_id in room_ids)
