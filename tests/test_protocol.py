"""Pure unit tests of the wire protocol: parse_request and the server frame builders (no I/O)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from unichatd import protocol
from unichatd.errors import ClientError, ErrorCode, RateLimited
from unichatd.models import Message
from unichatd.protocol import (
    GetHistory,
    GetRoomList,
    MarkRead,
    Ping,
    RefreshToken,
    SendMessage,
    Subscribe,
    Typing,
    Unsubscribe,
    parse_request,
)

MAX_CHARS = 4000
TOO_BIG = 2**63
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MESSAGE_KEYS = {
    "id", "room_id", "content", "sender", "timestamp", "reply_to", "message_type", "client_msg_id",
    # v1.1 (protocol.md §6.1)
    "revision", "edited_at", "deleted", "reactions", "thread_root_id", "reply_count", "last_reply_at",
    "mentions", "attachments",
}


def parse(frame: dict[str, Any] | str, *, max_chars: int = MAX_CHARS) -> protocol.Request:
    text = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
    return parse_request(text, max_content_chars=max_chars)


def refused(frame: dict[str, Any] | list[Any] | str, *, max_chars: int = MAX_CHARS) -> ClientError:
    text = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
    with pytest.raises(ClientError) as info:
        parse_request(text, max_content_chars=max_chars)
    return info.value


def decode(frame: bytes) -> dict[str, Any]:
    assert isinstance(frame, bytes)
    value: dict[str, Any] = orjson.loads(frame)
    return value


def sample_message(**overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "id": 11, "room_id": 3, "sender_id": 42, "sender_username": "john", "sender_first_name": "John",
        "content": "hello", "created_ms": 1761388200123, "reply_to": None, "client_msg_id": None,
    }
    fields.update(overrides)
    return Message(**fields)


# ---------------------------------------------------------------------------
# Valid frames → typed requests


def test_subscribe_room_parses() -> None:
    """subscribe_room yields Subscribe with the room id and no last_message_id."""
    assert parse({"type": "subscribe_room", "room_id": 5}) == Subscribe(5, None)


def test_subscribe_room_with_last_message_id_parses() -> None:
    """subscribe_room carries last_message_id when given."""
    assert parse({"type": "subscribe_room", "room_id": 5, "last_message_id": 9}) == Subscribe(5, 9)


def test_subscribe_room_last_message_id_zero_is_accepted() -> None:
    """last_message_id 0 (everything after the start) is accepted."""
    assert parse({"type": "subscribe_room", "room_id": 5, "last_message_id": 0}) == Subscribe(5, 0)


def test_unsubscribe_room_parses() -> None:
    """unsubscribe_room yields Unsubscribe with the room id."""
    assert parse({"type": "unsubscribe_room", "room_id": 5}) == Unsubscribe(5)


def test_send_message_minimal_parses() -> None:
    """send_message with room_id and content yields SendMessage without reply_to or client_msg_id."""
    assert parse({"type": "send_message", "room_id": 5, "content": "hi"}) == SendMessage(5, "hi", None, None)


def test_send_message_full_parses() -> None:
    """send_message carries reply_to, client_msg_id and request_id."""
    request = parse({"type": "send_message", "room_id": 5, "content": " hi ", "reply_to": 7,
                     "client_msg_id": "c-1", "request_id": "r1"})
    assert request == SendMessage(5, " hi ", 7, "c-1", "r1")


def test_send_message_content_is_not_trimmed() -> None:
    """The content is kept as sent, surrounding white space included."""
    request = parse({"type": "send_message", "room_id": 5, "content": "\n  hi\t"})
    assert isinstance(request, SendMessage)
    assert request.content == "\n  hi\t"


def test_send_message_content_at_limit_is_accepted() -> None:
    """Content of exactly max_content_chars characters is accepted."""
    request = parse({"type": "send_message", "room_id": 5, "content": "x" * 10}, max_chars=10)
    assert isinstance(request, SendMessage)
    assert len(request.content) == 10


def test_send_message_content_counts_characters_not_bytes() -> None:
    """The length limit counts characters: three 4-byte emoji fit a limit of 3."""
    request = parse({"type": "send_message", "room_id": 5, "content": "\U0001f600" * 3}, max_chars=3)
    assert isinstance(request, SendMessage)
    assert request.content == "\U0001f600" * 3


def test_send_message_reply_to_null_means_none() -> None:
    """reply_to null is the same as absent."""
    request = parse({"type": "send_message", "room_id": 5, "content": "hi", "reply_to": None})
    assert isinstance(request, SendMessage)
    assert request.reply_to is None


def test_send_message_client_msg_id_of_64_chars_is_accepted() -> None:
    """client_msg_id of exactly 64 characters is accepted."""
    request = parse({"type": "send_message", "room_id": 5, "content": "hi", "client_msg_id": "c" * 64})
    assert isinstance(request, SendMessage)
    assert request.client_msg_id == "c" * 64


def test_mark_read_without_ids_means_all() -> None:
    """mark_read without message_ids yields an empty id tuple (= everything)."""
    assert parse({"type": "mark_read", "room_id": 5}) == MarkRead(5, ())


def test_mark_read_with_empty_ids_means_all() -> None:
    """mark_read with message_ids [] yields an empty id tuple (= everything)."""
    assert parse({"type": "mark_read", "room_id": 5, "message_ids": []}) == MarkRead(5, ())


def test_mark_read_with_ids_parses() -> None:
    """mark_read carries the given message ids in order."""
    assert parse({"type": "mark_read", "room_id": 5, "message_ids": [3, 1, 2]}) == MarkRead(5, (3, 1, 2))


def test_typing_parses() -> None:
    """typing yields Typing with is_typing True."""
    assert parse({"type": "typing", "room_id": 5}) == Typing(5, True)


def test_stop_typing_parses() -> None:
    """stop_typing yields Typing with is_typing False."""
    assert parse({"type": "stop_typing", "room_id": 5}) == Typing(5, False)


def test_get_room_list_parses() -> None:
    """get_room_list yields GetRoomList."""
    assert parse({"type": "get_room_list"}) == GetRoomList()


def test_get_history_defaults() -> None:
    """get_history without options defaults to limit 50 and no cursor."""
    assert parse({"type": "get_history", "room_id": 5}) == GetHistory(5, None, None, 50)


def test_get_history_null_limit_means_default() -> None:
    """get_history with limit null uses the default of 50."""
    request = parse({"type": "get_history", "room_id": 5, "limit": None})
    assert isinstance(request, GetHistory)
    assert request.limit == 50


def test_get_history_before_id_parses() -> None:
    """get_history carries before_id and limit."""
    request = parse({"type": "get_history", "room_id": 5, "before_id": 40, "limit": 10})
    assert request == GetHistory(5, 40, None, 10)


def test_get_history_after_id_parses() -> None:
    """get_history carries after_id."""
    assert parse({"type": "get_history", "room_id": 5, "after_id": 40}) == GetHistory(5, None, 40, 50)


@pytest.mark.parametrize("limit", [1, 100])
def test_get_history_limit_bounds_are_accepted(limit: int) -> None:
    """get_history accepts limit 1 and 100 unchanged."""
    request = parse({"type": "get_history", "room_id": 5, "limit": limit})
    assert isinstance(request, GetHistory)
    assert request.limit == limit


def test_refresh_token_parses() -> None:
    """refresh_token yields RefreshToken with the token."""
    assert parse({"type": "refresh_token", "token": "a.b.c"}) == RefreshToken("a.b.c")


def test_ping_parses() -> None:
    """ping yields Ping."""
    assert parse({"type": "ping"}) == Ping()


def test_largest_id_is_accepted() -> None:
    """A room id of 2**63 - 1 is in range."""
    assert parse({"type": "unsubscribe_room", "room_id": 2**63 - 1}) == Unsubscribe(2**63 - 1)


def test_bytes_frame_parses() -> None:
    """parse_request also takes the frame as UTF-8 bytes."""
    assert parse_request(b'{"type":"ping"}', max_content_chars=MAX_CHARS) == Ping()


@pytest.mark.parametrize("request_id", ["abc", "", "r" * 64, 0, 7, -3, 2**63 - 1])
def test_request_id_is_carried(request_id: str | int) -> None:
    """A valid request_id (string up to 64 chars, or integer) is carried on the request."""
    request = parse({"type": "ping", "request_id": request_id})
    assert request.request_id == request_id
    assert type(request.request_id) is type(request_id)


def test_unknown_fields_are_ignored() -> None:
    """Extra fields do not make a frame invalid."""
    assert parse({"type": "ping", "extra": {"x": 1}}) == Ping()


# ---------------------------------------------------------------------------
# invalid_json


@pytest.mark.parametrize("text", ["", "not json", "{", '{"type": "ping",}', "{'type': 'ping'}", "NaN"])
def test_not_json_is_invalid_json(text: str) -> None:
    """A frame that is not JSON is refused with invalid_json."""
    assert refused(text).code == "invalid_json"


@pytest.mark.parametrize("text", ['{"type": "ping", "request_id": "\\ud800"}', '"\\udc00"'])
def test_lone_surrogate_escape_is_invalid_json(text: str) -> None:
    """A lone UTF-16 surrogate escape is refused with invalid_json."""
    assert refused(text).code == "invalid_json"


def test_invalid_utf8_bytes_are_invalid_json() -> None:
    """Bytes that are not UTF-8 are refused with invalid_json."""
    with pytest.raises(ClientError) as info:
        parse_request(b'{"type": "\xff"}', max_content_chars=MAX_CHARS)
    assert info.value.code == "invalid_json"


def test_deep_nesting_is_invalid_json() -> None:
    """Absurdly deep nesting is refused with invalid_json, not a crash."""
    text = '{"type": "ping", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    assert refused(text).code == "invalid_json"


def test_invalid_json_message_has_no_internals() -> None:
    """The invalid_json message is a human sentence without a traceback."""
    error = refused("{bad")
    assert error.message
    assert "Traceback" not in error.message
    assert "line " not in error.message


# ---------------------------------------------------------------------------
# invalid_message: the frame itself


@pytest.mark.parametrize("text", ["[]", '[{"type": "ping"}]', '"ping"', "42", "null", "true"])
def test_non_object_is_invalid_message(text: str) -> None:
    """Valid JSON that is not an object is refused with invalid_message."""
    assert refused(text).code == "invalid_message"


def test_missing_type_is_invalid_message() -> None:
    """A frame without type is refused with invalid_message naming 'type'."""
    error = refused({"room_id": 5})
    assert error.code == "invalid_message"
    assert "type" in error.message


@pytest.mark.parametrize("kind", [None, 1, True, ["ping"], {"t": "ping"}])
def test_wrong_typed_type_is_invalid_message(kind: Any) -> None:
    """A type that is not a string is refused with invalid_message naming 'type'."""
    error = refused({"type": kind})
    assert error.code == "invalid_message"
    assert "type" in error.message


@pytest.mark.parametrize("kind", ["pong", "PING", "", "subscribe", "send-message"])
def test_unknown_type(kind: str) -> None:
    """A string type that is not a request type is refused with unknown_type."""
    assert refused({"type": kind}).code == "unknown_type"


def test_unknown_type_message_is_bounded() -> None:
    """The unknown_type message does not echo an enormous type back in full."""
    assert len(refused({"type": "x" * 10_000}).message) < 200


# ---------------------------------------------------------------------------
# invalid_message: fields


ROOM_TYPES = ["subscribe_room", "unsubscribe_room", "send_message", "mark_read", "typing", "stop_typing",
              "get_history"]


def room_frame(kind: str, **fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": kind}
    if kind == "send_message":
        frame["content"] = "hi"
    frame.update(fields)
    return frame


@pytest.mark.parametrize("kind", ROOM_TYPES)
def test_missing_room_id_is_invalid_message(kind: str) -> None:
    """Every room request without room_id is refused with invalid_message naming 'room_id'."""
    error = refused(room_frame(kind))
    assert error.code == "invalid_message"
    assert "room_id" in error.message


@pytest.mark.parametrize("kind", ROOM_TYPES)
@pytest.mark.parametrize("room_id", ["5", 5.0, 5.5, True, False, None, [5], {"id": 5}])
def test_wrong_typed_room_id_is_invalid_message(kind: str, room_id: Any) -> None:
    """A room_id that is not an integer (a bool included) is refused naming 'room_id'."""
    error = refused(room_frame(kind, room_id=room_id))
    assert error.code == "invalid_message"
    assert "room_id" in error.message


@pytest.mark.parametrize("kind", ROOM_TYPES)
@pytest.mark.parametrize("room_id", [0, -1, -(2**63), TOO_BIG, 2**64 - 1])
def test_out_of_range_room_id_is_invalid_message(kind: str, room_id: int) -> None:
    """A room_id of zero, negative or 2**63 and above is refused naming 'room_id'."""
    error = refused(room_frame(kind, room_id=room_id))
    assert error.code == "invalid_message"
    assert "room_id" in error.message


@pytest.mark.parametrize("value", ["9", 1.5, True, False, -1, TOO_BIG])
def test_bad_last_message_id_is_invalid_message(value: Any) -> None:
    """A last_message_id that is not a non-negative id is refused naming 'last_message_id'."""
    error = refused({"type": "subscribe_room", "room_id": 5, "last_message_id": value})
    assert error.code == "invalid_message"
    assert "last_message_id" in error.message


@pytest.mark.parametrize("content", [None, 5, True, ["hi"], {"text": "hi"}])
def test_wrong_typed_content_is_invalid_message(content: Any) -> None:
    """A content that is not a string is refused naming 'content'."""
    error = refused({"type": "send_message", "room_id": 5, "content": content})
    assert error.code == "invalid_message"
    assert "content" in error.message


def test_missing_content_is_invalid_message() -> None:
    """send_message without content is refused naming 'content'."""
    error = refused({"type": "send_message", "room_id": 5})
    assert error.code == "invalid_message"
    assert "content" in error.message


@pytest.mark.parametrize("content", ["", " ", "\n\t \r", "\u00a0\u3000\u2003"])
def test_blank_content_is_invalid_message(content: str) -> None:
    """Empty or white-space-only content (Unicode spaces included) is refused naming 'content'."""
    error = refused({"type": "send_message", "room_id": 5, "content": content})
    assert error.code == "invalid_message"
    assert "content" in error.message


def test_oversized_content_is_invalid_message() -> None:
    """Content one character over max_content_chars is refused naming 'content'."""
    error = refused({"type": "send_message", "room_id": 5, "content": "x" * 11}, max_chars=10)
    assert error.code == "invalid_message"
    assert "content" in error.message


def test_content_limit_is_the_configured_one() -> None:
    """The default limit of 4000 characters accepts 4000 and refuses 4001."""
    assert isinstance(parse({"type": "send_message", "room_id": 5, "content": "x" * 4000}), SendMessage)
    assert refused({"type": "send_message", "room_id": 5, "content": "x" * 4001}).code == "invalid_message"


@pytest.mark.parametrize("reply_to", ["7", 7.0, True, 0, -7, TOO_BIG])
def test_bad_reply_to_is_invalid_message(reply_to: Any) -> None:
    """A reply_to that is not a message id is refused naming 'reply_to'."""
    error = refused({"type": "send_message", "room_id": 5, "content": "hi", "reply_to": reply_to})
    assert error.code == "invalid_message"
    assert "reply_to" in error.message


@pytest.mark.parametrize("client_msg_id", [5, True, ["c"], {"c": 1}, "c" * 65])
def test_bad_client_msg_id_is_invalid_message(client_msg_id: Any) -> None:
    """A client_msg_id that is not a string of at most 64 characters is refused naming it."""
    error = refused({"type": "send_message", "room_id": 5, "content": "hi", "client_msg_id": client_msg_id})
    assert error.code == "invalid_message"
    assert "client_msg_id" in error.message


@pytest.mark.parametrize(
    "ids", [5, "1,2", {"1": 2}, [1, "2"], [1, True], [1, 2.0], [0], [-1], [TOO_BIG], [None]]
)
def test_bad_message_ids_is_invalid_message(ids: Any) -> None:
    """message_ids that is not a list of message ids is refused naming 'message_ids'."""
    error = refused({"type": "mark_read", "room_id": 5, "message_ids": ids})
    assert error.code == "invalid_message"
    assert "message_ids" in error.message


@pytest.mark.parametrize("limit", [0, 101, -1, 1000])
def test_out_of_range_limit_is_refused_not_clamped(limit: int) -> None:
    """A limit outside 1..100 is refused naming 'limit', not clamped."""
    error = refused({"type": "get_history", "room_id": 5, "limit": limit})
    assert error.code == "invalid_message"
    assert "limit" in error.message


@pytest.mark.parametrize("limit", ["10", 10.0, True, [10]])
def test_wrong_typed_limit_is_invalid_message(limit: Any) -> None:
    """A limit that is not an integer (a bool included) is refused naming 'limit'."""
    error = refused({"type": "get_history", "room_id": 5, "limit": limit})
    assert error.code == "invalid_message"
    assert "limit" in error.message


@pytest.mark.parametrize("field", ["before_id", "after_id"])
@pytest.mark.parametrize("value", ["4", 4.5, True, -4, TOO_BIG])
def test_bad_history_cursor_is_invalid_message(field: str, value: Any) -> None:
    """A before_id/after_id that is not an id is refused naming the field."""
    error = refused({"type": "get_history", "room_id": 5, field: value})
    assert error.code == "invalid_message"
    assert field in error.message


def test_before_id_and_after_id_together_is_invalid_message() -> None:
    """get_history with both before_id and after_id is refused naming both."""
    error = refused({"type": "get_history", "room_id": 5, "before_id": 9, "after_id": 3})
    assert error.code == "invalid_message"
    assert "before_id" in error.message
    assert "after_id" in error.message


@pytest.mark.parametrize("token", [None, 5, True, "", ["a.b.c"]])
def test_bad_refresh_token_is_invalid_message(token: Any) -> None:
    """refresh_token without a non-empty string token is refused naming 'token'."""
    error = refused({"type": "refresh_token", "token": token})
    assert error.code == "invalid_message"
    assert "token" in error.message


def test_refresh_token_without_a_token_field_asks_for_renewal() -> None:
    """refresh_token without a token field asks the server to mint one (operations.md)."""
    assert parse({"type": "refresh_token", "request_id": 3}) == RefreshToken(None, 3)


@pytest.mark.parametrize("request_id", ["r" * 65, 1.5, True, False, None, ["r"], {"r": 1}, TOO_BIG])
def test_bad_request_id_is_invalid_message(request_id: Any) -> None:
    """A request_id that is neither a string of at most 64 chars nor an integer is refused naming it."""
    error = refused({"type": "ping", "request_id": request_id})
    assert error.code == "invalid_message"
    assert "request_id" in error.message


# ---------------------------------------------------------------------------
# request_id and room_id on errors


def test_error_carries_request_id() -> None:
    """A field error carries the frame's request_id."""
    error = refused({"type": "send_message", "room_id": 5, "content": " ", "request_id": "abc"})
    assert error.request_id == "abc"


