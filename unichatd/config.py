"""Configuration: the TOML file, its lookup order, the embedded defaults, validation.

Everything here is plain data: :func:`load_config` turns a file (or nothing) into a
frozen :class:`Config`, or raises :class:`~unichatd.errors.ConfigError` naming the
file and the key at fault.  No socket or database is touched.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

SEARCH_PATHS = (Path("unichatd.toml"), Path("/etc/unichatd/unichatd.toml"))
DEFAULT_KEY_FILE = "unichatd.key"
MIN_KEY_BYTES = 32
EMBEDDED = "<embedded defaults>"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/ws/chat/"
    allowed_origins: tuple[str, ...] = ()
    max_message_bytes: int = 65536
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    pid_file: str = ""
    max_connections: int = 19000
    """Handshakes beyond this many open connections get HTTP 503."""
    max_connections_per_user: int = 32
    """Handshakes beyond this many connections of one user get HTTP 429."""
    send_buffer_bytes: int = 1 << 20
    """Unsent bytes a connection may hold before it is closed as a slow consumer."""
    web_client: bool = True
    """Serve the web chat client at ``/``."""
    metrics_loopback_only: bool = False
    """With ``metrics_token`` set, also refuse /metrics to clients off loopback (without a
    token, /metrics is always loopback-only)."""
    metrics_token: str = ""
    """When set, /metrics requires ``Authorization: Bearer <metrics_token>``."""
    public_url: str = ""
    """The address people reach the server at (e.g. ``https://chat.example.com``), behind a
    proxy; its origin is accepted as the server's own.  Default: ``http://<host>:<port>``."""
    tls_cert: str = ""
    """PEM certificate chain: serve ``wss://`` and ``https://`` natively (with ``tls_key``)."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""


@dataclass(frozen=True, slots=True)
class NamedKey:
    """One entry of ``[[auth.signing_keys]]``: a key with an id, inline or in a file."""

    id: str
    key: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    signing_key: str = ""
    signing_key_file: str = ""
    token_ttl: int = 86400
    signing_keys: tuple[NamedKey, ...] = ()
    """Keys with ids (tokens carry ``kid``); the last one signs, all of them verify."""
    renewable: bool = True
    """``refresh_token`` without a token mints a new one (operations.md, sign-in links)."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    database: str = "unichatd.db"
    retention_days: float = 0.0
    """Delete messages older than this many days; 0 keeps them forever."""
    room_retention_days: tuple[tuple[int, float], ...] = ()
    """Per-room overrides of ``retention_days`` (room id, days; 0 keeps forever)."""
    retention_interval: float = 300.0
    """Seconds between retention passes."""
    files_dir: str = ""
    """Where uploaded files are kept; empty: ``<database>-files`` beside the database."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    messages_per_second: float = 10.0
    message_burst: int = 20
    max_content_chars: int = 4000
    frames_per_second: float = 200.0
    """Frames of every type a connection may send per second, sustained."""
    frame_burst: int = 400
    max_file_bytes: int = 10 * 1024 * 1024
    """Largest file one upload may hold."""
    upload_bytes_per_day: int = 1024 * 1024 * 1024
    """Bytes one user may upload within any 24 hours."""


@dataclass(frozen=True, slots=True)
class RoomsConfig:
    users_can_create: bool = True
    """Clients may create rooms and direct rooms and list users (protocol.md §6.2)."""
    presence_max_members: int = 100
    """Presence changes go to those who share a room of at most this many participants
    (and every direct room): in larger rooms everyone telling everyone is quadratic."""


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The server API's own listener (api.md); off while no key is configured."""

    host: str = "127.0.0.1"
    port: int = 8001
    api_key: str = ""
    api_key_file: str = ""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """More than one process (operations.md): the broker they share, and its namespace."""

    broker: str = ""
    """"" = one process; "redis://host:port/db" = several, sharing events through Redis."""
    prefix: str = "unichatd"
    """Every Redis key and channel starts with it, so installations can share one Redis."""


WEBHOOK_EVENTS = ("message_created", "message_updated", "message_deleted", "room_created", "member_added",
                  "member_removed")


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One ``[[webhooks]]`` entry: where events go, which, and the key that signs them."""

    url: str
    events: tuple[str, ...]
    secret: str


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "json"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    webhooks: tuple[WebhookConfig, ...] = ()
    source: str = EMBEDDED
    """The file this config came from, or ``<embedded defaults>``."""
    base_dir: Path = field(default_factory=Path.cwd)
    """Directory that relative paths in the file are resolved against."""

    @property
    def database_url(self) -> str | None:
        """The PostgreSQL database, when ``storage.database`` is a ``postgresql://`` URL."""
        database = self.storage.database
        return database if database.startswith(POSTGRES_SCHEMES) else None

    @property
    def database_path(self) -> Path:
        """The SQLite file (when ``database_url`` is None)."""
        return self.resolve(self.storage.database)

    @property
    def database_name(self) -> str:
        """The database as logs and messages name it (a URL without its password)."""
        return redact(self.database_url) if self.database_url else str(self.database_path)

    @property
    def instance_path(self) -> Path:
        """What the running server's lock file is named after: the SQLite file, or for
        PostgreSQL ``unichatd-postgres`` in the config's directory."""
        return self.base_dir / POSTGRES_INSTANCE if self.database_url else self.database_path

    @property
    def files_path(self) -> Path:
        files_dir = self.storage.files_dir
        if files_dir:
            return self.resolve(files_dir)
        return self.base_dir / POSTGRES_FILES if self.database_url else files_beside(self.database_path)

    @property
    def webhook_events(self) -> frozenset[str]:
        """Every event some webhook wants."""
        return frozenset(event for webhook in self.webhooks for event in webhook.events)

    @property
    def public_url(self) -> str:
        """Where people reach the chat port: ``server.public_url``, else ``http(s)://<host>:<port>``."""
        server = self.server
        if server.public_url:
            return server.public_url.rstrip("/")
        host = server.host if server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if server.tls_cert else 'http'}://{host}:{server.port}"

    @property
    def key_path(self) -> Path:
        return self.resolve(self.auth.signing_key_file or DEFAULT_KEY_FILE)

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
POSTGRES_INSTANCE = "unichatd-postgres"
POSTGRES_FILES = "unichatd-files"


