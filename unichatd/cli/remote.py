"""The commands that talk to the running server: stop, status, send, tail."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..auth import mint_token
from ..config import Config
from ..errors import CommandFailed, ConfigError
from ..instance import Instance, running_instance
from ..keys import load_keyring
from ..protocol import MAX_ATTACHMENTS

EXIT_OK = 0
T = TypeVar("T")


def stop(config: Config, args: argparse.Namespace) -> int:
    pid_file = config.server.pid_file
    if pid_file:
        path = config.resolve(pid_file)
        try:
            pid = int(path.read_text().strip())
        except FileNotFoundError:
            raise CommandFailed(f"{path} does not exist: is the server running?") from None
        except ValueError:
            raise CommandFailed(f"{path} does not hold a process id") from None
    else:
        # Without a pid file, the server is the one holding the database's lock.
        instance = running_instance(config.instance_path)
        if instance is None:
            raise CommandFailed(f"no server is running on {config.database_name}")
        pid = instance.pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        if pid_file:
            config.resolve(pid_file).unlink(missing_ok=True)
        raise CommandFailed(f"no process {pid}" + (f" (stale {pid_file} removed)" if pid_file else "")) from None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return EXIT_OK
        time.sleep(0.05)
    raise CommandFailed(f"process {pid} did not exit within 30 s")


def _server_address(config: Config, args: argparse.Namespace) -> Instance:
    """Where the server is: --host/--port, else the server running on this database, else
    the config's address."""
    running = running_instance(config.instance_path)
    if running is not None:
        base = running
    else:
        server = config.server
        base = Instance(0, server.host, server.port, server.path, bool(server.tls_cert))
    return dataclasses.replace(base, host=args.host or base.host,
                               port=args.port if args.port is not None else base.port)


def _tls_context(config: Config, instance: Instance) -> ssl.SSLContext | None:
    """For a local TLS server: its own certificate is trusted, whatever name it carries."""
    if not instance.tls:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    # The configured certificate itself is trusted, even without its issuer at hand.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if config.server.tls_cert:
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_verify_locations(config.resolve(config.server.tls_cert))
    return context


def status(config: Config, args: argparse.Namespace) -> int:
    instance = _server_address(config, args)
    url = f"{instance.http_url}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5, context=_tls_context(config, instance)) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise CommandFailed(f"no server answers at {url}: {exc}") from None
    print(body)
    return EXIT_OK


def _client_for(config: Config, args: argparse.Namespace) -> tuple[str, str, ssl.SSLContext | None]:
    """The server's URL, a short-lived token for ``args.user_id`` under their stored name,
    and the TLS context to reach it with."""
    keys = load_keyring(config, create=False)
    from .local import open_admin

    admin = open_admin(config)
    try:
        username, first_name = admin.user_names(args.user_id)
    finally:
        admin.close()
    instance = _server_address(config, args)
    token = mint_token(keys, args.user_id, username, first_name=first_name, ttl=3600)
    return instance.ws_url, token, _tls_context(config, instance)


def send(config: Config, args: argparse.Namespace) -> int:
    from ..client import ChatClient

    if not args.content.strip() and not args.file:
        raise ConfigError("command line", "TEXT", "give the message text, or --file")
    if len(args.file) > MAX_ATTACHMENTS:
        raise ConfigError("command line", "--file", f"at most {MAX_ATTACHMENTS} files a message")
    for path in args.file:
        if not Path(path).is_file():
            raise ConfigError("command line", "--file", f"{path} is not a readable file")
    url, token, tls = _client_for(config, args)

    async def post() -> int:
        async with ChatClient(url, token, reconnect=False, ssl=tls) as chat:
            files = [await chat.upload(path) for path in args.file]
            message = await chat.send(args.room_id, args.content, reply_to=args.reply_to,
                                      attachments=[file["id"] for file in files])
            return int(message["id"])

    print(_talk(post(), url, refused="the server refused the message"))
    return EXIT_OK


def tail(config: Config, args: argparse.Namespace) -> int:
    import orjson

    from ..client import ChatClient

    url, token, tls = _client_for(config, args)

    def show(message: dict[str, object]) -> None:
        if args.json:
            print(orjson.dumps(message).decode(), flush=True)
        else:
            sender = message["sender"]
            name = sender["username"] if isinstance(sender, dict) else "?"
            print(f"{message['timestamp']} #{message['id']} {name}: {message['content']}", flush=True)

    async def follow() -> None:
        async with ChatClient(url, token, ssl=tls) as chat:
            await chat.subscribe(args.room_id, args.since)
            async for event in chat:
                if event["type"] == "new_message" and event["room_id"] == args.room_id:
                    show(event["message"])
                elif event["type"] == "unsubscribed" and event.get("room_id") == args.room_id:
                    raise CommandFailed(f"unsubscribed from room {args.room_id}: {event.get('reason', '')}")

    _talk(follow(), url, refused="the server refused")
    return EXIT_OK


def _talk(conversation: Coroutine[Any, Any, T], url: str, *, refused: str) -> T:
    """Run a client conversation; its failures become the command's."""
    import asyncio

    from ..client import ClientRequestError, ConnectionLost

    try:
        return asyncio.run(conversation)
    except ClientRequestError as exc:
        raise CommandFailed(f"{refused}: {exc}") from None
    except (ConnectionLost, OSError, TimeoutError) as exc:
        raise CommandFailed(f"cannot reach the server at {url}: {exc}") from None
