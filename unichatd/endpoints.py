"""What the chat port answers before (or instead of) a WebSocket: the handshake's checks,
the web client, ``/session``, ``/healthz`` and ``/metrics``.

websockets calls :meth:`Endpoints.process_request` for every HTTP request on the port;
``None`` lets a handshake go on, a response ends the request.
"""

from __future__ import annotations

import functools
import http
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from . import routes
from .admission import Admission, AdmittedConnection
from .auth import AUTH_REQUIRED, TOKEN_REVOKED, Identity, bearer_token, token_from_handshake, verify_token
from .chat import Chat
from .config import Config
from .errors import AuthError, BadRequest
from .protocol.requests import MAX_ID
from .webclient import WebClientFiles

log = structlog.get_logger("unichatd.server")

FILES_PREFIX = "/files/"


class Endpoints:
    """The HTTP side of one server, under the chat service's current config and keys."""

    def __init__(self, chat: Chat, *, admission: Admission, health: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry, tls: bool) -> None:
        self._chat = chat
        self._stats = chat.stats
        self._admission = admission
        self._health = health
        self._registry = registry
        self._tls = tls

    @functools.cached_property
    def _web_files(self) -> WebClientFiles:
        return WebClientFiles.load()

    @property
    def config(self) -> Config:
        return self._chat.config

    def process_request(self, connection: ServerConnection,
                        request: Request) -> Response | Coroutine[Any, Any, Response] | None:
        try:
            return self._route(connection, request)
        except BadRequest as exc:
            self._stats.connections_refused["bad_request"] += 1
            return routes.error(http.HTTPStatus.BAD_REQUEST, "bad_request", str(exc))

    def _route(self, connection: ServerConnection, request: Request) -> Response | Coroutine[Any, Any, Response] | None:
        path = urlsplit(request.path).path
        ws_path = self.config.server.path
        routes.header(request, "Host")  # (sent twice: which site is asked for is ambiguous)
        upgrade = routes.header(request, "Upgrade")
        if path == ws_path or path.rstrip("/") == ws_path.rstrip("/"):
            if request.method != "GET":
                return routes.method_not_allowed({"GET"})
            return self._check_handshake(connection, request)
        legacy = self._legacy_route(path)
        if legacy is not None:
            if request.method != "GET":
                return routes.method_not_allowed({"GET"})
            refusal = self._check_handshake(connection, request)
            if refusal is None:
                assert isinstance(connection, AdmittedConnection)
                connection.route = legacy
            return refusal
        if upgrade is not None and upgrade.lower() == "websocket":
            # A WebSocket handshake anywhere else is refused, whatever plain GET serves there.
            return routes.not_found()
        if path.startswith(FILES_PREFIX):
            if request.method not in routes.READ_METHODS:
                return routes.method_not_allowed(routes.READ_METHODS)
            return self._file(request, path)
        web_client = self.config.server.web_client
        if web_client and path == routes.SESSION_PATH:
            return self._session(request)
        is_web_file = web_client and (path in ("/", "/favicon.ico") or path.startswith("/static/"))
        if not (is_web_file or path in ("/healthz", "/metrics")):
            return routes.not_found(head=request.method == "HEAD")
        # The rest only read: GET, or HEAD for the headers alone.
        if request.method not in routes.READ_METHODS:
            return routes.method_not_allowed(routes.READ_METHODS)
        head = request.method == "HEAD"
        if is_web_file:
            page = self._web_files.page(ws_path, self.config.limits.max_content_chars)
            return routes.web_client(request, path, self._web_files, page)
        if path == "/healthz":
            health = self._health()
            status = http.HTTPStatus.OK if health["status"] == "ok" else http.HTTPStatus.SERVICE_UNAVAILABLE
            return routes.respond(status, orjson.dumps(health), "application/json", head=head)
        refusal = self._metrics_refusal(connection, request)
        if refusal is not None:
            return refusal
        return routes.respond(http.HTTPStatus.OK, generate_latest(self._registry),
                              "text/plain; version=0.0.4; charset=utf-8", head=head)

    def _legacy_route(self, path: str) -> tuple[str, int] | None:
        """``<path>/<room_id>/`` and ``<parent of path>/notifications/<user_id>/`` (api.md:
        by default ``/ws/chat/12/`` and ``/ws/notifications/42/``)."""
        base = self.config.server.path.rstrip("/")
        for prefix, kind in ((base + "/", "room"), (base.rsplit("/", 1)[0] + "/notifications/", "notifications")):
            if path.startswith(prefix):
                rest = path[len(prefix):]
                rest = rest[:-1] if rest.endswith("/") else rest
                if rest.isascii() and rest.isdecimal() and 0 < len(rest) < 20 and 1 <= int(rest) <= MAX_ID:
                    return kind, int(rest)
        return None

    def _session(self, request: Request) -> Response:
        """``GET /session`` with a Bearer token sets the web client's HttpOnly cookie;
        ``DELETE /session`` clears it (signing out)."""
        secure = self._tls or self.config.server.public_url.startswith("https:")
        if request.method == "DELETE":
            return routes.respond(http.HTTPStatus.OK, b"{}\n", "application/json",
                                  extra=[routes.session_cookie("", 0, secure=secure)])
        if request.method != "GET":
            return routes.method_not_allowed({"GET", "DELETE"})
        refusal = self._origin_refusal(request)
        if refusal is not None:
            return refusal
        token = bearer_token(routes.header(request, "Authorization"))
        try:
            if token is None:
                raise AuthError(AUTH_REQUIRED)
            identity = verify_token(token, self._chat.keyring)
            if self._chat.is_revoked(identity):
                raise AuthError(TOKEN_REVOKED)
        except AuthError as exc:
            return routes.error(http.HTTPStatus.UNAUTHORIZED, "unauthorized", exc.reason,
                                extra=[("WWW-Authenticate", "Bearer")])
        max_age = int(identity.expires_at - time.time())
        body = orjson.dumps({"user_id": identity.user_id, "username": identity.username}) + b"\n"
        return routes.respond(http.HTTPStatus.OK, body, "application/json",
                              extra=[routes.session_cookie(token, max_age, secure=secure)])

    async def _file(self, request: Request, path: str) -> Response:
        """``GET /files/<id>/<name>``: the bytes for its uploader and for the participants of
        a room where a message shows it; the same 404 for everyone else, whatever the reason."""
        head = request.method == "HEAD"
        file_id, _, name = path[len(FILES_PREFIX):].partition("/")
        # (the token in a cookie or header only: a query string ends up in logs and histories)
        token = token_from_handshake("/", routes.handshake_headers(request))
        if not (file_id.isascii() and file_id.isdecimal() and 0 < len(file_id) < 19) or token is None:
            return routes.not_found(head)
        try:
            identity = verify_token(token, self._chat.keyring)
        except AuthError:
            return routes.not_found(head)
        if self._chat.is_revoked(identity):
            return routes.not_found(head)
        chat = self._chat
        found = await chat.files.readable(int(file_id), unquote(name), identity.user_id,
                                          lambda room_id: chat.directory.is_participant(room_id, identity.user_id),
                                          read=not head)
        if found is None:
            return routes.not_found(head)
        stored, data = found
        return routes.file_download(stored.file, data, head=head)

    def _metrics_refusal(self, connection: ServerConnection, request: Request) -> Response | None:
        server_config = self.config.server
        address = connection.remote_address
        loopback = routes.is_loopback(str(address[0])) if address else False
        # Without a token, only this machine may read the metrics; with one, whoever has it
        # (unless metrics_loopback_only keeps them on this machine as well).
        if not loopback and (not server_config.metrics_token or server_config.metrics_loopback_only):
            return routes.error(http.HTTPStatus.FORBIDDEN, "forbidden", "metrics are served to loopback only")
        if server_config.metrics_token and not routes.bearer_matches(
            routes.header(request, "Authorization"), server_config.metrics_token
        ):
            return routes.error(http.HTTPStatus.UNAUTHORIZED, "unauthorized", "bearer token required",
                                extra=[("WWW-Authenticate", "Bearer")])
        return None

    def _origin_refusal(self, request: Request) -> Response | None:
        server_config = self.config.server
        origin = routes.header(request, "Origin")
        host = routes.header(request, "Host")
        if routes.origin_allowed(origin, host, server_config.allowed_origins, server_config.public_url):
            return None
        assert origin is not None
        self._stats.connections_refused["origin"] += 1
        log.warning("connection.refused", reason="origin", origin=origin[:200])
        return routes.error(http.HTTPStatus.FORBIDDEN, "forbidden", "origin not allowed")

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        server_config = self.config.server
        refusal = self._origin_refusal(request)
        if refusal is not None:
            return refusal
        token = token_from_handshake(request.path, routes.handshake_headers(request))
        if self._admission.total >= server_config.max_connections:
            self._stats.connections_refused["max_connections"] += 1
            log.warning("connection.refused", reason="max_connections")
            return routes.error(http.HTTPStatus.SERVICE_UNAVAILABLE, "server_full", "server is full")
        auth: Identity | AuthError
        try:
            if token is None:
                raise AuthError(AUTH_REQUIRED)
            auth = verify_token(token, self._chat.keyring)
            if self._chat.is_revoked(auth):
                raise AuthError(TOKEN_REVOKED)
        except AuthError as exc:
            auth = exc  # (admitted, to be closed with 4001 and the reason once open)
        else:
            if self._admission.of_user(auth.user_id) >= server_config.max_connections_per_user:
                self._stats.connections_refused["max_connections_per_user"] += 1
                log.warning("connection.refused", reason="max_connections_per_user", user_id=auth.user_id)
                return routes.error(http.HTTPStatus.TOO_MANY_REQUESTS, "too_many_connections",
                                    "too many connections for this user")
        assert isinstance(connection, AdmittedConnection)
        self._admission.admit(connection, auth)
        return None
