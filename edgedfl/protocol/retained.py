"""A swarm's retained messages on a broker: list them, and clear them (``edgedfl swarm clear``).

Presence, hellos and finished experts are retained, so a persistent broker
keeps them after a run. A later run under another name never sees them; one
that reuses the name refuses those made under other settings (the settings
digest). Clearing them is what a user does to reuse a name cleanly: an empty
retained publish on each topic, which MQTT defines as "delete".
"""

from __future__ import annotations

import time

from edgedfl.protocol.topics import Topics
from edgedfl.transport.base import Transport

__all__ = ["clear_retained", "retained_topics"]


def retained_topics(transport: Transport, swarm: str, *, settle_s: float = 1.5) -> list[str]:
    """Topics under ``edgedfl/<swarm>/`` holding a retained message (a broker sends them on subscribe)."""
    topics = Topics(swarm)
    transport.subscribe(topics.everything(), qos=1)
    found: set[str] = set()
    quiet_until = time.monotonic() + settle_s
    while time.monotonic() < quiet_until:
        msg = transport.receive(0.1)
        if msg is None:
            continue
        if msg.retain and msg.payload:
            found.add(msg.topic)
            quiet_until = time.monotonic() + settle_s / 3  # more may follow; wait while they do
    return sorted(found)


def clear_retained(transport: Transport, swarm: str, *, settle_s: float = 1.5) -> list[str]:
    """Delete every retained message of ``swarm`` (an empty retained publish per topic); the topics cleared."""
    found = retained_topics(transport, swarm, settle_s=settle_s)
    for topic in found:
        transport.publish(topic, b"", qos=1, retain=True)
    return found
