"""The wire protocol, without I/O: client frames → typed requests, and server frames → bytes.

:func:`parse_request` is the one place where a client frame is checked.  It returns a
frozen request object whose fields are known to be valid, or raises
:class:`~unichatd.errors.ClientError` with the error code the server answers with.
The ``*_frame`` builders return the encoded JSON of a server frame (``bytes``), so a
broadcast encodes once and hands the same bytes to every recipient.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ClientError

MAX_ID = 2**63 - 1
MAX_REQUEST_ID_CHARS = 64
MAX_CLIENT_MSG_ID_CHARS = 64
MAX_MARK_READ_IDS = 1000
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
MAX_TOKEN_CHARS = 8192

RequestId = str | int | None


# ---------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class Subscribe:
    room_id: int
    last_message_id: int | None
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    room_id: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class SendMessage:
    room_id: int
    content: str
    reply_to: int | None
    client_msg_id: str | None
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class MarkRead:
    room_id: int
    message_ids: tuple[int, ...]
    """Empty means: everything in the room."""
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Typing:
    room_id: int
    is_typing: bool
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetRoomList:
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetHistory:
    room_id: int
    before_id: int | None
    after_id: int | None
    limit: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token: str
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Help:
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class WhoAmI:
    request_id: RequestId = None


Request = (
    Subscribe
    | Unsubscribe
    | SendMessage
    | MarkRead
    | Typing
    | GetRoomList
    | GetHistory
    | RefreshToken
    | Ping
    | Help
    | WhoAmI
)


def parse_request(text: str | bytes, *, max_content_chars: int) -> Request:
    """Decode and check one client frame."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ClientError("invalid_json", "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ClientError("invalid_message", "frame must be a JSON object")
    request_id: RequestId = None
    try:
        request_id = _request_id(frame)
        kind = frame.get("type")
        if not isinstance(kind, str):
            raise ClientError("invalid_message", "field 'type' is required and must be a string")
        parser = _PARSERS.get(kind)
        if parser is None:
            raise ClientError("unknown_type", _unknown_type_message(kind))
        return parser(frame, request_id, max_content_chars)
    except ClientError as exc:
        exc.request_id = request_id
        if frame.get("type") == "send_message":
            exc.client_msg_id = _client_msg_id_or_none(frame)
        if exc.room_id is None:
            room_id = frame.get("room_id")
            if isinstance(room_id, int) and not isinstance(room_id, bool) and 1 <= room_id <= MAX_ID:
                exc.room_id = room_id
        raise


def _unknown_type_message(kind: str) -> str:
    """Name the unknown type, and the nearest known ones (people at wscat type ``subscribe``)."""
    message = f"unknown type {kind[:64]!r}"
    close = difflib.get_close_matches(kind[:64], REQUEST_TYPES, n=2, cutoff=0.6)
    if not close and len(kind) >= 3:
        close = [name for name in REQUEST_TYPES if name.startswith(kind)][:2]
    if close:
        message += "; did you mean " + " or ".join(repr(name) for name in close) + "?"
    return message + ' (send {"type": "help"} for every request type)'


def _client_msg_id_or_none(frame: Mapping[str, Any]) -> str | None:
    value = frame.get("client_msg_id")
    if isinstance(value, str) and 0 < len(value) <= MAX_CLIENT_MSG_ID_CHARS:
        return value
    return None


