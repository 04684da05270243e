"""Issue 9's items a person meets at the command line, the README and the service unit.

Every command runs as a real subprocess with a timeout; servers are real daemons on free ports.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import SIGNING_KEY, DaemonProcess, free_port, wait_listening
from tests.test_cli import ServeProcess, run_stop, scrubbed_env, send
from unichatd import protocol
from unichatd.auth import mint_token
from unichatd.store import AdminStore

TIMEOUT = 20.0
ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unichatd", *args], cwd=cwd, env=env or scrubbed_env(),
                          capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def plain_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    """A config with no pid_file (as `init` writes it)."""
    path = tmp_path / "unichatd.toml"
    path.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n{extra}\n[auth]\nsigning_key = "{SIGNING_KEY}"\n'
                    '[storage]\ndatabase = "chat.db"\n[log]\nlevel = "info"\n')
    return path


def serve(cwd: Path, port: int, *args: str) -> ServeProcess:
    """``unichatd serve ARGS`` in ``cwd``, once it listens on ``port``."""
    server = ServeProcess(cwd, *args, port=port)
    wait_listening(server.proc, port)
    return server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServeProcess, Path]]:
    """A server started with `--port` different from its config's port, and its config."""
    config = plain_config(tmp_path, free_port())
    port = free_port()
    server = serve(tmp_path, port, "--config", str(config), "--port", str(port))
    try:
        yield server, config
    finally:
        server.terminate()


# -- 9. every committed send is acked before the 1001 close ---------------------------------


def test_09_sigterm_acks_every_committed_send(tmp_path: Path, daemon_factory: Any) -> None:
    """SIGTERM during a burst of pipelined sends: every stored message was acknowledged, then 1001."""
    daemon: DaemonProcess = daemon_factory("[limits]\nmessages_per_second = 100000\nmessage_burst = 100000\n"
                                           "frames_per_second = 100000\nframe_burst = 100000\n")
    admin = AdminStore(tmp_path / "chat.db")
    try:
        room = admin.create_room("burst", "group", [1])
    finally:
        admin.close()
    token = mint_token(SIGNING_KEY, 1, "alice")
    acked: set[str] = set()
    with ws_connect(f"{daemon.url}?token={token}", open_timeout=5, close_timeout=5, max_queue=None) as ws:
        json.loads(ws.recv(timeout=5))
        for index in range(3000):
            ws.send(json.dumps({"type": "send_message", "room_id": room, "content": f"m{index}",
                                "client_msg_id": f"c{index}"}))
        first = json.loads(ws.recv(timeout=5))
        while first["type"] == "room_updated":  # (the new member's room list, any time: not a reply)
            first = json.loads(ws.recv(timeout=5))
        assert first["type"] == "message_ack", first
        acked.add(first["client_msg_id"])
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame["type"] == "message_ack":
                    acked.add(frame["client_msg_id"])
        except Exception:  # noqa: BLE001 - the close ends the loop
            pass
        assert ws.close_code == 1001
    assert daemon.proc.wait(15) == 0
    db = sqlite3.connect(tmp_path / "chat.db")
    stored = {row[0] for row in db.execute("SELECT client_msg_id FROM messages WHERE room_id = ?", (room,))}
    db.close()
    assert stored == acked, f"{len(stored - acked)} stored but never acked"


# -- 14. private backups --------------------------------------------------------------------------


