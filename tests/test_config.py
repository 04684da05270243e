"""Pure unit tests of configuration: parse_config, load_config, lookup order and the signing key."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from unichatd import config as config_module
from unichatd.config import (
    EMBEDDED,
    Config,
    load_config,
    parse_config,
    render_config,
)
from unichatd.errors import ConfigError
from unichatd.keys import load_signing_key, write_private_file

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "unichatd.example.toml"
KEY = "k" * 40
SOURCE = "/etc/test/unichatd.toml"


def parse(raw: dict[str, Any], base_dir: Path = Path("/srv/chat")) -> Config:
    return parse_config(raw, source=SOURCE, base_dir=base_dir)


def refused(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(raw)
    return info.value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd without unichatd.toml, no $UNICHATD_CONFIG, and a system path that does not exist."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("UNICHATD_CONFIG", raising=False)
    monkeypatch.setattr(
        config_module, "SEARCH_PATHS", (Path("unichatd.toml"), tmp_path / "etc" / "unichatd.toml")
    )
    return tmp_path


# ---------------------------------------------------------------------------
# Defaults


def test_empty_document_gives_documented_defaults() -> None:
    """An empty config has exactly the defaults the operations contract lists."""
    config = parse({})
    assert (config.server.host, config.server.port, config.server.path) == ("127.0.0.1", 8000, "/ws/chat/")
    assert config.server.allowed_origins == ()
    assert config.server.max_message_bytes == 65536
    assert (config.server.ping_interval, config.server.ping_timeout) == (20, 20)
    assert config.server.pid_file == ""
    assert (config.auth.signing_key, config.auth.signing_key_file, config.auth.token_ttl) == ("", "", 86400)
    assert config.storage.database == "unichatd.db"
    assert (config.limits.messages_per_second, config.limits.message_burst) == (10, 20)
    assert config.limits.max_content_chars == 4000
    assert (config.log.level, config.log.format) == ("info", "json")


def test_empty_document_equals_embedded_defaults() -> None:
    """An empty document equals Config() apart from source and base_dir."""
    assert parse({}) == Config(source=SOURCE, base_dir=Path("/srv/chat"))


def test_no_config_file_gives_embedded_defaults(isolated: Path) -> None:
    """With no config anywhere, load_config returns the embedded defaults."""
    config = load_config(None)
    assert config.source == EMBEDDED
    assert config == Config(source=EMBEDDED, base_dir=config.base_dir)


def test_embedded_defaults_resolve_against_cwd(isolated: Path) -> None:
    """The embedded defaults put the database and key file in the current directory."""
    config = load_config(None)
    assert config.database_path == Path.cwd() / "unichatd.db"
    assert config.key_path == Path.cwd() / "unichatd.key"


# ---------------------------------------------------------------------------
# Every section


def test_server_section() -> None:
    """Every [server] key is read."""
    config = parse({"server": {
        "host": "0.0.0.0", "port": 9001, "path": "/chat", "allowed_origins": ["https://a.example"],
        "max_message_bytes": 1024, "ping_interval": 5, "ping_timeout": 7, "pid_file": "/run/u.pid",
    }})
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 9001
    assert config.server.path == "/chat"
    assert config.server.allowed_origins == ("https://a.example",)
    assert config.server.max_message_bytes == 1024
    assert (config.server.ping_interval, config.server.ping_timeout) == (5, 7)
    assert config.server.pid_file == "/run/u.pid"


def test_auth_section() -> None:
    """Every [auth] key is read."""
    config = parse({"auth": {"signing_key": KEY, "token_ttl": 60}})
    assert config.auth.signing_key == KEY
    assert config.auth.token_ttl == 60


def test_auth_signing_key_file() -> None:
    """auth.signing_key_file is read and resolved against the config directory."""
    config = parse({"auth": {"signing_key_file": "secret.key"}})
    assert config.auth.signing_key_file == "secret.key"
    assert config.key_path == Path("/srv/chat/secret.key")


def test_storage_section() -> None:
    """[storage] database is read."""
    assert parse({"storage": {"database": "/var/lib/u/chat.db"}}).storage.database == "/var/lib/u/chat.db"


def test_limits_section() -> None:
    """Every [limits] key is read."""
    config = parse({"limits": {"messages_per_second": 3, "message_burst": 4, "max_content_chars": 50}})
    assert (config.limits.messages_per_second, config.limits.message_burst) == (3, 4)
    assert config.limits.max_content_chars == 50


def test_log_section() -> None:
    """Every [log] key is read."""
    config = parse({"log": {"level": "debug", "format": "console"}})
    assert (config.log.level, config.log.format) == ("debug", "console")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_every_log_level_is_accepted(level: str) -> None:
    """Each documented log level is accepted."""
    assert parse({"log": {"level": level}}).log.level == level


def test_allowed_origins_empty_list() -> None:
    """allowed_origins = [] is accepted as empty."""
    assert parse({"server": {"allowed_origins": []}}).server.allowed_origins == ()


@pytest.mark.parametrize("key", ["limits.messages_per_second", "server.ping_interval", "server.ping_timeout"])
def test_fractional_seconds_and_rates_are_accepted(key: str) -> None:
    """Rates and intervals accept fractional numbers (e.g. 0.5 messages a second)."""
    section, name = key.split(".")
    config = parse({section: {name: 0.5}})
    assert getattr(getattr(config, section), name) == 0.5


# ---------------------------------------------------------------------------
# Unknown names


def test_unknown_section_is_an_error_naming_it() -> None:
    """An unknown section is refused, naming it."""
    error = refused({"sever": {"port": 1}})
    assert error.key == "sever"
    assert "sever" in str(error)
    assert SOURCE in str(error)


@pytest.mark.parametrize("section", ["server", "auth", "storage", "limits", "log"])
def test_unknown_key_is_an_error_naming_it(section: str) -> None:
    """An unknown key in any section is refused, naming section.key and the file."""
    error = refused({section: {"bogus": 1}})
    assert error.key == f"{section}.bogus"
    assert f"{section}.bogus" in str(error)
    assert SOURCE in str(error)


def test_section_that_is_not_a_table_is_an_error() -> None:
    """A section given as a plain value is refused, naming it."""
    error = refused({"server": 8000})
    assert error.key == "server"


# ---------------------------------------------------------------------------
# Wrong types


@pytest.mark.parametrize(("key", "value"), [
    ("server.port", "8000"),
    ("server.port", True),
    ("server.port", 8000.0),
    ("server.max_message_bytes", False),
    ("server.host", 1),
    ("server.host", True),
    ("server.path", ["/ws"]),
    ("server.pid_file", 0),
    ("server.allowed_origins", "https://a.example"),
    ("server.allowed_origins", [1]),
    ("server.ping_interval", "20"),
    ("server.ping_interval", True),
    ("auth.signing_key", 12345),
    ("auth.signing_key_file", True),
    ("auth.token_ttl", "86400"),
    ("auth.token_ttl", True),
    ("storage.database", 1),
    ("limits.messages_per_second", "10"),
    ("limits.messages_per_second", True),
    ("limits.message_burst", 2.5),
    ("limits.message_burst", True),
    ("limits.max_content_chars", "4000"),
    ("log.level", 1),
    ("log.format", True),
])
def test_wrong_type_is_an_error_naming_the_key(key: str, value: Any) -> None:
    """A value of the wrong type (bool for int and int for str included) is refused, naming the key."""
    section, name = key.split(".")
    error = refused({section: {name: value}})
    assert error.key == key
    assert key in str(error)


# ---------------------------------------------------------------------------
# Out of range


@pytest.mark.parametrize(("key", "value"), [
    ("server.port", -1),
    ("server.port", 65536),
    ("server.max_message_bytes", 0),
    ("server.ping_interval", -1),
    ("server.ping_timeout", -1),
    ("auth.token_ttl", 0),
    ("limits.messages_per_second", 0),
    ("limits.message_burst", 0),
    ("limits.max_content_chars", 0),
    ("log.level", "verbose"),
    ("log.format", "xml"),
    ("server.path", "ws/chat/"),
])
def test_out_of_range_value_is_an_error_naming_the_key(key: str, value: Any) -> None:
    """A value outside its allowed range or choices is refused, naming the key."""
    section, name = key.split(".")
    error = refused({section: {name: value}})
    assert error.key == key
    assert key in str(error)


@pytest.mark.parametrize(("key", "value"), [
    ("server.port", 0), ("server.port", 65535), ("server.ping_interval", 0), ("limits.message_burst", 1),
])
def test_boundary_values_are_accepted(key: str, value: int) -> None:
    """Values at the edge of their range are accepted."""
    section, name = key.split(".")
    assert getattr(getattr(parse({section: {name: value}}), section), name) == value


# ---------------------------------------------------------------------------
# Signing key


def test_short_signing_key_is_an_error() -> None:
    """A signing key of 31 bytes is refused, naming auth.signing_key."""
    error = refused({"auth": {"signing_key": "k" * 31}})
    assert error.key == "auth.signing_key"


def test_signing_key_of_32_bytes_is_accepted() -> None:
    """A signing key of exactly 32 bytes is accepted."""
    assert parse({"auth": {"signing_key": "k" * 32}}).auth.signing_key == "k" * 32


def test_signing_key_length_counts_bytes() -> None:
    """The key length counts UTF-8 bytes: 16 two-byte characters make 32 bytes."""
    assert parse({"auth": {"signing_key": "é" * 16}}).auth.signing_key == "é" * 16


def test_signing_key_and_file_together_is_an_error() -> None:
    """Setting both signing_key and signing_key_file is refused."""
    error = refused({"auth": {"signing_key": KEY, "signing_key_file": "x.key"}})
    assert error.key is not None
    assert error.key.startswith("auth.signing_key")


def test_inline_signing_key_is_used(tmp_path: Path) -> None:
    """load_signing_key returns the inline key without touching the disk."""
    config = parse({"auth": {"signing_key": KEY}}, base_dir=tmp_path)
    assert load_signing_key(config, create=True) == KEY
    assert list(tmp_path.iterdir()) == []


def test_missing_key_file_is_generated_with_mode_0600(tmp_path: Path) -> None:
    """Without a key, unichatd.key is created in the config directory: 32 random bytes hex, mode 0600."""
    config = parse({}, base_dir=tmp_path)
    key = load_signing_key(config, create=True)
    path = tmp_path / "unichatd.key"
    assert path.read_text().strip() == key
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_generated_key_is_reused(tmp_path: Path) -> None:
    """A second load reads the key file written by the first."""
    config = parse({}, base_dir=tmp_path)
    assert load_signing_key(config, create=True) == load_signing_key(config, create=True)


def test_generated_keys_differ(tmp_path: Path) -> None:
    """Two fresh key files hold different random keys."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = load_signing_key(parse({}, base_dir=tmp_path / "a"), create=True)
    second = load_signing_key(parse({}, base_dir=tmp_path / "b"), create=True)
    assert first != second


