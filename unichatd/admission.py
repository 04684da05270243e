"""Connection limits, counted when a handshake is admitted and given back when its TCP
connection closes: many handshakes at once cannot all pass before the first is counted."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import ClassVar

from .auth import Identity
from .errors import AuthError
from .keepalive import AnswersPings


class AdmittedConnection(AnswersPings):
    """A websockets connection that carries what the handshake learned of its token
    (and, as every connection, notes the keepalive's pongs)."""

    auth: Identity | AuthError | None = None
    """Set when the handshake is admitted under the connection limits."""
    route: tuple[str, int] | None = None
    """For the endpoints kept for one-socket-per-room clients (api.md): ``("room", id)``
    or ``("notifications", user id)``; None on the unified endpoint."""
    release: ClassVar[Callable[[Identity | AuthError], None]]
    """Gives an admitted connection's place back; set on each server's own subclass (see
    :meth:`Admission.connection_class`), so an idle connection carries nothing more for it."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.auth is not None:
            type(self).release(self.auth)


class Admission:
    """How many connections are admitted, in all and per user."""

    def __init__(self) -> None:
        self.total = 0
        self._by_user: collections.Counter[int] = collections.Counter()
        self.connection_class: type[AdmittedConnection] = type(
            "ServerConnection", (AdmittedConnection,), {"release": self._release}
        )

    def of_user(self, user_id: int) -> int:
        return self._by_user[user_id]

    def admit(self, connection: AdmittedConnection, auth: Identity | AuthError) -> None:
        connection.auth = auth
        self.total += 1
        if isinstance(auth, Identity):
            self._by_user[auth.user_id] += 1

    def _release(self, auth: Identity | AuthError) -> None:
        self.total -= 1
        if isinstance(auth, Identity):
            left = self._by_user[auth.user_id] - 1
            if left:
                self._by_user[auth.user_id] = left
            else:
                del self._by_user[auth.user_id]
