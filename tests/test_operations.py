"""Running as a service: the systemd unit, readiness notifications, SIGHUP reload, key rotation."""

from __future__ import annotations

import asyncio
import http
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import (
    SIGNING_KEY,
    DaemonProcess,
    free_port,
    make_config,
    run_cli,
    start_server,
    write_config,
)
from unichatd.auth import KeyRing, mint_token

ROOT = Path(__file__).resolve().parent.parent
OTHER_KEY = "r" * 48


@pytest.mark.process
def test_systemd_unit_verifies() -> None:
    """`systemd-analyze verify` accepts systemd/unichatd.service (with this machine's unichatd)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing in CI (.ci/run installs Debian's systemd)")
        pytest.skip("systemd-analyze not installed: apt-get install systemd")
    executable = shutil.which("unichatd") or str(Path(sys.executable).parent / "unichatd")
    unit = (ROOT / "systemd" / "unichatd.service").read_text().replace("/usr/local/bin/unichatd", executable)
    for required in ("Type=notify", "ExecReload=", "ExecStartPre=", "StateDirectory=unichatd",
                     "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "LimitNOFILE="):
        assert required in unit
    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"unichatd-verify-{os.getpid()}"
    target.mkdir(exist_ok=True)
    (target / "unichatd.service").write_text(unit)
    completed = subprocess.run([analyze, "verify", str(target / "unichatd.service")],
                               capture_output=True, text=True, timeout=60)
    shutil.rmtree(target)
    assert completed.returncode == 0, completed.stderr


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    return sock, path


@pytest.mark.process
def test_notify_socket_gets_ready_and_stopping(tmp_path: Path) -> None:
    """Under Type=notify the server sends READY=1 once it listens and STOPPING=1 on SIGTERM."""
    sock, path = _notify_socket(tmp_path)
    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen([sys.executable, "-m", "unichatd", "serve", "--config", str(config)],
                            env={**os.environ, "NOTIFY_SOCKET": path}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sock.recv(256) == b"READY=1"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it really listens by the time it says so
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sock.close()


@pytest.mark.process
def test_watchdog_pings_when_systemd_asks(tmp_path: Path) -> None:
    """With WATCHDOG_USEC set, the server sends WATCHDOG=1 at half that interval."""
    sock, path = _notify_socket(tmp_path)
    config = write_config(tmp_path, free_port())
    proc = subprocess.Popen([sys.executable, "-m", "unichatd", "serve", "--config", str(config)],
                            env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        messages = [sock.recv(256) for _ in range(4)]
        assert messages[0] == b"READY=1" or b"READY=1" in messages
        assert messages.count(b"WATCHDOG=1") >= 2
    finally:
        proc.kill()
        proc.wait(10)
        sock.close()


def _reload_config(config: Path, extra_server: str = "", auth: str = "") -> None:
    text = config.read_text()
    text = text.replace("[server]\n", f"[server]\n{extra_server}\n", 1)
    if auth:
        text = text.replace(f'signing_key = "{SIGNING_KEY}"\n', f'signing_key = "{SIGNING_KEY}"\n{auth}\n')
    config.write_text(text)


def _connect_status(url: str, token: str, origin: str | None = None) -> int | str:
    async def attempt() -> int | str:
        headers = {"Origin": origin} if origin else None
        try:
            async with websockets.connect(f"{url}?token={token}", additional_headers=headers,
                                          open_timeout=5) as ws:
                first = await asyncio.wait_for(ws.recv(), 5)
                return "open" if "connection_established" in str(first) else str(first)
        except InvalidStatus as exc:
            return exc.response.status_code
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else "closed"

    return asyncio.run(attempt())


def _wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.process
def test_sighup_reloads_origins_and_signing_keys(tmp_path: Path, daemon_factory: Any) -> None:
    """SIGHUP applies new allowed_origins and a rotated signing key without a restart."""
    daemon: DaemonProcess = daemon_factory()
    config = daemon.config_path
    old_token = mint_token(SIGNING_KEY, 1, "alice")
    rotated = KeyRing(("k2", OTHER_KEY), {"k2": OTHER_KEY})
    new_token = mint_token(rotated, 1, "alice")
    assert _connect_status(daemon.url, new_token) == 4001
    # (the default admits the server's own origin only)
    assert _connect_status(daemon.url, old_token, origin="https://chat.example") == http.HTTPStatus.FORBIDDEN
    _reload_config(config, 'allowed_origins = ["https://chat.example"]',
                   f'[[auth.signing_keys]]\nid = "k2"\nkey = "{OTHER_KEY}"')
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert _wait_for(lambda: _connect_status(daemon.url, new_token) == "open")
    assert _connect_status(daemon.url, old_token) == "open"  # the legacy key still verifies
    refused = _connect_status(daemon.url, old_token, origin="https://evil.example")
    assert refused == http.HTTPStatus.FORBIDDEN
    assert _connect_status(daemon.url, old_token, origin="https://chat.example") == "open"
    assert daemon.proc.poll() is None


@pytest.mark.process
def test_sighup_with_a_broken_config_keeps_serving(tmp_path: Path, daemon_factory: Any) -> None:
    """A config that fails validation on reload is logged and ignored; the server keeps running."""
    daemon: DaemonProcess = daemon_factory()
    config = daemon.config_path
    config.write_text(config.read_text() + "\n[bogus]\nx = 1\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert daemon.proc.poll() is None
    assert _connect_status(daemon.url, mint_token(SIGNING_KEY, 1, "alice")) == "open"


@pytest.mark.asyncio
async def test_token_kid_selects_the_named_key(tmp_path: Path) -> None:
    """A token naming an unknown kid is refused even when its signature matches another key."""
    ring = KeyRing(("new", OTHER_KEY), {"old": SIGNING_KEY, "new": OTHER_KEY})
    running = await start_server(make_config(tmp_path))
    running.server.keyring = ring
    running.server.chat.keyring = ring
    try:
        by_new = mint_token(ring, 1, "alice")
        assert jwt.get_unverified_header(by_new)["kid"] == "new"
        wrong_kid = jwt.encode({"sub": "1", "name": "alice", "exp": int(time.time()) + 60}, OTHER_KEY,
                               algorithm="HS256", headers={"kid": "old"})
        async with websockets.connect(f"{running.url}?token={by_new}") as ws:
            assert "connection_established" in str(await asyncio.wait_for(ws.recv(), 5))
        async with websockets.connect(f"{running.url}?token={wrong_kid}") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001
    finally:
        await running.server.stop()


@pytest.mark.process
def test_cli_token_signs_with_the_newest_named_key(tmp_path: Path) -> None:
    """`unichatd token` signs with the last [[auth.signing_keys]] entry and names it as kid."""
    (tmp_path / "k1.key").write_text("a" * 40)
    config = tmp_path / "unichatd.toml"
    config.write_text(
        '[auth]\n[[auth.signing_keys]]\nid = "k1"\nkey_file = "k1.key"\n'
        f'[[auth.signing_keys]]\nid = "k2"\nkey = "{OTHER_KEY}"\n'
    )
    completed = run_cli("token", "5", "--name", "eve", "--config", str(config), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    token = completed.stdout.strip()
    assert jwt.get_unverified_header(token)["kid"] == "k2"
    assert jwt.decode(token, OTHER_KEY, algorithms=["HS256"])["sub"] == "5"


@pytest.mark.process
def test_signing_keys_config_errors_name_the_entry(tmp_path: Path) -> None:
    """A named key without id, or with both key and key_file, exits 2 naming the entry."""
    config = tmp_path / "unichatd.toml"
    config.write_text(f'[auth]\n[[auth.signing_keys]]\nkey = "{OTHER_KEY}"\n')
    completed = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert completed.returncode == 2
    assert "auth.signing_keys[0].id" in completed.stderr
    config.write_text(f'[auth]\n[[auth.signing_keys]]\nid = "a"\nkey = "{OTHER_KEY}"\nkey_file = "x"\n')
    completed = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert completed.returncode == 2
    assert "auth.signing_keys[0]" in completed.stderr


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


@pytest.mark.asyncio
async def test_metrics_histograms_and_counters_follow_traffic(tmp_path: Path) -> None:
    """After a message, /metrics shows it stored and delivered, and the write-latency histogram counts."""
    running = await start_server(make_config(tmp_path))
    try:
        room = await running.create_room("ops", [1, 2])
        reader, writer = await running.connect(1), await running.connect(2)
        await reader.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        await writer.request({"type": "send_message", "room_id": room, "content": "x"}, "message_ack")
        await reader.recv_type("new_message")
        status, body = await asyncio.to_thread(_get, f"{running.http_url}/metrics")
        await reader.close()
        await writer.close()
    finally:
        await running.server.stop()
    assert status == 200
    lines = dict(line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))
    assert float(lines["unichatd_messages_stored_total"]) == 1
    assert float(lines["unichatd_messages_delivered_total"]) == 1
    assert float(lines["unichatd_subscriptions"]) == 1
    assert float(lines["unichatd_db_write_seconds_count"]) >= 1
    assert 'unichatd_db_write_batch_size_bucket{le="+Inf"}' in lines
    assert "unichatd_event_loop_lag_seconds_count" in lines


@pytest.mark.asyncio
async def test_metrics_token_is_required_when_configured(tmp_path: Path) -> None:
    """With server.metrics_token set, /metrics answers 401 without the bearer token and 200 with it."""
    running = await start_server(make_config(tmp_path, server={"metrics_token": "s3cret",
                                                               "metrics_loopback_only": True}))
    try:
        url = f"{running.http_url}/metrics"
        denied, _ = await asyncio.to_thread(_get, url)
        wrong, _ = await asyncio.to_thread(_get, url, {"Authorization": "Bearer nope"})
        allowed, body = await asyncio.to_thread(_get, url, {"Authorization": "Bearer s3cret"})
        health, _ = await asyncio.to_thread(_get, f"{running.http_url}/healthz")
    finally:
        await running.server.stop()
    assert (denied, wrong, allowed, health) == (401, 401, 200, 200)
    assert "unichatd_connections" in body


@pytest.mark.asyncio
async def test_help_lists_every_request_type_with_its_fields(tmp_path: Path) -> None:
    """`help` answers with every request type the server parses, its fields and its reply."""
    from unichatd.protocol import REQUEST_TYPES

    running = await start_server(make_config(tmp_path))
    try:
        client = await running.connect(1)
        reply = await client.request({"type": "help", "request_id": "h"}, "help")
        await client.close()
    finally:
        await running.server.stop()
    assert reply["request_id"] == "h"
    assert set(reply["requests"]) == set(REQUEST_TYPES)
    assert reply["requests"]["send_message"]["fields"]["content"].startswith("string")


@pytest.mark.asyncio
async def test_whoami_tells_the_user_and_subscriptions(tmp_path: Path) -> None:
    """`whoami` answers with the token's user and the connection's subscriptions."""
    running = await start_server(make_config(tmp_path))
    try:
        room = await running.create_room("ops", [7])
        client = await running.connect(7, "grace")
        await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
        reply = await client.request({"type": "whoami"}, "whoami")
        await client.close()
    finally:
        await running.server.stop()
    assert (reply["user_id"], reply["username"], reply["subscriptions"]) == (7, "grace", [room])
    assert reply["expires_at"].endswith("Z")
