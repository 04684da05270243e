"""The one exception tree of unichatd, and every code it puts on the wire.

    UnichatError
    ├── ClientError          a request the client got wrong; answered with an ``error`` frame
    │   └── RateLimited      carries ``retry_after_ms``
    ├── CloseConnection      ends the connection with a WebSocket close code
    ├── AuthError            a token that cannot be accepted (close code 4001)
    ├── ConfigError          a bad config file or value (CLI exit code 2)
    ├── StoreError           a database problem the caller can report
    │   ├── NoSuchRoom       an administrative change names a room that does not exist
    │   └── DirectRoom       an administrative change of a direct room's members
    ├── BadRequest           an HTTP request that cannot be read (400)
    ├── AlreadyServing       another server holds the database (see ``instance``)
    └── CommandFailed        a CLI command that cannot do what it was asked (exit code 1)

Any other exception reaching the top of a request is a bug: it is logged with its
traceback and the client gets ``internal_error``, never the traceback itself.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` frame (protocol.md §5)."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_FRAME = "unsupported_frame"
    ACCESS_DENIED = "access_denied"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    """The user may see the room but may not do this (protocol.md §6.1)."""
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"


class CloseCode(enum.IntEnum):
    """The WebSocket close codes the server sends (protocol.md §5, "Close codes")."""

    GOING_AWAY = 1001
    """Server shutdown."""
    POLICY_VIOLATION = 1008
    """Flooding after rate limiting, or a slow consumer."""
    MESSAGE_TOO_BIG = 1009
    """A frame over ``server.max_message_bytes`` (websockets sends it for us)."""
    INTERNAL_ERROR = 1011
    """Keepalive ping timeout, or the database cannot serve the connection."""
    AUTH = 4001
    """No token, a bad one, or one that expired."""
    ACCESS_DENIED = 4003
    """A legacy per-room or notifications endpoint the token may not open (api.md)."""


NOT_A_PARTICIPANT = "you are not a participant of this room"


class UnichatError(Exception):
    """Root of every error unichatd raises on purpose."""


class ClientError(UnichatError):
    """A request the client got wrong; the session answers it with an ``error`` frame."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        room_id: int | None = None,
        request_id: str | int | None = None,
        client_msg_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.room_id = room_id
        self.request_id = request_id
        self.client_msg_id = client_msg_id
        """Set on errors answering a ``send_message`` that carried one (protocol.md §5)."""

    @classmethod
    def access_denied(cls, room_id: int) -> ClientError:
        # One answer for foreign and nonexistent rooms: the reply must not tell them apart.
        return cls(ErrorCode.ACCESS_DENIED, NOT_A_PARTICIPANT, room_id=room_id)


class RateLimited(ClientError):
    """A request over the sender's token bucket."""

    def __init__(self, retry_after_ms: int, *, room_id: int | None = None,
                 message: str = "rate limit exceeded") -> None:
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"{message}; retry after {retry_after_ms} ms",
            room_id=room_id,
        )
        self.retry_after_ms = retry_after_ms


class CloseConnection(UnichatError):
    """Ends the connection with a WebSocket close code and reason."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class AuthError(UnichatError):
    """A token that cannot be accepted; ``reason`` is the close reason sent with 4001."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(UnichatError):
    """A config problem, naming the file and the key at fault."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.key = key


class StoreError(UnichatError):
    """A database problem the caller can report (a locked, corrupt or too-new database)."""


class NoSuchRoom(StoreError, LookupError):
    """An administrative change names a room that does not exist."""

    def __init__(self, room_id: int) -> None:
        super().__init__(f"room {room_id} does not exist")
        self.room_id = room_id


class DirectRoom(StoreError):
    """A direct room's members do not change (protocol.md §6.2)."""

    def __init__(self, room_id: int) -> None:
        super().__init__(f"room {room_id} is a direct room: its members do not change")
        self.room_id = room_id


class BadRequest(UnichatError):
    """An HTTP request that cannot be answered as sent (a duplicated header, say): 400."""


class AlreadyServing(UnichatError):
    """Another unichatd serves this database (its lock file is held)."""

    def __init__(self, lock_path: object, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{lock_path} is held by {who}: a server already runs on this database")
        self.pid = pid


class CommandFailed(UnichatError):
    """A CLI command that cannot do what it was asked; its message is printed (exit 1)."""
