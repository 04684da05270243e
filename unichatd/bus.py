"""Events between the processes of one chat space, over Redis pub/sub (operations.md,
"More than one process"): the :class:`~unichatd.interfaces.Bus` the cluster runs on.

One channel, ``<prefix>:events``, carries everything, and every process hears every
event: each process keeps the whole room directory, so it needs every committed change.
Pub/sub keeps nothing, and that is enough here: the database is the log.  An event lost
while Redis was away is a gap in the numbers a process has applied, which it fills from
the database (see ``cluster``); Redis Streams would keep a second copy of what
PostgreSQL already keeps.

Publishing never waits: events queue, and one task sends what gathered as one pipeline
(one round trip), in order.  While Redis cannot be reached the queue is dropped — the
other processes fill the gap from the database — and the subscription is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("unichatd.bus")

RETRY_MIN, RETRY_MAX = 0.1, 2.0
"""Seconds between attempts to reach Redis again (doubling)."""
READ_TIMEOUT = 1.0
STOP_TIMEOUT = 2.0
PIPELINE_MAX = 512
"""Events sent in one round trip at most."""


class RedisBus:
    """Publish to, and hear, every process of the chat space through one Redis channel."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.channel = f"{prefix}:events"
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5,
                                           health_check_interval=10)
        self.connected = False
        """True while the subscription is up (``/healthz``)."""
        self._receive: Callable[[bytes], None] | None = None
        self._queue: list[bytes] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._stopping = False

    async def start(self, receive: Callable[[bytes], None]) -> None:
        """Subscribe (retrying until Redis answers, in the background) and start publishing."""
        self._receive = receive
        self._tasks = [asyncio.create_task(self._publish_queued(), name="unichatd-bus-publish"),
                       asyncio.create_task(self._listen(), name="unichatd-bus-listen")]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 3)

    async def stop(self) -> None:
        """Send what is queued (bounded), then leave."""
        self._stopping = True
        self._wakeup.set()
        if self._tasks:
            publisher, listener = self._tasks
            # (the publisher ends on its own: redis-py may swallow a cancellation mid-command)
            await asyncio.wait([publisher], timeout=STOP_TIMEOUT)
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.client.aclose(), STOP_TIMEOUT)

    def publish(self, event: bytes) -> None:
        """Queue ``event`` for every other process (sent in order; dropped while Redis is away)."""
        self._queue.append(event)
        self._wakeup.set()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def _publish_queued(self) -> None:
        while not self._stopping or self._queue:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                events, self._queue = self._queue[:PIPELINE_MAX], self._queue[PIPELINE_MAX:]
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for event in events:
                            pipe.publish(self.channel, event)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    dropped = len(events) + len(self._queue)
                    self._queue.clear()
                    log.warning("bus.publish_failed", error=str(exc), dropped=dropped)

    async def _listen(self) -> None:
        delay = RETRY_MIN
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if not self.connected:
                    log.info("bus.connected", channel=self.channel)
                self.connected = True
                self._subscribed.set()
                delay = RETRY_MIN
                while True:
                    message = await pubsub.get_message(timeout=READ_TIMEOUT)
                    if message is not None and self._receive is not None:
                        self._receive(message["data"])
            except (RedisError, OSError) as exc:
                if self.connected:
                    log.warning("bus.disconnected", error=str(exc))
                self.connected = False
            finally:
                # (bounded: a connection cut mid-read may not close cleanly)
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), STOP_TIMEOUT)  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
