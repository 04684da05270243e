"""One connection: its identity, its subscriptions, and the dispatch of its requests.

A session never touches a socket.  It writes through a :class:`Sink`, which the server
implements over a websockets connection and the tests can implement over a list.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import structlog

from . import protocol
from .auth import TOKEN_EXPIRED, Identity, mint_token, verify_token
from .catchup import CatchUp
from .chat import Chat
from .clock import Timer
from .errors import AuthError, ClientError, CloseCode, CloseConnection, ErrorCode, RateLimited
from .files import IDLE_TIMEOUT as UPLOAD_IDLE_TIMEOUT
from .files import Upload
from .limits import FloodGuard, TokenBucket
from .log import switches
from .models import ReadResult, Stored

log = structlog.get_logger("unichatd.session")

CATCH_UP_LIMIT = 100
REPLIES_OWED_TIMEOUT = 5.0
UPLOAD_FREE_FRAME_BYTES = 1024
"""An upload's binary frames of at least this many bytes (or its last) take no frame token."""


class Sink(Protocol):
    """Where a session's frames go."""

    def send(self, frame: bytes) -> None:
        """Queue one text frame without waiting."""

    def close(self, code: CloseCode, reason: str) -> None:
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
        "conn_id", "identity", "user_id", "chat", "_sink", "send", "closed", "draining", "_catch_ups",
        "_frames", "_frame_flood", "_send_flood", "_expiry", "_replies", "_replies_out", "_close_after_replies",
        "_upload", "__weakref__",
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
        self._close_after_replies: tuple[CloseCode, str] | None = None
        """(code, reason) of a close that waits for the replies still owed."""
        self._catch_ups: dict[int, CatchUp] = {}
        """room → its catch-up, while live frames may still repeat history (see catchup)."""
        limits = chat.config.limits
        self._frames = TokenBucket(limits.frames_per_second, limits.frame_burst)
        # Past twice the burst of refusals within a second, the client ignores retry_after_ms.
        self._frame_flood = FloodGuard(2 * limits.frame_burst)
        self._send_flood = FloodGuard(2 * limits.message_burst)
        self._expiry: Timer | None = None
        self._upload: Upload | None = None
        """The upload whose bytes the next binary frames carry (protocol.md §6.3)."""

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

    def close(self, code: CloseCode, reason: str) -> None:
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
        self.chat.clock.call_later(REPLIES_OWED_TIMEOUT, self._close_now)

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
        self._end_upload()
        self.chat.disconnect(self)

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        clock = self.chat.clock
        delay = max(0.0, self.identity.expires_at - clock.time())
        self._expiry = clock.call_later(delay, self.close, CloseCode.AUTH, TOKEN_EXPIRED)

    # -- outgoing --------------------------------------------------------------

    def deliver(self, room_id: int | None, frame: bytes, message_id: int | None) -> None:
        if self._catch_ups and room_id is not None:
            catch_up = self._catch_ups.get(room_id)
            if catch_up is not None:
                if not catch_up.offer(frame, message_id):
                    return
                if catch_up.finished:
                    del self._catch_ups[room_id]
        self.send(frame)
        self.chat.updates.after_delivery(self)

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
                        self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
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
                ErrorCode.INTERNAL_ERROR, "the server failed to handle this request",
                request_id=request.request_id if request is not None else None,
                room_id=getattr(request, "room_id", None),
                client_msg_id=getattr(request, "client_msg_id", None),
            ))

    def handle_binary(self, data: bytes) -> None:
        if self.closed:
            return
        upload = self._upload
        if upload is not None:
            # An upload's bytes are bounded by its announced size, not by the frame rate;
            # but small frames (other than the last) are frames like any other, or a
            # client could send empty ones without end.
            if len(data) < UPLOAD_FREE_FRAME_BYTES and upload.received + len(data) < upload.size:
                try:
                    self._check_frame_rate(None)
                except RateLimited as exc:
                    self.send_error(exc)
                    return
                except CloseConnection as exc:
                    self.close(exc.code, exc.reason)
                    return
            try:
                self.chat.files.write(upload, data, self.chat.clock.monotonic())
            except ClientError as exc:
                self._end_upload()
                self.send_error(exc)
            except OSError as exc:
                log.error("upload.write_failed", conn_id=self.conn_id, error=str(exc))
                self._end_upload()
                self.send_error(ClientError(ErrorCode.INTERNAL_ERROR, "the file could not be written"))
            return
        try:
            self._check_frame_rate(None)
        except RateLimited as exc:
            self.send_error(exc)
            return
        except CloseConnection as exc:
            self.close(exc.code, exc.reason)
            return
        self.send_error(ClientError(ErrorCode.UNSUPPORTED_FRAME, "binary frames are not supported; send JSON text"))

    def _check_frame_rate(self, text: str | None) -> None:
        """Every frame, of any type, takes a token from the connection's bucket."""
        wait_ms = self._frames.take()
        if not wait_ms:
            return
        if self._frame_flood.refused():
            self.chat.stats.flood_closes += 1
            raise CloseConnection(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
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
        after_id = request.last_message_id
        if after_id is None:
            chat.broker.subscribe(room_id, self)
            if switches.debug:
                log.debug("room.subscribed", conn_id=self.conn_id, user_id=self.user_id, room_id=room_id)
            self.send(protocol.subscribed_frame(room_id, request.request_id))
            return
        # Join first, then read what was missed (see catchup).
        joined = chat.broker.subscribe(room_id, self)
        previous = self._catch_ups.get(room_id)
        catch_up = self._catch_ups[room_id] = CatchUp(previous.skipping_through if previous else 0)
        try:
            messages, has_more = await chat.store.history(
                room_id, before_id=None, after_id=after_id, limit=CATCH_UP_LIMIT
            )
            changed = None
            if request.since_revision is not None:
                changed = await chat.store.changes(room_id, since_revision=request.since_revision,
                                                   through_id=after_id, limit=CATCH_UP_LIMIT)
            # Removed from the room while the read ran (and told `unsubscribed` already)?
            chat.check_access(room_id, self.user_id)
            if not chat.broker.is_subscribed(room_id, self):
                raise ClientError.access_denied(room_id)
        except BaseException:
            self._catch_ups.pop(room_id, None)
            if joined:  # a subscription that existed before this request stays
                chat.broker.unsubscribe(room_id, self)
            raise
        # From here to the release nothing is awaited, so no frame can slip past the hold.
        if switches.debug:
            log.debug("room.subscribed", conn_id=self.conn_id, user_id=self.user_id, room_id=room_id,
                      caught_up=len(messages))
        self.send(protocol.subscribed_frame(room_id, request.request_id))
        truncated = chat.pruned_through(room_id) > after_id
        self.send(protocol.history_frame(room_id, messages, has_more, None, truncated=truncated, changed=changed))
        for frame in catch_up.release(messages, after_id):
            self.send(frame)
        if catch_up.finished and self._catch_ups.get(room_id) is catch_up:
            del self._catch_ups[room_id]

    async def subscribe_at_open(self, room_id: int) -> None:
        """The per-room endpoint's subscription (api.md): as a ``subscribe_room`` would."""
        await self._subscribe(protocol.Subscribe(room_id, None))

    async def _unsubscribe(self, request: protocol.Unsubscribe) -> None:
        await self.chat.ensure_access(request.room_id, self.user_id)
        self.chat.broker.unsubscribe(request.room_id, self)
        self._catch_ups.pop(request.room_id, None)
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
            error = ClientError(ErrorCode.INTERNAL_ERROR, "the message could not be stored", room_id=request.room_id,
                                request_id=request.request_id, client_msg_id=request.client_msg_id)
            self.chat.stats.errors[error.code] += 1
            self._fulfil(slot, protocol.error_frame(error))
            return
        stored = future.result()
        wire = protocol.encoded_message(stored.message)
        self._fulfil(slot, protocol.message_ack_frame(stored.message, request.request_id, wire))
        self.chat.message_stored(stored, wire, self.conn_id)

    def _mark_read(self, request: protocol.MarkRead) -> Awaitable[None]:
        return self.chat.mark_read(self, request, partial(self._read_marked, request))

    def _read_marked(self, request: protocol.MarkRead, result: ReadResult) -> None:
        self.reply(protocol.read_marked_frame(
            request.room_id, result.last_read_id, result.unread_count, request.request_id
        ))

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
        chat = self.chat
        if request.token is None:
            # Renewal (operations.md, sign-in links): the same claims, a new lifetime.
            if not chat.config.auth.renewable:
                raise ClientError(ErrorCode.FORBIDDEN, "this server does not renew tokens; sign in again")
            if chat.is_revoked(self.identity):
                raise ClientError(ErrorCode.FORBIDDEN, "token revoked")
            current = self.identity
            token = mint_token(chat.keyring, current.user_id, current.username, first_name=current.first_name,
                               ttl=chat.config.auth.token_ttl)
            self.identity = verify_token(token, chat.keyring)
            self._schedule_expiry()
            self.reply(protocol.token_refreshed_frame(self.identity.expires_at, request.request_id, token))
            return
        try:
            identity = verify_token(request.token, chat.keyring)
        except AuthError as exc:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"token refused: {exc.reason}") from None
        if identity.user_id != self.user_id:
            raise ClientError(ErrorCode.INVALID_MESSAGE, "token refused: it is for another user")
        if chat.is_revoked(identity):
            raise ClientError(ErrorCode.INVALID_MESSAGE, "token refused: token revoked")
        # A new name in the token is the user's name from now on, in history too.
        await chat.remember_user(identity)
        self.identity = identity
        self._schedule_expiry()
        self.reply(protocol.token_refreshed_frame(identity.expires_at, request.request_id))

    def _edit_message(self, request: protocol.EditMessage) -> Awaitable[None]:
        return self.chat.edit_message(self, request, self.reply)

    def _delete_message(self, request: protocol.DeleteMessage) -> Awaitable[None]:
        return self.chat.delete_message(self, request, self.reply)

    def _react(self, request: protocol.React) -> Awaitable[None]:
        return self.chat.react(self, request, self.reply)

    async def _leave_room(self, request: protocol.LeaveRoom) -> None:
        frame = await self.chat.leave_room(self, request)
        self._catch_ups.pop(request.room_id, None)
        self.reply(frame)

    async def _users(self, request: protocol.GetUsers) -> None:
        self.reply(await self.chat.users(request))

    async def _presence(self, request: protocol.GetPresence) -> None:
        self.reply(await self.chat.presence_list(request))

    # -- uploads -----------------------------------------------------------------

    async def _upload_file(self, request: protocol.UploadFile) -> None:
        if self._upload is not None:
            raise ClientError(ErrorCode.INVALID_MESSAGE, "another upload is in flight on this connection; "
                                                         "finish it with upload_done first")
        chat = self.chat
        upload = await chat.files.begin(self.user_id, request.name, request.size, request.content_type,
                                        chat.config.limits, chat.clock.monotonic())
        if self.closed:  # (gone while the quota was read)
            chat.files.abandon(upload)
            return
        self._upload = upload
        chat.clock.call_later(UPLOAD_IDLE_TIMEOUT, self._check_upload_progress, upload)
        self.reply(protocol.upload_ready_frame(upload.id, chat.config.server.max_message_bytes, request.request_id))

    def _check_upload_progress(self, upload: Upload) -> None:
        if self._upload is not upload:
            return
        clock = self.chat.clock
        idle = clock.monotonic() - upload.last_progress
        if idle < UPLOAD_IDLE_TIMEOUT:
            clock.call_later(UPLOAD_IDLE_TIMEOUT - idle, self._check_upload_progress, upload)
            return
        self._end_upload()
        self.send_error(ClientError(ErrorCode.INVALID_MESSAGE,
                                    f"upload {upload.id} abandoned: no bytes for {UPLOAD_IDLE_TIMEOUT:g} seconds"))

    def _end_upload(self) -> None:
        if self._upload is not None:
            self.chat.files.abandon(self._upload)
            self._upload = None

    async def _upload_done(self, request: protocol.UploadDone) -> None:
        upload = self._upload
        if upload is None or upload.id != request.upload_id:
            raise ClientError(ErrorCode.INVALID_MESSAGE, "unknown upload_id (no such upload in flight here)")
        self._upload = None
        stored = await self.chat.files.finish(upload)
        self.reply(protocol.file_stored_frame(stored, request.request_id))

    def _ping(self, request: protocol.Ping) -> None:
        self.reply(protocol.pong_frame(request.request_id))

    def _help(self, request: protocol.Help) -> None:
        self.reply(protocol.help_frame(request.request_id))

    def _whoami(self, request: protocol.WhoAmI) -> None:
        identity = self.identity
        self.reply(protocol.whoami_frame(
            identity.user_id, identity.username, identity.first_name,
            tuple(self.chat.broker.rooms_of(self)), identity.expires_at, request.request_id,
        ))


