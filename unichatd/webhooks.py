"""Outgoing webhooks (api.md): the events the outbox holds, POSTed to each receiver in
order, signed, retried until taken.

Each receiver has a cursor: the last event (``webhook_events.seq``) it took.  Its events
go one at a time in seq order — the order their changes committed in, so per room too —
and a failure is retried with exponential backoff (1 s, doubling, at most 10 minutes
apart) for 24 hours before the event is given up (logged).  Cursors are saved every
second, so after a crash or restart at most that last second's events go again:
delivery is at least once, and each event's ``id`` lets receivers drop repeats.  All of
it runs beside the chat on the event loop, awaiting sockets only: a receiver that hangs
holds up its own queue, never a send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog

from .config import WebhookConfig
from .errors import StoreError
from .interfaces import MessageStore
from .stats import WebhookStats

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("unichatd.webhooks")

POLL_INTERVAL = 0.25
LEAD_CHECK = 1.0
"""Seconds between checks that this process still holds the deliverer's lock."""
"""Seconds between looks for new events while a receiver has taken everything."""
SAVE_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0
"""Without receivers, the events the CLI and the rooms keep writing are deleted this often."""
FIRST_RETRY = 1.0
MAX_RETRY_INTERVAL = 600.0
GIVE_UP_AFTER = 24 * 3600.0
REQUEST_TIMEOUT = 10.0
BATCH = 100
PRUNE_BATCH = 10_000
"""Events deleted per write at most: a group commit never waits behind a big delete."""
SIGNATURE_HEADER = "X-Unichatd-Signature"


