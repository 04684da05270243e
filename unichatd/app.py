"""The composition root: which store and broker a server runs on, and the process around it.

The store is SQLite (``store.SqliteStore``, the embedded default) or PostgreSQL
(``store.postgres.PostgresStore``, when ``storage.database`` is a ``postgresql://``
URL); fan-out is the in-process hub (``hub.Hub``).  Backends are chosen here, from the
config, and nowhere else — the CLI's administration included (``open_admin``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from functools import partial
from typing import Any

import structlog

from .auth import KeyRing
from .config import Config
from .hub import Hub
from .interfaces import MessageStore
from .keys import load_api_key
from .server import UnichatServer
from .store import AdminStore, SqliteStore
from .store.postgres import PostgresAdmin, PostgresStore

log = structlog.get_logger("unichatd.server")

GC_THRESHOLD = 20_000


def build_store(config: Config) -> MessageStore:
    if config.database_url:
        return PostgresStore(config.database_url, webhook_events=config.webhook_events)
    return SqliteStore(config.database_path, webhook_events=config.webhook_events)


def open_admin(config: Config) -> AdminStore | PostgresAdmin:
    """The CLI's connection to the configured database (room commands, export, names)."""
    if config.database_url:
        return PostgresAdmin(config.database_url)
    return AdminStore(config.database_path)


def build_server(config: Config, keys: str | KeyRing, *, overrides: dict[str, Any] | None = None) -> UnichatServer:
    """A server on the store and broker the config asks for (not started)."""
    keyring = keys if isinstance(keys, KeyRing) else KeyRing.single(keys)
    store = build_store(config)
    server = UnichatServer(config, keyring, store=store, broker=Hub(), api_key=load_api_key(config),
                           overrides=overrides)
    if config.cluster.broker:
        join_cluster(server, store, config)
    return server


def join_cluster(server: UnichatServer, store: MessageStore, config: Config) -> None:
    """Several processes: events through Redis, send limits kept there, presence shared."""
    from .bus import RedisBus
    from .cluster import Cluster
    from .redislimits import SharedLimits

    bus = RedisBus(config.cluster.broker, config.cluster.prefix)
    chat = server.chat
    chat.cluster = chat.presence.peers = Cluster(chat, store, bus)
    if isinstance(store, PostgresStore):  # (always: a broker needs PostgreSQL, config.py checks)
        server.webhooks.elect = partial(store.holds_lock, "webhooks")
    limits = config.limits
    chat.shared_limits = SharedLimits(bus.client, config.cluster.prefix, limits.messages_per_second,
                                      limits.message_burst)


async def serve_forever(config: Config, keys: KeyRing, overrides: dict[str, Any] | None = None) -> None:
    """Run until SIGTERM or SIGINT (a second one exits at once); SIGHUP reloads the config."""
    server = build_server(config, keys, overrides=overrides)
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
