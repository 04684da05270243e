"""Sign-in links and renewal (operations.md, "Sign-in links")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import RunningServer, make_config, run_cli, write_config
from unichatd.auth import verify_token


@pytest.mark.asyncio
async def test_renewal_mints_a_token_and_moves_the_expiry(tmp_path: Path) -> None:
    running = RunningServer(make_config(tmp_path, auth={"token_ttl": 600}))
    await running.start()
    try:
        client = await running.connect(3, first_name="Cy", ttl=3)
        first_expiry = running.server.chat.broker.sessions()[0].identity.expires_at
        renewed = await client.request({"type": "refresh_token", "request_id": 1}, "token_refreshed")
        identity = verify_token(renewed["token"], running.key)
        assert (identity.user_id, identity.username, identity.first_name) == (3, "user3", "Cy")
        assert 590 < identity.expires_at - time.time() <= 600
        assert renewed["expires_at"].endswith("Z")
        assert renewed["request_id"] == 1
        await asyncio.sleep(max(0.0, first_expiry + 0.5 - time.time()))  # past the first token's expiry: still open
        assert (await client.request({"type": "ping"}, "pong"))["type"] == "pong"
    finally:
        await running.close()


@pytest.mark.asyncio
async def test_renewal_is_refused_when_turned_off_or_revoked(tmp_path: Path) -> None:
    running = RunningServer(make_config(tmp_path, auth={"renewable": False}))
    await running.start()
    try:
        client = await running.connect(3)
        refused = await client.request({"type": "refresh_token"}, "token_refreshed")
        assert refused["type"] == "error"
        assert refused["code"] == "forbidden"
    finally:
        await running.close()
    running = RunningServer(make_config(tmp_path))
    await running.start()
    try:
        client = await running.connect(4)
        # A revocation after this connection opened (its close is under way) refuses renewal.
        running.server.chat.revocations[4] = int(time.time() * 1000) + 1000
        refused = await client.request({"type": "refresh_token"}, "token_refreshed")
        assert refused["type"] == "error"
        assert refused["code"] == "forbidden"
        assert "revoked" in refused["message"]
    finally:
        await running.close()


@pytest.mark.process
def test_invite_prints_a_link_to_the_web_client(tmp_path: Path) -> None:
    config = write_config(tmp_path, 8123, 'public_url = "https://chat.example.com"')
    done = run_cli("--config", str(config), "invite", "42", "--name", "john", "--first-name", "John",
                   "--ttl", "300", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip()
    assert link.startswith("https://chat.example.com/#token=")
    identity = verify_token(urlsplit(link).fragment.removeprefix("token="), "k" * 40)
    assert (identity.user_id, identity.username, identity.first_name) == (42, "john", "John")
    assert 290 < identity.expires_at - time.time() <= 300
    (tmp_path / "b").mkdir()
    plain = write_config(tmp_path / "b", 8124)
    done = run_cli("--config", str(plain), "invite", "7", "--name", "ann", cwd=tmp_path)
    assert done.stdout.startswith("http://127.0.0.1:8124/#token="), done.stderr
    assert run_cli("--config", str(plain), "invite", "7", cwd=tmp_path).returncode == 2
