"""What the host application may do through the server API (api.md): mint tokens, name
users, notify and revoke them, create and change rooms, post and read messages.

Each action runs through the same store operations and membership functions as the
CLI's ``room`` commands and the clients' requests, and reaches live connections the same
way: room changes through the membership feed, messages through ``Chat.message_stored``.
Failures raise :class:`HostError`; the API turns them into HTTP answers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from . import protocol
from .auth import TOKEN_REVOKED, mint_token, verify_token
from .chat import Chat
from .models import Message, NewMessage, Refusal, RoomChanged
from .protocol.frames import format_timestamp

SYSTEM_USER = 0
"""The sender row of system messages (a message object shows ``sender: null``)."""


class HostError(Exception):
    """A refused action: ``status`` 404, 409 or 422, ``code`` and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(what: str) -> HostError:
    return HostError(404, "not_found", f"no such {what}")


def invalid(field: str, message: str) -> HostError:
    return HostError(422, "invalid_request", f"{field}: {message}")


class HostActions:
    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    # -- users ---------------------------------------------------------------------

    def mint(self, user_id: int, username: str, first_name: str, ttl: int | None) -> dict[str, Any]:
        chat = self.chat
        lifetime = ttl if ttl is not None else chat.config.auth.token_ttl
        token = mint_token(chat.keyring, user_id, username, first_name=first_name, ttl=lifetime)
        expires = verify_token(token, chat.keyring).expires_at  # (the token's own exp)
        return {"token": token, "expires_at": format_timestamp(int(expires) * 1000)}

    async def put_user(self, user_id: int, username: str, first_name: str) -> dict[str, Any]:
        chat = self.chat
        await chat.store.upsert_user(user_id, username, first_name)
        chat.directory.set_user(user_id, username, first_name)
        online, last_seen = chat.presence.state(user_id)
        return {"id": user_id, "username": username, "first_name": first_name, "online": online,
                "last_seen": last_seen}

    async def notify(self, user_id: int, payload: bytes) -> int:
        return await self.chat.notify(user_id, protocol.notification_frame(payload))

    async def revoke(self, user_id: int) -> None:
        """Tokens issued before now are refused from now on (kept in the database, so after
        a restart too); open connections close with 4001."""
        chat = self.chat
        now = time.time_ns() // 1_000_000
        # Memory first: from this moment no handshake or renewal passes, even while the
        # write is under way (if it fails, the answer is an error and memory stays revoked).
        chat.revocations[user_id] = max(now, chat.revocations.get(user_id, 0))
        chat.close_user(user_id, TOKEN_REVOKED)
        await chat.store.revoke_user(user_id, now)

    async def presence(self, user_ids: Sequence[int]) -> list[dict[str, Any]]:
        chat = self.chat
        found = await chat.store.users_by_id(user_ids)
        listed = []
        for user in found:
            online, last_seen = chat.presence.state(user.id)
            listed.append({"id": user.id, "username": user.username, "first_name": user.first_name,
                           "online": online, "last_seen": last_seen})
        return listed

    # -- rooms ---------------------------------------------------------------------

    def room(self, room_id: int) -> dict[str, Any]:
        """The room object (no ``unread_count``: it is each user's own)."""
        directory = self.chat.directory
        room = directory.rooms.get(room_id)
        if room is None:
            raise not_found("room")
        found = directory.room_object(room_id, SYSTEM_USER)
        found["name"] = room.name
        del found["unread_count"], found["mention_count"]
        return found

    async def get_room(self, room_id: int) -> dict[str, Any]:
        """:meth:`room`, after reading room changes not applied yet (one the CLI just made)."""
        if room_id not in self.chat.directory.rooms:
            await self.chat.membership.catch_up()
        return self.room(room_id)

    async def _applied(self, outcome: RoomChanged | Refusal) -> int:
        if outcome is Refusal.NOT_FOUND:
            raise not_found("room")
        if isinstance(outcome, Refusal):
            raise HostError(409, "conflict", "a direct room's members and owner do not change")
        await self.chat.membership.catch_up(outcome.log_id)
        return outcome.room_id

    async def create_room(self, name: str, room_type: str, member_ids: Sequence[int],
                          owner_id: int | None) -> dict[str, Any]:
        store = self.chat.store
        members = tuple(dict.fromkeys(member_ids))
        if room_type == "direct":
            if len(members) != 2 or owner_id is not None:
                raise invalid("member_ids", "a direct room has exactly two members and no owner")
            first, second = sorted(members)
            changed = await store.open_direct(first, second)
        else:
            changed = await store.create_room(name, room_type, owner_id,
                                              tuple(member for member in members if member != owner_id))
        return self.room(await self._applied(changed))

    async def change_room(self, room_id: int, *, name: str | None, owner_id: int | None,
                          set_owner: bool) -> dict[str, Any]:
        store = self.chat.store
        room = await self.get_room(room_id)
        if set_owner and room["room_type"] == "direct":  # (refused before the rename is made)
            raise HostError(409, "conflict", "a direct room has no owner")
        if name is not None:
            await self._applied(await store.host_change_room(room_id, "rename", name=name))
        if set_owner:
            await self._applied(await store.host_change_room(room_id, "owner", owner_id=owner_id))
        return self.room(room_id)

    async def add_members(self, room_id: int, user_ids: Sequence[int]) -> dict[str, Any]:
        await self._applied(await self.chat.store.host_change_room(room_id, "add", user_ids=user_ids))
        return self.room(room_id)

    async def remove_member(self, room_id: int, user_id: int) -> None:
        await self._applied(await self.chat.store.host_change_room(room_id, "remove", user_ids=(user_id,)))

    # -- messages --------------------------------------------------------------------

    async def post_message(self, room_id: int, content: str, *, sender_id: int | None, client_msg_id: str | None,
                           reply_to: int | None) -> tuple[Message, bool]:
        """Store and broadcast a message like any send; returns it and whether it is new
        (False: a retry of ``client_msg_id`` answered with the original)."""
        chat = self.chat
        await self.get_room(room_id)  # (404 before anything else)
        if len(content) > chat.config.limits.max_content_chars:
            raise invalid("content", f"at most {chat.config.limits.max_content_chars} characters")
        if sender_id is not None and not chat.directory.is_participant(room_id, sender_id):
            await chat.membership.catch_up()
            if not chat.directory.is_participant(room_id, sender_id):
                raise invalid("sender_id", "not a participant of the room")
        thread_root_id = None
        if reply_to is not None:
            target = await chat.store.reply_target(reply_to)
            if target is None or target[0] != room_id:
                raise invalid("reply_to", "not a message of this room")
            thread_root_id = target[1]
        mentions = chat.directory.mentioned(room_id, content)[0]
        if sender_id is None:
            sender, username, first_name, message_type = SYSTEM_USER, "system", "", "system"
        else:
            username, first_name = chat.directory.users.get(sender_id, (f"user{sender_id}", ""))
            sender, message_type = sender_id, "text"
        stored = await chat.store.append_message(NewMessage(
            room_id, sender, username, first_name, content, reply_to, client_msg_id, thread_root_id, mentions,
            message_type=message_type,
        ))
        # (nothing awaited between the commit and the fan-out: memory follows commit order)
        chat.message_stored(stored, protocol.encoded_message(stored.message))
        return stored.message, stored.created

    async def history(self, room_id: int, *, before_id: int | None, after_id: int | None,
                      limit: int) -> dict[str, Any]:
        await self.get_room(room_id)
        messages, has_more = await self.chat.store.history(room_id, before_id=before_id, after_id=after_id,
                                                           limit=limit)
        return {"messages": [protocol.message_object(message) for message in messages], "has_more": has_more}
