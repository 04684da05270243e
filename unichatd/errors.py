"""The one exception tree of unichatd.

    UnichatError
    ├── ClientError        a request the client got wrong; answered with an ``error`` frame
    │   └── RateLimited    carries ``retry_after_ms``
    ├── CloseConnection    ends the connection with a WebSocket close code
    ├── AuthError          a token that cannot be accepted (close code 4001)
    └── ConfigError        a bad config file or value (CLI exit code 2)

Any other exception reaching the top of a request is a bug: it is logged with its
traceback and the client gets ``internal_error``, never the traceback itself.
"""

from __future__ import annotations


class UnichatError(Exception):
    """Root of every error unichatd raises on purpose."""


class ClientError(UnichatError):
    """A request the client got wrong; the session answers it with an ``error`` frame."""

    def __init__(
        self,
        code: str,
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


class RateLimited(ClientError):
    """A request over the sender's token bucket."""

    def __init__(self, retry_after_ms: int, *, room_id: int | None = None) -> None:
        super().__init__(
            "rate_limited",
            f"rate limit exceeded; retry after {retry_after_ms} ms",
            room_id=room_id,
        )
        self.retry_after_ms = retry_after_ms


class CloseConnection(UnichatError):
    """Ends the connection with a WebSocket close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
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
