"""The server API's OpenAPI 3.1 document (``GET /api/openapi.json``).

The request body schemas here are also what the API validates bodies against
(``api.validate``), so the document and the server cannot drift apart on what they accept.
"""

from __future__ import annotations

from typing import Any

from .protocol.requests import (
    HISTORY_MAX_LIMIT,
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_ID,
    MAX_MEMBER_IDS,
    MAX_ROOM_NAME_CHARS,
)

MAX_NAME_CHARS = 150
"""Usernames and first names, as in a token (protocol.md §1)."""
MAX_TTL = 10 * 365 * 86400
NOTIFY_MAX_BYTES = 16 * 1024

_ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
_NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS, "pattern": r"\S"}
_FIRST_NAME: dict[str, Any] = {"type": "string", "maxLength": MAX_NAME_CHARS}
_ROOM_NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ROOM_NAME_CHARS, "pattern": r"\S"}
_ID_LIST: dict[str, Any] = {"type": "array", "items": _ID, "maxItems": MAX_MEMBER_IDS}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "TokenRequest": _body({"user_id": _ID, "name": _NAME, "first_name": _FIRST_NAME,
                           "ttl": {"type": "integer", "minimum": 1, "maximum": MAX_TTL}}, ["user_id", "name"]),
    "UserRequest": _body({"username": _NAME, "first_name": _FIRST_NAME}, ["username"]),
    "NotifyRequest": _body({"payload": {"type": "object", "description": f"at most {NOTIFY_MAX_BYTES} bytes "
                                                                         "as JSON"}}, ["payload"]),
    "RoomRequest": _body({"name": _ROOM_NAME, "room_type": {"enum": ["group", "direct"], "default": "group"},
                          "member_ids": _ID_LIST, "owner_id": _ID}, ["name"]),
    "RoomPatch": _body({"name": _ROOM_NAME, "owner_id": {"oneOf": [_ID, {"type": "null"}]}}, []),
    "MembersRequest": _body({"user_ids": {**_ID_LIST, "minItems": 1}}, ["user_ids"]),
    "MessageRequest": _body({
        "content": {"type": "string", "minLength": 1, "pattern": r"\S",
                    "description": "at most limits.max_content_chars characters"},
        "sender_id": _ID,
        "client_msg_id": {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_MSG_ID_CHARS},
        "reply_to": _ID,
    }, ["content"]),
}

_TIMESTAMP: dict[str, Any] = {"type": "string", "format": "date-time"}
_NULLABLE_TIMESTAMP: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_PARTICIPANT: dict[str, Any] = {"type": "object", "required": ["id", "username"],
                                "properties": {"id": {"type": "integer"}, "username": {"type": "string"},
                                               "online": {"type": "boolean"},
                                               "last_seen": _NULLABLE_TIMESTAMP}}
RESPONSES: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "Token": {"type": "object", "required": ["token", "expires_at"],
              "properties": {"token": {"type": "string"}, "expires_at": _TIMESTAMP}},
    "User": {"type": "object", "required": ["id", "username", "first_name", "online", "last_seen"],
             "properties": {"id": {"type": "integer"}, "username": {"type": "string"},
                            "first_name": {"type": "string"}, "online": {"type": "boolean"},
                            "last_seen": _NULLABLE_TIMESTAMP}},
    "Delivered": {"type": "object", "required": ["delivered"],
                  "properties": {"delivered": {"type": "integer", "minimum": 0}}},
    "Room": {"type": "object", "required": ["id", "name", "room_type", "participants"], "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "room_type": {"type": "string"},
        "owner_id": {"type": ["integer", "null"]}, "last_message_content": {"type": ["string", "null"]},
        "last_message_time": _NULLABLE_TIMESTAMP, "participants": {"type": "array", "items": _PARTICIPANT}}},
    "Message": {"type": "object", "required": ["id", "room_id", "content", "sender", "timestamp", "message_type"],
                "properties": {"id": {"type": "integer"}, "room_id": {"type": "integer"},
                               "content": {"type": "string"}, "sender": {"type": ["object", "null"]},
                               "timestamp": _TIMESTAMP, "message_type": {"enum": ["text", "system"]},
                               "client_msg_id": {"type": ["string", "null"]},
                               "reply_to": {"type": ["integer", "null"]}}},
    "History": {"type": "object", "required": ["messages", "has_more"],
                "properties": {"messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
                               "has_more": {"type": "boolean"}}},
    "Presence": {"type": "object", "required": ["users"],
                 "properties": {"users": {"type": "array", "items": {"$ref": "#/components/schemas/User"}}}},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_ERRORS = {
    "400": _json("Error", "malformed JSON, or a body that is not a JSON object"),
    "401": _json("Error", "missing or wrong API key"),
    "404": _json("Error", "no such resource"),
    "413": _json("Error", "body over 1 MiB"),
    "422": _json("Error", "a missing field, a wrong type or an invalid value (the message names the field)"),
}