def test_14_backup_is_private(tmp_path: Path) -> None:
    """A backup file is created 0600."""
    config = plain_config(tmp_path, 8000)
    assert cli("room", "create", "x", "--config", str(config), cwd=tmp_path).returncode == 0
    result = cli("backup", str(tmp_path / "copy.db"), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "copy.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "chat.db").stat().st_mode) == 0o600


# -- 15. stop works out of the box ----------------------------------------------------------------


def test_15_stop_works_after_the_quick_start(tmp_path: Path) -> None:
    """`unichatd stop` stops the server of the README's quick start (no config, no pid file)."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    server = ServeProcess(cwd)
    try:
        wait_listening(server.proc, server.port)
        stopper = subprocess.Popen([sys.executable, "-m", "unichatd", "stop"], cwd=cwd, env=scrubbed_env(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + TIMEOUT
        while stopper.poll() is None and time.monotonic() < deadline:
            server.proc.poll()  # reap our child so that `stop` sees it gone
            time.sleep(0.05)
        _, err = stopper.communicate(timeout=10)
        assert stopper.returncode == 0, err
        assert server.proc.wait(10) == 0
    finally:
        server.kill()
    again = cli("stop", cwd=cwd)
    assert again.returncode == 1
    assert "no server is running" in again.stderr


def test_15_stop_with_pid_file_still_works(tmp_path: Path, daemon_factory: Any) -> None:
    """With server.pid_file set, `stop` uses it, as before."""
    daemon: DaemonProcess = daemon_factory()
    config = daemon.config_path
    assert daemon.proc is not None
    code, _, err = run_stop(config, tmp_path, daemon.proc)
    assert code == 0, err


# -- 16. the running server's port, whatever the command line said -------------------------------


def test_16_status_and_send_find_a_server_started_with_port(served: tuple[ServeProcess, Path], tmp_path: Path) -> None:
    """After `serve --port P`, `status` and `send` reach P without being told."""
    server, config = served
    status = cli("status", "--config", str(config), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "ok"
    room = cli("room", "create", "ops", "--member", "42", "--config", str(config), cwd=tmp_path).stdout.strip()
    sent = cli("send", room, "--as", "42", "hello", "--config", str(config), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip().isdigit()


def test_16_status_takes_host_and_port(served: tuple[ServeProcess, Path], tmp_path: Path) -> None:
    """`status --port` asks that port; a port where nothing listens fails with exit 1."""
    server, config = served
    ok = cli("status", "--host", "127.0.0.1", "--port", str(server.port), "--config", str(config), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    nobody = cli("status", "--port", str(free_port()), "--config", str(config), cwd=tmp_path)
    assert nobody.returncode == 1
    assert "no server answers" in nobody.stderr


def test_16_sighup_keeps_command_line_port(served: tuple[ServeProcess, Path]) -> None:
    """SIGHUP after `serve --port` does not claim the port needs a restart."""
    server, _ = served
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    code, err = server.terminate()
    assert code == 0
    assert "config.reloaded" in err
    assert "reload_needs_restart" not in err


# -- 17. the README's bot example works as written ----------------------------------------------


def test_17_readme_bot_example_works_as_written(tmp_path: Path) -> None:
    """The README's first chat and bot commands, in order, end with `send` printing an id."""
    readme = (ROOT / "README.md").read_text()
    commands = [line.split("#")[0].strip() for line in readme.splitlines()
                if line.startswith("unichatd room ") or line.startswith("unichatd send 1 --as 42")]
    assert commands[:2] == ["unichatd room create general --member 1 --member 2", "unichatd room add 1 42"]
    port = free_port()
    config = plain_config(tmp_path, port)
    server = serve(tmp_path, port, "--config", str(config))
    try:
        for command in commands[:3]:
            argv = command.split()[1:]
            if argv[0] == "send":
                argv = [*argv[:4], "deploy of abc123 finished"]
            result = cli(*argv, "--config", str(config), cwd=tmp_path)
            assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.strip().isdigit()
    finally:
        server.terminate()


# -- 18. backups from cron ------------------------------------------------------------------------


def test_18_backup_into_a_directory_with_rotation(tmp_path: Path) -> None:
    """`backup DIR --keep 2` run three times leaves the two newest timestamped copies."""
    config = plain_config(tmp_path, 8000)
    cli("room", "create", "x", "--config", str(config), cwd=tmp_path)
    target = tmp_path / "backups"
    target.mkdir()
    written = []
    for _ in range(3):
        result = cli("backup", str(target), "--keep", "2", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        written.append(Path(result.stdout.strip()))
        time.sleep(0.01)
    assert all(re.fullmatch(r"unichatd-\d{8}T\d{6}Z(-\d+)?\.db", path.name) for path in written)
    assert sorted(target.iterdir()) == sorted(written[1:])
    assert sqlite3.connect(written[-1]).execute("SELECT COUNT(*) FROM rooms").fetchone()[0] == 1


def test_18_path_ending_in_slash_is_a_new_directory(tmp_path: Path) -> None:
    """`backup new/dir/` makes the directory and writes a timestamped copy into it."""
    config = plain_config(tmp_path, 8000)
    cli("room", "create", "x", "--config", str(config), cwd=tmp_path)
    result = cli("backup", f"{tmp_path}/new/dir/", "--keep", "1", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == tmp_path / "new" / "dir"


def test_18_keep_needs_a_directory(tmp_path: Path) -> None:
    """`--keep` with a file PATH is a usage error (exit 2)."""
    config = plain_config(tmp_path, 8000)
    result = cli("backup", str(tmp_path / "one.db"), "--keep", "2", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "--keep" in result.stderr


# -- 19. docs/protocol.md is the complete reference ---------------------------------------------


def test_19_protocol_reference_covers_every_frame_and_code() -> None:
    """docs/protocol.md names every request type, server frame, error code and close code."""
    reference = (ROOT / "docs" / "protocol.md").read_text()
    names = [*protocol.REQUEST_TYPES,
             "connection_established", "subscribed", "unsubscribed", "new_message", "message_ack", "typing",
             "message_read", "read_marked", "room_updated", "room_list", "history", "pong", "token_refreshed",
             "error", "help", "whoami",
             "invalid_json", "invalid_message", "unknown_type", "unsupported_frame", "access_denied", "not_found",
             "rate_limited", "internal_error", "client_msg_id", "request_id", "retry_after_ms", "truncated"]
    missing = [name for name in names if f"`{name}`" not in reference]
    assert not missing, f"docs/protocol.md does not mention {missing}"
    for code in ("1001", "1002", "1007", "1008", "1009", "1011", "4001"):
        assert f"`{code}`" in reference or f"**{code}**" in reference, code


def test_19_repository_points_at_its_own_reference() -> None:
    """Nothing a user reads points at a file outside the repository."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "unichatd").rglob("*.py")),
                 *sorted((ROOT / "bench").glob("*.py"))]:
        assert "../shared" not in path.read_text(), path


# -- 20. TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    import trustme

    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return cert, key, client


def test_20_native_tls_serves_wss_and_https(tmp_path: Path, certificate: tuple[Path, Path, ssl.SSLContext]) -> None:
    """With tls_cert and tls_key, the server speaks wss:// and https://; status and send follow."""
    cert, key, client = certificate
    port = free_port()
    config = plain_config(tmp_path, port, f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    server = serve(tmp_path, port, "--config", str(config))
    try:
        token = mint_token(SIGNING_KEY, 5, "tess")
        with ws_connect(f"wss://127.0.0.1:{port}/ws/chat/?token={token}", ssl=client, open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "connection_established"
            assert send(ws, {"type": "ping"}, "pong")["type"] == "pong"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError):
                with ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass  # (a client that does not trust the certificate is refused)
        status = cli("status", "--config", str(config), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        room = cli("room", "create", "tls", "--member", "5", "--config", str(config), cwd=tmp_path).stdout.strip()
        sent = cli("send", room, "--as", "5", "over tls", "--config", str(config), cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
    finally:
        server.terminate()


@pytest.mark.parametrize(("lines", "key"), [
    ('tls_cert = "missing.pem"\ntls_key = "missing.key"\n', "server.tls_cert"),
    ('tls_cert = "cert.pem"\n', "server.tls_key"),
    ('tls_cert = "cert.pem"\ntls_key = "cert.pem"\n', "server.tls_cert"),
])
def test_20_bad_tls_settings_exit_2(tmp_path: Path, certificate: tuple[Path, Path, ssl.SSLContext],
                                    lines: str, key: str) -> None:
    """check-config and serve refuse bad TLS settings with exit 2 naming the key."""
    config = plain_config(tmp_path, free_port(), lines)
    for command in (["check-config"], ["serve"]):
        result = cli(*command, "--config", str(config), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert key in result.stderr
        assert "Traceback" not in result.stderr


# -- 21. small things ------------------------------------------------------------------------------


def test_21_second_serve_on_the_same_database_is_refused(served: tuple[ServeProcess, Path], tmp_path: Path) -> None:
    """A second `serve` on the same SQLite database exits 1 naming the lock and the first server."""
    server, config = served
    result = cli("serve", "--config", str(config), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert f"process {server.proc.pid}" in result.stderr
    assert "chat.db.lock" in result.stderr
    assert "Traceback" not in result.stderr


def test_21_room_type_is_validated(tmp_path: Path) -> None:
    """`room create --type weird` exits 2 naming --type; a direct room needs exactly two members."""
    config = plain_config(tmp_path, 8000)
    weird = cli("room", "create", "x", "--type", "weird", "--config", str(config), cwd=tmp_path)
    assert weird.returncode == 2
    assert "--type" in weird.stderr
    assert "group" in weird.stderr
    lonely = cli("room", "create", "x", "--type", "direct", "--member", "1", "--config", str(config), cwd=tmp_path)
    assert lonely.returncode == 2
    assert "two members" in lonely.stderr


def test_21_init_header_does_not_call_the_key_a_default(tmp_path: Path) -> None:
    """init's header says the signing key was generated, not that every value is a default."""
    result = cli("init", "--config", str(tmp_path / "c.toml"), cwd=tmp_path)
    assert result.returncode == 0
    header = "".join((tmp_path / "c.toml").read_text().splitlines(keepends=True)[:3])
    assert "except auth.signing_key" in header


def test_21_unit_documentation_is_installed_by_the_readme() -> None:
    """The unit's Documentation= names a file that the README's install steps put there."""
    unit = (ROOT / "systemd" / "unichatd.service").read_text()
    documented = re.search(r"^Documentation=file://(\S+)$", unit, re.MULTILINE)
    assert documented is not None
    target = Path(documented.group(1))
    readme = (ROOT / "README.md").read_text()
    assert f"{target.parent}/" in readme
    assert "install -Dm644 README.md" in readme


def test_13_unwritable_pid_file_is_a_config_error(tmp_path: Path) -> None:
    """A pid file that cannot be written exits 2 naming server.pid_file, and frees the port."""
    port = free_port()
    config = plain_config(tmp_path, port, f'pid_file = "{tmp_path / "missing" / "unichatd.pid"}"\n')
    result = cli("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "server.pid_file" in result.stderr
    assert "cannot serve" not in result.stderr
    assert "Traceback" not in result.stderr