def test_unknown_type_carries_request_id() -> None:
    """unknown_type carries the frame's request_id."""
    assert refused({"type": "nope", "request_id": 17}).request_id == 17


def test_missing_type_carries_request_id() -> None:
    """A frame without type still gets its request_id on the error."""
    assert refused({"request_id": "r-1"}).request_id == "r-1"


def test_error_without_request_id_has_none() -> None:
    """A frame without request_id gives an error with request_id None."""
    assert refused({"type": "get_history", "room_id": 5, "limit": 0}).request_id is None


def test_field_error_carries_room_id() -> None:
    """A field error in a frame that names a valid room carries that room_id."""
    assert refused({"type": "get_history", "room_id": 5, "limit": 101}).room_id == 5


def test_unknown_type_carries_room_id() -> None:
    """unknown_type for a frame naming a valid room carries that room_id."""
    assert refused({"type": "nope", "room_id": 8}).room_id == 8


def test_bad_request_id_error_carries_room_id() -> None:
    """A bad request_id in a frame naming a valid room still carries that room_id."""
    error = refused({"type": "subscribe_room", "room_id": 5, "request_id": "r" * 65})
    assert error.code == "invalid_message"
    assert error.room_id == 5


@pytest.mark.parametrize("room_id", [True, 0, -5, "5", TOO_BIG])
def test_invalid_room_id_is_not_carried(room_id: Any) -> None:
    """An invalid room_id is not copied onto the error."""
    assert refused({"type": "subscribe_room", "room_id": room_id}).room_id is None


