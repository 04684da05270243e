"""Client frames → typed requests.

:func:`parse_request` is the one place where a client frame is checked.  It returns a
frozen request object whose fields are known to be valid, or raises
:class:`~unichatd.errors.ClientError` with the error code the server answers with.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ClientError, ErrorCode
from .search import QueryError, SearchTerm, parse_query

MAX_ID = 2**63 - 1
MAX_REQUEST_ID_CHARS = 64
MAX_CLIENT_MSG_ID_CHARS = 64
MAX_MARK_READ_IDS = 1000
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
MAX_TOKEN_CHARS = 8192
MAX_EMOJI_CHARS = 32
MAX_REACTIONS = 20
"""Distinct emoji on one message."""
THREAD_DEFAULT_LIMIT = 50
THREAD_MAX_LIMIT = 100
SEARCH_DEFAULT_LIMIT = 20
SEARCH_MAX_LIMIT = 100
CHANGES_DEFAULT_LIMIT = 100
CHANGES_MAX_LIMIT = 100
MAX_ROOM_NAME_CHARS = 100
MAX_MEMBER_IDS = 1000
"""Users named by one create_room, add_members or remove_members."""
USERS_DEFAULT_LIMIT = 50
USERS_MAX_LIMIT = 100
MAX_USER_QUERY_CHARS = 100
MAX_PRESENCE_IDS = 1000
MAX_FILE_NAME_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
MAX_ATTACHMENTS = 10
MAX_UPLOAD_ID_CHARS = 64
ROOM_TYPES = ("group", "direct")

RequestId = str | int | None


# ---------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``subscribe_room``: the room's live frames; with ``last_message_id``, what was missed first."""

    room_id: int
    last_message_id: int | None
    request_id: RequestId = None
    since_revision: int | None = None
    """With ``last_message_id``: also the messages up to it changed after this revision."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``unsubscribe_room``."""

    room_id: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class SendMessage:
    """``send_message``: answered with ``message_ack`` once the message is stored."""

    room_id: int
    content: str
    reply_to: int | None
    client_msg_id: str | None
    request_id: RequestId = None
    attachments: tuple[int, ...] = ()
    """File ids the sender stored (``content`` may then be empty)."""


@dataclass(frozen=True, slots=True)
class MarkRead:
    """``mark_read``: moves the user's read marker forward."""

    room_id: int
    message_ids: tuple[int, ...]
    """Empty means: everything in the room."""
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Typing:
    """``typing`` (``is_typing``) or ``stop_typing``."""

    room_id: int
    is_typing: bool
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetRoomList:
    """``get_room_list``."""

    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetHistory:
    """``get_history``: a page before ``before_id`` or after ``after_id``, else the newest."""

    room_id: int
    before_id: int | None
    after_id: int | None
    limit: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class EditMessage:
    """``edit_message``: new content for one's own message."""

    room_id: int
    message_id: int
    content: str
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    """``delete_message``: leaves a tombstone."""

    room_id: int
    message_id: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class React:
    """``add_reaction`` (``add``) or ``remove_reaction``."""

    room_id: int
    message_id: int
    emoji: str
    add: bool
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetThread:
    """``get_thread``: a thread's root and a page of its replies."""

    room_id: int
    message_id: int
    after_id: int | None
    limit: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class SearchMessages:
    """``search_messages``: full-text search over the user's rooms (or one of them)."""

    query: str
    terms: tuple[SearchTerm, ...]
    room_id: int | None
    before_id: int | None
    limit: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetChanges:
    """``get_changes``: the room's messages changed after a revision, in revision order."""

    room_id: int
    since_revision: int
    limit: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class CreateRoom:
    """``create_room``: a room the requester owns, with them and ``member_ids`` in it."""

    name: str
    member_ids: tuple[int, ...]
    room_type: str
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class CreateDirect:
    """``create_direct``: the one direct room of the requester and ``user_id``."""

    user_id: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class ChangeMembers:
    """``add_members`` (``add``) or ``remove_members``."""

    room_id: int
    user_ids: tuple[int, ...]
    add: bool
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class RenameRoom:
    """``rename_room``."""

    room_id: int
    name: str
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """``leave_room``."""

    room_id: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetUsers:
    """``get_users``: users whose username or first name starts with ``query``."""

    query: str
    limit: int
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetPresence:
    """``get_presence``."""

    user_ids: tuple[int, ...]
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class UploadFile:
    """``upload_file``: announces a file whose bytes follow in binary frames."""

    name: str
    size: int
    content_type: str
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class UploadDone:
    """``upload_done``: the last byte was sent."""

    upload_id: str
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``."""

    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Help:
    """``help``: every request type and its fields."""

    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """``whoami``."""

    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """``refresh_token``: a newer token of the same user, or (None) a renewal by the server."""

    token: str | None
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
    | EditMessage
    | DeleteMessage
    | React
    | GetThread
    | SearchMessages
    | GetChanges
    | CreateRoom
    | CreateDirect
    | ChangeMembers
    | RenameRoom
    | LeaveRoom
    | GetUsers
    | GetPresence
    | UploadFile
    | UploadDone
    | Ping
    | Help
    | WhoAmI
)


def parse_request(text: str | bytes, *, max_content_chars: int) -> Request:
    """Decode and check one client frame."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ClientError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object")
    request_id: RequestId = None
    try:
        request_id = _request_id(frame)
        kind = frame.get("type")
        if not isinstance(kind, str):
            raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'type' is required and must be a string")
        parser = _PARSERS.get(kind)
        if parser is None:
            raise ClientError(ErrorCode.UNKNOWN_TYPE, _unknown_type_message(kind))
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
        ErrorCode.INVALID_MESSAGE, "field 'request_id' must be a string of at most 64 characters or an integer"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(frame: Mapping[str, Any], name: str, *, minimum: int = 1, required: bool = True) -> Any:
    if name not in frame or frame[name] is None:
        if required:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"field {name!r} is required")
        return None
    value = frame[name]
    if not _is_int(value):
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be an integer")
    if not minimum <= value <= MAX_ID:
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be between {minimum} and {MAX_ID}")
    return value