def _operation(summary: str, responses: dict[str, Any], *, body: str | None = None,
               parameters: list[dict[str, Any]] | None = None, errors: tuple[str, ...] = ()) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {**responses}}
    for status in ("401", "404", *errors):
        operation["responses"][status] = _ERRORS[status]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
        for status in ("400", "413", "422"):
            operation["responses"][status] = _ERRORS[status]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_NO_CONTENT = {"204": {"description": "done"}}
_CONFLICT = {"409": _json("Error", "a direct room's members and owner do not change")}


def document() -> dict[str, Any]:
    room = [_path_id("id")]
    return {
        "openapi": "3.1.0",
        "info": {"title": "unichatd server API", "version": "1.1",
                 "description": "Drive unichatd from the host application (api.md)."},
        "components": {
            "schemas": {**REQUEST_BODIES, **RESPONSES},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/api/tokens": {"post": _operation(
                "Mint a session token (as `unichatd token`)", {"201": _json("Token", "the token")},
                body="TokenRequest")},
            "/api/users/{id}": {"put": _operation(
                "Create or update a user's names", {"200": _json("User", "the user")},
                body="UserRequest", parameters=[_path_id("id")])},
            "/api/users/{id}/notify": {"post": _operation(
                "Send a notification frame to each of the user's open connections",
                {"200": _json("Delivered", "how many connections got it")},
                body="NotifyRequest", parameters=[_path_id("id")])},
            "/api/users/{id}/revoke": {"post": _operation(
                "Refuse the user's tokens issued before now; close their connections (4001)", _NO_CONTENT,
                parameters=[_path_id("id")])},
            "/api/rooms": {"post": _operation(
                "Create a room", {"201": _json("Room", "the room")}, body="RoomRequest")},
            "/api/rooms/{id}": {
                "get": _operation("A room", {"200": _json("Room", "the room")}, parameters=room),
                "patch": _operation("Rename a room or change its owner", {"200": _json("Room", "the room"),
                                                                          **_CONFLICT},
                                    body="RoomPatch", parameters=room),
            },
            "/api/rooms/{id}/members": {"post": _operation(
                "Add participants", {"200": _json("Room", "the room"), **_CONFLICT},
                body="MembersRequest", parameters=room)},
            "/api/rooms/{id}/members/{user_id}": {"delete": _operation(
                "Remove a participant (as `unichatd room remove`)", {**_NO_CONTENT, **_CONFLICT},
                parameters=[_path_id("id"), _path_id("user_id")])},
            "/api/rooms/{id}/messages": {
                "post": _operation(
                    "Post a message (a system message without sender_id)",
                    {"201": _json("Message", "stored and broadcast"),
                     "200": _json("Message", "a retry of client_msg_id: the original")},
                    body="MessageRequest", parameters=room),
                "get": _operation(
                    "A page of history, oldest first", {"200": _json("History", "the page")},
                    parameters=[*room,
                                _query("before_id", _ID, "messages before this id (the newest page without)"),
                                _query("after_id", _ID, "messages after this id (not with before_id)"),
                                _query("limit", {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX_LIMIT},
                                       "at most this many (default 50)")],
                    errors=("422",)),
            },
            "/api/presence": {"get": _operation(
                "Who is online", {"200": _json("Presence", "the users known, in id order")},
                parameters=[_query("user_ids", {"type": "string", "pattern": r"^[1-9][0-9]{0,17}(,[1-9][0-9]{0,17})*$"},
                                   "user ids, comma separated", required=True)],
                errors=("422",))},
        },
    }