def test_error_frame_of_parse_failure_carries_both_ids() -> None:
    """The error frame of a refused frame echoes request_id and room_id."""
    error = refused({"type": "send_message", "room_id": 5, "content": "", "request_id": "q"})
    frame = decode(protocol.error_frame(error))
    assert frame["code"] == "invalid_message"
    assert frame["room_id"] == 5
    assert frame["request_id"] == "q"


# ---------------------------------------------------------------------------
# Timestamps


def test_format_timestamp_known_value() -> None:
    """A known instant is formatted as RFC 3339 UTC with milliseconds and Z."""
    assert protocol.format_timestamp(1761386400123) == "2025-10-25T10:00:00.123Z"


def test_format_timestamp_pads_milliseconds() -> None:
    """Milliseconds are always three digits."""
    assert protocol.format_timestamp(5) == "1970-01-01T00:00:00.005Z"


def test_format_timestamp_is_correct_across_seconds() -> None:
    """Alternating between seconds never reuses the wrong second."""
    values = [1_000, 1_999, 2_000, 1_500, 86_400_000, 1_001]
    expected = [datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
                for ms in values]
    assert [protocol.format_timestamp(ms) for ms in values] == expected


def test_frame_timestamp_is_now() -> None:
    """A built frame's timestamp is the current UTC time, to the millisecond."""
    before = time.time()
    stamp = decode(protocol.pong_frame(None))["timestamp"]
    after = time.time()
    assert TIMESTAMP_RE.match(stamp)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 0.002 <= parsed <= after + 0.002


