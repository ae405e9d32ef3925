"""One contract, every transport: the same tests run on MemoryTransport and on MqttTransport + Mosquitto."""

from __future__ import annotations

import hashlib

import pytest

from edgedfl.errors import InvalidTopic, NotConnected, PayloadTooLarge
from edgedfl.transport.base import Message, Transport

T = 5.0  # seconds to wait for a delivery that should happen


def drain(t: Transport, timeout: float = 0.3) -> list[Message]:
    """Everything that arrives until nothing more comes for ``timeout`` seconds."""
    out = []
    while (m := t.receive(timeout)) is not None:
        out.append(m)
    return out


class TestTransportContract:
    def test_publish_subscribe_roundtrip(self, transport_factory) -> None:
        pub, sub = transport_factory(), transport_factory()
        sub.subscribe("edgedfl/s/update/0/+")

        pub.publish("edgedfl/s/update/0/a", b"hello")

        msg = sub.receive(T)
        assert msg is not None
        assert (msg.topic, msg.payload, msg.retain) == ("edgedfl/s/update/0/a", b"hello", False)

    def test_wildcards_match_like_mqtt(self, transport_factory) -> None:
        pub, plus, hash_ = transport_factory(), transport_factory(), transport_factory()
        plus.subscribe("edgedfl/s/+/a")
        hash_.subscribe("edgedfl/s/#")

        for topic in ("edgedfl/s/hello/a", "edgedfl/s/update/0/a", "edgedfl/other/hello/a"):
            pub.publish(topic, topic.encode())
        pub.publish("edgedfl/s/end", b"end")

        got_hash = []
        while (m := hash_.receive(T)) is not None:
            got_hash.append(m.topic)
            if m.topic == "edgedfl/s/end":
                break
        assert got_hash == ["edgedfl/s/hello/a", "edgedfl/s/update/0/a", "edgedfl/s/end"]
        assert [m.topic for m in drain(plus)] == ["edgedfl/s/hello/a"]

    def test_messages_from_one_publisher_arrive_in_order(self, transport_factory) -> None:
        pub, sub = transport_factory(), transport_factory()
        sub.subscribe("edgedfl/s/update/#")

        for i in range(50):
            pub.publish("edgedfl/s/update/0/a", i.to_bytes(2, "big"))

        got = [sub.receive(T) for _ in range(50)]
        assert [int.from_bytes(m.payload, "big") for m in got if m] == list(range(50))

    def test_retained_message_reaches_a_later_subscriber(self, transport_factory) -> None:
        pub = transport_factory()
        pub.publish("edgedfl/s/presence/a", b"online", retain=True)
        pub.publish("edgedfl/s/presence/a", b"online-2", retain=True)  # replaces the first

        late = transport_factory()
        late.subscribe("edgedfl/s/presence/+")

        msg = late.receive(T)
        assert msg is not None and msg.retain
        assert (msg.topic, msg.payload) == ("edgedfl/s/presence/a", b"online-2")
        assert drain(late) == []

    def test_empty_retained_payload_clears_it(self, transport_factory) -> None:
        pub = transport_factory()
        pub.publish("edgedfl/s/expert/1", b"expert", retain=True)
        pub.publish("edgedfl/s/expert/1", b"", retain=True)
        pub.publish("edgedfl/s/expert/2", b"kept", retain=True)

        late = transport_factory()
        late.subscribe("edgedfl/s/expert/+")

        msg = late.receive(T)
        assert msg is not None and (msg.topic, msg.payload) == ("edgedfl/s/expert/2", b"kept")
        assert drain(late) == []

    def test_last_will_is_published_when_a_client_dies(self, transport_factory) -> None:
        watcher = transport_factory()
        watcher.subscribe("edgedfl/s/presence/#")
        will = Message("edgedfl/s/presence/dying", b"offline", retain=True)
        dying = transport_factory("dying", will=will)

        transport_factory.kill(dying)

        msg = watcher.receive(T)
        assert msg is not None and (msg.topic, msg.payload) == ("edgedfl/s/presence/dying", b"offline")
        late = transport_factory()
        late.subscribe("edgedfl/s/presence/dying")
        retained = late.receive(T)
        assert retained is not None and retained.payload == b"offline" and retained.retain

    def test_no_last_will_on_clean_close(self, transport_factory) -> None:
        watcher = transport_factory()
        watcher.subscribe("edgedfl/s/presence/#")
        leaving = transport_factory("leaving", will=Message("edgedfl/s/presence/leaving", b"offline"))

        leaving.close()
        # a marker published afterwards bounds the wait: the will, if any, would come first
        transport_factory().publish("edgedfl/s/presence/marker", b"m")

        msg = watcher.receive(T)
        assert msg is not None and msg.topic == "edgedfl/s/presence/marker"

    def test_qos1_delivery(self, transport_factory) -> None:
        pub, sub = transport_factory(), transport_factory()
        sub.subscribe("edgedfl/s/ack/#", qos=1)

        pub.publish("edgedfl/s/ack/a", b"ack", qos=1)

        msg = sub.receive(T)
        assert msg is not None and msg.payload == b"ack" and msg.qos == 1

    def test_payload_at_the_limit_is_delivered_intact(self, transport_factory) -> None:
        pub, sub = transport_factory(), transport_factory()
        sub.subscribe("edgedfl/s/update/#")
        payload = bytes(range(256)) * (transport_factory.max_payload // 256)

        pub.publish("edgedfl/s/update/0/a", payload)

        msg = sub.receive(T)
        assert msg is not None
        assert hashlib.sha256(msg.payload).digest() == hashlib.sha256(payload).digest()

    def test_payload_over_the_limit_is_refused_before_publishing(self, transport_factory) -> None:
        pub, sub = transport_factory(), transport_factory()
        sub.subscribe("edgedfl/s/#")

        with pytest.raises(PayloadTooLarge):
            pub.publish("edgedfl/s/update/0/a", b"\0" * (transport_factory.max_payload + 1))
        pub.publish("edgedfl/s/update/0/a", b"small")

        msgs = drain(sub, 1.0)
        assert [m.payload for m in msgs] == [b"small"]

    def test_publish_many_keeps_order_and_refuses_the_whole_batch_on_size(self, transport_factory) -> None:
        pub, sub = transport_factory(), transport_factory()
        sub.subscribe("edgedfl/s/update/#")
        chunks = [Message("edgedfl/s/update/1/a", bytes([i]) * 1000) for i in range(5)]
        too_big = Message("edgedfl/s/update/1/a", b"\0" * (transport_factory.max_payload + 1))

        with pytest.raises(PayloadTooLarge):
            pub.publish_many([*chunks, too_big])
        pub.publish_many(chunks)

        got = [sub.receive(T) for _ in chunks]
        assert [m.payload for m in got if m] == [c.payload for c in chunks]
        assert drain(sub) == []

    @pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "a\x00b"])
    def test_invalid_topics_are_refused(self, transport_factory, topic: str) -> None:
        t = transport_factory()
        with pytest.raises(InvalidTopic):
            t.publish(topic, b"x")

    @pytest.mark.parametrize("pattern", ["", "a/#/b", "a/b#", "a/x+"])
    def test_invalid_filters_are_refused(self, transport_factory, pattern: str) -> None:
        t = transport_factory()
        with pytest.raises(InvalidTopic):
            t.subscribe(pattern)

    def test_unsubscribe_stops_delivery(self, transport_factory) -> None:
        pub, sub = transport_factory(), transport_factory()
        sub.subscribe("edgedfl/s/hello/+")
        sub.subscribe("edgedfl/s/ack/+")
        sub.unsubscribe("edgedfl/s/hello/+")

        pub.publish("edgedfl/s/hello/a", b"h")
        pub.publish("edgedfl/s/ack/a", b"a")

        assert [m.payload for m in drain(sub, 1.0)] == [b"a"]

    def test_close_is_idempotent_and_publish_after_close_fails(self, transport_factory) -> None:
        t = transport_factory()
        t.close()
        t.close()
        assert not t.connected
        with pytest.raises(NotConnected):
            t.publish("edgedfl/s/ack/a", b"x")

    def test_context_manager_closes(self, transport_factory) -> None:
        with transport_factory() as t:
            assert t.connected
        assert not t.connected

    def test_receive_times_out_with_none(self, transport_factory) -> None:
        t = transport_factory()
        t.subscribe("edgedfl/s/#")
        assert t.receive(0.05) is None
