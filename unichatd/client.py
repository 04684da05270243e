"""A small async client for scripts and bots, over one unichatd WebSocket.

    async with ChatClient(url, token) as chat:
        await chat.subscribe(1)
        message = await chat.send(1, "deploy finished")
        async for event in chat:
            print(event["type"], event)

Replies are matched to requests by ``request_id``; everything else (``new_message``,
``typing``, ``room_updated``, …) comes out of the async iteration.  With ``reconnect``
on, a lost connection is re-opened with exponential backoff and jitter, every room is
re-subscribed with the last message id seen, and the messages missed meanwhile come out
of the iteration as ``new_message`` events, once each.  ``send`` gives every message a
``client_msg_id``, so a send retried across a reconnect is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mimetypes
import os
import random
import ssl as ssl_module
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from .errors import CloseCode, UnichatError

DEFAULT_UPLOAD_CHUNK = 32 * 1024
"""Bytes per binary frame of an upload when the server does not say (``chunk_bytes``)."""


class ClientRequestError(UnichatError):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.code: str = frame.get("code", "")
        self.frame = frame


class ConnectionLost(UnichatError):
    """The connection closed and ``reconnect`` is off (or the server refused us for good)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".strip())
        self.code = code
        self.reason = reason


class Disconnected(UnichatError):
    """The connection dropped while a request was in flight; the client is reconnecting."""


_PERMANENT_CLOSE_CODES = {CloseCode.AUTH, CloseCode.POLICY_VIOLATION}


class ChatClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        reconnect: bool = True,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        request_timeout: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.ssl = ssl
        """TLS context for a ``wss://`` URL (None: the system's trusted certificates)."""
        self.token = token
        self.reconnect = reconnect
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.user: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._rooms: dict[int, int] = {}
        """Subscribed room → the largest message id seen in it."""
        self._revisions: dict[int, int] = {}
        """Subscribed room → the largest revision seen in it (edits and reactions missed
        while disconnected come back as ``message_updated`` events)."""
        self._unfinished_changes: dict[int, int] = {}
        """Room → the newest revision seen while the changes missed are still being paged
        in (``_revisions`` stays at what the pages reached, in case the paging breaks off)."""
        self._ids = itertools.count(1)
        self._connected = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._paging: dict[int, list[dict[str, Any]]] = {}
        """Room → live messages held while its catch-up is paged."""
        self._closing = False
        self._upload_lock = asyncio.Lock()
        self.reconnects = 0

    async def __aenter__(self) -> ChatClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- connection -------------------------------------------------------------

    async def connect(self) -> None:
        self._ws = await self._open()
        self._reader = asyncio.create_task(self._read_forever())
        self._reader.add_done_callback(self._reader_ended)

    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        # A reader that dies of a bug must not leave requests and iterators waiting forever.
        if task.cancelled() or task.exception() is None:
            return
        self._connected.clear()
        self._fail_all(ConnectionLost(None, f"client reader failed: {task.exception()!r}"))

    async def _open(self) -> ClientConnection:
        separator = "&" if "?" in self.url else "?"
        options: dict[str, Any] = {"ssl": self.ssl} if self.ssl is not None else {}
        ws = await websockets.connect(f"{self.url}{separator}token={self.token}", compression=None,
                                      open_timeout=self.request_timeout, **options)
        try:
            first = orjson.loads(await asyncio.wait_for(ws.recv(), self.request_timeout))
        except websockets.ConnectionClosed as exc:
            raise ConnectionLost(exc.rcvd.code if exc.rcvd else None,
                                 exc.rcvd.reason if exc.rcvd else "") from None
        if first.get("type") != "connection_established":
            await ws.close()
            raise ConnectionLost(None, f"unexpected first frame {first.get('type')!r}")
        self.user = first
        self._connected.set()
        return ws

    async def close(self) -> None:
        self._closing = True
        for task in (self._reader, *self._background):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(None, "client closed"))
        self._pending.clear()
        if self._ws is not None:
            await self._ws.close()

    async def _read_forever(self) -> None:
        backoff = self.initial_backoff
        while True:
            assert self._ws is not None
            try:
                async for raw in self._ws:
                    self._dispatch(orjson.loads(raw))
                    backoff = self.initial_backoff
                code, reason = self._ws.close_code, self._ws.close_reason or ""
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
            self._connected.clear()
            if self._closing:
                return
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(Disconnected())
            self._pending.clear()
            if not self.reconnect or code in _PERMANENT_CLOSE_CODES:
                self._fail_all(ConnectionLost(code, reason))
                return
            # Reconnect with exponential backoff and jitter, then catch up every room.
            while not self._closing:
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(self.max_backoff, backoff * 2)
                try:
                    self._ws = await self._open()
                except (OSError, websockets.WebSocketException, TimeoutError):
                    continue
                except ConnectionLost as exc:
                    self._fail_all(exc)
                    return
                try:
                    # A copy: subscribe() may add a room while the re-subscribes are written.
                    for room_id, last_id in tuple(self._rooms.items()):
                        frame = {"type": "subscribe_room", "room_id": room_id, "last_message_id": last_id}
                        if room_id in self._revisions:
                            frame["since_revision"] = self._revisions[room_id]
                        await self._write(frame)
                except websockets.ConnectionClosed:
                    continue  # lost again while catching up: back round the loop
                self.reconnects += 1
                break

    def _fail_all(self, exc: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()
        self._events.put_nowait(exc)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        request_id = frame.get("request_id")
        if kind != "error" and "room_id" in frame:
            carried = frame.get("message")
            revision = frame.get("revision", carried.get("revision") if isinstance(carried, dict) else None)
            if isinstance(revision, int):
                self._saw_revision(frame["room_id"], revision)
        if kind == "history" and request_id is None:
            # The catch-up of a (re)subscribe: changes first, then the missed messages as live ones.
            for changed in frame.get("changed", ()):
                self._emit_change(changed)
            if frame.get("changed_has_more") and frame.get("changed"):
                self._unfinished_changes[frame["room_id"]] = 0
                self._in_background(self._changes_on(frame["room_id"], frame["changed"][-1]["revision"]))
            messages = frame.get("messages", [])
            for message in messages:
                self._emit_message(message)
            if frame.get("has_more") and messages:
                # Live messages of this room wait until the pages before them are out.
                self._paging[frame["room_id"]] = []
                self._in_background(self._page_on(frame["room_id"], messages[-1]["id"]))
            return
        if isinstance(request_id, str) and request_id in self._pending:
            future = self._pending.pop(request_id)
            if not future.done():
                future.set_result(frame)
            return
        if kind == "new_message":
            held = self._paging.get(frame["room_id"])
            if held is not None:
                held.append(frame["message"])
            else:
                self._emit_message(frame["message"])
            return
        self._events.put_nowait(frame)

    async def _page_on(self, room_id: int, after_id: int) -> None:
        """Fetch the rest of a catch-up that did not fit in one history frame."""
        try:
            with contextlib.suppress(Disconnected, ClientRequestError, TimeoutError):
                while True:
                    page = await self.history(room_id, after_id=after_id, limit=100)
                    for message in page["messages"]:
                        self._emit_message(message)
                    if not page["has_more"] or not page["messages"]:
                        return
                    after_id = page["messages"][-1]["id"]
        finally:
            for message in self._paging.pop(room_id, []):
                self._emit_message(message)  # (those the pages already carried are skipped)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _changes_on(self, room_id: int, since_revision: int) -> None:
        """Fetch the rest of the changes missed, past what the catch-up carried."""
        finished = False
        try:
            with contextlib.suppress(Disconnected, ClientRequestError, TimeoutError):
                while True:
                    page = await self.changes(room_id, since_revision)
                    for message in page["messages"]:
                        if message["id"] <= self._rooms.get(room_id, 0):
                            self._emit_change(message)
                    if page["messages"]:
                        since_revision = page["messages"][-1]["revision"]
                        self._raise_revision(room_id, since_revision)
                    if not page["has_more"] or not page["messages"]:
                        finished = True
                        return
        finally:
            newest = self._unfinished_changes.pop(room_id, 0)
            if finished:  # (else the next catch-up starts again from what the pages reached)
                self._raise_revision(room_id, newest)

    def _saw_revision(self, room_id: int, revision: int) -> None:
        if room_id in self._unfinished_changes:
            self._unfinished_changes[room_id] = max(self._unfinished_changes[room_id], revision)
        else:
            self._raise_revision(room_id, revision)

    def _raise_revision(self, room_id: int, revision: int) -> None:
        if room_id in self._rooms and revision > self._revisions.get(room_id, 0):
            self._revisions[room_id] = revision

    def _emit_change(self, message: dict[str, Any]) -> None:
        self._saw_revision(message["room_id"], message["revision"])
        self._events.put_nowait({"type": "message_updated", "room_id": message["room_id"], "message": message})

    def _emit_message(self, message: dict[str, Any]) -> None:
        room_id, message_id = message["room_id"], message["id"]
        if "revision" in message:
            self._saw_revision(room_id, message["revision"])
        if room_id in self._rooms:
            if message_id <= self._rooms[room_id]:
                return  # already handed out
            self._rooms[room_id] = message_id
        self._events.put_nowait({"type": "new_message", "room_id": room_id, "message": message})

    async def _write(self, frame: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send(orjson.dumps(frame).decode())

    # -- requests ---------------------------------------------------------------

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` and return its direct reply; an ``error`` reply raises.

        Raises :class:`Disconnected` when the connection drops before the reply came.
        """
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        async with asyncio.timeout_at(deadline):
            await self._connected.wait()
            request_id = f"c{next(self._ids)}"
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            try:
                try:
                    await self._write({**frame, "request_id": request_id})
                except websockets.ConnectionClosed:
                    raise Disconnected() from None
                reply = await future
            finally:
                self._pending.pop(request_id, None)
        if reply.get("type") == "error":
            raise ClientRequestError(reply)
        return reply

    async def subscribe(self, room_id: int, last_message_id: int | None = None) -> dict[str, Any]:
        """Subscribe; with ``last_message_id`` the missed messages come out of the iteration.

        Without it, only messages from now on come out — after a reconnect as well: the
        room's latest message id is fetched so a re-subscribe catches up from there.
        """
        frame: dict[str, Any] = {"type": "subscribe_room", "room_id": room_id}
        if last_message_id is not None:
            frame["last_message_id"] = last_message_id
            self._rooms.setdefault(room_id, last_message_id)
            return await self.request(frame)
        reply = await self.request(frame)
        latest = await self.history(room_id, limit=1)
        newest = latest["messages"][-1]["id"] if latest["messages"] else 0
        self._rooms[room_id] = max(self._rooms.get(room_id, 0), newest)
        return reply

    async def unsubscribe(self, room_id: int) -> dict[str, Any]:
        self._rooms.pop(room_id, None)
        self._revisions.pop(room_id, None)
        self._unfinished_changes.pop(room_id, None)
        return await self.request({"type": "unsubscribe_room", "room_id": room_id})

    async def send(self, room_id: int, content: str, *, reply_to: int | None = None,
                   client_msg_id: str | None = None, attachments: Sequence[int] = ()) -> dict[str, Any]:
        """Send a message and wait for its ack; a send retried after a reconnect is stored once.

        ``attachments``: ids of files from :meth:`upload` (``content`` may then be empty).
        """
        frame: dict[str, Any] = {"type": "send_message", "room_id": room_id, "content": content,
                                 "client_msg_id": client_msg_id or uuid.uuid4().hex}
        if reply_to is not None:
            frame["reply_to"] = reply_to
        if attachments:
            frame["attachments"] = list(attachments)
        while True:
            try:
                reply = await self.request(frame)
            except (Disconnected, websockets.ConnectionClosed):
                if not self.reconnect or self._closing:
                    raise
                continue  # same client_msg_id: the server answers with the original if it was stored
            message: dict[str, Any] = reply["message"]
            return message

    async def history(self, room_id: int, **paging: int) -> dict[str, Any]:
        return await self.request({"type": "get_history", "room_id": room_id, **paging})

    async def room_list(self) -> list[dict[str, Any]]:
        reply = await self.request({"type": "get_room_list"})
        rooms: list[dict[str, Any]] = reply["rooms"]
        return rooms

    async def mark_read(self, room_id: int, message_ids: list[int] | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "mark_read", "room_id": room_id}
        if message_ids:
            frame["message_ids"] = message_ids
        return await self.request(frame)

    async def edit(self, room_id: int, message_id: int, content: str) -> dict[str, Any]:
        """Replace the text of one's own message; returns the edited message."""
        reply = await self.request({"type": "edit_message", "room_id": room_id, "message_id": message_id,
                                    "content": content})
        message: dict[str, Any] = reply["message"]
        return message

    async def delete(self, room_id: int, message_id: int) -> dict[str, Any]:
        """Delete a message (one's own, or any in a room one owns); it stays as a tombstone."""
        return await self.request({"type": "delete_message", "room_id": room_id, "message_id": message_id})

    async def react(self, room_id: int, message_id: int, emoji: str, *, add: bool = True) -> list[dict[str, Any]]:
        """Add (or with ``add=False`` remove) one's emoji; returns the message's reactions."""
        reply = await self.request({"type": "add_reaction" if add else "remove_reaction", "room_id": room_id,
                                    "message_id": message_id, "emoji": emoji})
        reactions: list[dict[str, Any]] = reply["reactions"]
        return reactions

    async def thread(self, room_id: int, message_id: int, **paging: int) -> dict[str, Any]:
        """The thread ``message_id`` belongs to: ``root``, ``messages`` (replies), ``has_more``."""
        return await self.request({"type": "get_thread", "room_id": room_id, "message_id": message_id, **paging})

    async def search(self, query: str, *, room_id: int | None = None, before_id: int | None = None,
                     limit: int | None = None) -> dict[str, Any]:
        """Full-text search over one's rooms: ``messages`` newest first, each with a ``snippet``."""
        frame: dict[str, Any] = {"type": "search_messages", "query": query}
        for name, value in (("room_id", room_id), ("before_id", before_id), ("limit", limit)):
            if value is not None:
                frame[name] = value
        return await self.request(frame)

    async def changes(self, room_id: int, since_revision: int, *, limit: int | None = None) -> dict[str, Any]:
        """The room's messages changed after ``since_revision``, in revision order."""
        frame: dict[str, Any] = {"type": "get_changes", "room_id": room_id, "since_revision": since_revision}
        if limit is not None:
            frame["limit"] = limit
        return await self.request(frame)

    # -- people and rooms ------------------------------------------------------

    async def create_room(self, name: str, member_ids: Sequence[int] = ()) -> dict[str, Any]:
        """A new group room that this user owns; returns the room object."""
        reply = await self.request({"type": "create_room", "name": name, "member_ids": list(member_ids)})
        room: dict[str, Any] = reply["room"]
        return room

    async def create_direct(self, user_id: int) -> dict[str, Any]:
        """The one direct room with ``user_id`` (created on first use); returns the room object."""
        reply = await self.request({"type": "create_direct", "user_id": user_id})
        room: dict[str, Any] = reply["room"]
        return room

    async def add_members(self, room_id: int, user_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Add people to a room this user owns; returns its participants."""
        reply = await self.request({"type": "add_members", "room_id": room_id, "user_ids": list(user_ids)})
        participants: list[dict[str, Any]] = reply["participants"]
        return participants

    async def remove_members(self, room_id: int, user_ids: Sequence[int]) -> list[dict[str, Any]]:
        reply = await self.request({"type": "remove_members", "room_id": room_id, "user_ids": list(user_ids)})
        participants: list[dict[str, Any]] = reply["participants"]
        return participants

    async def rename_room(self, room_id: int, name: str) -> dict[str, Any]:
        return await self.request({"type": "rename_room", "room_id": room_id, "name": name})

    async def leave_room(self, room_id: int) -> dict[str, Any]:
        self._rooms.pop(room_id, None)
        return await self.request({"type": "leave_room", "room_id": room_id})

    async def users(self, query: str = "", *, limit: int | None = None) -> list[dict[str, Any]]:
        """Users whose username or first name starts with ``query``, with their presence."""
        frame: dict[str, Any] = {"type": "get_users", "query": query}
        if limit is not None:
            frame["limit"] = limit
        found: list[dict[str, Any]] = (await self.request(frame))["users"]
        return found

    async def presence(self, user_ids: Sequence[int]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await self.request({"type": "get_presence", "user_ids": list(user_ids)}))[
            "users"]
        return found

    async def upload(self, path: str | os.PathLike[str], *, name: str | None = None,
                     content_type: str | None = None) -> dict[str, Any]:
        """Store a file on the server; returns its file object (its ``id`` goes in
        ``send(..., attachments=[id])``)."""
        path = Path(path)
        data = await asyncio.to_thread(path.read_bytes)
        name = name or path.name
        content_type = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        async with self._upload_lock:  # one upload at a time on a connection
            ready = await self.request({"type": "upload_file", "name": name, "size": len(data),
                                        "content_type": content_type})
            assert self._ws is not None
            chunk = int(ready.get("chunk_bytes", DEFAULT_UPLOAD_CHUNK))
            for start in range(0, len(data), chunk):
                await self._ws.send(data[start:start + chunk])
            reply = await self.request({"type": "upload_done", "upload_id": ready["upload_id"]})
        file: dict[str, Any] = reply["file"]
        return file

    async def ping(self) -> dict[str, Any]:
        return await self.request({"type": "ping"})

    # -- events -----------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109  (public API)
        async with asyncio.timeout(timeout):
            item = await self._events.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.next_event()
            except ConnectionLost:
                return
