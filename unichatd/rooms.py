"""The room directory: what the daemon knows of rooms without asking the database.

Access checks, room lists, unread counts and last-message previews run on every
request, so they are answered from memory.  The directory is filled from
:meth:`MessageStore.load_rooms <unichatd.interfaces.MessageStore.load_rooms>` and then kept in step with
each committed write, applied in commit order (see ``chat``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from .models import Change, Message, RoomRecord, Snapshot
from .protocol import format_timestamp

PREVIEW_CHARS = 200
"""How much of the last message a room list shows."""


_MENTION = re.compile(r"(?<![\w@])@([\w.\-]+)")
"""``@name`` not inside a word or an e-mail address; a trailing dot or dash ends the sentence."""


def preview(content: str) -> str:
    return content[:PREVIEW_CHARS]


def _nobody_online(user_id: int) -> tuple[bool, str | None]:
    return False, None


class RoomDirectory:
    def __init__(self) -> None:
        self.rooms: dict[int, RoomRecord] = {}
        self.users: dict[int, tuple[str, str]] = {}
        self._user_rooms: dict[int, set[int]] = {}
        self.presence: Callable[[int], tuple[bool, str | None]] = _nobody_online
        """user id → (online, last_seen) for participant lists (set by the chat service)."""

    def apply(self, snapshot: Snapshot) -> None:
        """Take the rooms of ``snapshot`` as they now are (replacing what was known of them)."""
        self.users.update(snapshot.users)
        for room in snapshot.rooms.values():
            old = self.rooms.get(room.id)
            if old is not None:
                for user_id in old.markers:
                    rooms = self._user_rooms.get(user_id)
                    if rooms is not None:
                        rooms.discard(room.id)
            self.rooms[room.id] = room
            for user_id in room.markers:
                self._user_rooms.setdefault(user_id, set()).add(room.id)

    def is_participant(self, room_id: int, user_id: int) -> bool:
        room = self.rooms.get(room_id)
        return room is not None and user_id in room.markers

    def participants(self, room_id: int) -> tuple[int, ...]:
        room = self.rooms.get(room_id)
        return tuple(room.markers) if room is not None else ()

    def set_user(self, user_id: int, username: str, first_name: str) -> None:
        self.users[user_id] = (username, first_name)

    def record_message(self, message: Message) -> None:
        """A committed message: it is the room's latest and unread for everyone else."""
        room = self.rooms.get(message.room_id)
        if room is None:
            return
        room.last_message = message
        unread = room.unread
        for user_id in room.markers:
            if user_id != message.sender_id:
                unread[user_id] = unread.get(user_id, 0) + 1
        if message.mentions:
            self._count_mentions(room, message, message.mentions, 1)

    def record_change(self, change: Change) -> bool:
        """A committed edit or delete; True when some room list shows the room differently
        (its preview, or someone's unread or mention count)."""
        room = self.rooms.get(change.message.room_id)
        if room is None:
            return False
        before, after = change.before, change.message
        relisted = False
        if after.deleted and not before.deleted:
            # The tombstone is no longer unread for anyone whose marker is below it.
            for user_id, marker in room.markers.items():
                if user_id != before.sender_id and marker < before.id:
                    room.unread[user_id] = max(0, room.unread.get(user_id, 0) - 1)
                    relisted = True
        if before.mentions != after.mentions:
            relisted |= self._count_mentions(room, before, before.mentions, -1)
            relisted |= self._count_mentions(room, after, after.mentions, 1)
        last = room.last_message
        if last is not None and last.id == after.id:
            room.last_message = change.latest if after.deleted else after
            relisted = True
        return relisted

    @staticmethod
    def _count_mentions(room: RoomRecord, message: Message, user_ids: Iterable[int], step: int) -> bool:
        """Mentions above a participant's marker are theirs to read; True when a count moved."""
        mentions = room.mentions
        moved = False
        for user_id in user_ids:
            marker = room.markers.get(user_id)
            if marker is not None and marker < message.id and user_id != message.sender_id:
                count = mentions.get(user_id, 0) + step
                if count > 0:
                    mentions[user_id] = count
                else:
                    mentions.pop(user_id, None)
                moved = True
        return moved

    def record_read(self, room_id: int, user_id: int, marker: int, unread_count: int, mention_count: int = 0) -> None:
        room = self.rooms.get(room_id)
        if room is not None and user_id in room.markers:
            room.markers[user_id] = marker
            room.unread[user_id] = unread_count
            if mention_count:
                room.mentions[user_id] = mention_count
            else:
                room.mentions.pop(user_id, None)

    def unread(self, room_id: int, user_id: int) -> int:
        room = self.rooms.get(room_id)
        return room.unread.get(user_id, 0) if room is not None else 0

    def mention_count(self, room_id: int, user_id: int) -> int:
        room = self.rooms.get(room_id)
        return room.mentions.get(user_id, 0) if room is not None else 0

    def rooms_of(self, user_id: int) -> tuple[int, ...]:
        """The rooms the user is a participant of."""
        return tuple(self._user_rooms.get(user_id, ()))

    def mentioned(self, room_id: int, content: str) -> tuple[tuple[int, ...], bool]:
        """The participants ``content`` names as ``@username`` (case-insensitively), and
        whether every name it holds is one of them."""
        if "@" not in content:
            return (), True
        names = {match.group(1).rstrip(".-").casefold() for match in _MENTION.finditer(content)}
        if not names:
            return (), True
        users = self.users
        found = tuple(user_id for user_id in self.participants(room_id)
                      if user_id in users and users[user_id][0].casefold() in names)
        return found, len(found) >= len(names)

    def name_for(self, room: RoomRecord, user_id: int) -> str:
        """The room's name as ``user_id`` sees it: in a direct room, the other one's username."""
        pair = room.direct_pair
        if pair is None:
            return room.name
        other = pair[1] if pair[0] == user_id else pair[0]
        return self.users.get(other, (f"user{other}", ""))[0]

    def participant_list(self, room_id: int) -> list[dict[str, Any]]:
        users, presence = self.users, self.presence
        listed = []
        for user_id in self.rooms[room_id].markers:
            online, last_seen = presence(user_id)
            listed.append({"id": user_id, "username": users.get(user_id, (f"user{user_id}", ""))[0],
                           "online": online, "last_seen": last_seen})
        return listed

    def room_state(self, room_id: int, user_id: int) -> dict[str, Any]:
        """The fields of ``room_updated`` that a room list shows, as ``user_id`` sees them."""
        room = self.rooms[room_id]
        last = room.last_message
        return {
            "name": self.name_for(room, user_id),
            "last_message_content": preview(last.content) if last else None,
            "last_message_time": format_timestamp(last.created_ms) if last else None,
            "unread_count": room.unread.get(user_id, 0),
            "mention_count": room.mentions.get(user_id, 0),
        }

    def room_object(self, room_id: int, user_id: int) -> dict[str, Any]:
        room = self.rooms[room_id]
        state = self.room_state(room_id, user_id)
        return {
            "id": room.id,
            "name": state["name"],
            "room_type": room.room_type,
            "last_message_content": state["last_message_content"],
            "last_message_time": state["last_message_time"],
            "unread_count": state["unread_count"],
            "mention_count": state["mention_count"],
            "owner_id": room.owner_id,
            "participants": self.participant_list(room_id),
        }

    def room_list(self, user_id: int) -> list[dict[str, Any]]:
        """The user's rooms, most recent activity first (a room's creation counts as activity)."""

        def activity(room_id: int) -> tuple[int, int, int]:
            room = self.rooms[room_id]
            last = room.last_message
            # Ties within a millisecond go to the later message (ids grow with time).
            return (last.created_ms, last.id, room_id) if last else (room.created_ms, 0, room_id)

        ordered = sorted(self._user_rooms.get(user_id, ()), key=activity, reverse=True)
        return [self.room_object(room_id, user_id) for room_id in ordered]
