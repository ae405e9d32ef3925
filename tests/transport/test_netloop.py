"""One NetworkLoop driving many MQTT sessions against a real Mosquitto: one thread, every session its own."""

from __future__ import annotations

import threading

import pytest

from edgedfl.brokers.launch import MosquittoBroker
from edgedfl.transport.base import Message
from edgedfl.transport.mqtt import MqttTransport
from edgedfl.transport.netloop import NetworkLoop

pytestmark = pytest.mark.integration


def test_two_hundred_sessions_on_one_thread_each_keep_their_own_messages(mosquitto: MosquittoBroker) -> None:
    loop = NetworkLoop()
    threads_before = threading.active_count()
    sessions: list[MqttTransport] = []
    try:
        for i in range(200):
            t = mosquitto.client(f"dev{i:03d}", loop=loop, connect_timeout=10.0)
            t.subscribe(f"edgedfl/s/ack/dev{i:03d}/+")
            sessions.append(t)
        # a thread per session would be 200 more; the loop's reconnect pool starts no thread while all is well
        assert threading.active_count() - threads_before <= 2
        assert loop.sessions == 200
        for i, t in enumerate(sessions):  # each publishes to the next one's private topic
            to = f"dev{(i + 1) % 200:03d}"
            t.publish(f"edgedfl/s/ack/{to}/dev{i:03d}", f"{i}".encode())
        for i, t in enumerate(sessions):
            msg = t.receive(10)
            assert msg is not None and msg.payload == f"{(i - 1) % 200}".encode()
            assert t.receive(0) is None  # nothing of anybody else's
    finally:
        for t in sessions:
            t.close()
        loop.stop()
    assert loop.sessions == 0


def test_a_killed_session_fires_its_will_and_the_others_stay_up(mosquitto: MosquittoBroker) -> None:
    loop = NetworkLoop()
    try:
        watcher = mosquitto.client("watcher", loop=loop)
        watcher.subscribe("edgedfl/s/presence/+")
        doomed = mosquitto.client("doomed", loop=loop,
                                  will=Message("edgedfl/s/presence/doomed", b"offline", retain=True))
        other = mosquitto.client("other", loop=loop)
        doomed.abort()  # as a crash: no DISCONNECT
        msg = watcher.receive(10)
        assert msg is not None and msg.payload == b"offline"
        other.publish("edgedfl/s/presence/other", b"online")
        msg = watcher.receive(5)
        assert msg is not None and msg.payload == b"online"
        assert other.connected and watcher.connected and not doomed.connected
        watcher.close()
        other.close()
    finally:
        loop.stop()