def peek_ids(text: str | bytes) -> tuple[RequestId, int | None, str | None]:
    """The frame's request_id, room_id and (for a send) client_msg_id when they are valid,
    for errors raised before parsing."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(frame, dict):
        return None, None, None
    try:
        request_id = _request_id(frame)
    except ClientError:
        request_id = None
    room_id = frame.get("room_id")
    valid_room = isinstance(room_id, int) and not isinstance(room_id, bool) and 1 <= room_id <= MAX_ID
    client_msg_id = _client_msg_id_or_none(frame) if frame.get("type") == "send_message" else None
    return request_id, room_id if valid_room else None, client_msg_id


def _request_id(frame: Mapping[str, Any]) -> RequestId:
    if "request_id" not in frame:
        return None
    value = frame["request_id"]
    if isinstance(value, str) and len(value) <= MAX_REQUEST_ID_CHARS:
        return value
    if _is_int(value) and -MAX_ID <= value <= MAX_ID:
        return int(value)
    raise ClientError(
        "invalid_message", "field 'request_id' must be a string of at most 64 characters or an integer"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(frame: Mapping[str, Any], name: str, *, minimum: int = 1, required: bool = True) -> Any:
    if name not in frame or frame[name] is None:
        if required:
            raise ClientError("invalid_message", f"field {name!r} is required")
        return None
    value = frame[name]
    if not _is_int(value):
        raise ClientError("invalid_message", f"field {name!r} must be an integer")
    if not minimum <= value <= MAX_ID:
        raise ClientError("invalid_message", f"field {name!r} must be between {minimum} and {MAX_ID}")
    return value


def _room_id(frame: Mapping[str, Any]) -> int:
    room_id: int = _int_field(frame, "room_id")
    return room_id


def _parse_subscribe(frame: Mapping[str, Any], request_id: RequestId, _: int) -> Subscribe:
    return Subscribe(
        _room_id(frame), _int_field(frame, "last_message_id", minimum=0, required=False), request_id
    )


def _parse_unsubscribe(frame: Mapping[str, Any], request_id: RequestId, _: int) -> Unsubscribe:
    return Unsubscribe(_room_id(frame), request_id)


def _parse_send(frame: Mapping[str, Any], request_id: RequestId, max_chars: int) -> SendMessage:
    room_id = _room_id(frame)
    content = frame.get("content")
    if not isinstance(content, str):
        raise ClientError("invalid_message", "field 'content' is required and must be a string")
    if not content.strip():
        raise ClientError("invalid_message", "field 'content' must not be empty")
    if len(content) > max_chars:
        raise ClientError("invalid_message", f"field 'content' is longer than {max_chars} characters")
    reply_to = _int_field(frame, "reply_to", required=False)
    client_msg_id = frame.get("client_msg_id")
    if client_msg_id is not None and (
        not isinstance(client_msg_id, str)
        or not client_msg_id
        or len(client_msg_id) > MAX_CLIENT_MSG_ID_CHARS
    ):
        raise ClientError(
            "invalid_message", "field 'client_msg_id' must be a non-empty string of at most 64 characters"
        )
    return SendMessage(room_id, content, reply_to, client_msg_id, request_id)


def _parse_mark_read(frame: Mapping[str, Any], request_id: RequestId, _: int) -> MarkRead:
    room_id = _room_id(frame)
    ids = frame.get("message_ids")
    if ids is None:
        return MarkRead(room_id, (), request_id)
    if not isinstance(ids, list) or not all(_is_int(i) and 1 <= i <= MAX_ID for i in ids):
        raise ClientError("invalid_message", "field 'message_ids' must be a list of message ids")
    if len(ids) > MAX_MARK_READ_IDS:
        raise ClientError(
            "invalid_message", f"field 'message_ids' holds more than {MAX_MARK_READ_IDS} ids"
        )
    return MarkRead(room_id, tuple(ids), request_id)


def _parse_typing(frame: Mapping[str, Any], request_id: RequestId, _: int) -> Typing:
    return Typing(_room_id(frame), frame["type"] == "typing", request_id)


def _parse_room_list(frame: Mapping[str, Any], request_id: RequestId, _: int) -> GetRoomList:
    return GetRoomList(request_id)


def _parse_history(frame: Mapping[str, Any], request_id: RequestId, _: int) -> GetHistory:
    room_id = _room_id(frame)
    before_id = _int_field(frame, "before_id", required=False)
    after_id = _int_field(frame, "after_id", minimum=0, required=False)
    if before_id is not None and after_id is not None:
        raise ClientError("invalid_message", "fields 'before_id' and 'after_id' exclude each other")
    limit = frame.get("limit", HISTORY_DEFAULT_LIMIT)
    if limit is None:
        limit = HISTORY_DEFAULT_LIMIT
    if not _is_int(limit) or not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise ClientError(
            "invalid_message", f"field 'limit' must be an integer from 1 to {HISTORY_MAX_LIMIT}"
        )
    return GetHistory(room_id, before_id, after_id, limit, request_id)


def _parse_refresh(frame: Mapping[str, Any], request_id: RequestId, _: int) -> RefreshToken:
    token = frame.get("token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise ClientError("invalid_message", "field 'token' is required and must be a string")
    return RefreshToken(token, request_id)


def _parse_ping(frame: Mapping[str, Any], request_id: RequestId, _: int) -> Ping:
    return Ping(request_id)


def _parse_help(frame: Mapping[str, Any], request_id: RequestId, _: int) -> Help:
    return Help(request_id)


def _parse_whoami(frame: Mapping[str, Any], request_id: RequestId, _: int) -> WhoAmI:
    return WhoAmI(request_id)


_PARSERS: dict[str, Callable[[Mapping[str, Any], RequestId, int], Request]] = {
    "subscribe_room": _parse_subscribe,
    "unsubscribe_room": _parse_unsubscribe,
    "send_message": _parse_send,
    "mark_read": _parse_mark_read,
    "typing": _parse_typing,
    "stop_typing": _parse_typing,
    "get_room_list": _parse_room_list,
    "get_history": _parse_history,
    "refresh_token": _parse_refresh,
    "ping": _parse_ping,
    "help": _parse_help,
    "whoami": _parse_whoami,
}
REQUEST_TYPES = tuple(_PARSERS)


# ---------------------------------------------------------------------------
# Timestamps


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_second_cache: list[Any] = [-1, ""]
_milli_cache: list[Any] = [-1, ""]


def format_timestamp(ms: int) -> str:
    """RFC 3339, UTC, millisecond precision, ``Z`` suffix."""
    # Most frames of one burst share a millisecond, and all of them a second: format once.
    if _milli_cache[0] == ms:
        return str(_milli_cache[1])
    seconds, millis = divmod(ms, 1000)
    if _second_cache[0] != seconds:
        _second_cache[0] = seconds
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    text = f"{_second_cache[1]}.{millis:03d}Z"
    _milli_cache[0], _milli_cache[1] = ms, text
    return text


# ---------------------------------------------------------------------------
# Server frames


@dataclass(frozen=True, slots=True)
class Message:
    """A stored chat message, as the wire shows it."""

    id: int
    room_id: int
    sender_id: int
    sender_username: str
    sender_first_name: str
    content: str
    created_ms: int
    reply_to: int | None
    client_msg_id: str | None
    message_type: str = "text"

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room_id": self.room_id,
            "content": self.content,
            "sender": {
                "id": self.sender_id,
                "username": self.sender_username,
                "first_name": self.sender_first_name,
            },
            "timestamp": format_timestamp(self.created_ms),
            "reply_to": self.reply_to,
            "message_type": self.message_type,
            "client_msg_id": self.client_msg_id,
        }


def encode(kind: str, fields: dict[str, Any], request_id: RequestId = None) -> bytes:
    frame = {"type": kind, **fields, "timestamp": format_timestamp(now_ms())}
    if request_id is not None:
        frame["request_id"] = request_id
    return orjson.dumps(frame)


def connection_established_frame(user_id: int, username: str) -> bytes:
    return encode("connection_established", {"user_id": user_id, "username": username})


def subscribed_frame(room_id: int, request_id: RequestId) -> bytes:
    return encode("subscribed", {"room_id": room_id}, request_id)


def unsubscribed_frame(room_id: int, request_id: RequestId, reason: str | None = None) -> bytes:
    fields: dict[str, Any] = {"room_id": room_id}
    if reason is not None:
        fields["reason"] = reason
    return encode("unsubscribed", fields, request_id)


def new_message_frame(message: Message, wire: dict[str, Any] | None = None) -> bytes:
    """``wire``: ``message.to_wire()`` when the caller has it already (ack and broadcast share it)."""
    return encode("new_message", {"room_id": message.room_id, "message": wire or message.to_wire()})


def message_ack_frame(message: Message, request_id: RequestId, wire: dict[str, Any] | None = None) -> bytes:
    return encode(
        "message_ack",
        {
            "room_id": message.room_id,
            "client_msg_id": message.client_msg_id,
            "message": wire or message.to_wire(),
        },
        request_id,
    )


def typing_frame(room_id: int, user_id: int, username: str, is_typing: bool) -> bytes:
    return encode(
        "typing",
        {"room_id": room_id, "user_id": user_id, "username": username, "is_typing": is_typing},
    )


def message_read_frame(
    room_id: int, user_id: int, message_ids: Sequence[int], last_read_message_id: int
) -> bytes:
    return encode(
        "message_read",
        {
            "room_id": room_id,
            "user_id": user_id,
            "message_ids": list(message_ids),
            "last_read_message_id": last_read_message_id,
        },
    )


def read_marked_frame(
    room_id: int, last_read_message_id: int, unread_count: int, request_id: RequestId
) -> bytes:
    return encode(
        "read_marked",
        {
            "room_id": room_id,
            "last_read_message_id": last_read_message_id,
            "unread_count": unread_count,
        },
        request_id,
    )


def room_updated_frame(room_id: int, updates: Mapping[str, Any]) -> bytes:
    return encode("room_updated", {"room_id": room_id, "updates": dict(updates)})


class RoomUpdateEncoder:
    """``room_updated`` frames of one room, differing only in ``unread_count``.

    Byte-for-byte what :func:`room_updated_frame` gives, with the shared part encoded once.
    """

    __slots__ = ("_head", "_tail", "_frames")

    def __init__(self, room_id: int, state: Mapping[str, Any]) -> None:
        shared = {key: value for key, value in state.items() if key != "unread_count"}
        body = orjson.dumps({"type": "room_updated", "room_id": room_id, "updates": shared})
        # '{"type":…,"updates":{…}}' → cut before the two closing braces to append the count.
        self._head = body[:-2] + (b',"unread_count":' if shared else b'"unread_count":')
        self._tail = b'},"timestamp":"' + format_timestamp(now_ms()).encode() + b'"}'
        self._frames: dict[int, bytes] = {}

    def frame(self, unread_count: int) -> bytes:
        """The frame for one participant; participants with equal counts share one object."""
        frame = self._frames.get(unread_count)
        if frame is None:
            frame = self._frames[unread_count] = self._head + str(unread_count).encode() + self._tail
        return frame


def room_list_frame(rooms: list[dict[str, Any]], request_id: RequestId) -> bytes:
    return encode("room_list", {"rooms": rooms}, request_id)


def history_frame(
    room_id: int,
    messages: Sequence[Message],
    has_more: bool,
    request_id: RequestId,
    *,
    truncated: bool = False,
) -> bytes:
    fields: dict[str, Any] = {
        "room_id": room_id, "messages": [m.to_wire() for m in messages], "has_more": has_more
    }
    if truncated:
        # Retention deleted messages inside the range asked for.
        fields["truncated"] = True
    return encode("history", fields, request_id)


def pong_frame(request_id: RequestId) -> bytes:
    return encode("pong", {}, request_id)


def token_refreshed_frame(expires_at: float, request_id: RequestId) -> bytes:
    return encode(
        "token_refreshed", {"expires_at": format_timestamp(int(expires_at * 1000))}, request_id
    )


# What `help` answers: every request type, its fields, and its reply (for people at wscat).
REQUEST_HELP: dict[str, dict[str, Any]] = {
    "subscribe_room": {"fields": {"room_id": "int", "last_message_id": "int, optional"},
                       "reply": "subscribed, then history when last_message_id is given"},
    "unsubscribe_room": {"fields": {"room_id": "int"}, "reply": "unsubscribed"},
    "send_message": {"fields": {"room_id": "int", "content": "string",
                                "reply_to": "message id, optional",
                                "client_msg_id": "string of at most 64 characters, optional"},
                     "reply": "message_ack"},
    "mark_read": {"fields": {"room_id": "int", "message_ids": "list of ids, optional (absent = all)"},
                  "reply": "read_marked"},
    "typing": {"fields": {"room_id": "int"}, "reply": "none"},
    "stop_typing": {"fields": {"room_id": "int"}, "reply": "none"},
    "get_room_list": {"fields": {}, "reply": "room_list"},
    "get_history": {"fields": {"room_id": "int", "before_id": "int, optional",
                               "after_id": "int, optional", "limit": "1..100, default 50"},
                    "reply": "history"},
    "refresh_token": {"fields": {"token": "string"}, "reply": "token_refreshed"},
    "ping": {"fields": {}, "reply": "pong"},
    "help": {"fields": {}, "reply": "help"},
    "whoami": {"fields": {}, "reply": "whoami"},
}


def help_frame(request_id: RequestId) -> bytes:
    return encode("help", {"requests": REQUEST_HELP,
                           "note": "every request may carry request_id (string or integer)"}, request_id)


def whoami_frame(
    user_id: int, username: str, first_name: str, subscriptions: Sequence[int], expires_at: float,
    request_id: RequestId,
) -> bytes:
    return encode("whoami", {
        "user_id": user_id, "username": username, "first_name": first_name,
        "subscriptions": sorted(subscriptions),
        "expires_at": format_timestamp(int(expires_at * 1000)),
    }, request_id)


def error_frame(error: ClientError) -> bytes:
    fields: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.room_id is not None:
        fields["room_id"] = error.room_id
    if error.client_msg_id is not None:
        fields["client_msg_id"] = error.client_msg_id
    retry_after_ms = getattr(error, "retry_after_ms", None)
    if retry_after_ms is not None:
        fields["retry_after_ms"] = retry_after_ms
    return encode("error", fields, error.request_id)
