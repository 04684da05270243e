"""Protocol §6.3 over real sockets and real files: uploads in binary frames, attachments,
downloads with their access rule and headers, abandoned uploads, limits and quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from tests.conftest import Client, RunningServer, free_port, make_config, run_cli, write_config
from tests.test_lifecycle import answer, error_of
from unichatd.store import AdminStore

LIMITS = {"messages_per_second": 10_000, "message_burst": 10_000, "max_file_bytes": 300_000,
          "upload_bytes_per_day": 1_000_000}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f80f0000010101005d0b7f7a0000000049454e44ae426082")


@pytest_asyncio.fixture
async def chat(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = RunningServer(make_config(tmp_path, limits=LIMITS, server={"host": "127.0.0.1", "port": 0,
                                                                         "max_message_bytes": 65536}),
                            name_format="{}")
    try:
        yield running
    finally:
        await running.close()


async def upload(client: Client, data: bytes, name: str = "notes.txt", content_type: str = "text/plain",
                 *, size: int | None = None, chunk: int = 60_000) -> dict[str, Any]:
    """Upload ``data``; returns the reply to upload_done (file_stored, or an error)."""
    ready = await answer(client, {"type": "upload_file", "name": name, "size": len(data) if size is None else size,
                                  "content_type": content_type})
    assert ready["type"] == "upload_ready", ready
    for start in range(0, len(data), chunk):
        await client.send(data[start:start + chunk])
    return await answer(client, {"type": "upload_done", "upload_id": ready["upload_id"]})


def download(chat: RunningServer, path: str, token: str | None, *, cookie: bool = False,
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", chat.server.port, timeout=5)
    headers = {}
    if token is not None:
        headers["Cookie" if cookie else "Authorization"] = f"unichat_token={token}" if cookie else f"Bearer {token}"
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def get(chat: RunningServer, path: str, token: str | None, **options: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(download, chat, path, token, **options)


def files_on_disk(chat: RunningServer) -> list[str]:
    directory = chat.config.files_path
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def file_rows(chat: RunningServer) -> int:
    with contextlib.closing(sqlite3.connect(chat.config.database_path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM files").fetchone()[0])


async def team(chat: RunningServer) -> tuple[int, Client, Client, Client]:
    room = await chat.create_room("team", [1, 2])
    alice, bob, carol = (await chat.connect(1, "alice"), await chat.connect(2, "bob"),
                         await chat.connect(3, "carol"))
    for client in (alice, bob):
        await client.request({"type": "subscribe_room", "room_id": room}, "subscribed")
    return room, alice, bob, carol


@pytest.mark.asyncio
async def test_upload_attach_and_download_by_participants(chat: RunningServer) -> None:
    room, alice, bob, carol = await team(chat)
    data = os.urandom(150_000)
    stored = await upload(alice, data, "report 1.bin", "application/pdf")
    assert stored["type"] == "file_stored", stored
    file = stored["file"]
    assert file["name"] == "report 1.bin"
    assert file["size"] == 150_000
    assert file["content_type"] == "application/pdf"
    assert file["url"] == f"/files/{file['id']}/report%201.bin"
    # before it is posted, only its uploader may download it
    assert (await get(chat, file["url"], chat.token(1, "alice")))[0] == 200
    assert (await get(chat, file["url"], chat.token(2, "bob")))[0] == 404
    ack = await answer(alice, {"type": "send_message", "room_id": room, "content": "", "attachments": [file["id"]]})
    assert ack["type"] == "message_ack"
    assert ack["message"]["attachments"] == [file]
    broadcast = await bob.recv_type("new_message")
    assert broadcast["message"]["attachments"] == [file]
    status, headers, body = await get(chat, file["url"], chat.token(2, "bob"), cookie=True)
    assert status == 200
    assert body == data
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-disposition"].startswith("attachment;")
    assert "report%201.bin" in headers["content-disposition"]
    assert headers["content-type"] == "application/octet-stream"
    head = await get(chat, file["url"], chat.token(2, "bob"), method="HEAD")
    assert head[0] == 200
    assert head[2] == b""
    assert head[1]["content-length"] == "150000"
    history = await answer(bob, {"type": "get_history", "room_id": room})
    assert history["messages"][-1]["attachments"] == [file]
    # carol has a valid token but no room with the file: the same 404 as for nothing at all
    denied = await get(chat, file["url"], chat.token(3, "carol"))
    for other in (await get(chat, file["url"], None), await get(chat, "/files/999999/x", chat.token(1, "alice")),
                  await get(chat, f"/files/{file['id']}/other-name", chat.token(1, "alice")),
                  await get(chat, file["url"], "not-a-token"), await get(chat, "/files/abc/x", chat.token(1))):
        assert (other[0], other[2]) == (denied[0], denied[2]) == (404, denied[2])
    assert b"Traceback" not in denied[2]


@pytest.mark.asyncio
async def test_images_inline_others_attachment(chat: RunningServer) -> None:
    room, alice, bob, _ = await team(chat)
    image = (await upload(alice, PNG, "dot.png", "image/png"))["file"]
    page = (await upload(alice, b"<script>alert(1)</script>", "page.html", "text/html"))["file"]
    svg = (await upload(alice, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", "image/svg+xml"))["file"]
    await answer(alice, {"type": "send_message", "room_id": room, "content": "look",
                         "attachments": [image["id"], page["id"], svg["id"]]})
    status, headers, body = await get(chat, image["url"], chat.token(2, "bob"))
    assert status == 200
    assert body == PNG
    assert headers["content-type"] == "image/png"
    assert headers["content-disposition"].startswith("inline;")
    for file in (page, svg):
        status, headers, _ = await get(chat, file["url"], chat.token(2, "bob"))
        assert status == 200
        assert headers["content-disposition"].startswith("attachment;")
        assert headers["content-type"] == "application/octet-stream"
        assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.asyncio
async def test_upload_refusals_leave_nothing(chat: RunningServer) -> None:
    room, alice, _, carol = await team(chat)
    names = ["../x", "a/b", "nul\x00l", ".", "..", "", "n" * 256]
    for name in names:
        refusal = await error_of(alice, {"type": "upload_file", "name": name, "size": 3})
        assert refusal["code"] == "invalid_message", name
    longest = await answer(alice, {"type": "upload_file", "name": "n" * 255, "size": 0})
    assert (await error_of(alice, {"type": "upload_done", "upload_id": "nothing-like-it"}))["code"] == \
        "invalid_message"
    assert (await answer(alice, {"type": "upload_done", "upload_id": longest["upload_id"]}))["type"] == "file_stored"
    # oversize
    big = await error_of(carol, {"type": "upload_file", "name": "big.bin", "size": 300_001})
    assert big["code"] == "invalid_message"
    assert "300000" in big["message"]
    # size mismatch: fewer bytes, and more bytes than announced
    short = await upload(carol, b"abc", size=4)
    assert short["type"] == "error"
    assert short["code"] == "invalid_message"
    assert "mismatch" in short["message"]
    ready = await answer(carol, {"type": "upload_file", "name": "long.txt", "size": 2})
    await carol.send(b"abc")
    assert (await carol.recv_type("error"))["code"] == "invalid_message"
    assert (await error_of(carol, {"type": "upload_done", "upload_id": ready["upload_id"]}))["code"] == \
        "invalid_message"
    # a second upload in flight on the same connection
    first = await answer(carol, {"type": "upload_file", "name": "one.txt", "size": 5})
    assert (await error_of(carol, {"type": "upload_file", "name": "two.txt", "size": 5}))["code"] == "invalid_message"
    # unknown upload id
    assert (await error_of(carol, {"type": "upload_done", "upload_id": "f" * 32}))["code"] == "invalid_message"
    await carol.send(b"12345")
    assert (await answer(carol, {"type": "upload_done", "upload_id": first["upload_id"]}))["type"] == "file_stored"
    # binary frames outside an upload keep the v1 rule
    await carol.send(b"stray")
    assert (await carol.recv_type("error"))["code"] == "unsupported_frame"
    # attachments: someone else's file is refused like an unknown one
    mine = (await upload(alice, b"mine"))["file"]
    bob = await chat.connect(2, "bob")
    for attachments in ([mine["id"]], [424242]):
        refusal = await error_of(bob, {"type": "send_message", "room_id": room, "content": "x",
                                       "attachments": attachments})
        assert refusal["code"] == "not_found"
    own_room = await chat.create_room("carol's", [3])
    stranger = await error_of(carol, {"type": "send_message", "room_id": own_room, "content": "x",
                                      "attachments": [mine["id"]]})
    assert stranger["code"] == "not_found"
    for bad in ("1", [0], list(range(1, 12))):
        refusal = await error_of(alice, {"type": "send_message", "room_id": room, "content": "x", "attachments": bad})
        assert refusal["code"] == "invalid_message", bad
    empty = await error_of(alice, {"type": "send_message", "room_id": room, "content": " "})
    assert empty["code"] == "invalid_message"
    # only complete uploads left a file and a row
    await chat.server.chat.store.flush()
    assert len(files_on_disk(chat)) == file_rows(chat) == 3


@pytest.mark.asyncio
async def test_abandoned_uploads_leave_nothing(chat: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import unichatd.session

    monkeypatch.setattr(unichatd.session, "UPLOAD_IDLE_TIMEOUT", 0.5)
    _, alice, _, carol = await team(chat)
    await answer(alice, {"type": "upload_file", "name": "half.bin", "size": 1000})
    await alice.send(b"x" * 400)
    await chat.wait_for(lambda: len(files_on_disk(chat)) == 1)
    await alice.close()  # connection closed mid-upload
    await chat.wait_for(lambda: files_on_disk(chat) == [])
    stalled = await answer(carol, {"type": "upload_file", "name": "slow.bin", "size": 1000})
    await carol.send(b"x" * 10)
    notice = await carol.recv_type("error", timeout=5)
    assert notice["code"] == "invalid_message"
    assert "abandoned" in notice["message"]
    assert files_on_disk(chat) == []
    assert file_rows(chat) == 0
    assert (await error_of(carol, {"type": "upload_done", "upload_id": stalled["upload_id"]}))["code"] == \
        "invalid_message"


@pytest.mark.asyncio
async def test_daily_quota_counts_in_flight_uploads(chat: RunningServer) -> None:
    _, alice, _, _ = await team(chat)
    second = await chat.connect(1, "alice")
    for _ in range(3):
        assert (await upload(alice, os.urandom(250_000)))["type"] == "file_stored"
    in_flight = await answer(second, {"type": "upload_file", "name": "a.bin", "size": 200_000})
    assert in_flight["type"] == "upload_ready"
    refusal = await error_of(alice, {"type": "upload_file", "name": "b.bin", "size": 100_000})
    assert refusal["code"] == "rate_limited"
    assert refusal["retry_after_ms"] > 86_000_000
    assert "quota" in refusal["message"]
    bob = await chat.connect(2, "bob")  # the quota is per user
    assert (await answer(bob, {"type": "upload_file", "name": "b.bin", "size": 100_000}))["type"] == "upload_ready"


@pytest.mark.asyncio
async def test_delete_takes_the_attachment_away(chat: RunningServer) -> None:
    room, alice, _, _ = await team(chat)
    file = (await upload(alice, b"secret"))["file"]
    ack = await answer(alice, {"type": "send_message", "room_id": room, "content": "f", "attachments": [file["id"]]})
    assert (await get(chat, file["url"], chat.token(2, "bob")))[0] == 200
    await answer(alice, {"type": "delete_message", "room_id": room, "message_id": ack["message"]["id"]})
    assert (await get(chat, file["url"], chat.token(2, "bob")))[0] == 404
    assert (await get(chat, file["url"], chat.token(1, "alice")))[0] == 200
    history = await answer(alice, {"type": "get_history", "room_id": room})
    assert history["messages"][-1]["attachments"] == []


@pytest.mark.asyncio
async def test_leftover_temporary_files_are_swept_at_start(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits=LIMITS)
    config.files_path.mkdir()
    (config.files_path / ".upload-deadbeef").write_bytes(b"partial")
    running = RunningServer(config)
    try:
        await running.start()
        assert os.listdir(config.files_path) == []
    finally:
        await running.close()


@pytest.mark.process
def test_cli_send_file_backup_and_export_carry_the_files(tmp_path: Path) -> None:
    """`send --file` uploads and attaches; `backup` copies the files beside the database
    copy; `export` lists each message's file objects."""
    config = write_config(tmp_path, free_port())
    admin = AdminStore(tmp_path / "chat.db")
    room = admin.create_room("ops", "group", [1, 2])
    admin.close()
    attachment = tmp_path / "build log.txt"
    attachment.write_bytes(b"all green\n" * 1000)
    missing = run_cli("send", str(room), "--as", "1", "--file", str(tmp_path / "nope"), "--config", str(config),
                      cwd=tmp_path)
    assert missing.returncode == 2
    assert "--file" in missing.stderr
    server = subprocess.Popen([sys.executable, "-m", "unichatd", "serve", "--config", str(config)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if run_cli("status", "--config", str(config), cwd=tmp_path).returncode == 0:
                break
            time.sleep(0.1)
        sent = run_cli("send", str(room), "--as", "1", "--file", str(attachment), "--config", str(config),
                       cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        backup = run_cli("backup", str(tmp_path / "copy.db"), "--config", str(config), cwd=tmp_path)
        assert backup.returncode == 0, backup.stderr
    finally:
        server.terminate()
        server.communicate(timeout=15)
    exported = run_cli("export", str(room), "--config", str(config), cwd=tmp_path)
    [line] = exported.stdout.splitlines()
    message = orjson.loads(line)
    assert message["id"] == int(sent.stdout)
    assert message["content"] == ""
    [file] = message["attachments"]
    assert (file["name"], file["size"], file["content_type"]) == ("build log.txt", 10_000, "text/plain")
    copied = list((tmp_path / "copy.db-files").iterdir())
    assert [path.read_bytes() for path in copied] == [attachment.read_bytes()]


@pytest.mark.asyncio
async def test_uploads_started_at_once_share_the_quota(chat: RunningServer) -> None:
    _, alice, _, _ = await team(chat)
    others = [await chat.connect(1, "alice") for _ in range(4)]
    replies = await asyncio.gather(*(answer(client, {"type": "upload_file", "name": "x.bin", "size": 300_000})
                                     for client in (alice, *others)))
    kinds = sorted(reply["type"] for reply in replies)
    assert kinds == ["error", "error", "upload_ready", "upload_ready", "upload_ready"]  # 3 × 300,000 ≤ 1,000,000


@pytest.mark.asyncio
async def test_tiny_frames_in_an_upload_are_rate_limited(tmp_path: Path) -> None:
    running = RunningServer(make_config(tmp_path, limits={**LIMITS, "frames_per_second": 5, "frame_burst": 5}),
                            name_format="{}")
    try:
        await running.create_room("team", [1])
        alice = await running.connect(1, "alice")
        await answer(alice, {"type": "upload_file", "name": "x.bin", "size": 1000})
        for _ in range(8):
            await alice.send(b"")
        refusal = await alice.recv_type("error")
        assert refusal["code"] == "rate_limited"
        await alice.send(b"y" * 1000)  # a full frame is not limited: the upload completes
    finally:
        await running.close()
