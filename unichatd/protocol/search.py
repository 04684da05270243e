"""The search box's little language, checked before anything reaches the index.

Words match whole words; a trailing ``*`` makes a prefix; text in double quotes is a
phrase; every term must match.  Nothing else is an operator: ``OR``, ``NEAR(``, ``-``,
``col:`` and the like are plain text, so a query can never reach the index as syntax
(see ``store.fulltext``, which quotes every term).  Words joined by anything but white
space (``under_score``, ``e-mail``, ``12:30``) are a phrase, as the index splits them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_QUERY_CHARS = 256
MAX_TERMS = 16
MIN_PREFIX_CHARS = 2
"""A shorter prefix would make the index merge the postings of a good part of its words."""

_WORD = re.compile(r"[^\W_]+(\*)?")
"""A run of letters and digits (what the index calls a word), and a prefix star."""


@dataclass(frozen=True, slots=True)
class SearchTerm:
    text: str
    """A word, or the words of a phrase."""
    prefix: bool = False


class QueryError(ValueError):
    """A query that cannot be searched for; the message says why."""


def parse_query(query: str) -> tuple[SearchTerm, ...]:
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"field 'query' is longer than {MAX_QUERY_CHARS} characters")
    terms: list[SearchTerm] = []
    position = 0
    while position < len(query):
        if query[position] == '"':
            end = query.find('"', position + 1)
            if end < 0:
                raise QueryError("field 'query' has a double quote that is not closed")
            words = [match.group(0).rstrip("*") for match in _WORD.finditer(query, position + 1, end)]
            position = end + 1
            prefix = position < len(query) and query[position] == "*"
            if words:
                terms.append(SearchTerm(" ".join(words), prefix))
            continue
        end = query.find('"', position)
        end = len(query) if end < 0 else end
        for chunk in query[position:end].split():
            matches = list(_WORD.finditer(chunk))
            if matches:
                terms.append(SearchTerm(" ".join(match.group(0).rstrip("*") for match in matches),
                                        prefix=matches[-1].group(1) is not None))
        position = end
    if not terms:
        raise QueryError("field 'query' has no words to search for")
    for term in terms:
        if term.prefix and len(term.text.rsplit(" ", 1)[-1]) < MIN_PREFIX_CHARS:
            raise QueryError(f"field 'query': a prefix* needs at least {MIN_PREFIX_CHARS} characters")
    if len(terms) > MAX_TERMS:
        raise QueryError(f"field 'query' has more than {MAX_TERMS} terms")
    return tuple(terms)