def redact(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def files_beside(database: Path) -> Path:
    """Where a database's files are kept by default (and a backup's): ``<database>-files``."""
    return Path(f"{database}-files")


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "storage": StorageConfig,
    "limits": LimitsConfig,
    "rooms": RoomsConfig,
    "log": LogConfig,
    "api": ApiConfig,
    "cluster": ClusterConfig,
}

# Range rules: key -> (minimum, maximum); None means unbounded.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "server.port": (0, 65535),
    "api.port": (0, 65535),
    "server.max_message_bytes": (64, 64 * 1024 * 1024),
    "server.ping_interval": (0, 3600),
    "server.ping_timeout": (0, 3600),
    "server.max_connections": (1, None),
    "server.max_connections_per_user": (1, None),
    "server.send_buffer_bytes": (4096, None),
    "auth.token_ttl": (1, None),
    "storage.retention_days": (0, None),
    "storage.retention_interval": (1, None),
    "limits.messages_per_second": (0.001, None),
    "limits.message_burst": (1, None),
    "limits.max_content_chars": (1, 1_000_000),
    "limits.frames_per_second": (0.001, None),
    "limits.frame_burst": (1, None),
    "limits.max_file_bytes": (1, 1 << 40),
    "rooms.presence_max_members": (2, 1_000_000),
    "limits.upload_bytes_per_day": (0, None),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("json", "console"),
}


