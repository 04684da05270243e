"""The ``unichatd`` command line (operations.md "Command line", "Config file", "Install and first run").

Every command runs as a real subprocess with a timeout; servers are real daemons on free ports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.conftest import SIGNING_KEY, DaemonProcess, free_port, run_cli, wait_listening, write_config
from unichatd.store import AdminStore

TIMEOUT = 20.0
JWT_LINE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$")
CONSOLE_SCRIPT = Path(sys.executable).with_name("unichatd")


# -- helpers -------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, timeout=TIMEOUT)


def scrubbed_env(**extra: str) -> dict[str, str]:
    """The test's environment without UNICHATD_CONFIG, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "UNICHATD_CONFIG"}
    env.update(extra)
    return env


MODULE = (sys.executable, "-m", "unichatd")


def cli_env(*args: str, cwd: Path, env: dict[str, str],
            command: tuple[str, ...] = MODULE) -> subprocess.CompletedProcess[str]:
    """Run the CLI with exactly ``env`` (so the config lookup can be controlled)."""
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def key_config(tmp_path: Path, key: str = SIGNING_KEY, name: str = "unichatd.toml", extra: str = "") -> Path:
    """A minimal config with an inline key and a database next to it."""
    return write_toml(tmp_path / name, f'[auth]\nsigning_key = "{key}"\n{extra}\n'
                                       '[storage]\ndatabase = "chat.db"\n')


def rooms(db: Path) -> dict[int, Any]:
    admin = AdminStore(db)
    try:
        return {room.id: room for room in admin.list_rooms()}
    finally:
        admin.close()


def decode(token: str, key: str = SIGNING_KEY) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["HS256"])
    return claims


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def hello(url: str, token: str) -> dict[str, Any]:
    """Connect with ``token`` and return the first frame."""
    with ws_connect(f"{url}?token={token}", open_timeout=5, close_timeout=5) as ws:
        frame: dict[str, Any] = json.loads(ws.recv(timeout=5))
    return frame


def send(ws: ClientConnection, frame: dict[str, Any], reply: str) -> dict[str, Any]:
    ws.send(json.dumps(frame))
    deadline = time.monotonic() + 5
    while True:
        got: dict[str, Any] = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if got["type"] in (reply, "error"):
            return got


