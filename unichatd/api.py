"""The server API's listener (api.md): aiohttp on its own port, bearer API key, JSON in
and out, every error as ``{"error": {"code", "message"}}``.

This module speaks HTTP only: it checks the key, parses and validates what came (against
the schemas of ``openapi``), calls ``host.HostActions`` and encodes the answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from . import openapi, protocol
from .config import ApiConfig
from .host import HostActions, HostError, invalid
from .protocol.requests import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, MAX_ID, MAX_PRESENCE_IDS
from .routes import bearer_matches
from .stats import ApiStats

log = structlog.get_logger("unichatd.api")

MAX_BODY_BYTES = 1024 * 1024
SHUTDOWN_TIMEOUT = 5.0
"""Seconds requests in progress get to finish at stop."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ID_PATTERN = "{%s:[0-9]{1,19}}"
_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "payload_too_large", 422: "invalid_request"}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in openapi.REQUEST_BODIES.items()}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"error": {"code": code or _HTTP_CODES.get(status, "error"), "message": message}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


class BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _field_name(error: ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        return f"{path}.{missing}" if path else missing
    return path or "body"  # (an unknown field: the message names it)


def validate(schema: str, body: Any) -> dict[str, Any]:
    """The body as a JSON object that satisfies ``schema``, or BadBody (400, 422)."""
    if not isinstance(body, dict):
        raise BadBody(400, "the body must be a JSON object")
    error = best_match(_VALIDATORS[schema].iter_errors(body))
    if error is not None:
        raise BadBody(422, f"{_field_name(error)}: {error.message}")
    return _integers(body, openapi.REQUEST_BODIES[schema])  # type: ignore[no-any-return]


def _integers(value: Any, schema: dict[str, Any]) -> Any:
    """JSON Schema counts 42.0 as an integer; the code gets 42."""
    if isinstance(value, float) and (schema.get("type") == "integer" or
                                     any(option.get("type") == "integer" for option in schema.get("oneOf", ()))):
        return int(value)
    if isinstance(value, dict) and "properties" in schema:
        properties = schema["properties"]
        return {key: _integers(item, properties[key]) if key in properties else item for key, item in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [_integers(item, schema["items"]) for item in value]
    return value


async def read_body(request: web.Request, schema: str) -> dict[str, Any]:
    raw = await request.read()  # (HTTPRequestEntityTooLarge past client_max_size)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadBody(400, "the body is not valid JSON") from None
    return validate(schema, body)


def path_id(request: web.Request, name: str = "id") -> int:
    value = int(request.match_info[name])
    if not 1 <= value <= MAX_ID:
        raise HostError(404, "not_found", "no such resource")
    return value


def query_id(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdecimal() and len(text) <= 19) or not 1 <= int(text) <= MAX_ID:
        raise invalid(name, "must be a positive integer")
    return int(text)


class ServerApi:
    """The API's aiohttp application and listener."""

    def __init__(self, host: HostActions, config: ApiConfig, key: str, stats: ApiStats) -> None:
        self._host = host
        self._config = config
        self.key = key
        self._stats = stats
        self._runner: web.AppRunner | None = None
        self._document = orjson.dumps(openapi.document())
        self.port = 0

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self._authorized])
        room = "/api/rooms/" + _ID_PATTERN % "id"
        user = "/api/users/" + _ID_PATTERN % "id"
        app.router.add_get("/api/openapi.json", self._openapi, allow_head=False)
        app.router.add_post("/api/tokens", self._token)
        app.router.add_put(user, self._put_user)
        app.router.add_post(user + "/notify", self._notify)
        app.router.add_post(user + "/revoke", self._revoke)
        app.router.add_post("/api/rooms", self._create_room)
        app.router.add_get(room, self._get_room, allow_head=False)
        app.router.add_patch(room, self._patch_room)
        app.router.add_post(room + "/members", self._add_members)
        app.router.add_delete(room + "/members/" + _ID_PATTERN % "user_id", self._remove_member)
        app.router.add_post(room + "/messages", self._post_message)
        app.router.add_get(room + "/messages", self._history, allow_head=False)
        app.router.add_get("/api/presence", self._presence, allow_head=False)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self._config.host, self._config.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # (aiohttp keeps the asyncio server here; its socket has the port)
        sockets = getattr(server, "sockets", None) or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else self._config.port
        log.info("api.listening", host=self._config.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middlewares ---------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except BadBody as exc:
            response = error_response(exc.status, exc.message)
        except HostError as exc:
            response = error_response(exc.status, exc.message, exc.code)
        except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, body too large
            message = {404: "no such resource", 413: f"the body is larger than {MAX_BODY_BYTES} bytes"}.get(
                exc.status, exc.reason)
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = error_response(exc.status, message, headers=headers)
        except Exception:
            log.exception("api.failed", method=request.method, path=request.path)
            response = error_response(500, "the server failed to handle this request", "internal_error")
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"  # (labels stay few)
        self._stats.observe(method, route, response.status, time.perf_counter() - started)
        return response

    @web.middleware
    async def _authorized(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # A key in the query string ends up in logs and histories: refused even when the
        # header is right, so it is noticed and changed.
        if not bearer_matches(request.headers.get("Authorization"), self.key):
            return error_response(401, "Authorization: Bearer <api key> required",
                                  headers={"WWW-Authenticate": "Bearer"})
        if self.key in request.query_string:
            return error_response(401, "the API key goes in the Authorization header, never in the URL",
                                  headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    # -- handlers --------------------------------------------------------------------

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")

    async def _token(self, request: web.Request) -> web.Response:
        body = await read_body(request, "TokenRequest")
        return json_response(self._host.mint(body["user_id"], body["name"].strip(), body.get("first_name", ""),
                                             body.get("ttl")), 201)

    async def _put_user(self, request: web.Request) -> web.Response:
        user_id = path_id(request)
        body = await read_body(request, "UserRequest")
        return json_response(await self._host.put_user(user_id, body["username"].strip(),
                                                       body.get("first_name", "")))

    async def _notify(self, request: web.Request) -> web.Response:
        user_id = path_id(request)
        payload = orjson.dumps((await read_body(request, "NotifyRequest"))["payload"])
        if len(payload) > openapi.NOTIFY_MAX_BYTES:
            raise invalid("payload", f"at most {openapi.NOTIFY_MAX_BYTES} bytes as JSON")
        return json_response({"delivered": await self._host.notify(user_id, payload)})

    async def _revoke(self, request: web.Request) -> web.Response:
        await self._host.revoke(path_id(request))
        return web.Response(status=204)

    async def _create_room(self, request: web.Request) -> web.Response:
        body = await read_body(request, "RoomRequest")
        room = await self._host.create_room(body["name"].strip(), body.get("room_type", "group"),
                                            body.get("member_ids", []), body.get("owner_id"))
        return json_response(room, 201)

    async def _get_room(self, request: web.Request) -> web.Response:
        return json_response(await self._host.get_room(path_id(request)))

    async def _patch_room(self, request: web.Request) -> web.Response:
        room_id = path_id(request)
        body = await read_body(request, "RoomPatch")
        name = body.get("name")
        return json_response(await self._host.change_room(
            room_id, name=name.strip() if name is not None else None, owner_id=body.get("owner_id"),
            set_owner="owner_id" in body))

    async def _add_members(self, request: web.Request) -> web.Response:
        room_id = path_id(request)
        body = await read_body(request, "MembersRequest")
        return json_response(await self._host.add_members(room_id, body["user_ids"]))

    async def _remove_member(self, request: web.Request) -> web.Response:
        await self._host.remove_member(path_id(request), path_id(request, "user_id"))
        return web.Response(status=204)

    async def _post_message(self, request: web.Request) -> web.Response:
        room_id = path_id(request)
        body = await read_body(request, "MessageRequest")
        message, created = await self._host.post_message(
            room_id, body["content"], sender_id=body.get("sender_id"), client_msg_id=body.get("client_msg_id"),
            reply_to=body.get("reply_to"))
        return json_response(protocol.message_object(message), 201 if created else 200)

    async def _history(self, request: web.Request) -> web.Response:
        room_id = path_id(request)
        before_id, after_id = query_id(request, "before_id"), query_id(request, "after_id")
        if before_id is not None and after_id is not None:
            raise invalid("after_id", "give before_id or after_id, not both")
        limit_text = request.query.get("limit")
        limit = HISTORY_DEFAULT_LIMIT
        if limit_text is not None:
            if not (limit_text.isascii() and limit_text.isdecimal() and len(limit_text) <= 3) \
                    or not 1 <= int(limit_text) <= HISTORY_MAX_LIMIT:
                raise invalid("limit", f"must be an integer from 1 to {HISTORY_MAX_LIMIT}")
            limit = int(limit_text)
        return json_response(await self._host.history(room_id, before_id=before_id, after_id=after_id, limit=limit))

    async def _presence(self, request: web.Request) -> web.Response:
        text = request.query.get("user_ids")
        if text is None:
            raise invalid("user_ids", "required: user ids, comma separated")
        parts = text.split(",")
        if len(parts) > MAX_PRESENCE_IDS:
            raise invalid("user_ids", f"at most {MAX_PRESENCE_IDS} ids")
        if not all(part.isascii() and part.isdecimal() and len(part) <= 18 and int(part) >= 1 for part in parts):
            raise invalid("user_ids", "must be positive integers, comma separated")
        user_ids = sorted({int(part) for part in parts})
        return json_response({"users": await self._host.presence(user_ids)})
