"""An in-process broker (:class:`MemoryHub`) and its transport (:class:`MemoryTransport`).

Public on purpose (like httpx's ``MockTransport``): most tests and the fast
one-process emulator need no broker. The hub follows the MQTT rules that
the protocol relies on, so the same contract tests pass here and on Mosquitto:

- topic names and filters are validated as MQTT does; ``+`` and ``#`` match;
- a retained message is kept per topic (an empty retained payload clears it)
  and handed, with ``retain=True``, to every later matching subscription;
  live deliveries carry ``retain=False``;
- a client's last will is published when the hub loses the client without a
  clean close (:meth:`MemoryHub.kill`), never on :meth:`MemoryTransport.close`;
- payloads over the hub's ``max_payload`` are refused with ``PayloadTooLarge``
  before anything is delivered;
- each client gets one copy of a message even when several of its filters match.

Delivery is synchronous and never blocks: the hub appends to each receiver's
bounded :class:`~edgedfl.transport.inbox.Inbox`. QoS is recorded but every
message is delivered (there is no network to lose it). Everything is
thread-safe; one lock per hub.
"""

from __future__ import annotations

import itertools
import threading

from edgedfl.errors import NotConnected, PayloadTooLarge
from edgedfl.transport.base import (
    MQTT_MAX_PACKET,
    Message,
    Transport,
    topic_matches,
    validate_filter,
    validate_topic,
)
from edgedfl.transport.inbox import Inbox

_hubs: dict[str, MemoryHub] = {}
_hubs_lock = threading.Lock()
_ids = itertools.count(1)


class MemoryHub:
    """An in-process MQTT-like broker: retained messages, wildcards, last wills, a size limit."""

    def __init__(self, name: str = "", *, max_payload: int = MQTT_MAX_PACKET) -> None:
        if max_payload < 1:
            raise ValueError(f"MemoryHub.max_payload must be positive, got {max_payload}")
        self.name = name
        self.max_payload = max_payload
        self._lock = threading.RLock()
        self._clients: dict[str, MemoryTransport] = {}
        self._retained: dict[str, Message] = {}

    @classmethod
    def named(cls, name: str, *, max_payload: int | None = None) -> MemoryHub:
        """The process-wide hub called ``name`` (created on first use); ``memory://name`` URLs use it."""
        with _hubs_lock:
            hub = _hubs.get(name)
            if hub is None:
                hub = cls(name, max_payload=max_payload or MQTT_MAX_PACKET)
                _hubs[name] = hub
            elif max_payload is not None:
                hub.max_payload = max_payload
            return hub

    # -- client side (called by MemoryTransport) ---------------------------------

    def _attach(self, client: MemoryTransport) -> None:
        with self._lock:
            old = self._clients.get(client.client_id)
            if old is not None and old is not client:
                # MQTT: a second connection with the same client id takes over the first
                old._detach_by_hub()
            self._clients[client.client_id] = client

    def _detach(self, client: MemoryTransport, *, publish_will: bool) -> None:
        with self._lock:
            if self._clients.get(client.client_id) is not client:
                return
            del self._clients[client.client_id]
            will = client.will
            if publish_will and will is not None:
                self._route(will)

    def _subscribe(self, client: MemoryTransport, pattern: str) -> None:
        with self._lock:
            for topic in sorted(self._retained):
                if topic_matches(pattern, topic):
                    client.inbox.put(self._retained[topic])

    def _route(self, msg: Message) -> None:
        with self._lock:
            if msg.retain:
                if msg.payload:
                    self._retained[msg.topic] = Message(msg.topic, msg.payload, retain=True, qos=msg.qos)
                else:
                    self._retained.pop(msg.topic, None)
            live = Message(msg.topic, msg.payload, retain=False, qos=msg.qos)
            for client in list(self._clients.values()):
                qos = client._matching_qos(msg.topic)
                if qos is not None:
                    client.inbox.put(live if qos >= msg.qos else Message(msg.topic, msg.payload, False, qos))

    # -- test / emulator controls ---------------------------------------------

    def kill(self, client_id: str) -> bool:
        """Drop ``client_id`` as if its device vanished: its last will is published. ``False`` if unknown."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                return False
            self._detach(client, publish_will=True)
        client._mark_dead()
        return True

    def retained(self) -> dict[str, bytes]:
        """A snapshot of the retained messages, topic -> payload."""
        with self._lock:
            return {t: m.payload for t, m in self._retained.items()}

    def clients(self) -> list[str]:
        """Ids of the connected clients."""
        with self._lock:
            return sorted(self._clients)


class MemoryTransport(Transport):
    """A :class:`Transport` on a :class:`MemoryHub`: same contract as ``MqttTransport``, no network."""

    def __init__(
        self,
        hub: MemoryHub | str | None = None,
        client_id: str | None = None,
        *,
        will: Message | None = None,
        max_payload: int | None = None,
        inbox_max_messages: int = 10_000,
        inbox_max_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        if hub is None or isinstance(hub, str):
            hub = MemoryHub.named(hub or "default")
        if will is not None:
            validate_topic(will.topic)
        self.hub = hub
        self.client_id = client_id or f"edgedfl-mem-{next(_ids)}"
        self.will = will
        self._own_limit = max_payload
        self.inbox = Inbox(inbox_max_messages, inbox_max_bytes)
        self._subs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._alive = True
        hub._attach(self)

    @property
    def max_payload(self) -> int:  # type: ignore[override]
        limit = self.hub.max_payload
        return limit if self._own_limit is None else min(limit, self._own_limit)

    @property
    def connected(self) -> bool:
        return self._alive and not self._closed

    @property
    def dropped(self) -> int:
        """Inbound messages dropped because the inbox was full."""
        return self.inbox.dropped

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        validate_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        payload = bytes(payload)
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(
                f"payload of {len(payload)} bytes on {topic!r} exceeds the limit of {self.max_payload} bytes"
            )
        self._require_link()
        self.hub._route(Message(topic, payload, retain=retain, qos=qos))

    def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        validate_filter(pattern)
        self._require_link()
        with self._lock:
            self._subs[pattern] = qos
        self.hub._subscribe(self, pattern)

    def unsubscribe(self, pattern: str) -> None:
        with self._lock:
            self._subs.pop(pattern, None)

    def receive(self, timeout: float | None = None) -> Message | None:
        return self.inbox.get(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hub._detach(self, publish_will=False)

    # -- hub side ---------------------------------------------------------------

    def _require_link(self) -> None:
        if self._closed:
            raise NotConnected(f"{self.client_id}: transport is closed")
        if not self._alive:
            raise NotConnected(f"{self.client_id}: killed by the hub")

    def _matching_qos(self, topic: str) -> int | None:
        with self._lock:
            best = None
            for pattern, qos in self._subs.items():
                if topic_matches(pattern, topic):
                    best = qos if best is None else max(best, qos)
            return best

    def _mark_dead(self) -> None:
        self._alive = False

    def _detach_by_hub(self) -> None:
        self._alive = False

    def __repr__(self) -> str:
        return f"MemoryTransport(hub={self.hub.name!r}, client_id={self.client_id!r})"