# ---------------------------------------------------------------------------
# Reply builders

MSG = sample_message()


BUILDERS: dict[str, tuple[Any, set[str]]] = {
    "connection_established": (lambda: protocol.connection_established_frame(42, "john"),
                               {"user_id", "username"}),
    "subscribed": (lambda: protocol.subscribed_frame(3, None), {"room_id"}),
    "unsubscribed": (lambda: protocol.unsubscribed_frame(3, None), {"room_id"}),
    "new_message": (lambda: protocol.new_message_frame(MSG), {"room_id", "message"}),
    "message_ack": (lambda: protocol.message_ack_frame(MSG, None), {"room_id", "client_msg_id", "message"}),
    "typing": (lambda: protocol.typing_frame(3, 42, "john", True),
               {"room_id", "user_id", "username", "is_typing"}),
    "message_read": (lambda: protocol.message_read_frame(3, 42, [1, 2], 2),
                     {"room_id", "user_id", "message_ids", "last_read_message_id"}),
    "read_marked": (lambda: protocol.read_marked_frame(3, 9, 0, None),
                    {"room_id", "last_read_message_id", "unread_count"}),
    "room_updated": (lambda: protocol.room_updated_frame(3, {"unread_count": 1}), {"room_id", "updates"}),
    "room_list": (lambda: protocol.room_list_frame([], None), {"rooms"}),
    "history": (lambda: protocol.history_frame(3, [MSG], False, None), {"room_id", "messages", "has_more"}),
    "pong": (lambda: protocol.pong_frame(None), set()),
    "token_refreshed": (lambda: protocol.token_refreshed_frame(time.time() + 60, None), {"expires_at"}),
    "error": (lambda: protocol.error_frame(ClientError(ErrorCode.ACCESS_DENIED, "no")), {"code", "message"}),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_builder_frame_has_exactly_spec_fields(kind: str) -> None:
    """Each server frame has its type, a timestamp and exactly the spec's fields."""
    build, fields = BUILDERS[kind]
    frame = decode(build())
    assert frame["type"] == kind
    assert TIMESTAMP_RE.match(frame["timestamp"])
    assert set(frame) == {"type", "timestamp"} | fields


@pytest.mark.parametrize("request_id", ["abc", "", 0, 7, -1])
def test_request_id_echoed_when_given(request_id: str | int) -> None:
    """A given request_id (even 0 or "") is echoed unchanged."""
    assert decode(protocol.pong_frame(request_id))["request_id"] == request_id


def test_request_id_absent_when_not_given() -> None:
    """Without a request_id the reply has no request_id key."""
    assert "request_id" not in decode(protocol.subscribed_frame(3, None))


@pytest.mark.parametrize("build", [
    lambda rid: protocol.subscribed_frame(3, rid),
    lambda rid: protocol.unsubscribed_frame(3, rid),
    lambda rid: protocol.message_ack_frame(MSG, rid),
    lambda rid: protocol.read_marked_frame(3, 9, 0, rid),
    lambda rid: protocol.room_list_frame([], rid),
    lambda rid: protocol.history_frame(3, [], False, rid),
    lambda rid: protocol.pong_frame(rid),
    lambda rid: protocol.token_refreshed_frame(time.time(), rid),
])
def test_every_direct_reply_echoes_request_id(build: Any) -> None:
    """Every direct-reply builder echoes the request_id."""
    assert decode(build("rid-1"))["request_id"] == "rid-1"


def test_message_object_shape() -> None:
    """The message object has exactly the spec's keys and sender shape."""
    wire = decode(protocol.new_message_frame(MSG))["message"]
    assert set(wire) == MESSAGE_KEYS
    assert wire["sender"] == {"id": 42, "username": "john", "first_name": "John"}


def test_message_object_values() -> None:
    """The message object carries the stored values, nulls and message_type text."""
    wire = decode(protocol.new_message_frame(MSG))["message"]
    assert wire == {
        "id": 11, "room_id": 3, "content": "hello",
        "sender": {"id": 42, "username": "john", "first_name": "John"},
        "timestamp": "2025-10-25T10:30:00.123Z", "reply_to": None, "message_type": "text",
        "client_msg_id": None, "revision": 0, "edited_at": None, "deleted": False, "reactions": [],
        "thread_root_id": None, "reply_count": 0, "last_reply_at": None, "mentions": [], "attachments": [],
    }


def test_message_object_reply_to_and_client_msg_id() -> None:
    """reply_to and client_msg_id are carried when set."""
    wire = protocol.message_object(sample_message(reply_to=7, client_msg_id="c-9"))
    assert wire["reply_to"] == 7
    assert wire["client_msg_id"] == "c-9"


def test_message_ack_client_msg_id_null_when_absent() -> None:
    """message_ack carries client_msg_id null when the send had none."""
    frame = decode(protocol.message_ack_frame(MSG, None))
    assert "client_msg_id" in frame
    assert frame["client_msg_id"] is None


def test_message_ack_carries_client_msg_id() -> None:
    """message_ack carries the message's client_msg_id and the message object."""
    message = sample_message(client_msg_id="c-1")
    frame = decode(protocol.message_ack_frame(message, 4))
    assert frame["client_msg_id"] == "c-1"
    assert frame["message"] == protocol.message_object(message)


def test_history_messages_keep_order() -> None:
    """history lists the given messages in the given (oldest first) order with has_more."""
    messages = [sample_message(id=i) for i in (1, 2, 3)]
    frame = decode(protocol.history_frame(3, messages, True, None))
    assert [m["id"] for m in frame["messages"]] == [1, 2, 3]
    assert frame["has_more"] is True


def test_unsubscribed_carries_reason() -> None:
    """unsubscribed carries reason when given."""
    assert decode(protocol.unsubscribed_frame(3, None, "removed_from_room"))["reason"] == "removed_from_room"


def test_token_refreshed_expires_at_is_a_timestamp() -> None:
    """token_refreshed expires_at is an RFC 3339 UTC millisecond timestamp of the expiry."""
    frame = decode(protocol.token_refreshed_frame(1761386400.5, None))
    assert frame["expires_at"] == "2025-10-25T10:00:00.500Z"


def test_error_frame_fields() -> None:
    """The error frame carries code, message, room_id and request_id."""
    frame = decode(protocol.error_frame(ClientError(ErrorCode.ACCESS_DENIED, "no access", room_id=4, request_id="x")))
    assert {k: frame[k] for k in ("type", "code", "message", "room_id", "request_id")} == {
        "type": "error", "code": "access_denied", "message": "no access", "room_id": 4, "request_id": "x"}


def test_error_frame_without_room_has_no_room_id() -> None:
    """An error not about a room has no room_id key and no retry_after_ms."""
    frame = decode(protocol.error_frame(ClientError(ErrorCode.INVALID_JSON, "bad")))
    assert "room_id" not in frame
    assert "retry_after_ms" not in frame
    assert "request_id" not in frame


def test_rate_limited_error_frame_has_retry_after_ms() -> None:
    """A rate_limited error frame carries code rate_limited and retry_after_ms."""
    error = RateLimited(250, room_id=3)
    error.request_id = 9
    frame = decode(protocol.error_frame(error))
    assert frame["code"] == "rate_limited"
    assert frame["retry_after_ms"] == 250
    assert frame["room_id"] == 3
    assert frame["request_id"] == 9


def test_broadcast_frame_is_bytes_of_json_object() -> None:
    """Builders return bytes holding one JSON object."""
    frame = protocol.new_message_frame(MSG)
    assert isinstance(frame, bytes)
    assert isinstance(orjson.loads(frame), dict)