def _room_id(frame: Mapping[str, Any]) -> int:
    room_id: int = _int_field(frame, "room_id")
    return room_id


def _parse_subscribe(frame: Mapping[str, Any], request_id: RequestId, _: int) -> Subscribe:
    room_id = _room_id(frame)
    last_message_id = _int_field(frame, "last_message_id", minimum=0, required=False)
    since_revision = _int_field(frame, "since_revision", minimum=0, required=False)
    if since_revision is not None and last_message_id is None:
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'since_revision' needs 'last_message_id'")
    return Subscribe(room_id, last_message_id, request_id, since_revision)


def _parse_unsubscribe(frame: Mapping[str, Any], request_id: RequestId, _: int) -> Unsubscribe:
    return Unsubscribe(_room_id(frame), request_id)


def _content(frame: Mapping[str, Any], max_chars: int, *, may_be_empty: bool = False) -> str:
    content = frame.get("content", "" if may_be_empty else None)
    if not isinstance(content, str):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'content' is required and must be a string")
    if not content.strip() and not may_be_empty:
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'content' must not be empty")
    if len(content) > max_chars:
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"field 'content' is longer than {max_chars} characters")
    return content


def _limit(frame: Mapping[str, Any], default: int, maximum: int) -> int:
    limit = frame.get("limit", default)
    if limit is None:
        return default
    if not _is_int(limit) or not 1 <= limit <= maximum:
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"field 'limit' must be an integer from 1 to {maximum}")
    return int(limit)


def _id_list(frame: Mapping[str, Any], name: str, maximum: int, *, required: bool = True) -> tuple[int, ...]:
    """A list of positive integer ids, each once (order kept)."""
    ids = frame.get(name)
    if ids is None and not required:
        return ()
    if not isinstance(ids, list) or not all(_is_int(i) and 1 <= i <= MAX_ID for i in ids):
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be a list of ids")
    if len(ids) > maximum:
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"field {name!r} holds more than {maximum} ids")
    return tuple(dict.fromkeys(ids))


def _parse_send(frame: Mapping[str, Any], request_id: RequestId, max_chars: int) -> SendMessage:
    room_id = _room_id(frame)
    attachments = _id_list(frame, "attachments", MAX_ATTACHMENTS, required=False)
    content = _content(frame, max_chars, may_be_empty=bool(attachments))
    reply_to = _int_field(frame, "reply_to", required=False)
    client_msg_id = frame.get("client_msg_id")
    if client_msg_id is not None and (
        not isinstance(client_msg_id, str)
        or not client_msg_id
        or len(client_msg_id) > MAX_CLIENT_MSG_ID_CHARS
    ):
        raise ClientError(
            ErrorCode.INVALID_MESSAGE, "field 'client_msg_id' must be a non-empty string of at most 64 characters"
        )
    return SendMessage(room_id, content, reply_to, client_msg_id, request_id, attachments)


