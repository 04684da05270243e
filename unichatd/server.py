"""The network edge: websockets wiring, the HTTP endpoints, readiness and shutdown.

This is the only module that imports ``websockets``.  Frames leave through
:class:`_ConnectionSink`, which writes synchronously into the connection's transport
(the way ``websockets.broadcast`` does) so that no delivery ever awaits a peer; a peer
whose unsent data passes ``server.send_buffer_bytes`` is closed as a slow consumer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import http
import itertools
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from . import routes
from .auth import AUTH_REQUIRED, Identity, KeyRing, bearer_token, token_from_handshake, verify_token
from .chat import Chat
from .config import EMBEDDED, Config, load_tls, with_overrides
from .errors import AuthError, ConfigError
from .instance import Instance, InstanceLock
from .metrics import Histogram, LoopLagMonitor
from .session import CLOSE_AUTH, CLOSE_POLICY, Session
from .store import Store, StoreError

log = structlog.get_logger("unichatd.server")

SHUTDOWN_TIMEOUT = 10.0
GC_THRESHOLD = 20_000
CLOSE_TIMEOUT = 5.0


CLOSE_INTERNAL_ERROR = 1011
CLOSE_GOING_AWAY = 1001


class _Connection(ServerConnection):
    """A websockets connection that carries what the handshake learned of its token."""

    auth: Identity | AuthError | None = None
    """Set when the handshake is admitted under the connection limits (see _admit)."""
    release: ClassVar[Callable[[Identity | AuthError], None]]
    """Gives an admitted connection's place back; set on each server's own subclass, so
    that an idle connection carries nothing more for it."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.auth is not None:
            type(self).release(self.auth)


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, final WebSocket text frame (RFC 6455 §5.2) around ``payload``.

    Server frames are never masked and no extension is negotiated (compression is off),
    so the header is two, four or ten bytes and the payload goes as it is.
    """
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


class _ConnectionSink:
    """Frames for one connection, written once per event-loop tick.

    ``send`` frames the payload (a broadcast's one ``bytes`` object is framed once for
    all its recipients, see :meth:`_Corks.framed`) and queues it; the first queued frame
    of a tick schedules :meth:`_Corks.flush`, which hands each connection's frames to its
    transport in one ``writelines`` — one system call for an ack, its broadcast and any
    room_updated due, instead of one each.  Control frames (ping, pong, close) stay with
    websockets, which writes them straight to the transport between whole data frames.
    """

    __slots__ = ("_conn", "_corks", "closed", "pending")

    def __init__(self, conn: ServerConnection, corks: _Corks) -> None:
        self._conn = conn
        self._corks = corks
        self.closed = False
        self.pending: list[bytes] | None = None

    def send(self, payload: bytes) -> None:
        if self.closed:
            return  # (the protocol state is checked once per tick, in flush)
        frame = self._corks.framed(payload)
        if self.pending is None:
            self.pending = [frame]
            self._corks.add(self)
        else:
            self.pending.append(frame)

    def flush(self) -> None:
        frames, self.pending = self.pending, None
        conn = self._conn
        if not frames or self.closed or conn.protocol.state is not State.OPEN:
            return  # a close frame went out meanwhile: nothing may follow it
        transport = conn.transport
        transport.writelines(frames)
        if transport.get_write_buffer_size() > self._corks.server.config.server.send_buffer_bytes:
            self._corks.server.chat.stats.slow_consumer_closes += 1
            log.warning("connection.slow_consumer", conn_id=id(conn))
            self.close(CLOSE_POLICY, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        if self.pending:
            self.flush()  # frames queued before the close go out before it
        if not self.closed:  # (flush may have closed it as a slow consumer)
            self.closed = True
            self.pending = None
            self._corks.server.spawn(_close_bounded(self._conn, code, reason))


async def _close_bounded(conn: ServerConnection, code: int, reason: str) -> None:
    """Close with ``code``; a peer that does not take the close frame in time is cut off.

    websockets first waits for the send buffer to drain, which a stalled reader never
    lets happen; without this bound its socket and session would stay held.
    """
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await conn.close(code, reason)
    except TimeoutError:
        conn.transport.abort()


class _Corks:
    """The connections with frames waiting for the end of this tick."""

    __slots__ = ("server", "_dirty", "_scheduled", "_last_payload", "_last_frame", "loop")

    def __init__(self, server: UnichatServer) -> None:
        self.server = server
        self.loop: asyncio.AbstractEventLoop | None = None
        self._dirty: list[_ConnectionSink] = []
        self._scheduled = False
        self._last_payload: bytes | None = None
        self._last_frame = b""

    def framed(self, payload: bytes) -> bytes:
        # The hub hands one bytes object to every recipient in a row: frame it once.
        if payload is not self._last_payload:
            self._last_payload = payload
            self._last_frame = text_frame(payload)
        return self._last_frame

    def add(self, sink: _ConnectionSink) -> None:
        self._dirty.append(sink)
        if not self._scheduled:
            self._scheduled = True
            if self.loop is None:  # looked up once: get_running_loop() costs a getpid() call
                self.loop = asyncio.get_running_loop()
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for sink in dirty:
            try:
                sink.flush()
            except Exception:  # one broken transport must not starve the others
                log.exception("connection.write_failed")


class UnichatServer:
    """A running unichatd: store, chat service, listening socket."""

    def __init__(self, config: Config, keys: str | KeyRing, *, overrides: dict[str, Any] | None = None) -> None:
        self.config = config
        self.overrides = overrides or {}
        """``serve``'s command-line options (host, port, database), kept over a reload."""
        self.keyring = keys if isinstance(keys, KeyRing) else KeyRing.single(keys)
        self.store = Store(config.database_path)
        self.chat = Chat(config, self.store, self.keyring)
        self._ws: Server | None = None
        self._lock = InstanceLock(config.database_path)
        self._tls = load_tls(config)
        self._started = time.monotonic()
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._corks = _Corks(self)
        self._admitted = 0
        self._admitted_by_user: collections.Counter[int] = collections.Counter()
        self._connection_class = type("_ServerConnection", (_Connection,), {"release": self._release})
        self.loop_lag = LoopLagMonitor()
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(_MetricsCollector(self))

    @property
    def port(self) -> int:
        assert self._ws is not None
        sockets = list(self._ws.sockets)
        return int(sockets[0].getsockname()[1])

    def spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- startup and shutdown ----------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            # Nothing may be left running: not the listener, not a task, not the database
            # thread (which would keep the process alive), not the lock.
            if self._ws is not None:
                self._ws.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await self._ws.wait_closed()
            for task in tuple(self._tasks):
                task.cancel()
            await self.chat.stop()
            await self.store.close()
            self._lock.release()
            raise

    async def _start(self) -> None:
        server_config = self.config.server
        # 1. one server per database: the lock, before anything is written;
        self._lock.acquire()
        self._lock.publish(self._instance(server_config.port))
        # 2. the database (migrated) and the in-memory room directory;
        await self.store.open()
        await self.chat.start()
        # 3. the listening socket, not accepting yet;
        self._ws = await serve(
            self._handle,
            server_config.host,
            server_config.port,
            process_request=self._process_request,
            compression=None,
            max_size=server_config.max_message_bytes,
            # Keepalive is ours (see _heartbeat): one task for all connections instead of
            # one task and timer per connection.
            ping_interval=None,
            close_timeout=CLOSE_TIMEOUT,
            server_header="unichatd",
            create_connection=self._connection_class,
            start_serving=False,
            ssl=self._tls,
        )
        self._lock.publish(self._instance(self.port))
        self.spawn(self.loop_lag.run())
        if server_config.ping_interval:
            self.spawn(self._heartbeat())
        # 4. the pid file goes first, so whoever sees the port open finds it too; then
        #    accept, and tell systemd.
        if server_config.pid_file:
            pid_path = self.config.resolve(server_config.pid_file)
            try:
                pid_path.write_text(f"{os.getpid()}\n")
            except OSError as exc:
                raise ConfigError(self.config.source, "server.pid_file",
                                  f"cannot write {pid_path}: {exc.strerror or exc}") from None
        await self._ws.start_serving()
        log.info("server.listening", host=server_config.host, port=self.port,
                 path=server_config.path, database=str(self.config.database_path), tls=self._tls is not None)
        notify_systemd("READY=1")
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        if watchdog_usec.isdigit() and os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
            self.spawn(_watchdog(int(watchdog_usec) / 1e6 / 2))

    def _instance(self, port: int) -> Instance:
        server_config = self.config.server
        return Instance(os.getpid(), server_config.host, port, server_config.path, self._tls is not None)

    async def stop(self) -> None:
        """Shut down in order, each step bounded (protocol.md §5: every committed send is
        acknowledged before the 1001 close)."""
        notify_systemd("STOPPING=1")
        log.info("server.stopping")
        if self._ws is not None:
            # 1. stop accepting (handshakes still in progress get 503);
            self._ws.close(close_connections=False)
            # 2. stop executing what connections send from now on;
            sessions = self.chat.hub.sessions()
            for session in sessions:
                session.draining = True
            # 3. finish the writes already accepted: their acks are written now;
            with contextlib.suppress(TimeoutError, StoreError):
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await self.store.flush()
            self._corks.flush()
            # 4. close every connection with 1001 (going away), after what it is owed;
            for conn in tuple(self._ws.connections):
                self.spawn(_close_bounded(conn, CLOSE_GOING_AWAY, "server shutting down"))
            try:
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await self._ws.wait_closed()
            except TimeoutError:
                # Peers that never took their close frame (not reading) are cut off.
                log.warning("server.close_timeout", aborted=len(self._ws.all_connections))
                for conn in tuple(self._ws.all_connections):
                    conn.transport.abort()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await self._ws.wait_closed()
        # 5. end timers and background work;
        await self.chat.stop()
        for task in tuple(self._tasks):
            task.cancel()
        # 6. anything still queued is written, then the database is closed, then the lock freed.
        await self.store.close()
        if self.config.server.pid_file:
            with contextlib.suppress(OSError):
                self.config.resolve(self.config.server.pid_file).unlink()
        self._lock.release()
        log.info("server.stopped")

    async def _heartbeat(self) -> None:
        """Ping every connection each ``ping_interval``; close with 1011 one that has not
        answered within ``ping_timeout`` (what websockets' per-connection keepalive does)."""
        assert self._ws is not None
        loop = asyncio.get_running_loop()
        outstanding: dict[ServerConnection, tuple[float, Awaitable[Any] | None]] = {}
        next_round = loop.time() + self.config.server.ping_interval
        while True:
            interval, timeout = self.config.server.ping_interval, self.config.server.ping_timeout
            await asyncio.sleep(max(0.05, min(interval, timeout or interval) / 4))
            now = loop.time()
            # 1. answered pings are forgotten; unanswered ones past the timeout close;
            for conn, (sent_at, waiter) in tuple(outstanding.items()):
                if waiter is None:
                    answered = not conn.paused  # (a peer that was not reading: see below)
                else:
                    answered = isinstance(waiter, asyncio.Future) and waiter.done()
                    if answered and not waiter.cancelled():  # type: ignore[attr-defined]
                        waiter.exception()  # type: ignore[attr-defined]  # retrieved: closes fail it
                if answered:
                    del outstanding[conn]
                elif timeout and now - sent_at >= timeout:
                    del outstanding[conn]
                    log.info("connection.ping_timeout", remote=_remote(conn))
                    if isinstance(waiter, asyncio.Task):
                        waiter.cancel()
                    self.spawn(_close_bounded(conn, CLOSE_INTERNAL_ERROR, "keepalive ping timeout"))
            # 2. each round, every connection without a ping in flight gets one.
            if now < next_round:
                continue
            next_round = now + interval
            for conn in self._ws.connections:
                if conn in outstanding:
                    continue
                if conn.paused:
                    # Its writes are blocked (it does not read): ping() would wait for it,
                    # holding up every other connection. It counts as a ping not answered
                    # until it reads again.
                    outstanding[conn] = (now, None)
                    continue
                transport = conn.transport
                if transport.get_write_buffer_size() + _PING_FRAME_BYTES > transport.get_write_buffer_limits()[1]:
                    # The ping would push it over the high-water mark, and ping() would then
                    # wait for the peer to read: that wait happens in a task of its own.
                    outstanding[conn] = (now, asyncio.ensure_future(_ping_and_wait(conn)))
                    continue
                with contextlib.suppress(ConnectionClosed):
                    outstanding[conn] = (now, await conn.ping())

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply what can change without a restart.

        Log level and format, limits, allowed origins, connection limits, the send buffer
        and the signing keys change at once; the address, path, database, TLS files and
        ping times need a restart (a warning names them).  ``serve``'s command-line
        options still apply.  A config that fails validation is ignored and logged; the
        server keeps running on the previous one.
        """
        from .config import load_config, load_keyring
        from .log import configure_logging

        current = self.config
        try:
            fresh = with_overrides(load_config(None if current.source == EMBEDDED else current.source),
                                   **self.overrides)
            keyring = load_keyring(fresh, create=False)
        except ConfigError as exc:
            log.error("config.reload_failed", error=str(exc))
            return
        old_server, new_server = current.server, fresh.server
        fixed = [name for name in _RESTART_KEYS if getattr(new_server, name) != getattr(old_server, name)]
        if fresh.database_path != current.database_path:
            fixed.append("storage.database")
        if fixed:
            log.warning("config.reload_needs_restart", keys=fixed)
        server = dataclasses.replace(new_server, **{name: getattr(old_server, name) for name in _RESTART_KEYS})
        self.config = dataclasses.replace(fresh, server=server, storage=current.storage,
                                          base_dir=current.base_dir)
        self.keyring = keyring
        self.chat.reconfigure(self.config, keyring)
        configure_logging(self.config.log)
        log.info("config.reloaded", source=self.config.source, keys=len(keyring.named) or 1)

    # -- HTTP --------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self._route(connection, request)
        except routes.BadRequest as exc:
            self.chat.stats.connections_refused["bad_request"] += 1
            return routes.error(http.HTTPStatus.BAD_REQUEST, "bad_request", str(exc))

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        ws_path = self.config.server.path
        routes.header(request, "Host")  # (sent twice: which site is asked for is ambiguous)
        upgrade = routes.header(request, "Upgrade")
        if path == ws_path or path.rstrip("/") == ws_path.rstrip("/"):
            if request.method != "GET":
                return routes.method_not_allowed({"GET"})
            return self._check_handshake(connection, request)
        if upgrade is not None and upgrade.lower() == "websocket":
            # A WebSocket handshake anywhere else is refused, whatever plain GET serves there.
            return routes.not_found()
        web_client = self.config.server.web_client
        if web_client and path == routes.SESSION_PATH:
            return self._session(connection, request)
        is_web_file = web_client and (path in ("/", "/favicon.ico") or path.startswith("/static/"))
        if not (is_web_file or path in ("/healthz", "/metrics")):
            return routes.not_found(head=request.method == "HEAD")
        # The rest only read: GET, or HEAD for the headers alone.
        if request.method not in routes.READ_METHODS:
            return routes.method_not_allowed(routes.READ_METHODS)
        head = request.method == "HEAD"
        if is_web_file:
            return routes.web_client(request, path, ws_path)
        if path == "/healthz":
            body = orjson.dumps(self.chat.health(time.monotonic() - self._started))
            return routes.respond(http.HTTPStatus.OK, body, "application/json", head=head)
        refusal = self._metrics_refusal(connection, request)
        if refusal is not None:
            return refusal
        return routes.respond(http.HTTPStatus.OK, generate_latest(self._registry),
                              "text/plain; version=0.0.4; charset=utf-8", head=head)

    def _session(self, connection: ServerConnection, request: Request) -> Response:
        """``GET /session`` with a Bearer token sets the web client's HttpOnly cookie;
        ``DELETE /session`` clears it (signing out)."""
        secure = self._tls is not None or self.config.server.public_url.startswith("https:")
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
            identity = verify_token(token, self.keyring)
        except AuthError as exc:
            return routes.error(http.HTTPStatus.UNAUTHORIZED, "unauthorized", exc.reason,
                                extra=[("WWW-Authenticate", "Bearer")])
        max_age = int(identity.expires_at - time.time())
        body = orjson.dumps({"user_id": identity.user_id, "username": identity.username}) + b"\n"
        return routes.respond(http.HTTPStatus.OK, body, "application/json",
                              extra=[routes.session_cookie(token, max_age, secure=secure)])

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
        self.chat.stats.connections_refused["origin"] += 1
        log.warning("connection.refused", reason="origin", origin=origin[:200])
        return routes.error(http.HTTPStatus.FORBIDDEN, "forbidden", "origin not allowed")

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        server_config = self.config.server
        refusal = self._origin_refusal(request)
        if refusal is not None:
            return refusal
        token = token_from_handshake(request.path, routes.handshake_headers(request))
        # The limits count handshakes admitted, not sessions opened: many handshakes at
        # once must not all pass before the first of them is counted.
        if self._admitted >= server_config.max_connections:
            self.chat.stats.connections_refused["max_connections"] += 1
            log.warning("connection.refused", reason="max_connections")
            return routes.error(http.HTTPStatus.SERVICE_UNAVAILABLE, "server_full", "server is full")
        auth: Identity | AuthError
        try:
            if token is None:
                raise AuthError(AUTH_REQUIRED)
            auth = verify_token(token, self.keyring)
        except AuthError as exc:
            auth = exc
        else:
            if self._admitted_by_user[auth.user_id] >= server_config.max_connections_per_user:
                self.chat.stats.connections_refused["max_connections_per_user"] += 1
                log.warning("connection.refused", reason="max_connections_per_user",
                            user_id=auth.user_id)
                return routes.error(http.HTTPStatus.TOO_MANY_REQUESTS, "too_many_connections",
                                    "too many connections for this user")
        assert isinstance(connection, _Connection)
        self._admit(connection, auth)
        return None

    def _admit(self, connection: _Connection, auth: Identity | AuthError) -> None:
        connection.auth = auth
        self._admitted += 1
        if isinstance(auth, Identity):
            self._admitted_by_user[auth.user_id] += 1

    def _release(self, auth: Identity | AuthError) -> None:
        self._admitted -= 1
        if isinstance(auth, Identity):
            left = self._admitted_by_user[auth.user_id] - 1
            if left:
                self._admitted_by_user[auth.user_id] = left
            else:
                del self._admitted_by_user[auth.user_id]

    # -- WebSocket ---------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _Connection)
        auth = connection.auth
        if not isinstance(auth, Identity):
            reason = auth.reason if isinstance(auth, AuthError) else AUTH_REQUIRED
            log.info("connection.rejected", reason=reason)
            await connection.close(CLOSE_AUTH, reason)
            return
        conn_id = next(self._conn_ids)
        sink = _ConnectionSink(connection, self._corks)
        session = Session(conn_id, auth, sink, self.chat)
        # The handshake's headers are not needed any more; an idle connection should not
        # carry a few kilobytes of them for its whole life.
        _forget_handshake(connection)
        try:
            await session.open()
        except StoreError:
            # The store logged the cause (once); the client learns the server cannot serve it.
            await _close_bounded(connection, CLOSE_INTERNAL_ERROR, "database unavailable")
            return
        log.info("connection.opened", conn_id=conn_id, user_id=auth.user_id, remote=_remote(connection))
        try:
            async for frame in connection:
                if isinstance(frame, str):
                    await session.handle_text(frame)
                else:
                    session.handle_binary()
        except ConnectionClosed:
            pass
        finally:
            session.closed_by_peer()
            log.info("connection.closed", conn_id=conn_id, user_id=auth.user_id, code=connection.close_code,
                     reason=connection.close_reason)


_RESTART_KEYS = ("host", "port", "path", "max_message_bytes", "ping_interval", "ping_timeout", "pid_file",
                 "tls_cert", "tls_key")
_PING_FRAME_BYTES = 6
"""A ping with websockets' 4-byte payload: two header bytes and the payload."""


