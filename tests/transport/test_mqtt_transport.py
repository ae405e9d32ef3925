"""MqttTransport against a real Mosquitto: sizes, dead brokers, crashes, sessions, big payloads."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator

import pytest

from edgedfl.brokers.launch import MosquittoBroker
from edgedfl.errors import BrokerUnavailable, PayloadTooLarge
from edgedfl.transport.base import Message
from edgedfl.transport.mqtt import MqttTransport
from edgedfl.transport.netloop import NetworkLoop
from edgedfl.transport.url import transport_from_url

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def fast(broker: MosquittoBroker, client_id: str, **kw) -> MqttTransport:
    kw.setdefault("reconnect_min", 0.1)
    kw.setdefault("reconnect_max", 0.5)
    kw.setdefault("connect_timeout", 5.0)
    kw.setdefault("publish_timeout", 10.0)
    return broker.client(client_id, **kw)


@pytest.mark.parametrize("protocol", [5, 311])
def test_ten_megabytes_in_one_megabyte_pieces_arrive_intact_and_in_order(mosquitto, protocol: int) -> None:
    data = hashlib.shake_256(b"edgedfl").digest(10 * MB)
    with fast(mosquitto, "pub", protocol=protocol) as pub, fast(mosquitto, "sub", protocol=protocol) as sub:
        sub.subscribe("edgedfl/s/update/0/pub")

        for i in range(10):
            pub.publish("edgedfl/s/update/0/pub", data[i * MB : (i + 1) * MB])

        pieces = [sub.receive(10) for _ in range(10)]
    assert all(p is not None for p in pieces)
    joined = b"".join(p.payload for p in pieces if p is not None)
    assert hashlib.sha256(joined).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("protocol", [5, 311])
def test_oversize_is_refused_before_publishing_and_the_link_survives(mosquitto, protocol: int) -> None:
    with fast(mosquitto, "pub", protocol=protocol) as pub, fast(mosquitto, "sub", protocol=protocol) as sub:
        sub.subscribe("edgedfl/s/#")
        paho_thread = pub._client._thread
        assert paho_thread is not None

        with pytest.raises(PayloadTooLarge, match="message_size_limit"):
            pub.publish("edgedfl/s/update/0/pub", b"\1" * (mosquitto.message_size_limit + 1))
        pub.publish("edgedfl/s/update/0/pub", b"after")

        msg = sub.receive(5)
        assert msg is not None and msg.payload == b"after"
        assert pub.connected and paho_thread.is_alive()
        assert pub.reconnects == 0
    log_text = mosquitto.log_path.read_text()
    assert "exceeded" not in log_text.lower() and "too large" not in log_text.lower()


def test_mqtt5_maximum_packet_size_from_connack_is_enforced(tmp_path) -> None:
    conf = ["max_packet_size 100000"]
    with MosquittoBroker(workdir=tmp_path, message_size_limit=0, extra_conf=conf) as broker, \
            fast(broker, "pub", protocol=5) as pub:
        with pytest.raises(PayloadTooLarge, match="maximum packet size of 100000"):
            pub.publish("edgedfl/s/update/0/pub", b"\0" * 99_990)
        pub.publish("edgedfl/s/update/0/pub", b"\0" * 90_000)
        assert pub.connected and pub.reconnects == 0


def test_dead_broker_is_reported_quickly() -> None:
    with socket.socket() as s:  # a port that is surely closed: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
            MqttTransport(host="127.0.0.1", port=port, connect_timeout=5)
    assert time.monotonic() - started < 2


def test_a_listener_that_never_answers_times_out_as_unavailable(loop) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="no CONNACK"):
            MqttTransport(host="127.0.0.1", port=port, connect_timeout=0.5, loop=loop)
        assert time.monotonic() - started < 3
    if loop is not None:
        assert loop.sessions == 0  # the failed session left the shared loop clean


@pytest.fixture(params=["thread", "shared-loop"])
def loop(request: pytest.FixtureRequest) -> Iterator[NetworkLoop | None]:
    """paho's network thread per session, or one NetworkLoop for all of a test's sessions."""
    if request.param == "thread":
        yield None
        return
    lp = NetworkLoop()
    try:
        yield lp
    finally:
        lp.stop()


@pytest.mark.parametrize("protocol", [5, 311])
def test_sigkill_and_restart_the_client_reconnects_and_resubscribes(mosquitto, protocol: int, loop) -> None:
    with fast(mosquitto, "pub", protocol=protocol, loop=loop) as pub, \
            fast(mosquitto, "sub", protocol=protocol, loop=loop) as sub:
        sub.subscribe("edgedfl/s/update/+/+")
        pub.publish("edgedfl/s/update/0/pub", b"before")
        assert (m := sub.receive(5)) is not None and m.payload == b"before"

        mosquitto.kill()
        mosquitto.restart()

        assert sub.wait_connected(10) and pub.wait_connected(10)
        pub.publish("edgedfl/s/update/0/pub", b"after")
        msg = sub.receive(5)
        assert msg is not None and msg.payload == b"after"
        assert sub.reconnects >= 1 and pub.reconnects >= 1


def test_qos1_published_during_an_outage_is_sent_after_reconnect(mosquitto, loop) -> None:
    with fast(mosquitto, "pub", loop=loop) as pub, fast(mosquitto, "sub", loop=loop) as sub:
        sub.subscribe("edgedfl/s/ack/pub")
        # a clean stop saves the sub's persistent session, so whichever client reconnects first,
        # the broker already holds the subscription the queued message is for
        mosquitto.stop()
        deadline = time.monotonic() + 5
        while pub.connected and time.monotonic() < deadline:  # paho notices the closed socket at once
            time.sleep(0.01)
        assert not pub.connected

        pub.publish("edgedfl/s/ack/pub", b"queued", timeout=None)  # queued in paho, not waited for
        mosquitto.restart()

        msg = sub.receive(10)
        assert msg is not None and msg.payload == b"queued"


def test_persistent_session_keeps_qos1_messages_while_away(mosquitto, loop) -> None:
    sub = fast(mosquitto, "node-b", loop=loop)
    sub.subscribe("edgedfl/s/update/+/+")
    sub.close()
    with fast(mosquitto, "node-a", loop=loop) as pub:
        pub.publish("edgedfl/s/update/0/node-a", b"while-away")

    with fast(mosquitto, "node-b", loop=loop) as back:
        msg = back.receive(5)
    assert msg is not None and msg.payload == b"while-away"


def test_clean_session_forgets(mosquitto) -> None:
    sub = fast(mosquitto, "node-b", clean_session=True)
    sub.subscribe("edgedfl/s/update/+/+")
    sub.close()
    with fast(mosquitto, "node-a") as pub:
        pub.publish("edgedfl/s/update/0/node-a", b"while-away")

    with fast(mosquitto, "node-b", clean_session=True) as back:
        assert back.receive(0.5) is None


def test_full_inbox_drops_and_counts(mosquitto) -> None:
    with fast(mosquitto, "pub") as pub, fast(mosquitto, "sub", inbox_max_messages=3) as sub:
        sub.subscribe("edgedfl/s/ack/pub")
        for i in range(10):
            pub.publish("edgedfl/s/ack/pub", bytes([i]))
        pub.publish("edgedfl/s/ack/pub", b"last")
        deadline = time.monotonic() + 5
        while sub.dropped < 8 and time.monotonic() < deadline:
            time.sleep(0.01)  # the count is the event; nothing to await on a queue that is full

        assert [sub.receive(1).payload for _ in range(3)] == [b"\0", b"\1", b"\2"]  # type: ignore[union-attr]
        assert sub.dropped == 8


def test_transport_from_url_carries_the_limit(mosquitto) -> None:
    t = transport_from_url(mosquitto.url, "from-url")
    try:
        assert isinstance(t, MqttTransport)
        assert t.max_payload == mosquitto.message_size_limit and t.port == mosquitto.port
        t.publish("edgedfl/s/ack/x", b"ok")
    finally:
        t.close()


def test_will_message_from_mosquitto_is_retained(mosquitto, loop) -> None:
    watcher = fast(mosquitto, "watcher", loop=loop)
    watcher.subscribe("edgedfl/s/presence/+")
    node = fast(mosquitto, "node", will=Message("edgedfl/s/presence/node", b"offline", retain=True), loop=loop)
    node.publish("edgedfl/s/presence/node", b"online", retain=True)
    assert (m := watcher.receive(5)) is not None and m.payload == b"online"

    node.abort()

    assert (m := watcher.receive(5)) is not None and m.payload == b"offline"
    watcher.close()
