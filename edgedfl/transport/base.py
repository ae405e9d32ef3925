"""The Transport contract: publish / subscribe / receive / close.

A transport moves opaque byte payloads between topics. It knows nothing of
envelopes or models (that is the wire layer's and the protocol's job) and it
never imports torch. Implementations: ``MemoryTransport`` (in one process, for
tests and the fast emulator) and ``MqttTransport`` (paho-mqtt 2.x).

Delivery model: network callbacks only enqueue; the owner drains the queue
with :meth:`Transport.receive`. Nothing heavy ever runs on a network thread.
"""

from __future__ import annotations

import abc
import dataclasses
from types import TracebackType


@dataclasses.dataclass(frozen=True)
class Message:
    """One delivered (or to-be-published) message."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching with ``+`` (one level) and ``#`` (the rest)."""
    pparts = pattern.split("/")
    tparts = topic.split("/")
    for i, p in enumerate(pparts):
        if p == "#":
            return True
        if i >= len(tparts):
            return False
        if p != "+" and p != tparts[i]:
            return False
    return len(pparts) == len(tparts)


class Transport(abc.ABC):
    """Small interface every transport implements; one contract test runs against all."""

    #: Largest payload, in bytes, that this transport can carry in one publish.
    max_payload: int

    @abc.abstractmethod
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send ``payload``; raises ``PayloadTooLarge`` before sending if over ``max_payload``."""

    @abc.abstractmethod
    def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        """Receive messages on topics matching ``pattern`` (MQTT wildcards)."""

    @abc.abstractmethod
    def receive(self, timeout: float | None = None) -> Message | None:
        """Next delivered message, or ``None`` after ``timeout`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect cleanly (no last will is triggered). Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
