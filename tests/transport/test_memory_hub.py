"""What only the in-memory hub has: kill(), client takeover, named hubs, thread safety, inbox bounds."""

from __future__ import annotations

import threading

import pytest

from edgedfl.errors import NotConnected, PayloadTooLarge
from edgedfl.transport.base import Message, publish_packet_size, topic_matches
from edgedfl.transport.inbox import Inbox
from edgedfl.transport.memory import MemoryHub, MemoryTransport
from edgedfl.transport.url import transport_from_url


def test_kill_publishes_the_will_and_the_killed_client_cannot_publish() -> None:
    hub = MemoryHub()
    watcher = MemoryTransport(hub, "w")
    watcher.subscribe("p/#")
    node = MemoryTransport(hub, "n", will=Message("p/n", b"offline", retain=True))

    assert hub.kill("n") and not hub.kill("n") and not hub.kill("nobody")

    assert (m := watcher.receive(1)) is not None and m.payload == b"offline"
    assert hub.retained() == {"p/n": b"offline"}
    with pytest.raises(NotConnected):
        node.publish("p/n", b"x")


def test_same_client_id_takes_over_the_old_connection() -> None:
    hub = MemoryHub()
    old = MemoryTransport(hub, "same")
    new = MemoryTransport(hub, "same")
    assert hub.clients() == ["same"] and new.connected and not old.connected


def test_one_copy_per_client_even_with_overlapping_filters() -> None:
    hub = MemoryHub()
    sub = MemoryTransport(hub, "s")
    sub.subscribe("a/#")
    sub.subscribe("a/+")
    MemoryTransport(hub, "p").publish("a/b", b"1")
    assert sub.receive(0) is not None and sub.receive(0) is None


def test_memory_url_names_a_shared_hub_with_a_limit() -> None:
    a = transport_from_url("memory://url-hub?max_payload=10", "a")
    b = transport_from_url("memory://url-hub", "b")
    b.subscribe("x")
    a.publish("x", b"0123456789")
    with pytest.raises(PayloadTooLarge):
        a.publish("x", b"0123456789A")
    assert (m := b.receive(1)) is not None and m.payload == b"0123456789"


def test_concurrent_publishers_lose_nothing() -> None:
    hub = MemoryHub()
    sub = MemoryTransport(hub, "s")
    sub.subscribe("t/#")
    pubs = [MemoryTransport(hub, f"p{i}") for i in range(8)]

    def send(t: MemoryTransport) -> None:
        for n in range(500):
            t.publish(f"t/{t.client_id}", n.to_bytes(2, "big"))

    threads = [threading.Thread(target=send, args=(p,)) for p in pubs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    seen: dict[str, list[int]] = {}
    while (m := sub.receive(0)) is not None:
        seen.setdefault(m.topic, []).append(int.from_bytes(m.payload, "big"))
    assert {k: v == list(range(500)) for k, v in seen.items()} == {f"t/p{i}": True for i in range(8)}


def test_inbox_drops_the_newest_when_full_by_count_or_bytes() -> None:
    box = Inbox(max_messages=2, max_bytes=10)
    assert box.put(Message("t", b"12345")) and box.put(Message("t", b"12345"))
    assert not box.put(Message("t", b"x"))  # count
    assert box.get(0) is not None
    assert not box.put(Message("t", b"123456"))  # bytes: 5 + 6 > 10
    assert box.put(Message("t", b"12345"))
    assert box.dropped == 2 and len(box) == 2 and box.nbytes == 10


def test_one_oversize_message_still_fits_an_empty_inbox() -> None:
    box = Inbox(max_messages=5, max_bytes=4)
    assert box.put(Message("t", b"123456789"))  # never starve: an empty inbox takes anything


@pytest.mark.parametrize(("pattern", "topic", "match"), [
    ("a/+/c", "a/b/c", True), ("a/#", "a", True), ("a/#", "a/b/c", True), ("+", "a/b", False),
    ("a/+", "a/b/c", False), ("#", "x/y", True), ("a/b", "a/b", True), ("a/b", "a/c", False),
])
def test_topic_matches(pattern: str, topic: str, match: bool) -> None:
    assert topic_matches(pattern, topic) is match


def test_publish_packet_size_counts_the_mqtt_header() -> None:
    # 1 byte type + 3-byte remaining length + 2 + topic(3) + 2 (packet id) + payload
    assert publish_packet_size("a/b", 100_000, 1, mqtt5=False) == 1 + 3 + 2 + 3 + 2 + 100_000
    assert publish_packet_size("a/b", 10, 0, mqtt5=True) == 1 + 1 + 2 + 3 + 1 + 10
