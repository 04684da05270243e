"""Server frames → bytes, without I/O.

Each ``*_frame`` builder returns the encoded JSON of one server frame, so a broadcast
encodes once and hands the same ``bytes`` object to every recipient.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import ClientError
from ..models import FileRef, Message, Reaction, ThreadState
from .requests import RequestId

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


def message_object(message: Message) -> dict[str, Any]:
    """A message as the wire shows it (protocol.md §4, "The message object")."""
    return {
        "id": message.id,
        "room_id": message.room_id,
        "content": message.content,
        # A system message (posted by the host application) has no sender.
        "sender": None if message.message_type == "system" else {
            "id": message.sender_id,
            "username": message.sender_username,
            "first_name": message.sender_first_name,
        },
        "timestamp": format_timestamp(message.created_ms),
        "reply_to": message.reply_to,
        "message_type": message.message_type,
        "client_msg_id": message.client_msg_id,
        "revision": message.revision,
        "edited_at": None if message.edited_ms is None else format_timestamp(message.edited_ms),
        "deleted": message.deleted,
        "reactions": reaction_list(message.reactions) if message.reactions else [],
        "thread_root_id": message.thread_root_id,
        "reply_count": message.reply_count,
        "last_reply_at": None if message.last_reply_ms is None else format_timestamp(message.last_reply_ms),
        "mentions": list(message.mentions),
        "attachments": [file_object(file) for file in message.attachments] if message.attachments else [],
    }


def file_object(file: FileRef) -> dict[str, Any]:
    """A stored file as the wire shows it; ``url`` is a path on the chat port."""
    return {"id": file.id, "name": file.name, "size": file.size, "content_type": file.content_type,
            "url": f"/files/{file.id}/{quote(file.name, safe='')}"}


def reaction_list(reactions: Sequence[Reaction]) -> list[dict[str, Any]]:
    return [{"emoji": reaction.emoji, "count": len(reaction.user_ids), "user_ids": list(reaction.user_ids)}
            for reaction in reactions]


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


def encoded_message(message: Message) -> bytes:
    """The message object as JSON, encoded once for the ack and the broadcast of a send."""
    return orjson.dumps(message_object(message))


def new_message_frame(message: Message, wire: bytes | None = None) -> bytes:
    """``wire``: ``encoded_message(message)`` when the caller has it already (ack and broadcast share it)."""
    body = wire if wire is not None else encoded_message(message)
    return b'{"type":"new_message","room_id":%d,"message":%b,"timestamp":"%b"}' % (
        message.room_id, body, format_timestamp(now_ms()).encode())


def message_ack_frame(message: Message, request_id: RequestId, wire: bytes | None = None) -> bytes:
    body = wire if wire is not None else encoded_message(message)
    frame = b'{"type":"message_ack","room_id":%d,"client_msg_id":%b,"message":%b,"timestamp":"%b"' % (
        message.room_id, orjson.dumps(message.client_msg_id), body, format_timestamp(now_ms()).encode())
    if request_id is not None:
        frame += b',"request_id":' + orjson.dumps(request_id)
    return frame + b"}"


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


def room_updated_frame(room_id: int, updates: Mapping[str, Any], request_id: RequestId = None) -> bytes:
    """(with ``request_id``: the direct reply to ``rename_room``)"""
    return encode("room_updated", {"room_id": room_id, "updates": dict(updates)}, request_id)


class RoomUpdateEncoder:
    """``room_updated`` frames of one room, differing only in ``unread_count`` and ``mention_count``.

    Byte-for-byte what :func:`room_updated_frame` gives (with the counts last), with the
    shared part encoded once.
    """

    __slots__ = ("_head", "_tail", "_frames")

    def __init__(self, room_id: int, state: Mapping[str, Any]) -> None:
        shared = {key: value for key, value in state.items() if key not in ("unread_count", "mention_count")}
        body = orjson.dumps({"type": "room_updated", "room_id": room_id, "updates": shared})
        # '{"type":…,"updates":{…}}' → cut before the two closing braces to append the counts.
        self._head = body[:-2] + (b',"unread_count":' if shared else b'"unread_count":')
        self._tail = b'},"timestamp":"' + format_timestamp(now_ms()).encode() + b'"}'
        self._frames: dict[tuple[int, int], bytes] = {}

    def frame(self, unread_count: int, mention_count: int = 0) -> bytes:
        """The frame for one participant; participants with equal counts share one object."""
        key = (unread_count, mention_count)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = (self._head + str(unread_count).encode() + b',"mention_count":'
                                         + str(mention_count).encode() + self._tail)
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
    changed: tuple[Sequence[Message], bool] | None = None,
) -> bytes:
    fields: dict[str, Any] = {
        "room_id": room_id, "messages": [message_object(m) for m in messages], "has_more": has_more
    }
    if truncated:
        # Retention deleted messages inside the range asked for.
        fields["truncated"] = True
    if changed is not None:
        fields["changed"] = [message_object(m) for m in changed[0]]
        fields["changed_has_more"] = changed[1]
    return encode("history", fields, request_id)


def message_updated_frame(message: Message, request_id: RequestId = None) -> bytes:
    return encode("message_updated", {"room_id": message.room_id, "message": message_object(message)}, request_id)


def message_deleted_frame(message: Message, request_id: RequestId = None) -> bytes:
    # (revision: an addition, so a client that tracks revisions need not fetch the tombstone)
    return encode("message_deleted", {"room_id": message.room_id, "message_id": message.id,
                                      "revision": message.revision}, request_id)


def reactions_updated_frame(message: Message, request_id: RequestId = None) -> bytes:
    return encode("reactions_updated", {"room_id": message.room_id, "message_id": message.id,
                                        "reactions": reaction_list(message.reactions),
                                        "revision": message.revision}, request_id)


def thread_updated_frame(room_id: int, thread: ThreadState) -> bytes:
    return encode("thread_updated", {"room_id": room_id, "root_id": thread.root_id,
                                     "reply_count": thread.reply_count,
                                     "last_reply_at": format_timestamp(thread.last_reply_ms),
                                     "revision": thread.revision})


def thread_frame(root: Message, replies: Sequence[Message], has_more: bool, request_id: RequestId) -> bytes:
    return encode("thread", {"room_id": root.room_id, "root": message_object(root),
                             "messages": [message_object(m) for m in replies], "has_more": has_more}, request_id)


def search_results_frame(query: str, hits: Sequence[tuple[Message, str]], has_more: bool,
                         request_id: RequestId) -> bytes:
    return encode("search_results", {
        "query": query,
        "messages": [{**message_object(message), "snippet": snippet} for message, snippet in hits],
        "has_more": has_more,
    }, request_id)


def changes_frame(room_id: int, messages: Sequence[Message], has_more: bool, request_id: RequestId) -> bytes:
    return encode("changes", {"room_id": room_id, "messages": [message_object(m) for m in messages],
                              "has_more": has_more}, request_id)


def room_created_frame(room: dict[str, Any], request_id: RequestId) -> bytes:
    return encode("room_created", {"room": room}, request_id)


def members_updated_frame(room_id: int, participants: list[dict[str, Any]], request_id: RequestId) -> bytes:
    return encode("members_updated", {"room_id": room_id, "participants": participants}, request_id)


def users_frame(kind: str, users: list[dict[str, Any]], request_id: RequestId) -> bytes:
    """``users`` (to get_users) or ``presence_list`` (to get_presence)."""
    return encode(kind, {"users": users}, request_id)


def presence_frame(user_id: int, online: bool, last_seen_ms: int | None) -> bytes:
    return encode("presence", {"user_id": user_id, "online": online,
                               "last_seen": None if last_seen_ms is None else format_timestamp(last_seen_ms)})


def upload_ready_frame(upload_id: str, chunk_bytes: int, request_id: RequestId) -> bytes:
    """``chunk_bytes`` (an addition): the largest binary frame the server accepts."""
    return encode("upload_ready", {"upload_id": upload_id, "chunk_bytes": chunk_bytes}, request_id)


def file_stored_frame(file: FileRef, request_id: RequestId) -> bytes:
    return encode("file_stored", {"file": file_object(file)}, request_id)


def pong_frame(request_id: RequestId) -> bytes:
    return encode("pong", {}, request_id)


def token_refreshed_frame(expires_at: float, request_id: RequestId, token: str | None = None) -> bytes:
    """``token``: the new token, when the server minted it (a renewal)."""
    fields: dict[str, Any] = {"expires_at": format_timestamp(int(expires_at * 1000))}
    if token is not None:
        fields["token"] = token
    return encode("token_refreshed", fields, request_id)


def notification_frame(payload: bytes) -> bytes:
    """``payload``: the host application's JSON object, already encoded."""
    return b'{"type":"notification","payload":%b,"timestamp":"%b"}' % (payload, format_timestamp(now_ms()).encode())


