"""systemd's notification protocol (Type=notify): readiness, stopping, and the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("unichatd.server")


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


async def watchdog(interval: float) -> None:
    """Tell systemd we are alive; a stuck event loop stops these and gets us restarted."""
    while True:
        notify_systemd("WATCHDOG=1")
        await asyncio.sleep(interval)


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asks for, when it asks this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    if usec.isdigit() and os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
        return int(usec) / 1e6 / 2
    return None
