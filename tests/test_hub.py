"""Pure unit tests of the in-process Hub: subscriptions, fan-out and disconnects (no sockets)."""

from __future__ import annotations

from unichatd.hub import Hub


class FakeConn:
    """A subscriber that records what it is handed."""

    def __init__(self, user_id: int) -> None:
        self._user_id = user_id
        self.received: list[tuple[int | None, bytes, int | None]] = []

    @property
    def user_id(self) -> int:
        return self._user_id

    def deliver(self, room_id: int | None, frame: bytes, message_id: int | None) -> None:
        self.received.append((room_id, frame, message_id))


def connected(hub: Hub[FakeConn], *user_ids: int) -> list[FakeConn]:
    conns = [FakeConn(user_id) for user_id in user_ids]
    for conn in conns:
        hub.connect(conn)
    return conns


def test_subscribe_returns_true_first_time() -> None:
    """The first subscribe to a room reports it as new."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    assert hub.subscribe(10, conn) is True


def test_subscribe_is_idempotent() -> None:
    """Subscribing twice reports False and leaves one subscription."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    assert hub.subscribe(10, conn) is False
    assert hub.subscribers(10) == (conn,)


def test_double_subscribe_delivers_once() -> None:
    """A connection subscribed twice still gets each frame once."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.subscribe(10, conn)
    hub.publish(10, b"x")
    assert len(conn.received) == 1


def test_unsubscribe_returns_true_then_false() -> None:
    """Unsubscribe reports True once, then False."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    assert hub.unsubscribe(10, conn) is True
    assert hub.unsubscribe(10, conn) is False


def test_unsubscribe_never_subscribed_is_false() -> None:
    """Unsubscribing from a room never joined reports False and changes nothing."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    assert hub.unsubscribe(11, conn) is False
    assert hub.rooms_of(conn) == frozenset({10})


def test_unsubscribed_connection_gets_nothing() -> None:
    """After unsubscribe the connection receives no frame of that room."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.unsubscribe(10, conn)
    assert hub.publish(10, b"x") == 0
    assert conn.received == []


def test_resubscribe_after_unsubscribe() -> None:
    """A connection may subscribe again after leaving."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.unsubscribe(10, conn)
    assert hub.subscribe(10, conn) is True
    assert hub.is_subscribed(10, conn)


def test_publish_reaches_every_subscriber_once() -> None:
    """Every subscriber of the room gets the frame exactly once; the count says how many."""
    hub: Hub[FakeConn] = Hub()
    conns = connected(hub, 1, 2, 3)
    for conn in conns:
        hub.subscribe(10, conn)
    assert hub.publish(10, b"frame", message_id=5) == 3
    assert all(conn.received == [(10, b"frame", 5)] for conn in conns)


def test_publish_hands_the_same_bytes_object() -> None:
    """Every recipient gets the very same bytes object, not a copy."""
    hub: Hub[FakeConn] = Hub()
    conns = connected(hub, 1, 2, 3)
    for conn in conns:
        hub.subscribe(10, conn)
    frame = b'{"type":"new_message"}'
    hub.publish(10, frame)
    assert all(conn.received[0][1] is frame for conn in conns)


def test_publish_without_message_id_passes_none() -> None:
    """A frame published without message_id is delivered with message_id None."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.publish(10, b"x")
    assert conn.received == [(10, b"x", None)]


def test_publish_stays_in_its_room() -> None:
    """Subscribers of other rooms get nothing."""
    hub: Hub[FakeConn] = Hub()
    inside, outside = connected(hub, 1, 2)
    hub.subscribe(10, inside)
    hub.subscribe(11, outside)
    hub.publish(10, b"x")
    assert inside.received
    assert outside.received == []


def test_publish_to_empty_room_is_zero() -> None:
    """Publishing to a room without subscribers delivers nothing and returns 0."""
    hub: Hub[FakeConn] = Hub()
    connected(hub, 1)
    assert hub.publish(99, b"x") == 0


def test_publish_reaches_every_connection_of_a_user() -> None:
    """Each subscribed connection of one user gets the frame."""
    hub: Hub[FakeConn] = Hub()
    first, second = connected(hub, 1, 1)
    hub.subscribe(10, first)
    hub.subscribe(10, second)
    assert hub.publish(10, b"x") == 2
    assert first.received
    assert second.received


def test_exclude_user_skips_all_their_connections() -> None:
    """exclude_user skips every connection of that user and reaches the others."""
    hub: Hub[FakeConn] = Hub()
    mine_a, mine_b, other = connected(hub, 1, 1, 2)
    for conn in (mine_a, mine_b, other):
        hub.subscribe(10, conn)
    assert hub.publish(10, b"typing", exclude_user=1) == 1
    assert mine_a.received == []
    assert mine_b.received == []
    assert other.received == [(10, b"typing", None)]