async def _ping_and_wait(conn: ServerConnection) -> None:
    """A ping that may wait for the peer to read first; done when the pong comes."""
    with contextlib.suppress(ConnectionClosed):
        await (await conn.ping())


_NO_HEADERS = Headers()


def _forget_handshake(connection: ServerConnection) -> None:
    if connection.request is not None:
        connection.request.headers = _NO_HEADERS
    if connection.response is not None:
        connection.response.headers = _NO_HEADERS
        connection.response.body = b""


def _remote(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


class _MetricsCollector(Collector):
    """Reads the live counters at scrape time, so the hot path only bumps integers."""

    def __init__(self, server: UnichatServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        chat = self._server.chat
        stats, hub, store = chat.stats, chat.hub, self._server.store
        yield GaugeMetricFamily("unichatd_connections", "Open WebSocket connections.",
                                value=hub.connection_count)
        yield GaugeMetricFamily("unichatd_rooms_active", "Rooms with at least one subscriber.",
                                value=hub.active_rooms)
        yield CounterMetricFamily("unichatd_messages_stored", "Messages committed.",
                                  value=stats.messages_stored)
        yield CounterMetricFamily("unichatd_messages_delivered",
                                  "new_message frames handed to room subscribers.", value=stats.deliveries)
        yield CounterMetricFamily("unichatd_room_updates_sent", "room_updated frames sent.",
                                  value=stats.room_updates)
        errors = CounterMetricFamily("unichatd_errors", "Error frames sent, by code.",
                                     labels=["code"])
        for code, count in sorted(stats.errors.items()):
            errors.add_metric([code], count)
        yield errors
        refused = CounterMetricFamily("unichatd_connections_refused",
                                      "Handshakes refused, by reason.", labels=["reason"])
        for reason, count in sorted(stats.connections_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily("unichatd_send_queue_drops",
                                  "Connections closed as slow consumers (send buffer full).",
                                  value=stats.slow_consumer_closes)
        yield CounterMetricFamily("unichatd_flood_closes",
                                  "Connections closed for flooding after rate limiting.",
                                  value=stats.flood_closes)
        yield GaugeMetricFamily("unichatd_subscriptions", "Room subscriptions of open connections.",
                                value=hub.subscription_count)
        yield CounterMetricFamily("unichatd_rate_limited", "Requests refused with rate_limited.",
                                  value=stats.rate_limited)
        yield _histogram("unichatd_db_write_batch_size", "Operations per group-commit transaction.",
                         store.batch_sizes)
        yield _histogram("unichatd_db_write_seconds", "Group-commit transaction latency.",
                         store.write_latency)
        yield _histogram("unichatd_event_loop_lag_seconds", "How late the event loop wakes a timer.",
                         self._server.loop_lag.histogram)


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.buckets(),
                                 sum_value=histogram.total)


def notify_systemd(state: str) -> None:
    """Send ``state`` to systemd's notification socket when running under Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("systemd.notify_failed", error=str(exc))


async def _watchdog(interval: float) -> None:
    """Tell systemd we are alive; a stuck event loop stops these and gets us restarted."""
    while True:
        notify_systemd("WATCHDOG=1")
        await asyncio.sleep(interval)


async def serve_forever(config: Config, keys: KeyRing, overrides: dict[str, Any] | None = None) -> None:
    """Run until SIGTERM or SIGINT (a second one exits at once); SIGHUP reloads the config."""
    server = UnichatServer(config, keys, overrides=overrides)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("server.forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("server.signal", signal=signal.Signals(signum).name)
        stop.set()

    # Handlers first: systemd may send SIGTERM the moment READY=1 is out.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start()
    # What startup built lives as long as the process: keep the cyclic GC off it, and
    # collect less often — the hot path makes short-lived objects, not cycles.  (A
    # process-wide setting, so it belongs to the process's entry point, not the server.)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run(config: Config, keys: KeyRing, overrides: dict[str, Any] | None = None) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(serve_forever(config, keys, overrides))
    else:
        uvloop.run(serve_forever(config, keys, overrides))