def run_stop(config: Path, cwd: Path, daemon: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    """Run `unichatd stop`, reaping ``daemon`` (our child) meanwhile so that `stop` can see it exit."""
    stopper = subprocess.Popen(
        [sys.executable, "-m", "unichatd", "stop", "--config", str(config)],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while stopper.poll() is None and time.monotonic() < deadline:
            daemon.poll()
            time.sleep(0.05)
    finally:
        if stopper.poll() is None:
            stopper.kill()
        out, err = stopper.communicate(timeout=10)
    return stopper.returncode, out, err


class ServeProcess:
    """``unichatd serve ARGS`` in ``cwd`` with no config from the environment, listening on
    ``port`` (by default a free port, passed as ``--port``)."""

    def __init__(self, cwd: Path, *args: str, port: int | None = None) -> None:
        if port is None:
            port = free_port()
            args = ("--port", str(port), *args)
        self.cwd = cwd
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unichatd", "serve", *args],
            cwd=cwd, env=scrubbed_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def terminate(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=15)
        finally:
            self.kill()
        return self.proc.returncode, err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[ServeProcess]:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    server = ServeProcess(cwd)
    try:
        wait_listening(server.proc, server.port)
        yield server
    finally:
        server.kill()


# -- init ------------------------------------------------------------------------------


def test_init_prints_path_written(tmp_path: Path) -> None:
    """`init --config PATH` writes PATH and prints that path alone."""
    target = tmp_path / "conf" / "chat.toml"
    target.parent.mkdir()
    result = cli("init", "--config", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target)
    assert target.is_file()


def test_init_without_config_writes_cwd_file(tmp_path: Path) -> None:
    """`init` with no --config writes ./unichatd.toml."""
    result = cli_env("init", cwd=tmp_path, env=scrubbed_env())
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "unichatd.toml").is_file()
    assert Path(result.stdout.strip()).name == "unichatd.toml"


def test_init_file_mode_0600(tmp_path: Path) -> None:
    """The config written by `init` has mode 0600."""
    target = tmp_path / "unichatd.toml"
    assert cli("init", "--config", str(target), cwd=tmp_path).returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_init_key_is_at_least_32_bytes(tmp_path: Path) -> None:
    """The config written by `init` holds a signing key of at least 32 bytes."""
    target = tmp_path / "unichatd.toml"
    assert cli("init", "--config", str(target), cwd=tmp_path).returncode == 0
    key = tomllib.loads(target.read_text())["auth"]["signing_key"]
    assert len(key.encode()) >= 32


def test_init_key_is_fresh(tmp_path: Path) -> None:
    """Two `init` runs write two different signing keys."""
    keys = []
    for name in ("a.toml", "b.toml"):
        assert cli("init", "--config", str(tmp_path / name), cwd=tmp_path).returncode == 0
        keys.append(tomllib.loads((tmp_path / name).read_text())["auth"]["signing_key"])
    assert keys[0] != keys[1]


def test_init_config_is_commented(tmp_path: Path) -> None:
    """The config written by `init` carries comments."""
    target = tmp_path / "unichatd.toml"
    assert cli("init", "--config", str(target), cwd=tmp_path).returncode == 0
    assert any(line.lstrip().startswith("#") for line in target.read_text().splitlines())


def test_init_config_is_valid(tmp_path: Path) -> None:
    """The config written by `init` passes `check-config` and can mint a token."""
    target = tmp_path / "unichatd.toml"
    assert cli("init", "--config", str(target), cwd=tmp_path).returncode == 0
    assert cli("check-config", "--config", str(target), cwd=tmp_path).returncode == 0
    key = tomllib.loads(target.read_text())["auth"]["signing_key"]
    token = cli("token", "5", "--name", "eve", "--config", str(target), cwd=tmp_path).stdout.strip()
    assert decode(token, key)["sub"] == "5"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    """`init` on an existing file fails, names the file, and leaves it untouched."""
    target = tmp_path / "unichatd.toml"
    target.write_text("# mine\n")
    result = cli("init", "--config", str(target), cwd=tmp_path)
    assert result.returncode != 0
    assert str(target) in result.stderr
    assert result.stdout == ""
    assert target.read_text() == "# mine\n"


# -- token -----------------------------------------------------------------------------


def test_token_prints_only_a_jwt(tmp_path: Path) -> None:
    """`token` prints the token alone on stdout."""
    result = cli("token", "42", "--name", "john", "--config", str(key_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert JWT_LINE.match(result.stdout), result.stdout


def test_token_verifies_with_configured_key(tmp_path: Path) -> None:
    """The token is an HS256 JWT with the configured key, sub as a decimal string and name."""
    result = cli("token", "42", "--name", "john", "--config", str(key_config(tmp_path)), cwd=tmp_path)
    token = result.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = decode(token)
    assert claims["sub"] == "42"
    assert claims["name"] == "john"


def test_token_does_not_verify_with_other_key(tmp_path: Path) -> None:
    """The token is signed with the configured key, not some other one."""
    config = key_config(tmp_path, key="z" * 48)
    token = cli("token", "42", "--name", "john", "--config", str(config), cwd=tmp_path).stdout.strip()
    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, SIGNING_KEY)
    assert decode(token, "z" * 48)["sub"] == "42"


def test_token_first_name(tmp_path: Path) -> None:
    """`--first-name` becomes the `first_name` claim."""
    result = cli("token", "42", "--name", "john", "--first-name", "John",
                 "--config", str(key_config(tmp_path)), cwd=tmp_path)
    assert decode(result.stdout.strip())["first_name"] == "John"


def test_token_ttl_option(tmp_path: Path) -> None:
    """`--ttl SECONDS` sets exp that many seconds ahead."""
    before = time.time()
    result = cli("token", "42", "--name", "john", "--ttl", "120", "--config", str(key_config(tmp_path)),
                 cwd=tmp_path)
    exp = decode(result.stdout.strip())["exp"]
    assert before + 120 - 2 <= exp <= time.time() + 120 + 2


def test_token_ttl_default_from_config(tmp_path: Path) -> None:
    """Without --ttl, exp is `auth.token_ttl` seconds ahead."""
    config = key_config(tmp_path, extra="token_ttl = 300")
    before = time.time()
    result = cli("token", "42", "--name", "john", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    exp = decode(result.stdout.strip())["exp"]
    assert before + 300 - 2 <= exp <= time.time() + 300 + 2


def test_token_from_key_file(tmp_path: Path) -> None:
    """With `auth.signing_key_file`, the token is signed with that file's key."""
    (tmp_path / "secret.key").write_text("f" * 64 + "\n")
    config = write_toml(tmp_path / "unichatd.toml", '[auth]\nsigning_key_file = "secret.key"\n')
    result = cli("token", "3", "--name", "kim", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert decode(result.stdout.strip(), "f" * 64)["sub"] == "3"


def test_token_accepted_by_running_server(tmp_path: Path, daemon_factory: Any) -> None:
    """A token minted by the CLI opens a session on a server with the same config."""
    daemon: DaemonProcess = daemon_factory()
    token = cli("token", "77", "--name", "zoe", "--config", str(daemon.config_path),
                cwd=tmp_path).stdout.strip()
    frame = hello(daemon.url, token)
    assert frame["type"] == "connection_established"
    assert (frame["user_id"], frame["username"]) == (77, "zoe")


# -- room ------------------------------------------------------------------------------


def test_room_create_prints_only_the_id(tmp_path: Path) -> None:
    """`room create` prints the new room's id alone, and the next room gets the next id."""
    config = str(key_config(tmp_path))
    first = cli("room", "create", "general", "--config", config, cwd=tmp_path)
    second = cli("room", "create", "random", "--config", config, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"\d+\n", first.stdout), first.stdout
    assert re.fullmatch(r"\d+\n", second.stdout), second.stdout
    assert int(second.stdout) > int(first.stdout)
    assert set(rooms(tmp_path / "chat.db")) == {int(first.stdout), int(second.stdout)}


def test_room_create_members(tmp_path: Path) -> None:
    """`room create --member A --member B` makes A and B its participants."""
    config = str(key_config(tmp_path))
    result = cli("room", "create", "general", "--member", "1", "--member", "2", "--config", config,
                 cwd=tmp_path)
    room = rooms(tmp_path / "chat.db")[int(result.stdout)]
    assert sorted(uid for uid, _ in room.participants) == [1, 2]
    assert room.name == "general"


def test_room_create_default_type_is_group(tmp_path: Path) -> None:
    """Without --type a room's type is `group`."""
    result = cli("room", "create", "general", "--config", str(key_config(tmp_path)), cwd=tmp_path)
    assert rooms(tmp_path / "chat.db")[int(result.stdout)].room_type == "group"


def test_room_create_type(tmp_path: Path) -> None:
    """`--type TYPE` sets the room's type."""
    result = cli("room", "create", "dm", "--type", "direct", "--member", "1", "--member", "2",
                 "--config", str(key_config(tmp_path)), cwd=tmp_path)
    assert rooms(tmp_path / "chat.db")[int(result.stdout)].room_type == "direct"


def test_room_add(tmp_path: Path) -> None:
    """`room add ROOM USER...` adds every user named, printing nothing."""
    config = str(key_config(tmp_path))
    created = cli("room", "create", "general", "--member", "1", "--config", config, cwd=tmp_path)
    room_id = created.stdout.strip()
    result = cli("room", "add", room_id, "2", "3", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert sorted(uid for uid, _ in rooms(tmp_path / "chat.db")[int(room_id)].participants) == [1, 2, 3]


def test_room_remove(tmp_path: Path) -> None:
    """`room remove ROOM USER...` removes every user named, printing nothing."""
    config = str(key_config(tmp_path))
    room_id = cli("room", "create", "general", "--member", "1", "--member", "2", "--member", "3",
                  "--config", config, cwd=tmp_path).stdout.strip()
    result = cli("room", "remove", room_id, "1", "3", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert [uid for uid, _ in rooms(tmp_path / "chat.db")[int(room_id)].participants] == [2]


@pytest.mark.parametrize("action", ["add", "remove"])
def test_room_change_on_missing_room_exits_1(tmp_path: Path, action: str) -> None:
    """`room add`/`room remove` on a room that does not exist exit 1 with a one-line message."""
    result = cli("room", action, "999", "1", "--config", str(key_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 1
    assert "999" in one_line(result.stderr)
    assert result.stdout == ""


def test_room_list_shows_rooms_and_participants(tmp_path: Path) -> None:
    """`room list` shows each room's name and its participants."""
    config = str(key_config(tmp_path))
    cli("room", "create", "general", "--member", "11", "--member", "12", "--config", config, cwd=tmp_path)
    cli("room", "create", "random", "--member", "13", "--config", config, cwd=tmp_path)
    result = cli("room", "list", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    general = next(line for line in lines if "general" in line)
    random = next(line for line in lines if "random" in line)
    assert "11" in general
    assert "12" in general
    assert "13" not in general
    assert "13" in random
    assert "11" not in random


def test_room_list_shows_message_counts_and_usernames(tmp_path: Path, daemon_factory: Any) -> None:
    """`room list` shows the number of messages stored in each room and the users' names."""
    config = write_config(tmp_path, free_port())
    created = cli("room", "create", "busy", "--member", "21", "--config", str(config), cwd=tmp_path)
    busy = created.stdout.strip()
    cli("room", "create", "quiet", "--member", "21", "--config", str(config), cwd=tmp_path)
    daemon: DaemonProcess = daemon_factory()
    token = cli("token", "21", "--name", "alice", "--config", str(daemon.config_path),
                cwd=tmp_path).stdout.strip()
    with ws_connect(f"{daemon.url}?token={token}", open_timeout=5, close_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "connection_established"
        for text in ("a", "b", "c", "d", "e"):
            ack = send(ws, {"type": "send_message", "room_id": int(busy), "content": text}, "message_ack")
            assert ack["type"] == "message_ack", ack
    result = cli("room", "list", "--config", str(daemon.config_path), cwd=tmp_path)
    lines = result.stdout.splitlines()
    busy_line = next(line for line in lines if "busy" in line)
    quiet_line = next(line for line in lines if "quiet" in line)
    assert re.search(r"\b5\b", busy_line), busy_line
    assert re.search(r"\b0\b", quiet_line), quiet_line
    assert "alice" in busy_line


# -- --config position -----------------------------------------------------------------


@pytest.mark.parametrize("position", ["before", "after"])
def test_config_option_before_or_after_subcommand(tmp_path: Path, position: str) -> None:
    """`--config PATH` works before the subcommand and after it."""
    config = key_config(tmp_path / "elsewhere")
    option = ["--config", str(config)]
    args = [*option, "room", "create", "general"] if position == "before" else ["room", "create",
                                                                                "general", *option]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) in rooms(tmp_path / "elsewhere" / "chat.db")
    assert not (tmp_path / "chat.db").exists()
    assert not (tmp_path / "unichatd.db").exists()


@pytest.mark.parametrize("position", ["before", "after"])
def test_config_option_position_for_token(tmp_path: Path, position: str) -> None:
    """`token` honours --config given before or after the subcommand."""
    config = key_config(tmp_path, key="q" * 40)
    option = ["--config", str(config)]
    args = [*option, "token", "1", "--name", "a"] if position == "before" else ["token", "1", "--name",
                                                                               "a", *option]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert decode(result.stdout.strip(), "q" * 40)["sub"] == "1"


def test_database_relative_to_config_file(tmp_path: Path) -> None:
    """A relative `storage.database` is resolved against the config file's directory, not the cwd."""
    config = key_config(tmp_path / "etc")
    (tmp_path / "work").mkdir()
    assert cli("room", "create", "general", "--config", str(config), cwd=tmp_path / "work").returncode == 0
    assert (tmp_path / "etc" / "chat.db").exists()
    assert not (tmp_path / "work" / "chat.db").exists()


# -- config lookup ---------------------------------------------------------------------


def test_config_from_environment_variable(tmp_path: Path) -> None:
    """Without --config, `$UNICHATD_CONFIG` names the config."""
    config = key_config(tmp_path / "env", key="e" * 40)
    result = cli_env("token", "1", "--name", "a", cwd=tmp_path, env=scrubbed_env(UNICHATD_CONFIG=str(config)))
    assert result.returncode == 0, result.stderr
    assert decode(result.stdout.strip(), "e" * 40)["sub"] == "1"


def test_config_from_current_directory(tmp_path: Path) -> None:
    """Without --config or $UNICHATD_CONFIG, ./unichatd.toml is used."""
    key_config(tmp_path, key="c" * 40)
    result = cli_env("token", "1", "--name", "a", cwd=tmp_path, env=scrubbed_env())
    assert result.returncode == 0, result.stderr
    assert decode(result.stdout.strip(), "c" * 40)["sub"] == "1"


def test_environment_variable_beats_current_directory(tmp_path: Path) -> None:
    """`$UNICHATD_CONFIG` is looked up before ./unichatd.toml."""
    key_config(tmp_path, key="c" * 40)
    config = key_config(tmp_path / "env", key="e" * 40)
    result = cli_env("token", "1", "--name", "a", cwd=tmp_path, env=scrubbed_env(UNICHATD_CONFIG=str(config)))
    assert decode(result.stdout.strip(), "e" * 40)["sub"] == "1"


def test_config_option_beats_environment_variable(tmp_path: Path) -> None:
    """`--config` is used over `$UNICHATD_CONFIG`."""
    env_config = key_config(tmp_path / "env", key="e" * 40)
    config = key_config(tmp_path / "opt", key="o" * 40)
    result = cli_env("token", "1", "--name", "a", "--config", str(config), cwd=tmp_path,
                     env=scrubbed_env(UNICHATD_CONFIG=str(env_config)))
    assert decode(result.stdout.strip(), "o" * 40)["sub"] == "1"


# -- config errors ---------------------------------------------------------------------


CONFIG_ERRORS = {
    "unknown_key": ('[server]\nbogus_key = 1\n', "server.bogus_key"),
    "unknown_section": ('[bogus_section]\nx = 1\n', "bogus_section"),
    "port_wrong_type": ('[server]\nport = "8000"\n', "server.port"),
    "origins_wrong_type": ('[server]\nallowed_origins = "https://a.example"\n', "server.allowed_origins"),
    "level_wrong_type": ('[log]\nlevel = 3\n', "log.level"),
    "ttl_wrong_type": ('[auth]\nsigning_key = "' + SIGNING_KEY + '"\ntoken_ttl = 1.5\n', "auth.token_ttl"),
    "short_key": ('[auth]\nsigning_key = "short-key"\n', "auth.signing_key"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_error_exits_2_naming_file_and_key(tmp_path: Path, case: str) -> None:
    """A bad config exits 2 with one line on stderr naming the file and the key."""
    text, key = CONFIG_ERRORS[case]
    config = write_toml(tmp_path / "bad.toml", text)
    result = cli("room", "list", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(config) in line
    assert key in line
    assert result.stdout == ""


def test_short_key_in_key_file_exits_2(tmp_path: Path) -> None:
    """A key file holding fewer than 32 bytes exits 2 naming the config and the key setting."""
    (tmp_path / "secret.key").write_text("tooshort\n")
    config = write_toml(tmp_path / "unichatd.toml", '[auth]\nsigning_key_file = "secret.key"\n')
    result = cli("token", "1", "--name", "a", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(config) in line
    assert "auth.signing_key_file" in line
    assert result.stdout == ""


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """`--config` naming a file that does not exist exits 2 naming the file."""
    missing = tmp_path / "nope.toml"
    result = cli("room", "list", "--config", str(missing), cwd=tmp_path)
    assert result.returncode == 2
    assert str(missing) in one_line(result.stderr)


def test_invalid_toml_exits_2(tmp_path: Path) -> None:
    """A file that is not TOML exits 2 with one line naming the file."""
    config = write_toml(tmp_path / "bad.toml", "[server\nport = \n")
    result = cli("room", "list", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert str(config) in one_line(result.stderr)


# -- usage errors ----------------------------------------------------------------------


USAGE_ERRORS = {
    "no_command": (),
    "unknown_command": ("frobnicate",),
    "token_without_name": ("token", "1"),
    "token_non_numeric_user": ("token", "abc", "--name", "a"),
    "token_bad_ttl": ("token", "1", "--name", "a", "--ttl", "soon"),
    "room_without_action": ("room",),
    "room_add_without_users": ("room", "add", "1"),
    "room_create_bad_member": ("room", "create", "x", "--member", "bob"),
    "unknown_option": ("room", "list", "--frobnicate"),
}


@pytest.mark.parametrize("before", [(), ("--config", "unused.toml")], ids=["plain", "config-first"])
def test_bench_gets_its_command_line_as_typed(tmp_path: Path, before: tuple[str, ...]) -> None:
    """Everything after `bench` reaches the benchmark's own parser in order, options before
    the scenario included (and --config is accepted on either side)."""
    completed = cli(*before, "bench", "--rooms", "3", "nosuch", "--config", "x.toml", cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert "invalid choice: 'nosuch'" in completed.stderr


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_error_exits_2(tmp_path: Path, case: str) -> None:
    """A malformed command line exits 2 with a message on stderr and nothing on stdout."""
    result = cli(*USAGE_ERRORS[case], "--config", str(key_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip()
    assert result.stdout == ""


# -- check-config ----------------------------------------------------------------------


def test_check_config_accepts_valid_config(tmp_path: Path) -> None:
    """`check-config` exits 0 on a valid config with a usable key."""
    result = cli("check-config", "--config", str(key_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_rejects_missing_key_file(tmp_path: Path) -> None:
    """`check-config` exits 2 when the configured key file does not exist, naming file and key."""
    config = write_toml(tmp_path / "unichatd.toml", '[auth]\nsigning_key_file = "absent.key"\n')
    result = cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(config) in line
    assert "auth.signing_key_file" in line
    assert not (tmp_path / "absent.key").exists()


def test_check_config_rejects_bad_config(tmp_path: Path) -> None:
    """`check-config` exits 2 on an unknown key."""
    config = write_toml(tmp_path / "unichatd.toml", "[limits]\nbogus = 1\n")
    result = cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "limits.bogus" in one_line(result.stderr)


def test_init_writes_an_api_key_beside_the_config_and_check_config_reads_it(tmp_path: Path) -> None:
    """`init` turns the server API on: a private key file the config names (api.md)."""
    target = tmp_path / "etc" / "unichatd.toml"
    target.parent.mkdir()
    assert cli("init", "--config", str(target), cwd=tmp_path).returncode == 0
    key_file = target.parent / "unichatd-api.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 32
    assert 'api_key_file = "unichatd-api.key"' in target.read_text()
    assert cli("check-config", "--config", str(target), cwd=tmp_path).returncode == 0
    key_file.unlink()
    result = cli("check-config", "--config", str(target), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(target) in line
    assert "api.api_key_file" in line
    result = cli("check-config", "--config", str(write_toml(tmp_path / "w.toml", (
        '[auth]\nsigning_key = "' + "k" * 40 + '"\n[[webhooks]]\nurl = "http://x/"\nevents = ["message_sent"]\n'
        'secret = "' + "s" * 20 + '"\n'))), cwd=tmp_path)
    assert result.returncode == 2
    assert "webhooks[0].events" in one_line(result.stderr)


# -- serve on embedded defaults -----------------------------------------------------------


def test_serve_defaults_generates_private_key(embedded: ServeProcess) -> None:
    """`serve` with no config writes ./unichatd.key: mode 0600, at least 32 bytes."""
    key_file = embedded.cwd / "unichatd.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip().encode()) >= 32


def test_serve_defaults_listens_with_generated_key(embedded: ServeProcess) -> None:
    """The server on embedded defaults accepts a token signed with the generated key."""
    key = (embedded.cwd / "unichatd.key").read_text().strip()
    token = jwt.encode({"sub": "5", "name": "dan", "exp": int(time.time()) + 600}, key, "HS256")
    frame = hello(embedded.url, token)
    assert frame["type"] == "connection_established"
    assert frame["user_id"] == 5


def test_serve_defaults_database_in_cwd(embedded: ServeProcess) -> None:
    """The server on embedded defaults keeps its database at ./unichatd.db."""
    assert (embedded.cwd / "unichatd.db").is_file()


def test_serve_defaults_warns_with_key_location(embedded: ServeProcess) -> None:
    """The server on embedded defaults logs a warning that names the key file."""
    _, stderr = embedded.terminate()
    assert "unichatd.key" in stderr
    assert "warn" in stderr.lower()


def test_serve_exits_0_on_sigterm(embedded: ServeProcess) -> None:
    """`serve` exits 0 on SIGTERM and prints nothing on stdout."""
    embedded.proc.send_signal(signal.SIGTERM)
    out, _ = embedded.proc.communicate(timeout=15)
    assert embedded.proc.returncode == 0
    assert out == b""


def test_serve_reuses_existing_key_file(tmp_path: Path) -> None:
    """`serve` with no config reads an existing ./unichatd.key instead of replacing it."""
    key = "0123456789abcdef" * 4
    (tmp_path / "unichatd.key").write_text(key + "\n")
    server = ServeProcess(tmp_path)
    try:
        wait_listening(server.proc, server.port)
        assert (tmp_path / "unichatd.key").read_text() == key + "\n"
        token = jwt.encode({"sub": "6", "name": "fay", "exp": int(time.time()) + 600}, key, "HS256")
        assert hello(server.url, token)["type"] == "connection_established"
    finally:
        server.kill()


def test_serve_on_busy_port_exits_1(tmp_path: Path) -> None:
    """`serve` on a port another socket listens on exits 1 (runtime failure) with a one-line message."""
    config = key_config(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "unichatd", "serve", "--port", str(port), "--config", str(config)],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"serve did not exit within 10 s of failing to bind; stderr: {err.strip()}")
    assert proc.returncode == 1
    assert str(port) in one_line(err)


# -- status and stop -------------------------------------------------------------------


def test_status_prints_healthz_json(tmp_path: Path, daemon_factory: Any) -> None:
    """`status` prints the running server's /healthz JSON, with its live connection count."""
    daemon: DaemonProcess = daemon_factory()
    token = cli("token", "1", "--name", "a", "--config", str(daemon.config_path), cwd=tmp_path).stdout.strip()
    with ws_connect(f"{daemon.url}?token={token}", open_timeout=5, close_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "connection_established"
        result = cli("status", "--config", str(daemon.config_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    health = json.loads(result.stdout)
    assert health["status"] == "ok"
    assert health["connections"] == 1
    assert {"rooms_active", "uptime_s"} <= health.keys()


def test_status_without_server_fails(tmp_path: Path) -> None:
    """`status` with no server listening exits 1 with a one-line message."""
    config = write_config(tmp_path, free_port())
    result = cli("status", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    one_line(result.stderr)
    assert result.stdout == ""


def test_stop_terminates_server(tmp_path: Path, daemon_factory: Any) -> None:
    """`stop` SIGTERMs the server named by pid_file, which exits 0; stop itself exits 0 silently."""
    daemon: DaemonProcess = daemon_factory()
    assert daemon.proc is not None
    pid_file = tmp_path / "unichatd.pid"
    assert int(pid_file.read_text()) == daemon.proc.pid
    code, out, err = run_stop(daemon.config_path, tmp_path, daemon.proc)
    assert code == 0, err
    assert out == ""
    assert daemon.proc.wait(5) == 0


def test_stop_finds_server_with_relative_pid_file(tmp_path: Path) -> None:
    """`stop` run with the same config and cwd as `serve` finds it when pid_file is a relative path."""
    port = free_port()
    config = key_config(tmp_path / "etc", extra=f'[server]\nport = {port}\npid_file = "unichatd.pid"\n')
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "unichatd", "serve", "--config", str(config)],
        cwd=run_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(daemon, port)
        code, _, err = run_stop(config, run_dir, daemon)
        assert code == 0, err
        assert daemon.wait(5) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def test_stop_with_stale_pid_file_fails_cleanly(tmp_path: Path) -> None:
    """`stop` with a pid file naming no live process exits 1 with a one-line message."""
    config = write_config(tmp_path, free_port())
    gone = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    gone.wait(10)
    (tmp_path / "unichatd.pid").write_text(f"{gone.pid}\n")
    result = cli("stop", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert str(gone.pid) in one_line(result.stderr)
    assert result.stdout == ""


def test_stop_without_pid_file_fails_cleanly(tmp_path: Path) -> None:
    """`stop` when the pid file does not exist exits 1 with a one-line message."""
    config = write_config(tmp_path, free_port())
    result = cli("stop", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert "unichatd.pid" in one_line(result.stderr)


# -- entry points ----------------------------------------------------------------------


def test_console_script_mints_token(tmp_path: Path) -> None:
    """The `unichatd` console script works like `python -m unichatd`."""
    result = cli_env("token", "42", "--name", "john", "--config", str(key_config(tmp_path)), cwd=tmp_path,
                     env=scrubbed_env(), command=(str(CONSOLE_SCRIPT),))
    assert result.returncode == 0, result.stderr
    assert JWT_LINE.match(result.stdout)
    assert decode(result.stdout.strip())["sub"] == "42"


def test_entry_points_give_same_help(tmp_path: Path) -> None:
    """`python -m unichatd --help` and `unichatd --help` print the same usage, for prog `unichatd`."""
    module = cli_env("--help", cwd=tmp_path, env=scrubbed_env())
    script = cli_env("--help", cwd=tmp_path, env=scrubbed_env(), command=(str(CONSOLE_SCRIPT),))
    assert module.returncode == script.returncode == 0
    assert module.stdout == script.stdout
    assert module.stdout.startswith("usage: unichatd ")


def test_console_script_exit_code_on_config_error(tmp_path: Path) -> None:
    """The console script exits 2 on a config error, like the module."""
    config = write_toml(tmp_path / "bad.toml", "[server]\nbogus = 1\n")
    result = cli_env("room", "list", "--config", str(config), cwd=tmp_path, env=scrubbed_env(),
                     command=(str(CONSOLE_SCRIPT),))
    assert result.returncode == 2
    assert "server.bogus" in one_line(result.stderr)