def _parse_mark_read(frame: Mapping[str, Any], request_id: RequestId, _: int) -> MarkRead:
    room_id = _room_id(frame)
    ids = frame.get("message_ids")
    if ids is None:
        return MarkRead(room_id, (), request_id)
    if not isinstance(ids, list) or not all(_is_int(i) and 1 <= i <= MAX_ID for i in ids):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'message_ids' must be a list of message ids")
    if len(ids) > MAX_MARK_READ_IDS:
        raise ClientError(
            ErrorCode.INVALID_MESSAGE, f"field 'message_ids' holds more than {MAX_MARK_READ_IDS} ids"
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
        raise ClientError(ErrorCode.INVALID_MESSAGE, "fields 'before_id' and 'after_id' exclude each other")
    return GetHistory(room_id, before_id, after_id, _limit(frame, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT),
                      request_id)


def _message_id(frame: Mapping[str, Any]) -> int:
    message_id: int = _int_field(frame, "message_id")
    return message_id


def _parse_edit(frame: Mapping[str, Any], request_id: RequestId, max_chars: int) -> EditMessage:
    return EditMessage(_room_id(frame), _message_id(frame), _content(frame, max_chars), request_id)


def _parse_delete(frame: Mapping[str, Any], request_id: RequestId, _: int) -> DeleteMessage:
    return DeleteMessage(_room_id(frame), _message_id(frame), request_id)


def _parse_reaction(frame: Mapping[str, Any], request_id: RequestId, _: int) -> React:
    room_id, message_id = _room_id(frame), _message_id(frame)
    emoji = frame.get("emoji")
    if not isinstance(emoji, str) or not emoji or len(emoji) > MAX_EMOJI_CHARS:
        raise ClientError(ErrorCode.INVALID_MESSAGE,
                          f"field 'emoji' must be a non-empty string of at most {MAX_EMOJI_CHARS} characters")
    if any(char.isspace() or unicodedata.category(char) in ("Cc", "Cs") for char in emoji):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'emoji' must not hold spaces or control characters")
    return React(room_id, message_id, emoji, frame["type"] == "add_reaction", request_id)


def _parse_thread(frame: Mapping[str, Any], request_id: RequestId, _: int) -> GetThread:
    return GetThread(_room_id(frame), _message_id(frame), _int_field(frame, "after_id", minimum=0, required=False),
                     _limit(frame, THREAD_DEFAULT_LIMIT, THREAD_MAX_LIMIT), request_id)


def _parse_search(frame: Mapping[str, Any], request_id: RequestId, _: int) -> SearchMessages:
    query = frame.get("query")
    if not isinstance(query, str):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'query' is required and must be a string")
    try:
        terms = parse_query(query)
    except QueryError as exc:
        raise ClientError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
    return SearchMessages(query, terms, _int_field(frame, "room_id", required=False),
                          _int_field(frame, "before_id", required=False),
                          _limit(frame, SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT), request_id)


def _parse_changes(frame: Mapping[str, Any], request_id: RequestId, _: int) -> GetChanges:
    since: int = _int_field(frame, "since_revision", minimum=0)
    return GetChanges(_room_id(frame), since, _limit(frame, CHANGES_DEFAULT_LIMIT, CHANGES_MAX_LIMIT), request_id)


def _room_name(frame: Mapping[str, Any]) -> str:
    name = frame.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_ROOM_NAME_CHARS:
        raise ClientError(ErrorCode.INVALID_MESSAGE,
                          f"field 'name' must be a non-empty string of at most {MAX_ROOM_NAME_CHARS} characters")
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'name' must not hold control characters")
    return name.strip()


def _parse_create_room(frame: Mapping[str, Any], request_id: RequestId, _: int) -> CreateRoom:
    name = _room_name(frame)
    member_ids = _id_list(frame, "member_ids", MAX_MEMBER_IDS)
    room_type = frame.get("room_type", "group")
    if room_type != "group":
        raise ClientError(ErrorCode.INVALID_MESSAGE,
                          "field 'room_type' must be \"group\" (a direct room comes from create_direct)")
    return CreateRoom(name, member_ids, room_type, request_id)


def _parse_create_direct(frame: Mapping[str, Any], request_id: RequestId, _: int) -> CreateDirect:
    user_id: int = _int_field(frame, "user_id")
    return CreateDirect(user_id, request_id)


def _parse_members(frame: Mapping[str, Any], request_id: RequestId, _: int) -> ChangeMembers:
    room_id = _room_id(frame)
    user_ids = _id_list(frame, "user_ids", MAX_MEMBER_IDS)
    if not user_ids:
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'user_ids' must name at least one user")
    return ChangeMembers(room_id, user_ids, frame["type"] == "add_members", request_id)


def _parse_rename(frame: Mapping[str, Any], request_id: RequestId, _: int) -> RenameRoom:
    return RenameRoom(_room_id(frame), _room_name(frame), request_id)


def _parse_leave(frame: Mapping[str, Any], request_id: RequestId, _: int) -> LeaveRoom:
    return LeaveRoom(_room_id(frame), request_id)


def _parse_users(frame: Mapping[str, Any], request_id: RequestId, _: int) -> GetUsers:
    query = frame.get("query", "")
    if query is None:
        query = ""
    if not isinstance(query, str) or len(query) > MAX_USER_QUERY_CHARS:
        raise ClientError(ErrorCode.INVALID_MESSAGE,
                          f"field 'query' must be a string of at most {MAX_USER_QUERY_CHARS} characters")
    return GetUsers(query.strip(), _limit(frame, USERS_DEFAULT_LIMIT, USERS_MAX_LIMIT), request_id)


def _parse_presence(frame: Mapping[str, Any], request_id: RequestId, _: int) -> GetPresence:
    return GetPresence(_id_list(frame, "user_ids", MAX_PRESENCE_IDS), request_id)


def _parse_upload(frame: Mapping[str, Any], request_id: RequestId, _: int) -> UploadFile:
    name = frame.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_FILE_NAME_CHARS:
        raise ClientError(ErrorCode.INVALID_MESSAGE,
                          f"field 'name' must be a file name of 1 to {MAX_FILE_NAME_CHARS} characters")
    if "/" in name or "\0" in name or name in (".", ".."):
        raise ClientError(ErrorCode.INVALID_MESSAGE,
                          "field 'name' must be a plain file name: no '/', no NUL, not '.' or '..'")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'name' must not hold control characters")
    size: int = _int_field(frame, "size", minimum=0)
    content_type = frame.get("content_type") or "application/octet-stream"
    if (not isinstance(content_type, str) or len(content_type) > MAX_CONTENT_TYPE_CHARS
            or not content_type.isascii() or any(not char.isprintable() for char in content_type)):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'content_type' must be a media type such as image/png")
    return UploadFile(name, size, content_type.strip().lower(), request_id)


def _parse_upload_done(frame: Mapping[str, Any], request_id: RequestId, _: int) -> UploadDone:
    upload_id = frame.get("upload_id")
    if not isinstance(upload_id, str) or not upload_id or len(upload_id) > MAX_UPLOAD_ID_CHARS:
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'upload_id' is required and must be a string")
    return UploadDone(upload_id, request_id)


def _parse_refresh(frame: Mapping[str, Any], request_id: RequestId, _: int) -> RefreshToken:
    if "token" not in frame:
        return RefreshToken(None, request_id)
    token = frame["token"]
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise ClientError(ErrorCode.INVALID_MESSAGE, "field 'token' must be a string (leave it out to renew)")
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
    "edit_message": _parse_edit,
    "delete_message": _parse_delete,
    "add_reaction": _parse_reaction,
    "remove_reaction": _parse_reaction,
    "get_thread": _parse_thread,
    "search_messages": _parse_search,
    "get_changes": _parse_changes,
    "create_room": _parse_create_room,
    "create_direct": _parse_create_direct,
    "add_members": _parse_members,
    "remove_members": _parse_members,
    "rename_room": _parse_rename,
    "leave_room": _parse_leave,
    "get_users": _parse_users,
    "get_presence": _parse_presence,
    "upload_file": _parse_upload,
    "upload_done": _parse_upload_done,
    "ping": _parse_ping,
    "help": _parse_help,
    "whoami": _parse_whoami,
}
REQUEST_TYPES = tuple(_PARSERS)
