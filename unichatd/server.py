"""The listener: the WebSocket server's lifecycle — start, reload, ordered stop — and
each connection's loop from its first frame to its close.

The parts it wires live apart: ``endpoints`` answers HTTP and checks handshakes,
``transport`` writes frames and keeps connections alive, ``session`` runs one
connection's requests, ``chat`` what connections share.  The store and broker it runs
on are chosen by ``app.build_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from . import systemd
from .admission import Admission, AdmittedConnection
from .auth import AUTH_REQUIRED, TOKEN_REVOKED, Identity, KeyRing
from .chat import Chat
from .config import EMBEDDED, Config, load_tls, with_overrides
from .endpoints import Endpoints
from .errors import AuthError, ClientError, CloseCode, ConfigError, StoreError
from .host import HostActions
from .instance import Instance, InstanceLock
from .interfaces import Broker, MessageStore
from .keepalive import Keepalive
from .limits import TokenBucket
from .metrics import LoopLagMonitor
from .prometheus import MetricsCollector
from .session import NotificationListener, Session
from .stats import ApiStats, WebhookStats
from .transport import CLOSE_TIMEOUT, ConnectionSink, Corks, close_bounded, remote_address
from .webhooks import Webhooks

if TYPE_CHECKING:
    from .api import ServerApi

log = structlog.get_logger("unichatd.server")

SHUTDOWN_TIMEOUT = 10.0
_RESTART_KEYS = ("host", "port", "path", "max_message_bytes", "ping_interval", "ping_timeout", "pid_file",
                 "tls_cert", "tls_key")


class UnichatServer:
    """A running unichatd: store, broker, chat service, listening socket."""

    def __init__(self, config: Config, keyring: KeyRing, *, store: MessageStore, broker: Broker[Any],
                 api_key: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        self.config = config
        self.overrides = overrides or {}
        """``serve``'s command-line options (host, port, database), kept over a reload."""
        self.keyring = keyring
        self.store = store
        self.chat = Chat(config, store, broker, keyring)
        self._ws: Server | None = None
        self._lock = InstanceLock(config.instance_path)
        self._tls = load_tls(config)
        self._started = time.monotonic()
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Future[None]] = set()
        self._corks = Corks(self.chat.stats, self.spawn, config.server.send_buffer_bytes)
        self._keepalive = (Keepalive(config.server.ping_interval, config.server.ping_timeout, self.chat.clock)
                           if config.server.ping_interval else None)
        self.admission = Admission()
        self.loop_lag = LoopLagMonitor()
        api_stats, webhook_stats = ApiStats(), WebhookStats()
        self.api: ServerApi | None = None
        """The server API's listener (api.md): only with an API key (aiohttp is loaded then)."""
        if api_key:
            from .api import ServerApi

            self.api = ServerApi(HostActions(self.chat), config.api, api_key, api_stats)
        self.webhooks = Webhooks(store, config.webhooks, webhook_stats)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(MetricsCollector(self.chat.stats, broker, store, self.loop_lag, api_stats, webhook_stats))
        self.endpoints = Endpoints(
            self.chat, admission=self.admission, registry=registry,
            health=lambda: self.chat.health(time.monotonic() - self._started), tls=self._tls is not None,
        )

    @property
    def port(self) -> int:
        assert self._ws is not None
        sockets = list(self._ws.sockets)
        return int(sockets[0].getsockname()[1])

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background; it is cancelled at stop if still running."""
        task = asyncio.ensure_future(coro)
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
            if self.api is not None:
                await self.api.stop()
            await self.webhooks.stop()
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
        await self.webhooks.start()
        # 3. the listening socket, not accepting yet;
        self._ws = await serve(
            self._handle,
            server_config.host,
            server_config.port,
            process_request=self.endpoints.process_request,
            compression=None,
            max_size=server_config.max_message_bytes,
            # Keepalive is ours (see keepalive.py): one timer for all connections instead
            # of one task and timer per connection.
            ping_interval=None,
            close_timeout=CLOSE_TIMEOUT,
            server_header="unichatd",
            create_connection=self.admission.connection_class,
            start_serving=False,
            ssl=self._tls,
        )
        self._lock.publish(self._instance(self.port))
        if self.api is not None:
            try:
                await self.api.start()
            except OSError as exc:
                api = self.config.api
                raise ConfigError(self.config.source, "api.port",
                                  f"cannot listen on {api.host}:{api.port}: {exc.strerror or exc}") from None
        self.spawn(self.loop_lag.run())
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
                 path=server_config.path, database=self.config.database_name, tls=self._tls is not None)
        systemd.notify_systemd("READY=1")
        interval = systemd.watchdog_interval()
        if interval is not None:
            self.spawn(systemd.watchdog(interval))

    def _instance(self, port: int) -> Instance:
        server_config = self.config.server
        return Instance(os.getpid(), server_config.host, port, server_config.path, self._tls is not None)

    async def stop(self) -> None:
        """Shut down in order, each step bounded (protocol.md §5: every committed send is
        acknowledged before the 1001 close)."""
        systemd.notify_systemd("STOPPING=1")
        log.info("server.stopping")
        if self.api is not None:
            await self.api.stop()
        if self._ws is not None:
            # 1. stop accepting (handshakes still in progress get 503);
            self._ws.close(close_connections=False)
            # 2. stop executing what connections send from now on;
            sessions = self.chat.broker.sessions()
            for session in sessions:
                session.draining = True
            # 3. finish the writes already accepted: their acks are written now;
            with contextlib.suppress(TimeoutError, StoreError):
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await self.store.flush()
            self._corks.flush()
            # 4. close every connection with 1001 (going away), after what it is owed;
            for conn in tuple(self._ws.connections):
                self.spawn(close_bounded(conn, CloseCode.GOING_AWAY, "server shutting down"))
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
        if self._keepalive is not None:
            self._keepalive.stop()
        await self.chat.stop()
        await self.webhooks.stop()
        for task in tuple(self._tasks):
            task.cancel()
        # 6. anything still queued is written, then the database is closed, then the lock freed.
        await self.store.close()
        if self.config.server.pid_file:
            with contextlib.suppress(OSError):
                self.config.resolve(self.config.server.pid_file).unlink()
        self._lock.release()
        log.info("server.stopped")

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply what can change without a restart.

        Log level and format, limits, allowed origins, connection limits, the send buffer
        and the signing keys change at once; the address, path, database, TLS files and
        ping times need a restart (a warning names them).  ``serve``'s command-line
        options still apply.  A config that fails validation is ignored and logged; the
        server keeps running on the previous one.
        """
        from .config import load_config
        from .keys import load_keyring
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
        if fresh.storage.database != current.storage.database:
            fixed.append("storage.database")
        if fresh.api != current.api:
            fixed.append("api")
        if fresh.webhooks != current.webhooks:
            fixed.append("webhooks")
        if fixed:
            log.warning("config.reload_needs_restart", keys=fixed)
        server = dataclasses.replace(new_server, **{name: getattr(old_server, name) for name in _RESTART_KEYS})
        self.config = dataclasses.replace(fresh, server=server, storage=current.storage, api=current.api,
                                          webhooks=current.webhooks, base_dir=current.base_dir)
        self.keyring = keyring
        self._corks.send_buffer_bytes = self.config.server.send_buffer_bytes
        self.chat.reconfigure(self.config, keyring)
        configure_logging(self.config.log)
        log.info("config.reloaded", source=self.config.source, keys=len(keyring.named) or 1)

    # -- WebSocket ---------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, AdmittedConnection)
        auth = connection.auth
        if not isinstance(auth, Identity):
            reason = auth.reason if isinstance(auth, AuthError) else AUTH_REQUIRED
            log.info("connection.rejected", reason=reason)
            await connection.close(CloseCode.AUTH, reason)
            return
        route = connection.route
        if route is not None:
            try:
                allowed = await self._may_open(route, auth)
            except StoreError:
                await close_bounded(connection, CloseCode.INTERNAL_ERROR, "database unavailable")
                return
            if not allowed:
                await close_bounded(connection, CloseCode.ACCESS_DENIED, "access denied")
                return
            if route[0] == "notifications":
                await self._listen(connection, auth)
                return
        conn_id = next(self._conn_ids)
        sink = ConnectionSink(connection, self._corks)
        session = Session(conn_id, auth, sink, self.chat)
        # The handshake's headers are not needed any more; an idle connection should not
        # carry a few kilobytes of them for its whole life.
        _forget_handshake(connection)
        try:
            await session.open()
        except StoreError:
            # The store logged the cause (once); the client learns the server cannot serve it.
            await close_bounded(connection, CloseCode.INTERNAL_ERROR, "database unavailable")
            return
        log.info("connection.opened", conn_id=conn_id, user_id=auth.user_id, remote=remote_address(connection))
        if self._keepalive is not None:
            self._keepalive.watch(sink)
        try:
            if self.chat.is_revoked(auth):  # (revoked while it opened: close_user did not see it yet)
                session.close(CloseCode.AUTH, TOKEN_REVOKED)
            elif route is not None:
                try:
                    await session.subscribe_at_open(route[1])
                except ClientError as exc:  # (removed from the room in the meantime)
                    session.send_error(exc)
                except StoreError:
                    session.close(CloseCode.INTERNAL_ERROR, "database unavailable")
            async for frame in connection:
                if isinstance(frame, str):
                    await session.handle_text(frame)
                else:
                    session.handle_binary(frame)
        except ConnectionClosed:
            pass
        finally:
            session.closed_by_peer()
            log.info("connection.closed", conn_id=conn_id, user_id=auth.user_id, code=connection.close_code,
                     reason=connection.close_reason)


    async def _may_open(self, route: tuple[str, int], identity: Identity) -> bool:
        """The endpoints kept for one-socket-per-room clients (api.md): the room must be
        the user's, the notifications their own."""
        kind, target = route
        if kind == "notifications":
            return target == identity.user_id
        try:
            await self.chat.ensure_access(target, identity.user_id)
        except ClientError:
            return False
        return True

    async def _listen(self, connection: AdmittedConnection, identity: Identity) -> None:
        sink = ConnectionSink(connection, self._corks)
        listener = NotificationListener(identity, sink, self.chat)
        _forget_handshake(connection)
        listener.open()
        log.info("connection.opened", user_id=identity.user_id, remote=remote_address(connection),
                 notifications=True)
        if self.chat.is_revoked(identity):
            listener.close(CloseCode.AUTH, TOKEN_REVOKED)
        if self._keepalive is not None:
            self._keepalive.watch(sink)
        limits = self.config.limits
        frames = TokenBucket(limits.frames_per_second, limits.frame_burst)
        try:
            async for _frame in connection:
                # It takes no requests; what comes is dropped, at the rate any connection may send.
                if frames.take():
                    listener.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
        except ConnectionClosed:
            pass
        finally:
            listener.closed_by_peer()
            log.info("connection.closed", user_id=identity.user_id, code=connection.close_code,
                     reason=connection.close_reason, notifications=True)


_NO_HEADERS = Headers()


def _forget_handshake(connection: ServerConnection) -> None:
    if connection.request is not None:
        connection.request.headers = _NO_HEADERS
    if connection.response is not None:
        connection.response.headers = _NO_HEADERS
        connection.response.body = b""
