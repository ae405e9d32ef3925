"""A transport wrapper that counts the bytes this device puts on the wire, per round,
and can shape its uplink at application level (emulated phones on one laptop).

Counted: every payload byte published (our envelopes, chunk headers, acks,
hellos) plus the topic, per round label the node sets. Not counted: MQTT's own
fixed headers and TCP/IP, which are the same for every method.

Per neighbour (for the live dashboard, :mod:`edgedfl.wire.metrics`): bytes
received on each peer's update topics, and bytes of this device's update
topics attributed to each peer in :attr:`CountingTransport.audience` (the
receivers the member addressed). Hellos, experts and acks go to everyone and
count only in the totals.

Application-level shaping sleeps ``len * 8 / rate`` plus the latency before
each publish; as root the emulator shapes links for real instead (network
namespaces, tc tbf), and the rate here stays 0.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from edgedfl.transport.base import Message, Transport


def _is_update_topic(topic: str) -> bool:
    """``edgedfl/<swarm>/update/<slot>/<node>``: the neighbour exchange (updates, masks, round-0 statistics)."""
    parts = topic.split("/")
    return len(parts) == 5 and parts[2] == "update"


class CountingTransport(Transport):
    """Delegates to ``inner``; counts published bytes under the current round label."""

    def __init__(self, inner: Transport, *, rate_bps: float = 0.0, latency_ms: float = 0.0) -> None:
        self.inner = inner
        self.max_payload = inner.max_payload
        self.rate_bps = rate_bps
        self.latency_s = latency_ms / 1000.0
        self.round = 0
        self.bytes_by_round: dict[int, int] = defaultdict(int)
        self.messages_by_round: dict[int, int] = defaultdict(int)
        #: peers this device's update-topic publishes are addressed to now (the member sets it)
        self.audience: tuple[str, ...] = ()
        #: peer -> update-topic bytes sent to it / received from it
        self.sent_to: dict[str, int] = defaultdict(int)
        self.received_from: dict[str, int] = defaultdict(int)
        #: every byte received (payload + topic), all topics
        self.received_bytes = 0
        self._lock = threading.Lock()

    def _account(self, topic: str, payload: bytes) -> None:
        n = len(payload) + len(topic.encode())
        with self._lock:
            self.bytes_by_round[self.round] += n
            self.messages_by_round[self.round] += 1
            if _is_update_topic(topic):
                for peer in self.audience:
                    self.sent_to[peer] += n
        delay = self.latency_s + (n * 8 / self.rate_bps if self.rate_bps > 0 else 0.0)
        if delay > 0:
            time.sleep(delay)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.inner.publish(topic, payload, qos=qos, retain=retain)
        self._account(topic, payload)

    def publish_many(self, messages: list[Message], **kwargs: object) -> None:
        self.inner.publish_many(messages, **kwargs)  # type: ignore[arg-type]
        for m in messages:
            self._account(m.topic, m.payload)

    def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        self.inner.subscribe(pattern, qos=qos)

    def unsubscribe(self, pattern: str) -> None:
        self.inner.unsubscribe(pattern)

    def receive(self, timeout: float | None = None) -> Message | None:
        msg = self.inner.receive(timeout)
        if msg is not None:
            n = len(msg.payload) + len(msg.topic.encode())
            with self._lock:
                self.received_bytes += n
                if _is_update_topic(msg.topic):
                    self.received_from[msg.topic.rsplit("/", 1)[-1]] += n
        return msg

    def close(self) -> None:
        self.inner.close()

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_round.values())
