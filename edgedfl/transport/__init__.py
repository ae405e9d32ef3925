"""How bytes move between devices: the Transport contract and its implementations.

- :mod:`edgedfl.transport.base`: ``Transport``, ``Message``, topic rules.
- :mod:`edgedfl.transport.memory`: ``MemoryHub`` + ``MemoryTransport`` (no network).
- :mod:`edgedfl.transport.mqtt`: ``MqttTransport`` (paho-mqtt 2.x).
- :mod:`edgedfl.transport.inbox`: the bounded queue the network thread fills.
- :mod:`edgedfl.transport.url`: ``transport_from_url`` (``mqtt://``, ``mqtts://``, ``memory://``).

This floor moves opaque bytes on topics and knows nothing of what they mean:
it never imports :mod:`edgedfl.wire`. The neighbour protocol that gives them
meaning is :mod:`edgedfl.protocol`; brokers to talk through are
:mod:`edgedfl.brokers`.

Names are loaded on first use, so ``import edgedfl.transport`` stays cheap.
Nothing here imports torch: a phone speaks this layer without Python.
"""

from __future__ import annotations

from edgedfl._lazy import lazy_getattr

_EXPORTS = {
    "Message": "base",
    "Transport": "base",
    "topic_matches": "base",
    "MemoryHub": "memory",
    "MemoryTransport": "memory",
    "MqttTransport": "mqtt",
    "TlsOptions": "mqtt",
    "transport_from_url": "url",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("edgedfl.transport", _EXPORTS)
