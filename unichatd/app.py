"""The composition root: which store and broker a server runs on, and the process around it.

The embedded defaults are the only ones today: SQLite (``store.SqliteStore``) and the
in-process hub (``hub.Hub``).  A second backend is chosen here, from the config, and
nowhere else.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from typing import Any

import structlog

from .auth import KeyRing
from .config import Config
from .hub import Hub
from .keys import load_api_key
from .server import UnichatServer
from .store import SqliteStore

log = structlog.get_logger("unichatd.server")

GC_THRESHOLD = 20_000


def build_server(config: Config, keys: str | KeyRing, *, overrides: dict[str, Any] | None = None) -> UnichatServer:
    """A server on the store and broker the config asks for (not started)."""
    keyring = keys if isinstance(keys, KeyRing) else KeyRing.single(keys)
    store = SqliteStore(config.database_path, webhook_events=config.webhook_events)
    return UnichatServer(config, keyring, store=store, broker=Hub(), api_key=load_api_key(config),
                         overrides=overrides)


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