def find_config_path(explicit: str | None) -> Path | None:
    """The config file to read: ``--config``, ``$UNICHATD_CONFIG``, then the search path."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("UNICHATD_CONFIG")
    if from_env:
        return Path(from_env)
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | None = None) -> Config:
    """Read and validate the config named by the lookup order, or the embedded defaults."""
    path = find_config_path(explicit)
    if path is None:
        return Config()
    source = str(path)
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(source, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None
    return parse_config(raw, source=source, base_dir=path.resolve().parent)


def parse_config(raw: Mapping[str, Any], *, source: str, base_dir: Path) -> Config:
    """Validate a decoded TOML document into a :class:`Config`."""
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "webhooks":
            sections[name] = _webhooks(value, source)
            continue
        if name not in _SECTIONS:
            raise ConfigError(source, name, "unknown section")
        if not isinstance(value, dict):
            raise ConfigError(source, name, "must be a table, e.g. [" + name + "]")
        sections[name] = _parse_section(name, value, _SECTIONS[name], source)
    config = Config(**sections, source=source, base_dir=base_dir)
    if config.auth.signing_key and config.auth.signing_key_file:
        raise ConfigError(source, "auth.signing_key", "set signing_key or signing_key_file, not both")
    if config.auth.signing_key and len(config.auth.signing_key.encode()) < MIN_KEY_BYTES:
        raise ConfigError(source, "auth.signing_key", f"must be at least {MIN_KEY_BYTES} bytes")
    if not config.server.path.startswith("/"):
        raise ConfigError(source, "server.path", "must start with '/'")
    if bool(config.server.tls_cert) != bool(config.server.tls_key):
        key = "server.tls_key" if config.server.tls_cert else "server.tls_cert"
        raise ConfigError(source, key, "set tls_cert and tls_key together")
    if config.api.api_key and config.api.api_key_file:
        raise ConfigError(source, "api.api_key", "set api_key or api_key_file, not both")
    if config.api.api_key and len(config.api.api_key.encode()) < MIN_KEY_BYTES:
        raise ConfigError(source, "api.api_key", f"must be at least {MIN_KEY_BYTES} bytes")
    if "://" in config.storage.database and config.database_url is None:
        raise ConfigError(source, "storage.database", "must be a SQLite file path or a postgresql:// URL")
    broker = config.cluster.broker
    if broker and not broker.startswith(REDIS_SCHEMES):
        raise ConfigError(source, "cluster.broker", "must be empty or a redis:// URL")
    if broker and config.database_url is None:
        raise ConfigError(source, "cluster.broker", "several processes share a PostgreSQL database: set "
                                                    "storage.database to a postgresql:// URL")
    if not config.cluster.prefix or not config.cluster.prefix.isprintable():
        raise ConfigError(source, "cluster.prefix", "must be a non-empty string")
    if config.server.public_url and _url_origin(config.server.public_url) is None:
        raise ConfigError(source, "server.public_url", "must be an http:// or https:// URL, "
                                                       "e.g. https://chat.example.com")
    return config


def _url_origin(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def load_tls(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context when ``tls_cert``/``tls_key`` are set; ConfigError names the key."""
    server = config.server
    if not server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, key = config.resolve(server.tls_cert), config.resolve(server.tls_key)
    for name, path in (("server.tls_cert", cert), ("server.tls_key", key)):
        if not path.is_file():
            raise ConfigError(config.source, name, f"{path} does not exist")
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(config.source, "server.tls_cert",
                          f"cannot load {cert} with {key}: {getattr(exc, 'reason', None) or exc}") from None
    return context


def _parse_section(name: str, table: dict[str, Any], cls: type[Any], source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{name}.{key}"
        if key not in fields:
            raise ConfigError(source, dotted, "unknown key")
        default = fields[key].default
        values[key] = _check_value(dotted, value, default, source)
    return cls(**values)


def _check_value(dotted: str, value: Any, default: Any, source: str) -> Any:
    if dotted == "auth.signing_keys":
        return _named_keys(value, source)
    if dotted == "storage.room_retention_days":
        return _room_days(value, source)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(source, dotted, "must be a list of strings")
        return tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise ConfigError(source, dotted, f"must be {_type_name(default)}")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float):
            raise ConfigError(source, dotted, "must be a number")
        value = float(value)
    elif isinstance(default, int):
        if not isinstance(value, int):
            raise ConfigError(source, dotted, "must be an integer")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(source, dotted, "must be a string")
    low, high = _RANGES.get(dotted, (None, None))
    if low is not None and value < low:
        raise ConfigError(source, dotted, f"must be at least {low:g}")
    if high is not None and value > high:
        raise ConfigError(source, dotted, f"must be at most {high:g}")
    choices = _CHOICES.get(dotted)
    if choices is not None and value not in choices:
        raise ConfigError(source, dotted, "must be one of " + ", ".join(map(repr, choices)))
    return value


