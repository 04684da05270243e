"""The ``webhooks`` scenario: what the host application's side costs the chat.

Side by side, on fresh servers: the fan-out run without webhooks, then the same with a
webhook that wants every ``message_created`` (the outbox row written in each group
commit, the deliverer POSTing beside the chat). A receiver in this process takes the
events and notes each one's lag (arrival minus the event's timestamp). Then the server
API: ``POST /api/rooms/{id}/messages`` one at a time and 16 at once, as posts/s and
latency.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .fanout import create_fanout_rooms, drive_fanout
from .harness import BenchServer, _free_port, percentiles

SECRET = "bench-webhook-secret"
API_KEY = "bench-api-key-" + "0" * 32
API_POSTS = 2000
API_CONCURRENCY = 16


class Receiver:
    """A webhook receiver on its own thread and loop: counts events and their lag."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.lags_ms: list[float] = []
        self.received = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._take)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    async def _take(self, request: web.Request) -> web.Response:
        event = orjson.loads(await request.read())
        stamp = time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")
        sent = time.mktime(stamp) - time.timezone + int(event["timestamp"][20:23]) / 1000
        self.lags_ms.append((time.time() - sent) * 1000)
        self.received += 1
        return web.Response(status=204)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _fanout(args: argparse.Namespace, extra_config: str) -> tuple[dict[str, Any], BenchServer, Path,
                                                                   tempfile.TemporaryDirectory[str]]:
    workdir = tempfile.TemporaryDirectory(prefix="unichatd-bench-")
    server = BenchServer(Path(workdir.name), relay=False, cpu=args.server_cpu, extra_config=extra_config)
    admin = server.admin()
    create_fanout_rooms(admin, args.rooms, args.members)
    admin.close()
    server.start()
    return drive_fanout(server, args), server, Path(workdir.name), workdir


async def _api_posts(port: int, room_id: int, count: int, concurrency: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/rooms/{room_id}/messages"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0

    async def poster(session: aiohttp.ClientSession, share: int) -> None:
        nonlocal errors
        for number in range(share):
            started = time.perf_counter()
            async with session.post(url, data=orjson.dumps({"content": f"api {number}"}), headers=headers) as answer:
                await answer.read()
                if answer.status != 201:
                    errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(poster(session, count // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"posts": len(latencies), "concurrency": concurrency, "posts_per_s": round(len(latencies) / elapsed, 1),
            "latency_ms": percentiles(latencies), "errors": errors}


def scenario_webhooks(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        raise SystemExit("unichatd bench webhooks: starts its own servers (no --url)")
    without, server, _, workdir = _fanout(args, "")
    server.stop()
    workdir.cleanup()

    receiver = Receiver()
    receiver.start()
    api_port = _free_port()
    hooked = (f'[api]\nport = {api_port}\napi_key = "{API_KEY}"\n'
              f'[[webhooks]]\nurl = "http://127.0.0.1:{receiver.port}/hook"\nevents = ["message_created"]\n'
              f'secret = "{SECRET}"\n')
    try:
        with_hook, server, _, workdir = _fanout(args, hooked)
        try:
            taken_during = receiver.received
            # The backlog the run left: how long the deliverer takes to drain it (done when
            # nothing more arrives for a second).
            drain_started = last_change = time.monotonic()
            seen = receiver.received
            while time.monotonic() - last_change < 1.0 and time.monotonic() - drain_started < 300:
                time.sleep(0.05)
                if receiver.received != seen:
                    seen, last_change = receiver.received, time.monotonic()
            drained_s = last_change - drain_started
            lags = percentiles(receiver.lags_ms)
            api = {"sequential": asyncio.run(_api_posts(api_port, 1, API_POSTS // 4, 1)),
                   "concurrent": asyncio.run(_api_posts(api_port, 1, API_POSTS, API_CONCURRENCY))}
        finally:
            server.stop()
            workdir.cleanup()
    finally:
        receiver.stop()
    return {
        "scenario": "webhooks",
        "without_webhook": {key: without[key] for key in ("deliveries_per_s", "acked_per_s", "delivery_latency_ms")},
        "with_webhook": {key: with_hook[key] for key in ("deliveries_per_s", "acked_per_s", "delivery_latency_ms")},
        "webhook_events_during_run": taken_during,
        "webhook_events_per_s_during_run": round(taken_during / (args.duration + args.warmup), 1),
        "webhook_drain_s_after_run": round(drained_s, 2),
        "webhook_events_in_all": receiver.received,
        "webhook_lag_ms": lags,
        "api": api,
        "errors": without["errors"] + with_hook["errors"] + api["sequential"]["errors"] + api["concurrent"]["errors"],
    }