class NotificationListener:
    """A notification-only connection (api.md, ``/ws/notifications/<user_id>/``): it
    hears ``connection_established`` and the user's ``notification`` frames, nothing
    else, and what its peer sends is ignored."""

    __slots__ = ("user_id", "_chat", "_sink", "_expiry", "_identity", "closed")

    def __init__(self, identity: Identity, sink: Sink, chat: Chat) -> None:
        self.user_id = identity.user_id
        self._identity = identity
        self._chat = chat
        self._sink = sink
        self._expiry: Timer | None = None
        self.closed = False

    def open(self) -> None:
        self._chat.listen(self)
        clock = self._chat.clock
        self._expiry = clock.call_later(max(0.0, self._identity.expires_at - clock.time()),
                                        self.close, CloseCode.AUTH, TOKEN_EXPIRED)
        self.send(protocol.connection_established_frame(self.user_id, self._identity.username))

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self._sink.send(frame)

    def close(self, code: CloseCode, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._sink.close(code, reason)

    def closed_by_peer(self) -> None:
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self._chat.stop_listening(self)


def _answered_by(action: Callable[[Chat, Session, Any], Awaitable[bytes]]) -> Callable[[Session, Any], Awaitable[None]]:
    """The handler of a request the chat service answers with one frame."""

    async def handle(session: Session, request: Any) -> None:
        session.reply(await action(session.chat, session, request))

    return handle


_HANDLERS: dict[type, Callable[[Session, Any], Awaitable[None] | None]] = {
    protocol.Subscribe: Session._subscribe,
    protocol.Unsubscribe: Session._unsubscribe,
    protocol.SendMessage: Session._send_message,
    protocol.MarkRead: Session._mark_read,
    protocol.Typing: Session._typing,
    protocol.GetRoomList: Session._room_list,
    protocol.GetHistory: Session._history,
    protocol.RefreshToken: Session._refresh_token,
    protocol.EditMessage: Session._edit_message,
    protocol.DeleteMessage: Session._delete_message,
    protocol.React: Session._react,
    protocol.GetThread: _answered_by(Chat.thread),
    protocol.SearchMessages: _answered_by(Chat.search),
    protocol.GetChanges: _answered_by(Chat.changes),
    protocol.CreateRoom: _answered_by(Chat.create_room),
    protocol.CreateDirect: _answered_by(Chat.create_direct),
    protocol.ChangeMembers: _answered_by(Chat.change_members),
    protocol.RenameRoom: _answered_by(Chat.rename_room),
    protocol.LeaveRoom: Session._leave_room,
    protocol.GetUsers: Session._users,
    protocol.GetPresence: Session._presence,
    protocol.UploadFile: Session._upload_file,
    protocol.UploadDone: Session._upload_done,
    protocol.Ping: Session._ping,
    protocol.Help: Session._help,
    protocol.WhoAmI: Session._whoami,
}
