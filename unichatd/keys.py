"""The signing keys a config names: inline, in key files, or a generated ``unichatd.key``."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .auth import KeyRing
from .config import MIN_KEY_BYTES, Config
from .errors import ConfigError


def load_signing_key(config: Config, *, create: bool) -> str:
    """The HS256 key: inline, from ``signing_key_file``, or ``unichatd.key`` (made if asked).

    Returns the key text; a key file is read with surrounding white space stripped.
    """
    if config.auth.signing_key:
        return config.auth.signing_key
    path = config.key_path
    key_name = "auth.signing_key_file" if config.auth.signing_key_file else "auth.signing_key"
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if config.auth.signing_key_file or not create:
            raise ConfigError(config.source, key_name, f"key file {path} does not exist") from None
        key = secrets.token_hex(32)
        write_private_file(path, key + "\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(config.source, key_name, f"cannot read key file {path}: {exc}") from None
    if len(key.encode()) < MIN_KEY_BYTES:
        raise ConfigError(
            config.source, key_name, f"key in {path} must be at least {MIN_KEY_BYTES} bytes"
        )
    return key


def load_api_key(config: Config) -> str | None:
    """The server API's key (inline or from ``api.api_key_file``), or None: the API is off."""
    api = config.api
    if api.api_key:
        return api.api_key
    if not api.api_key_file:
        return None
    path = config.resolve(api.api_key_file)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(config.source, "api.api_key_file",
                          f"cannot read key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(key.encode()) < MIN_KEY_BYTES:
        raise ConfigError(config.source, "api.api_key_file", f"key in {path} must be at least {MIN_KEY_BYTES} bytes")
    return key


def load_keyring(config: Config, *, create: bool) -> KeyRing:
    """Every key tokens are checked against; see :class:`~unichatd.auth.KeyRing`."""
    named = config.auth.signing_keys
    if not named:
        return KeyRing.single(load_signing_key(config, create=create))
    keys: dict[str, str] = {}
    for index, entry in enumerate(named):
        if entry.key:
            keys[entry.id] = entry.key
            continue
        path = config.resolve(entry.key_file)
        where = f"auth.signing_keys[{index}].key_file"
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(config.source, where, f"cannot read key file {path}: {exc}") from None
        if len(secret.encode()) < MIN_KEY_BYTES:
            raise ConfigError(config.source, where, f"key in {path} must be at least {MIN_KEY_BYTES} bytes")
        keys[entry.id] = secret
    legacy = None
    if config.auth.signing_key or config.auth.signing_key_file:
        legacy = load_signing_key(config, create=False)
    newest = named[-1].id
    return KeyRing((newest, keys[newest]), keys, legacy)


def write_private_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600, refusing to overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
