"""How bytes move between devices: the Transport contract and its implementations.

- :mod:`edgedfl.transport.base`: ``Transport``, ``Message``, topic rules.
- :mod:`edgedfl.transport.memory`: ``MemoryHub`` + ``MemoryTransport`` (no network).
- :mod:`edgedfl.transport.mqtt`: ``MqttTransport`` (paho-mqtt 2.x) and ``transport_from_url``.
- :mod:`edgedfl.transport.broker`: ``MosquittoBroker``, ``EmbeddedBroker``, ACL/password helpers.
- :mod:`edgedfl.transport.pki`: a throwaway CA for TLS with client certificates.

Names are loaded on first use, so ``import edgedfl.transport`` stays cheap.
Nothing here imports torch: a phone speaks this layer without Python.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Message": "base",
    "Transport": "base",
    "topic_matches": "base",
    "MemoryHub": "memory",
    "MemoryTransport": "memory",
    "MqttTransport": "mqtt",
    "TlsOptions": "mqtt",
    "transport_from_url": "mqtt",
    "MosquittoBroker": "broker",
    "EmbeddedBroker": "broker",
    "BrokerTls": "broker",
    "start_broker": "broker",
    "write_acl": "broker",
    "write_password_file": "broker",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgedfl.transport' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgedfl.transport.{module}"), name)