def test_embedded_defaults_generate_key_in_cwd(isolated: Path) -> None:
    """With no config, the key is generated as ./unichatd.key."""
    key = load_signing_key(load_config(None), create=True)
    assert (Path.cwd() / "unichatd.key").read_text().strip() == key


def test_missing_key_not_created_without_create(tmp_path: Path) -> None:
    """With create=False a missing default key file is an error and nothing is written."""
    with pytest.raises(ConfigError):
        load_signing_key(parse({}, base_dir=tmp_path), create=False)
    assert not (tmp_path / "unichatd.key").exists()


def test_missing_signing_key_file_is_an_error(tmp_path: Path) -> None:
    """A configured signing_key_file that does not exist is an error naming it, even with create."""
    config = parse({"auth": {"signing_key_file": "secret.key"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        load_signing_key(config, create=True)
    assert info.value.key == "auth.signing_key_file"
    assert not (tmp_path / "secret.key").exists()


def test_signing_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    """The key file's content is used with surrounding white space removed."""
    write(tmp_path / "secret.key", f"  {KEY}\n\n")
    config = parse({"auth": {"signing_key_file": "secret.key"}}, base_dir=tmp_path)
    assert load_signing_key(config, create=False) == KEY


def test_short_key_in_file_is_an_error(tmp_path: Path) -> None:
    """A key file holding fewer than 32 bytes is refused."""
    write(tmp_path / "secret.key", "short\n")
    config = parse({"auth": {"signing_key_file": "secret.key"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        load_signing_key(config, create=False)
    assert info.value.key == "auth.signing_key_file"


# ---------------------------------------------------------------------------
# load_config: files and errors


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML is refused with an error naming the file."""
    path = write(tmp_path / "broken.toml", "[server\nport = ")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)
    assert info.value.source == str(path)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """--config naming a file that does not exist is an error naming the file."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_file_errors_name_file_and_key(tmp_path: Path) -> None:
    """A bad key in a file is reported with the file path and the dotted key."""
    path = write(tmp_path / "u.toml", "[server]\nport = \"80\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)
    assert "server.port" in str(info.value)


def test_load_config_reads_values(tmp_path: Path) -> None:
    """A file's values are read and the source is the file."""
    path = write(tmp_path / "u.toml", "[server]\nport = 9100\n[log]\nformat = \"console\"\n")
    config = load_config(str(path))
    assert config.server.port == 9100
    assert config.log.format == "console"
    assert config.source == str(path)


def test_relative_database_resolved_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative database path is relative to the config file's directory, not the cwd."""
    path = write(tmp_path / "etc" / "u.toml", "[storage]\ndatabase = \"data/chat.db\"\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(str(path)).database_path == tmp_path / "etc" / "data" / "chat.db"


def test_relative_config_path_gives_absolute_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a relative --config, the database path is still the absolute path beside the file."""
    write(tmp_path / "etc" / "u.toml", "[storage]\ndatabase = \"chat.db\"\n")
    monkeypatch.chdir(tmp_path)
    database = load_config("etc/u.toml").database_path
    assert database.is_absolute()
    assert database == (tmp_path / "etc" / "chat.db").resolve()


def test_absolute_database_path_is_kept(tmp_path: Path) -> None:
    """An absolute database path is used as given."""
    path = write(tmp_path / "etc" / "u.toml", f"[storage]\ndatabase = \"{tmp_path / 'db' / 'x.db'}\"\n")
    assert load_config(str(path)).database_path == tmp_path / "db" / "x.db"


def test_relative_key_file_resolved_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative signing_key_file is relative to the config file's directory."""
    path = write(tmp_path / "etc" / "u.toml", "[auth]\nsigning_key_file = \"keys/u.key\"\n")
    write(tmp_path / "etc" / "keys" / "u.key", KEY + "\n")
    monkeypatch.chdir(tmp_path)
    assert load_signing_key(load_config(str(path)), create=False) == KEY


# ---------------------------------------------------------------------------
# Lookup order


def test_explicit_config_beats_environment(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over $UNICHATD_CONFIG and ./unichatd.toml."""
    explicit = write(isolated / "explicit.toml", "[server]\nport = 1001\n")
    monkeypatch.setenv("UNICHATD_CONFIG", str(write(isolated / "env.toml", "[server]\nport = 1002\n")))
    write(Path.cwd() / "unichatd.toml", "[server]\nport = 1003\n")
    assert load_config(str(explicit)).server.port == 1001


def test_environment_beats_cwd_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$UNICHATD_CONFIG wins over ./unichatd.toml."""
    monkeypatch.setenv("UNICHATD_CONFIG", str(write(isolated / "env.toml", "[server]\nport = 1002\n")))
    write(Path.cwd() / "unichatd.toml", "[server]\nport = 1003\n")
    assert load_config(None).server.port == 1002


def test_missing_environment_file_is_an_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$UNICHATD_CONFIG naming a missing file is an error, not a silent fallback."""
    monkeypatch.setenv("UNICHATD_CONFIG", str(isolated / "missing.toml"))
    write(Path.cwd() / "unichatd.toml", "[server]\nport = 1003\n")
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert "missing.toml" in str(info.value)


def test_cwd_file_is_used(isolated: Path) -> None:
    """Without --config or $UNICHATD_CONFIG, ./unichatd.toml is read."""
    write(Path.cwd() / "unichatd.toml", "[server]\nport = 1003\n")
    config = load_config(None)
    assert config.server.port == 1003
    assert config.base_dir == Path.cwd().resolve()


def test_cwd_file_beats_system_file(isolated: Path) -> None:
    """./unichatd.toml wins over the system-wide file."""
    write(Path.cwd() / "unichatd.toml", "[server]\nport = 1003\n")
    write(config_module.SEARCH_PATHS[-1], "[server]\nport = 1004\n")
    assert load_config(None).server.port == 1003


def test_system_file_is_the_last_resort(isolated: Path) -> None:
    """With no other config, the system-wide file is read."""
    write(config_module.SEARCH_PATHS[-1], "[server]\nport = 1004\n")
    assert load_config(None).server.port == 1004


def test_system_path_is_etc_unichatd() -> None:
    """The search path is ./unichatd.toml, then /etc/unichatd/unichatd.toml."""
    assert config_module.SEARCH_PATHS == (Path("unichatd.toml"), Path("/etc/unichatd/unichatd.toml"))


# ---------------------------------------------------------------------------
# Shipped config files


def test_example_config_equals_defaults_except_key() -> None:
    """config/unichatd.example.toml parses and equals the defaults apart from the signing key."""
    config = load_config(str(EXAMPLE))
    assert config.auth.signing_key != ""
    without_key = dataclasses.replace(config, auth=dataclasses.replace(config.auth, signing_key=""))
    assert without_key == Config(source=str(EXAMPLE), base_dir=EXAMPLE.parent)


def test_rendered_config_equals_defaults_except_key(tmp_path: Path) -> None:
    """The config written by `init` parses with the given keys and otherwise the defaults."""
    path = write(tmp_path / "u.toml", render_config("s" * 64, "api.key"))
    config = load_config(str(path))
    assert config.auth.signing_key == "s" * 64
    assert config.api.api_key_file == "api.key"
    without_key = dataclasses.replace(config, auth=dataclasses.replace(config.auth, signing_key=""),
                                      api=dataclasses.replace(config.api, api_key_file=""))
    assert without_key == Config(source=str(path), base_dir=tmp_path)


def test_private_file_is_not_overwritten(tmp_path: Path) -> None:
    """write_private_file refuses to overwrite an existing file."""
    path = write(tmp_path / "u.key", "old")
    with pytest.raises(FileExistsError):
        write_private_file(path, "new")
    assert path.read_text() == "old"


def test_private_file_mode_ignores_permissive_umask(tmp_path: Path) -> None:
    """write_private_file creates the file with mode 0600 even under umask 000."""
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "u.key", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "u.key").stat().st_mode) == 0o600


# -- [api] and [[webhooks]] (api.md) ------------------------------------------------------


@pytest.mark.parametrize(("raw", "key", "says"), [
    ({"api": {"api_key": "short"}}, "api.api_key", "32 bytes"),
    ({"api": {"api_key": "k" * 32, "api_key_file": "x"}}, "api.api_key", "not both"),
    ({"api": {"port": 70000}}, "api.port", "at most"),
    ({"api": {"colour": 1}}, "api.colour", "unknown key"),
    ({"webhooks": {"url": "x"}}, "webhooks", "array of tables"),
    ({"webhooks": [{"url": "ftp://x", "events": ["message_created"], "secret": "s" * 16}]}, "webhooks[0].url",
     "http"),
    ({"webhooks": [{"url": "http://x/", "events": [], "secret": "s" * 16}]}, "webhooks[0].events", "non-empty"),
    ({"webhooks": [{"url": "http://x/", "events": ["message_sent"], "secret": "s" * 16}]}, "webhooks[0].events",
     "message_sent"),
    ({"webhooks": [{"url": "http://x/", "events": ["room_created"], "secret": "short"}]}, "webhooks[0].secret",
     "16 bytes"),
    ({"webhooks": [{"url": "http://x/", "events": ["room_created"], "secret": "s" * 16, "retries": 3}]},
     "webhooks[0].retries", "unknown key"),
    ({"webhooks": [{"url": "http://x/", "events": ["room_created"], "secret": "s" * 16}] * 2}, "webhooks[1].url",
     "duplicate"),
])
def test_api_and_webhooks_are_checked(raw: dict[str, Any], key: str, says: str) -> None:
    error = refused(raw)
    assert error.key == key
    assert says in str(error)


def test_webhooks_and_the_events_they_want() -> None:
    config = parse({"webhooks": [
        {"url": "http://a/", "events": ["room_created", "message_created"], "secret": "s" * 16},
        {"url": "https://b/hook", "events": ["member_added"], "secret": "t" * 16},
    ]})
    assert [hook.url for hook in config.webhooks] == ["http://a/", "https://b/hook"]
    assert config.webhook_events == {"room_created", "message_created", "member_added"}
    assert parse({}).webhooks == ()
    assert parse({}).api.port == 8001


def test_a_postgresql_url_is_a_database_and_nothing_else_with_a_scheme_is() -> None:
    """storage.database: a path is SQLite, a postgresql:// URL PostgreSQL (its lock file and
    files beside the config), any other URL a config error naming the key."""
    url = "postgresql://chat:secret@db.internal/chat"
    config = parse({"storage": {"database": url}})
    assert config.database_url == url
    assert config.database_name == "postgresql://chat:***@db.internal/chat"
    assert config.instance_path == Path("/srv/chat/unichatd-postgres")
    assert config.files_path == Path("/srv/chat/unichatd-files")
    assert parse({}).database_url is None
    with pytest.raises(ConfigError, match="storage.database"):
        parse({"storage": {"database": "mysql://db/chat"}})


def test_a_broker_needs_a_redis_url_and_a_postgresql_database() -> None:
    postgres = {"database": "postgresql://db/chat"}
    config = parse({"storage": postgres, "cluster": {"broker": "redis://127.0.0.1:6379/0", "prefix": "team"}})
    assert (config.cluster.broker, config.cluster.prefix) == ("redis://127.0.0.1:6379/0", "team")
    with pytest.raises(ConfigError, match="cluster.broker.*postgresql"):
        parse({"cluster": {"broker": "redis://127.0.0.1:6379/0"}})
    with pytest.raises(ConfigError, match="cluster.broker.*redis"):
        parse({"storage": postgres, "cluster": {"broker": "nats://127.0.0.1:4222"}})
    with pytest.raises(ConfigError, match="cluster.prefix"):
        parse({"storage": postgres, "cluster": {"broker": "redis://127.0.0.1", "prefix": ""}})


def test_every_package_of_the_source_tree_is_installed() -> None:
    """`pip install .` (not editable) takes the packages pyproject.toml lists: a package
    missing there is missing from every installation."""
    import tomllib

    root = Path(__file__).parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for init in (root / "unichatd").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