# What `help` answers: every request type, its fields, and its reply (for people at wscat).
REQUEST_HELP: dict[str, dict[str, Any]] = {
    "subscribe_room": {"fields": {"room_id": "int", "last_message_id": "int, optional",
                                  "since_revision": "int, optional (with last_message_id)"},
                       "reply": "subscribed, then history when last_message_id is given"},
    "unsubscribe_room": {"fields": {"room_id": "int"}, "reply": "unsubscribed"},
    "send_message": {"fields": {"room_id": "int", "content": "string (may be empty with attachments)",
                                "reply_to": "message id, optional",
                                "client_msg_id": "string of at most 64 characters, optional",
                                "attachments": "list of at most 10 file ids from file_stored, optional"},
                     "reply": "message_ack"},
    "mark_read": {"fields": {"room_id": "int", "message_ids": "list of ids, optional (absent = all)"},
                  "reply": "read_marked"},
    "typing": {"fields": {"room_id": "int"}, "reply": "none"},
    "stop_typing": {"fields": {"room_id": "int"}, "reply": "none"},
    "get_room_list": {"fields": {}, "reply": "room_list"},
    "get_history": {"fields": {"room_id": "int", "before_id": "int, optional",
                               "after_id": "int, optional", "limit": "1..100, default 50"},
                    "reply": "history"},
    "refresh_token": {"fields": {"token": "string, optional (without it: the server renews the token)"},
                      "reply": "token_refreshed"},
    "edit_message": {"fields": {"room_id": "int", "message_id": "int", "content": "string"},
                     "reply": "message_updated"},
    "delete_message": {"fields": {"room_id": "int", "message_id": "int"}, "reply": "message_deleted"},
    "add_reaction": {"fields": {"room_id": "int", "message_id": "int", "emoji": "string of at most 32 characters"},
                     "reply": "reactions_updated"},
    "remove_reaction": {"fields": {"room_id": "int", "message_id": "int", "emoji": "string"},
                        "reply": "reactions_updated"},
    "get_thread": {"fields": {"room_id": "int", "message_id": "int (the root)", "after_id": "int, optional",
                              "limit": "1..100, default 50"}, "reply": "thread"},
    "search_messages": {"fields": {"query": 'string: words, prefix*, "a phrase"', "room_id": "int, optional",
                                   "before_id": "int, optional", "limit": "1..100, default 20"},
                        "reply": "search_results"},
    "get_changes": {"fields": {"room_id": "int", "since_revision": "int", "limit": "1..100, default 100"},
                    "reply": "changes"},
    "create_room": {"fields": {"name": "1..100 characters", "member_ids": "list of user ids",
                               "room_type": '"group" (default)'}, "reply": "room_created"},
    "create_direct": {"fields": {"user_id": "int"}, "reply": "room_created"},
    "add_members": {"fields": {"room_id": "int", "user_ids": "list of user ids"},
                    "reply": "members_updated (room owners only)"},
    "remove_members": {"fields": {"room_id": "int", "user_ids": "list of user ids"},
                       "reply": "members_updated (room owners only)"},
    "rename_room": {"fields": {"room_id": "int", "name": "1..100 characters"},
                    "reply": "room_updated (room owners only)"},
    "leave_room": {"fields": {"room_id": "int"}, "reply": 'unsubscribed (reason "left_room")'},
    "get_users": {"fields": {"query": "prefix of a username or first name, optional",
                             "limit": "1..100, default 50"}, "reply": "users"},
    "get_presence": {"fields": {"user_ids": "list of at most 1000 user ids"}, "reply": "presence_list"},
    "upload_file": {"fields": {"name": "file name, 1..255 characters", "size": "bytes",
                               "content_type": "e.g. image/png"},
                    "reply": "upload_ready; then send the bytes as binary frames and upload_done"},
    "upload_done": {"fields": {"upload_id": "string from upload_ready"}, "reply": "file_stored"},
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
