"""One connection: its identity, its subscriptions, and the dispatch of its requests.

A session never touches a socket.  It writes through a :class:`Sink`, which the server
implements over a websockets connection and the tests can implement over a list.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import structlog

from . import protocol
from .auth import TOKEN_EXPIRED, Identity, verify_token
from .chat import ROOM_UPDATE_PIGGYBACK, Chat
from .errors import AuthError, ClientError, CloseConnection, RateLimited
from .limits import FloodGuard, TokenBucket
from .log import switches
from .store import Stored

log = structlog.get_logger("unichatd.session")

CATCH_UP_LIMIT = 100
REPLIES_OWED_TIMEOUT = 5.0
CLOSE_AUTH = 4001
CLOSE_POLICY = 1008


class Sink(Protocol):
    """Where a session's frames go."""

    def send(self, frame: bytes) -> None:
        """Queue one text frame without waiting."""

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection with ``code``; later sends are dropped."""


class _Reply:
    """A place in the order of a connection's replies (protocol.md §5, "Reply order")."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes | None = None) -> None:
        self.frame = frame
        """The reply; None while it is still owed (b"" when nothing is to be sent)."""


class Session:
    """The state of one authenticated connection."""

    __slots__ = (
        "conn_id", "identity", "user_id", "chat", "_sink", "send", "closed", "draining",
        "pending_room_updates", "room_updates_since", "_catching_up", "_caught_up_to",
        "_frames", "_frame_flood", "_send_flood", "_expiry", "_replies", "_replies_out", "_close_after_replies",
        "__weakref__",
    )

    def __init__(self, conn_id: int, identity: Identity, sink: Sink, chat: Chat) -> None:
        self.conn_id = conn_id
        self.identity = identity
        self.user_id = identity.user_id
        """Fixed for the connection's life: a refreshed token must name the same user."""
        self.chat = chat
        self._sink = sink
        self.send: Callable[[bytes], None] = sink.send
        """Queue a frame now: broadcasts, and replies when none is owed before them."""
        self.closed = False
        self.draining = False
        """Set at shutdown: frames received from now on are not executed."""
        self._replies: collections.deque[_Reply] | None = None
        """Replies waiting for an earlier one (a send's ack waits for its commit)."""
        self._replies_out: asyncio.Future[None] | None = None
        self._close_after_replies: tuple[int, str] | None = None
        """(code, reason) of a close that waits for the replies still owed."""
        self.pending_room_updates: set[int] | None = None
        """Rooms whose room_updated this connection is owed (see Chat.flush_room_updates_of)."""
        self.room_updates_since = 0.0
        """When the oldest of those became owed (time.monotonic())."""
        self._catching_up: dict[int, list[tuple[bytes, int | None]]] = {}
        self._caught_up_to: dict[int, int] = {}
        """room → the last message id a catch-up history carried, while broadcasts of
        messages it already held may still be on their way (see _subscribe)."""
        limits = chat.config.limits
        self._frames = TokenBucket(limits.frames_per_second, limits.frame_burst)
        # Past twice the burst of refusals within a second, the client ignores retry_after_ms.
        self._frame_flood = FloodGuard(2 * limits.frame_burst)
        self._send_flood = FloodGuard(2 * limits.message_burst)
        self._expiry: asyncio.TimerHandle | None = None


    def apply_limits(self) -> None:
        """Adopt the chat's current frame limits (after a config reload)."""
        limits = self.chat.config.limits
        self._frames.rate, self._frames.burst = limits.frames_per_second, limits.frame_burst
        self._frame_flood.limit = 2 * limits.frame_burst
        self._send_flood.limit = 2 * limits.message_burst

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        await self.chat.connect(self)
        self._schedule_expiry()
        self.send(protocol.connection_established_frame(self.user_id, self.identity.username))

    def close(self, code: int, reason: str) -> None:
        """Stop executing frames and close; replies still owed (acks of committed sends)
        go out first, within REPLIES_OWED_TIMEOUT."""
        if self.closed:
            return
        self.closed = True
        if not self._replies:
            self._sink.close(code, reason)
            return
        self._close_after_replies = (code, reason)
        # A store that never answers must not keep the connection open.
        asyncio.get_running_loop().call_later(REPLIES_OWED_TIMEOUT, self._close_now)

    def _close_now(self) -> None:
        if self._close_after_replies is not None:
            code, reason = self._close_after_replies
            self._close_after_replies = None
            self._sink.close(code, reason)

    def closed_by_peer(self) -> None:
        """The connection is gone: leave every room."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self.chat.disconnect(self)

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, self.identity.expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self.close, CLOSE_AUTH, TOKEN_EXPIRED
        )

    # -- outgoing --------------------------------------------------------------

    def deliver(self, room_id: int, frame: bytes, message_id: int | None) -> None:
        if self._catching_up:
            buffered = self._catching_up.get(room_id)
            if buffered is not None:
                buffered.append((frame, message_id))
                return
        if self._caught_up_to and message_id is not None:
            caught_up_to = self._caught_up_to.get(room_id)
            if caught_up_to is not None:
                if message_id <= caught_up_to:
                    return  # history carried it already
                # A room's broadcasts come in id order: nothing older can follow.
                del self._caught_up_to[room_id]
        self.send(frame)
        if self.pending_room_updates and time.monotonic() - self.room_updates_since >= ROOM_UPDATE_PIGGYBACK:
            self.chat.flush_room_updates_of(self)

    def send_error(self, error: ClientError) -> None:
        stats = self.chat.stats
        stats.errors[error.code] += 1
        if isinstance(error, RateLimited):
            stats.rate_limited += 1
        if switches.debug:
            log.debug("error.sent", conn_id=self.conn_id, user_id=self.user_id, code=error.code)
        self.reply(protocol.error_frame(error))

    # -- replies in request order ------------------------------------------------

    def reply(self, frame: bytes) -> None:
        """Send the direct reply to a request, after every reply still owed before it."""
        replies = self._replies
        if replies:
            replies.append(_Reply(frame))
        else:
            self.send(frame)

    def _reserve_reply(self) -> _Reply:
        if self._replies is None:
            self._replies = collections.deque()
        slot = _Reply()
        self._replies.append(slot)
        return slot

    def _fulfil(self, slot: _Reply, frame: bytes) -> None:
        slot.frame = frame
        replies = self._replies
        assert replies is not None
        while replies and (ready := replies[0].frame) is not None:
            replies.popleft()
            if ready:
                self.send(ready)
        if not replies:
            if self._replies_out is not None:
                if not self._replies_out.done():
                    self._replies_out.set_result(None)
                self._replies_out = None
            self._close_now()

    async def _replies_sent(self) -> None:
        """Wait until no reply is owed (before answers that live frames follow)."""
        if self._replies:
            if self._replies_out is None:
                self._replies_out = asyncio.get_running_loop().create_future()
            await self._replies_out

    # -- incoming --------------------------------------------------------------

    async def handle_text(self, text: str) -> None:
        """Answer one text frame; errors become ``error`` frames, never exceptions."""
        if self.closed or self.draining:
            return  # closing (expired token, flood, slow consumer, shutdown): nothing more is executed
        request: protocol.Request | None = None
        try:
            try:
                request = protocol.parse_request(
                    text, max_content_chars=self.chat.config.limits.max_content_chars
                )
            except ClientError:
                self._check_frame_rate(text)  # a refused frame costs a token like any other
                raise
            if type(request) is not protocol.SendMessage:
                # Sends are limited by the user's message bucket alone (protocol.md §5,
                # "Limits compose"): raising messages_per_second lets a bot send faster.
                self._check_frame_rate(text)
            pending = _HANDLERS[type(request)](self, request)
            if pending is not None:
                await pending
        except RateLimited as exc:
            if request is not None:
                exc.request_id = request.request_id
                exc.room_id = exc.room_id or getattr(request, "room_id", None)
                if isinstance(request, protocol.SendMessage):
                    exc.client_msg_id = request.client_msg_id
                    if self._send_flood.refused():
                        self.chat.stats.flood_closes += 1
                        self.close(CLOSE_POLICY, "rate limit exceeded")
                        return
            self.send_error(exc)
        except ClientError as exc:
            if request is not None:
                if exc.request_id is None:
                    exc.request_id = request.request_id
                if isinstance(request, protocol.SendMessage):
                    exc.client_msg_id = request.client_msg_id
            self.send_error(exc)
        except CloseConnection as exc:
            self.close(exc.code, exc.reason)
        except Exception:
            log.exception("request.failed", conn_id=self.conn_id, user_id=self.user_id,
                          request=type(request).__name__)
            self.send_error(ClientError(
                "internal_error", "the server failed to handle this request",
                request_id=request.request_id if request is not None else None,
                room_id=getattr(request, "room_id", None),
                client_msg_id=getattr(request, "client_msg_id", None),
            ))

    def handle_binary(self) -> None:
        if self.closed:
            return
        try:
            self._check_frame_rate(None)
        except RateLimited as exc:
            self.send_error(exc)
            return
        except CloseConnection as exc:
            self.close(exc.code, exc.reason)
            return
        self.send_error(ClientError("unsupported_frame", "binary frames are not supported; send JSON text"))

    def _check_frame_rate(self, text: str | None) -> None:
        """Every frame, of any type, takes a token from the connection's bucket."""
        wait_ms = self._frames.take()
        if not wait_ms:
            return
        if self._frame_flood.refused():
            self.chat.stats.flood_closes += 1
            raise CloseConnection(CLOSE_POLICY, "rate limit exceeded")
        refusal = RateLimited(wait_ms)
        if text is not None:  # the client still needs to tell which request this answers
            refusal.request_id, refusal.room_id, refusal.client_msg_id = protocol.peek_ids(text)
        raise refusal

    # -- requests ----------------------------------------------------------------

    async def _subscribe(self, request: protocol.Subscribe) -> None:
        room_id = request.room_id
        chat = self.chat
        await chat.ensure_access(room_id, self.user_id)
        # The room's live frames follow `subscribed` (and `history`), so those go out now,
        # not queued behind a send's ack that is still owed.
        await self._replies_sent()
        chat.check_access(room_id, self.user_id)
        if request.last_message_id is None:
            chat.hub.subscribe(room_id, self)
            if switches.debug:
                log.debug("room.subscribed", conn_id=self.conn_id, user_id=self.user_id, room_id=room_id)
            self.send(protocol.subscribed_frame(room_id, request.request_id))
            return
        # Catch-up without gap or duplicate:
        # 1. join the room first, holding back its live frames;
        # 2. read what was committed after the client's last message (this read sees
        #    at least every message whose broadcast happened before step 1, and a message
        #    committed after it is broadcast after step 1, so it is held);
        # 3. send subscribed and history;
        # 4. release the held frames, skipping messages that history already carried;
        # 5. messages committed before the read but broadcast after step 4 (their commit
        #    callbacks had not run yet) are skipped by deliver(), up to history's last id.
        joined = chat.hub.subscribe(room_id, self)
        held: list[tuple[bytes, int | None]] = []
        self._catching_up[room_id] = held
        try:
            messages, has_more = await chat.store.history(
                room_id, before_id=None, after_id=request.last_message_id, limit=CATCH_UP_LIMIT
            )
            # Removed from the room while the read ran (and told `unsubscribed` already)?
            chat.check_access(room_id, self.user_id)
            if not chat.hub.is_subscribed(room_id, self):
                raise ClientError("access_denied", "you are not a participant of this room", room_id=room_id)
        except BaseException:
            if joined:  # a subscription that existed before this request stays
                chat.hub.unsubscribe(room_id, self)
            raise
        finally:
            self._catching_up.pop(room_id, None)
            # Between steps 2 and 3 nothing is awaited, so no frame can slip past `held`.
        if switches.debug:
            log.debug("room.subscribed", conn_id=self.conn_id, user_id=self.user_id, room_id=room_id,
                      caught_up=len(messages))
        self.send(protocol.subscribed_frame(room_id, request.request_id))
        truncated = chat.pruned_through(room_id) > request.last_message_id
        self.send(protocol.history_frame(room_id, messages, has_more, None, truncated=truncated))
        seen = messages[-1].id if messages else request.last_message_id
        for frame, message_id in held:
            if message_id is None or message_id > seen:
                self.send(frame)
        if messages and not any(message_id is not None and message_id >= seen for _, message_id in held):
            self._caught_up_to[room_id] = seen

    async def _unsubscribe(self, request: protocol.Unsubscribe) -> None:
        await self.chat.ensure_access(request.room_id, self.user_id)
        self.chat.hub.unsubscribe(request.room_id, self)
        self._caught_up_to.pop(request.room_id, None)
        self.reply(protocol.unsubscribed_frame(request.room_id, request.request_id))

    async def _send_message(self, request: protocol.SendMessage) -> None:
        future = await self.chat.submit_message(self, request)
        # The ack is owed from now on: replies to later requests wait for it.
        future.add_done_callback(partial(self._message_stored, request, self._reserve_reply()))

    def _message_stored(self, request: protocol.SendMessage, slot: _Reply, future: asyncio.Future[Stored]) -> None:
        if future.cancelled():
            self._fulfil(slot, b"")
            return
        exc = future.exception()
        if exc is not None:
            if switches.debug:  # (the store logged the cause, once)
                log.debug("message.store_failed", conn_id=self.conn_id, room_id=request.room_id, error=str(exc))
            error = ClientError("internal_error", "the message could not be stored", room_id=request.room_id,
                                request_id=request.request_id, client_msg_id=request.client_msg_id)
            self.chat.stats.errors[error.code] += 1
            self._fulfil(slot, protocol.error_frame(error))
            return
        stored = future.result()
        wire = stored.message.to_wire()
        self._fulfil(slot, protocol.message_ack_frame(stored.message, request.request_id, wire))
        self.chat.message_stored(self, stored, wire)

    def _mark_read(self, request: protocol.MarkRead) -> Awaitable[None]:
        return self.chat.mark_read(self, request)

    def _typing(self, request: protocol.Typing) -> Awaitable[None]:
        return self.chat.typing(self, request)

    def _room_list(self, request: protocol.GetRoomList) -> None:
        self.reply(protocol.room_list_frame(self.chat.room_list(self.user_id), request.request_id))

    async def _history(self, request: protocol.GetHistory) -> None:
        await self.chat.ensure_access(request.room_id, self.user_id)
        messages, has_more = await self.chat.store.history(
            request.room_id,
            before_id=request.before_id,
            after_id=request.after_id,
            limit=request.limit,
        )
        pruned_through = self.chat.pruned_through(request.room_id)
        if request.after_id is not None:
            truncated = pruned_through > request.after_id
        else:  # the page reached the oldest message left, and retention deleted older ones
            truncated = not has_more and pruned_through > 0
        self.reply(protocol.history_frame(request.room_id, messages, has_more, request.request_id,
                                          truncated=truncated))

    async def _refresh_token(self, request: protocol.RefreshToken) -> None:
        try:
            identity = verify_token(request.token, self.chat.keyring)
        except AuthError as exc:
            raise ClientError("invalid_message", f"token refused: {exc.reason}") from None
        if identity.user_id != self.user_id:
            raise ClientError("invalid_message", "token refused: it is for another user")
        # A new name in the token is the user's name from now on, in history too.
        await self.chat.remember_user(identity)
        self.identity = identity
        self._schedule_expiry()
        self.reply(protocol.token_refreshed_frame(identity.expires_at, request.request_id))

    def _ping(self, request: protocol.Ping) -> None:
        self.reply(protocol.pong_frame(request.request_id))

    def _help(self, request: protocol.Help) -> None:
        self.reply(protocol.help_frame(request.request_id))

    def _whoami(self, request: protocol.WhoAmI) -> None:
        identity = self.identity
        self.reply(protocol.whoami_frame(
            identity.user_id, identity.username, identity.first_name,
            tuple(self.chat.hub.rooms_of(self)), identity.expires_at, request.request_id,
        ))


_HANDLERS: dict[type, Callable[[Session, Any], Awaitable[None] | None]] = {
    protocol.Subscribe: Session._subscribe,
    protocol.Unsubscribe: Session._unsubscribe,
    protocol.SendMessage: Session._send_message,
    protocol.MarkRead: Session._mark_read,
    protocol.Typing: Session._typing,
    protocol.GetRoomList: Session._room_list,
    protocol.GetHistory: Session._history,
    protocol.RefreshToken: Session._refresh_token,
    protocol.Ping: Session._ping,
    protocol.Help: Session._help,
    protocol.WhoAmI: Session._whoami,
}
