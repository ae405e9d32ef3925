"""Shared fixtures: brokers on free ports and one transport factory for both implementations.

``transport_factory`` is parametrized over ``memory``, ``mqtt`` (a real
Mosquitto on a free port in ``tmp_path``) and ``mqtt-shared-loop`` (the same, every
session driven by one :class:`NetworkLoop`), so a test written once runs against
both transports (STYLE.md points 3 and 7). Tests that need Mosquitto skip when
the binary is absent (scripts/setup.sh installs it, so CI has it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgedfl.brokers.launch import EmbeddedBroker, MosquittoBroker, mosquitto_available
from edgedfl.transport.base import Message, Transport
from edgedfl.transport.memory import MemoryHub, MemoryTransport
from edgedfl.transport.mqtt import MqttTransport
from edgedfl.transport.netloop import NetworkLoop

#: payload limit every transport under test runs with (the broker's message_size_limit)
TEST_MAX_PAYLOAD = 2 * 1024 * 1024

_hub_ids = itertools.count(1)

requires_mosquitto = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto binary not installed")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto on a free port, config and persistence under ``tmp_path``."""
    if not mosquitto_available():
        pytest.skip("mosquitto binary not installed (scripts/setup.sh installs it)")
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto", message_size_limit=TEST_MAX_PAYLOAD)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """An amqtt broker in this process (MQTT 3.1.1 only) on a free port."""
    broker = EmbeddedBroker().start()
    try:
        yield broker
    finally:
        broker.stop()


class TransportFactory:
    """Makes connected transports of one kind; closes them all at teardown.

    ``factory(client_id=None, will=None, **kwargs)`` returns a connected
    :class:`Transport`; ``factory.kill(t)`` drops ``t`` as a crash would (the
    broker or hub publishes its last will).
    """

    def __init__(self, kind: str, *, hub: MemoryHub | None = None, broker: MosquittoBroker | None = None,
                 loop: NetworkLoop | None = None) -> None:
        self.kind = kind
        self.hub = hub
        self.broker = broker
        self.loop = loop
        self.max_payload = TEST_MAX_PAYLOAD
        self._made: list[Transport] = []
        self._ids = itertools.count(1)

    def __call__(self, client_id: str | None = None, *, will: Message | None = None, **kwargs: Any) -> Transport:
        client_id = client_id or f"{self.kind}-client-{next(self._ids)}"
        t: Transport
        if self.kind == "memory":
            t = MemoryTransport(self.hub, client_id, will=will, **kwargs)
        else:
            assert self.broker is not None
            kwargs.setdefault("reconnect_min", 0.1)
            kwargs.setdefault("reconnect_max", 1.0)
            kwargs.setdefault("connect_timeout", 5.0)
            kwargs.setdefault("publish_timeout", 10.0)
            if self.loop is not None:
                kwargs.setdefault("loop", self.loop)
            t = self.broker.client(client_id, will=will, **kwargs)
        self._made.append(t)
        return t

    def kill(self, t: Transport) -> None:
        if isinstance(t, MemoryTransport):
            t.hub.kill(t.client_id)
        elif isinstance(t, MqttTransport):
            t.abort()
        else:  # pragma: no cover
            raise TypeError(t)

    def close_all(self) -> None:
        for t in self._made:
            t.close()
        if self.loop is not None:
            self.loop.stop()


@pytest.fixture(params=["memory", "mqtt", "mqtt-shared-loop"])
def transport_factory(request: pytest.FixtureRequest) -> Iterator[TransportFactory]:
    """A :class:`TransportFactory` for ``memory``, ``mqtt`` (real Mosquitto, paho's thread per session) and
    ``mqtt-shared-loop`` (real Mosquitto, one network thread for every session)."""
    if request.param == "memory":
        factory = TransportFactory("memory", hub=MemoryHub(f"test-{next(_hub_ids)}", max_payload=TEST_MAX_PAYLOAD))
    else:  # mqtt-shared-loop: every session of the test driven by one NetworkLoop (as in a device host)
        loop = NetworkLoop() if request.param == "mqtt-shared-loop" else None
        factory = TransportFactory("mqtt", broker=request.getfixturevalue("mosquitto"), loop=loop)
    try:
        yield factory
    finally:
        factory.close_all()