def _room_days(value: Any, source: str) -> tuple[tuple[int, float], ...]:
    key_name = "storage.room_retention_days"
    if not isinstance(value, dict):
        raise ConfigError(source, key_name, 'must be a table of room id = days, e.g. { "12" = 30 }')
    result = []
    for room, days in value.items():
        if not room.isascii() or not room.isdecimal() or int(room) < 1:
            raise ConfigError(source, f"{key_name}.{room}", "must be a room id")
        if isinstance(days, bool) or not isinstance(days, int | float) or days < 0:
            raise ConfigError(source, f"{key_name}.{room}", "must be a number of days, at least 0")
        result.append((int(room), float(days)))
    return tuple(sorted(result))


def _tables(value: Any, source: str, key_name: str, allowed: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """An array of tables (``[[key_name]]``), each as (where, table), unknown keys refused."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(source, key_name, f"must be an array of tables ([[{key_name}]])")
    tables = []
    for index, item in enumerate(value):
        where = f"{key_name}[{index}]"
        unknown = set(item) - allowed
        if unknown:
            raise ConfigError(source, f"{where}.{sorted(unknown)[0]}", "unknown key")
        tables.append((where, item))
    return tables


def _webhooks(value: Any, source: str) -> tuple[WebhookConfig, ...]:
    hooks: list[WebhookConfig] = []
    for where, item in _tables(value, source, "webhooks", {"url", "events", "secret"}):
        url, events, secret = item.get("url"), item.get("events"), item.get("secret")
        if not isinstance(url, str) or _url_origin(url) is None:
            raise ConfigError(source, f"{where}.url", "must be an http:// or https:// URL")
        if any(hook.url == url for hook in hooks):
            raise ConfigError(source, f"{where}.url", f"duplicate webhook URL {url!r}")
        if not isinstance(events, list) or not events or not all(isinstance(event, str) for event in events):
            raise ConfigError(source, f"{where}.events", "must be a non-empty list of event names")
        for event in events:
            if event not in WEBHOOK_EVENTS:
                raise ConfigError(source, f"{where}.events",
                                  f"unknown event {event!r}; one of " + ", ".join(WEBHOOK_EVENTS))
        if not isinstance(secret, str) or len(secret.encode()) < 16:
            raise ConfigError(source, f"{where}.secret", "must be a string of at least 16 bytes")
        hooks.append(WebhookConfig(url, tuple(dict.fromkeys(events)), secret))
    return tuple(hooks)


def _named_keys(value: Any, source: str) -> tuple[NamedKey, ...]:
    keys: list[NamedKey] = []
    for where, item in _tables(value, source, "auth.signing_keys", {"id", "key", "key_file"}):
        kid, key, key_file = item.get("id"), item.get("key", ""), item.get("key_file", "")
        if not isinstance(kid, str) or not kid:
            raise ConfigError(source, f"{where}.id", "must be a non-empty string")
        if not isinstance(key, str) or not isinstance(key_file, str):
            raise ConfigError(source, where, "key and key_file must be strings")
        if bool(key) == bool(key_file):
            raise ConfigError(source, where, "set exactly one of key and key_file")
        if key and len(key.encode()) < MIN_KEY_BYTES:
            raise ConfigError(source, f"{where}.key", f"must be at least {MIN_KEY_BYTES} bytes")
        if any(existing.id == kid for existing in keys):
            raise ConfigError(source, f"{where}.id", f"duplicate key id {kid!r}")
        keys.append(NamedKey(kid, key, key_file))
    return tuple(keys)


def _type_name(default: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[
        type(default)
    ]


def with_overrides(
    config: Config, *, host: str | None, port: int | None, database: str | None
) -> Config:
    """The config with ``serve``'s command-line overrides applied."""
    server = config.server
    if host is not None:
        server = dataclasses.replace(server, host=host)
    if port is not None:
        server = dataclasses.replace(server, port=port)
    storage = config.storage
    if database is not None:
        if not database.startswith(POSTGRES_SCHEMES):
            database = str(Path(database).resolve())
        storage = dataclasses.replace(storage, database=database)
    return dataclasses.replace(config, server=server, storage=storage)


CONFIG_TEMPLATE = '''\
# unichatd configuration. Every key is optional. The values shown are the defaults,
# except auth.signing_key, which `unichatd init` generated for this installation.
# Relative paths are relative to this file's directory.

[server]
host = "127.0.0.1"
port = 8000
path = "/ws/chat/"                # the WebSocket endpoint; any other path gets 404
allowed_origins = []              # e.g. ["https://chat.example.com"]; empty = the server's own origin only; ["*"] = any
max_message_bytes = 65536         # largest frame accepted; a larger one closes with 1009
ping_interval = 20                # seconds between keepalive pings; 0 disables them
ping_timeout = 20                 # seconds to wait for the pong before closing with 1011
pid_file = ""                     # written by `serve` when set; `stop` finds the server without it too
max_connections = 19000           # open connections; further handshakes get HTTP 503
max_connections_per_user = 32     # per user; further handshakes get HTTP 429
send_buffer_bytes = 1048576       # unsent bytes per connection before it is closed (1008)
web_client = true                 # serve the web chat client at /
metrics_token = ""                # when set, /metrics requires "Authorization: Bearer <token>";
                                  # when empty, /metrics answers loopback clients only
metrics_loopback_only = false     # with a metrics_token: also refuse clients off loopback
public_url = ""                   # where people reach the server, e.g. "https://chat.example.com"
tls_cert = ""                     # PEM certificate chain: serve wss:// natively (with tls_key)
tls_key = ""                      # PEM private key of tls_cert

[auth]
signing_key = "{signing_key}"  # HS256 key, at least 32 bytes; or:
# signing_key_file = "unichatd.key"  # a file holding the key (the default when neither is set)
token_ttl = 86400                 # default lifetime of `unichatd token` and `invite`, in seconds
renewable = true                  # clients may renew their token (refresh_token without a token)
# Key rotation: keys with ids; tokens carry the id as `kid`; the last entry signs new
# tokens, every entry (and signing_key, if set) verifies. SIGHUP reloads them.
# [[auth.signing_keys]]
# id = "2026-11"
# key_file = "keys/2026-11.key"

[storage]
database = "unichatd.db"          # a SQLite file, or "postgresql://user@host/dbname" (run `unichatd migrate` first)
retention_days = 0                # delete messages older than this many days; 0 keeps them forever
room_retention_days = {}          # per-room overrides, e.g. { "12" = 7 }
retention_interval = 300          # seconds between retention passes
files_dir = ""                    # uploaded files; empty = "<database>-files" beside the database
                                  # (for PostgreSQL, "unichatd-files" beside this file)

[limits]
messages_per_second = 10          # send_message rate per user, all connections together
message_burst = 20
max_content_chars = 4000
frames_per_second = 200           # frames of any type per connection
frame_burst = 400
max_file_bytes = 10485760         # largest upload (10 MiB)
upload_bytes_per_day = 1073741824 # per user, within any 24 hours (1 GiB)

[rooms]
users_can_create = true           # clients may create rooms and direct rooms and list users
presence_max_members = 100        # presence changes reach those sharing a room this small (or direct)

[log]
level = "info"                    # debug, info, warning, error
format = "json"                   # "json" (one object a line) or "console"

[cluster]                         # more than one process (README, "Scaling out")
broker = ""                       # "" = one process; "redis://127.0.0.1:6379/0" = several, through Redis
prefix = "unichatd"               # namespaces Redis keys and channels (installations sharing one Redis)

[api]                             # the server API for your application (HTTP, JSON)
host = "127.0.0.1"
port = 8001
api_key_file = "{api_key_file}"   # written by `unichatd init`; or api_key = "..." (at least 32 bytes)

# Webhooks: unichatd POSTs events to your application, signed with the secret.
# [[webhooks]]
# url = "https://app.example.com/chat-events"
# events = ["message_created", "room_created", "member_added", "member_removed"]
# secret = "a long random string"
'''


def render_config(signing_key: str, api_key_file: str) -> str:
    return CONFIG_TEMPLATE.replace("{signing_key}", signing_key).replace("{api_key_file}", api_key_file)