def test_exclude_user_not_in_room_changes_nothing() -> None:
    """Excluding a user who is not subscribed delivers to everyone."""
    hub: Hub[FakeConn] = Hub()
    conns = connected(hub, 1, 2)
    for conn in conns:
        hub.subscribe(10, conn)
    assert hub.publish(10, b"x", exclude_user=3) == 2


def test_publish_survives_unsubscribe_during_delivery() -> None:
    """A subscriber that leaves the room while being delivered to does not stop the others."""
    hub: Hub[FakeConn] = Hub()

    class Leaver(FakeConn):
        def deliver(self, room_id: int | None, frame: bytes, message_id: int | None) -> None:
            super().deliver(room_id, frame, message_id)
            hub.disconnect(self)

    leaver = Leaver(1)
    hub.connect(leaver)
    others = connected(hub, 2, 3)
    for conn in (leaver, *others):
        hub.subscribe(10, conn)
    assert hub.publish(10, b"x") == 3
    assert all(conn.received == [(10, b"x", None)] for conn in others)


def test_deliveries_counts_frames_handed_out() -> None:
    """deliveries adds up the recipients of every publish."""
    hub: Hub[FakeConn] = Hub()
    conns = connected(hub, 1, 2)
    for conn in conns:
        hub.subscribe(10, conn)
    hub.publish(10, b"a")
    hub.publish(10, b"b", exclude_user=1)
    assert hub.deliveries == 3


def test_disconnect_leaves_every_room() -> None:
    """After disconnect the connection is in no room and receives nothing."""
    hub: Hub[FakeConn] = Hub()
    conn, other = connected(hub, 1, 2)
    for room in (10, 11, 12):
        hub.subscribe(room, conn)
    hub.subscribe(11, other)
    hub.disconnect(conn)
    assert hub.rooms_of(conn) == frozenset()
    assert all(conn not in hub.subscribers(room) for room in (10, 11, 12))
    assert all(hub.publish(room, b"x") == (1 if room == 11 else 0) for room in (10, 11, 12))
    assert conn.received == []


def test_disconnect_twice_is_harmless() -> None:
    """A second disconnect of the same connection is a no-op."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.disconnect(conn)
    hub.disconnect(conn)
    assert hub.connection_count == 0
    assert hub.active_rooms == 0


def test_disconnect_keeps_users_other_connections() -> None:
    """Disconnecting one connection of a user keeps the other one online and subscribed."""
    hub: Hub[FakeConn] = Hub()
    first, second = connected(hub, 1, 1)
    hub.subscribe(10, first)
    hub.subscribe(10, second)
    hub.disconnect(first)
    assert hub.is_online(1)
    assert tuple(hub.connections_of(1)) == (second,)
    assert hub.subscribers(10) == (second,)


def test_last_disconnect_takes_user_offline() -> None:
    """When a user's last connection goes, the user is offline and has no connections."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    assert hub.is_online(1)
    hub.disconnect(conn)
    assert not hub.is_online(1)
    assert tuple(hub.connections_of(1)) == ()


def test_connection_count_follows_connect_and_disconnect() -> None:
    """connection_count counts open connections, several per user included."""
    hub: Hub[FakeConn] = Hub()
    assert hub.connection_count == 0
    a, b, c = connected(hub, 1, 1, 2)
    assert hub.connection_count == 3
    hub.disconnect(b)
    assert hub.connection_count == 2


def test_active_rooms_counts_rooms_with_subscribers() -> None:
    """active_rooms counts rooms with at least one subscriber."""
    hub: Hub[FakeConn] = Hub()
    a, b = connected(hub, 1, 2)
    hub.subscribe(10, a)
    hub.subscribe(10, b)
    hub.subscribe(11, a)
    assert hub.active_rooms == 2
    hub.unsubscribe(10, a)
    assert hub.active_rooms == 2
    hub.unsubscribe(10, b)
    assert hub.active_rooms == 1


def test_active_rooms_drops_on_disconnect() -> None:
    """A room whose only subscriber disconnects is no longer active."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.subscribe(11, conn)
    hub.disconnect(conn)
    assert hub.active_rooms == 0


def test_rooms_of_lists_subscriptions() -> None:
    """rooms_of gives the rooms the connection is subscribed to."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.subscribe(12, conn)
    assert hub.rooms_of(conn) == frozenset({10, 12})


def test_leave_all_keeps_connection() -> None:
    """leave_all empties the subscriptions but keeps the connection counted."""
    hub: Hub[FakeConn] = Hub()
    (conn,) = connected(hub, 1)
    hub.subscribe(10, conn)
    hub.leave_all(conn)
    assert hub.rooms_of(conn) == frozenset()
    assert hub.connection_count == 1
    assert hub.active_rooms == 0