def loggable(url: str) -> str:
    """The receiver's URL without credentials or query string (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def receiver_label(index: int, url: str) -> str:
    """How /metrics names a receiver: its place in the config and its host, never its path."""
    return f"{index}:{urlsplit(url).hostname}"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self, store: MessageStore, hooks: tuple[WebhookConfig, ...], stats: WebhookStats) -> None:
        self._store = store
        self._hooks = hooks
        self._stats = stats
        self._cursors: dict[str, int] = {}
        self._saved: dict[str, int] = {}
        self._pruned = 0
        self._failing_since: dict[str, float] = {}
        """Receivers failing without a success since then (time.time())."""
        self._started = False
        """Only a started deliverer saves progress (a failed start must not prune the outbox)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.elect: Callable[[], Awaitable[bool]] | None = None
        """With several processes: True while this one is the deliverer (one at a time, so
        each event goes out once); None: this process is the only one."""
        self._leading = False
        self._checked = 0.0
        self._electing = asyncio.Lock()

    async def start(self) -> None:
        saved, newest = await self._store.webhook_cursors()
        # A receiver new to this database starts with the events written from now on, and
        # that start is saved at once: after a crash it must not start over from later.
        self._cursors = {hook.url: saved.get(hook.url, newest) for hook in self._hooks}
        new = [(url, through) for url, through in self._cursors.items() if url not in saved]
        if new:
            await self._store.webhook_progress(new, 0)
        self._saved = dict(self._cursors)
        if self._hooks:
            import aiohttp  # (only a server with receivers loads the HTTP client)

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                headers={"User-Agent": "unichatd", "Content-Type": "application/json"},
            )
        for hook in self._hooks:
            self._tasks.append(asyncio.create_task(self._deliver_all(hook), name="unichatd-webhook"))
        self._tasks.append(asyncio.create_task(self._keep_progress(), name="unichatd-webhook-progress"))
        self._started = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._started:
            with contextlib.suppress(Exception):
                await self._save()
            self._started = False
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- delivery --------------------------------------------------------------------

    async def _leads(self) -> bool:
        """Whether this process delivers (asked of ``elect`` at most every LEAD_CHECK); on
        becoming the deliverer it starts from the cursors the previous one saved."""
        if self.elect is None:
            return True
        async with self._electing:
            if time.monotonic() - self._checked < LEAD_CHECK:
                return self._leading
            leading = await self.elect()
            self._checked = time.monotonic()
            if leading and not self._leading:
                try:
                    saved, _ = await self._store.webhook_cursors()
                except StoreError:
                    return False  # (the database is away: the next check tries again)
                for url in self._cursors:
                    self._cursors[url] = max(self._cursors[url], saved.get(url, 0))
                log.info("webhook.deliverer")
            self._leading = leading
            return leading

    async def _deliver_all(self, hook: WebhookConfig) -> None:
        while True:
            if not await self._leads():
                await asyncio.sleep(POLL_INTERVAL)
                continue
            try:
                events, reached = await self._store.webhook_events(self._cursors[hook.url], hook.events, BATCH)
            except Exception:  # noqa: BLE001  (a database hiccup: look again later)
                log.warning("webhook.read_failed", url=loggable(hook.url), exc_info=True)
                await asyncio.sleep(POLL_INTERVAL)
                continue
            for seq, event, body, created_ms in events:
                await self._deliver(hook, event, body, created_ms)
                self._cursors[hook.url] = seq
            # Past the events of kinds it does not take too, so they can be deleted.
            self._cursors[hook.url] = max(self._cursors[hook.url], reached)
            if not events:
                await asyncio.sleep(POLL_INTERVAL)

    async def _deliver(self, hook: WebhookConfig, event: str, body: bytes, created_ms: int) -> None:
        """POST one event until the receiver answers 2xx.  It is given up after failing for
        GIVE_UP_AFTER from its first try — or at once, when it is that old and the receiver
        has failed all along for that long (a receiver gone for days does not hold each
        event a day more)."""
        headers = {SIGNATURE_HEADER: signature(hook.secret, body), "X-Unichatd-Event": event}
        delay = FIRST_RETRY
        deadline = time.time() + GIVE_UP_AFTER
        while True:
            outcome = await self._post(hook.url, body, headers)
            now = time.time()
            if outcome is None:
                self._stats.deliveries["delivered"] += 1
                self._failing_since.pop(hook.url, None)
                return
            self._stats.deliveries["failed"] += 1
            failing_since = self._failing_since.setdefault(hook.url, now)
            if now - failing_since >= GIVE_UP_AFTER and now - created_ms / 1000 >= GIVE_UP_AFTER:
                deadline = now
            left = deadline - now
            if left <= 0:
                self._stats.deliveries["gave_up"] += 1
                log.error("webhook.gave_up", url=loggable(hook.url), webhook_event=event, error=outcome)
                return
            log.warning("webhook.retry", url=loggable(hook.url), webhook_event=event, error=outcome, in_s=delay)
            self._stats.retries += 1
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, MAX_RETRY_INTERVAL)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """None when the receiver took it; else what went wrong."""
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except Exception as exc:  # noqa: BLE001  (whatever failed, the event is tried again)
            return type(exc).__name__ + (f": {exc}" if str(exc) else "")

    # -- progress --------------------------------------------------------------------

    async def _keep_progress(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL if self._hooks else PRUNE_INTERVAL)
            try:
                await self._save()
                newest = (await self._store.webhook_cursors())[1]
                for index, hook in enumerate(self._hooks):
                    # Events written after the receiver's cursor (the ones of kinds it does
                    # not take are passed as it reads): cheap, and exact once it is caught up.
                    self._stats.queue_depth[receiver_label(index, hook.url)] = max(0, newest - self._cursors[hook.url])
            except Exception:  # noqa: BLE001  (the next round saves it)
                log.warning("webhook.save_failed", exc_info=True)

    async def _save(self) -> None:
        """Save moved cursors, and delete the events every receiver has taken (all of
        them, when no receiver is configured)."""
        moved = [(url, through) for url, through in self._cursors.items() if self._saved.get(url) != through]
        prune = min(self._cursors.values()) if self._cursors else (await self._store.webhook_cursors())[1]
        if not moved and prune == self._pruned:
            return
        deleted = await self._store.webhook_progress(moved, prune, PRUNE_BATCH)
        self._saved.update(moved)
        if deleted < PRUNE_BATCH:  # (else the next round deletes on)
            self._pruned = prune
