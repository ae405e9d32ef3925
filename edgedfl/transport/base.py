"""The Transport contract: publish / subscribe / receive / close.

A transport moves opaque byte payloads between topics. It knows nothing of
envelopes or models (that is the wire layer's and the protocol's job) and it
never imports torch. Implementations: ``MemoryTransport`` (in one process, for
tests and the fast emulator) and ``MqttTransport`` (paho-mqtt 2.x).

Delivery model: network callbacks only enqueue; the owner drains the queue
with :meth:`Transport.receive`. Nothing heavy ever runs on a network thread.
Delivery is at least once for QoS 1: a message can arrive twice (after a
reconnect), so whatever handles it must be idempotent.

Topic rules are MQTT's and every implementation enforces them the same way
(:func:`validate_topic`, :func:`validate_filter`), so code tested against the
in-memory transport behaves the same against a broker.
"""

from __future__ import annotations

import abc
import dataclasses
from types import TracebackType
from typing import TYPE_CHECKING

from edgedfl.errors import InvalidTopic, PayloadTooLarge

if TYPE_CHECKING:  # Python 3.10 has no typing.Self
    from typing_extensions import Self

#: The largest MQTT packet: the variable-length "remaining length" tops out at 2**28 - 1 bytes.
MQTT_MAX_PACKET = 268_435_455


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


def _check_common(kind: str, text: str) -> None:
    if not isinstance(text, str) or not text:
        raise InvalidTopic(f"{kind} must be a non-empty string, got {text!r}")
    if "\x00" in text:
        raise InvalidTopic(f"{kind} {text!r} contains NUL")
    if len(text.encode("utf-8")) > 65535:
        raise InvalidTopic(f"{kind} is longer than 65535 bytes")


def validate_topic(topic: str) -> None:
    """Raise :class:`InvalidTopic` unless ``topic`` is a valid MQTT topic name (no wildcards)."""
    _check_common("topic", topic)
    if "+" in topic or "#" in topic:
        raise InvalidTopic(f"topic {topic!r} contains a wildcard; wildcards are for subscriptions only")


def validate_filter(pattern: str) -> None:
    """Raise :class:`InvalidTopic` unless ``pattern`` is a valid MQTT topic filter."""
    _check_common("topic filter", pattern)
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise InvalidTopic(f"filter {pattern!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise InvalidTopic(f"filter {pattern!r}: '+' must be a whole level")


def publish_packet_size(topic: str, payload_len: int, qos: int, *, mqtt5: bool, props_len: int = 0) -> int:
    """Bytes an MQTT PUBLISH packet takes on the wire (fixed header included).

    Used to refuse a publish before it reaches a broker whose maximum packet
    size it exceeds. ``props_len`` is the encoded MQTT 5 properties' length.
    """
    body = 2 + len(topic.encode("utf-8")) + (2 if qos > 0 else 0) + payload_len
    if mqtt5:
        body += props_len + _varint_len(props_len)
    return 1 + _varint_len(body) + body


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


class Transport(abc.ABC):
    """Small interface every transport implements; one contract test runs against all."""

    #: Largest payload, in bytes, that this transport can carry in one publish.
    max_payload: int

    @abc.abstractmethod
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send ``payload``; raises ``PayloadTooLarge`` before sending if over ``max_payload``."""

    @abc.abstractmethod
    def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        """Receive messages on topics matching ``pattern`` (MQTT wildcards).

        When this returns, the subscription is in force: a message published
        afterwards by anyone is delivered (and retained matches are queued).
        """

    def publish_many(self, messages: list[Message], *, timeout: float | None = None) -> None:
        """Publish ``messages`` in order (e.g. the chunks of one update), all or nothing on size.

        Every size is checked before the first byte is sent, so an oversize
        chunk refuses the whole batch. Implementations may pipeline: the MQTT
        transport sends all and then waits for every PUBACK, instead of one
        round trip per chunk.
        """
        for msg in messages:
            self.check_size(msg.topic, len(msg.payload), msg.qos)
        for msg in messages:
            self.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)

    def check_size(self, topic: str, payload_len: int, qos: int = 1) -> None:
        """Raise ``PayloadTooLarge`` if a payload of ``payload_len`` bytes cannot be published here."""
        validate_topic(topic)
        if payload_len > self.max_payload:
            raise PayloadTooLarge(
                f"payload of {payload_len} bytes on {topic!r} exceeds the limit of {self.max_payload} bytes"
            )

    def unsubscribe(self, pattern: str) -> None:
        """Stop receiving messages for ``pattern`` (exactly as it was subscribed)."""
        raise NotImplementedError

    @abc.abstractmethod
    def receive(self, timeout: float | None = None) -> Message | None:
        """Next delivered message, or ``None`` after ``timeout`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect cleanly (no last will is triggered). Idempotent."""

    @property
    def connected(self) -> bool:
        """Whether the transport currently has a live link (it may come back by itself)."""
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
