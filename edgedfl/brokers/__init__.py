"""MQTT brokers to run a swarm through: Mosquitto (a real broker, started and stopped here), the
embedded amqtt broker (MQTT 3.1.1, in-process), ACL and password files, and a throwaway CA for TLS.

- :mod:`edgedfl.brokers.launch`: ``MosquittoBroker``, ``EmbeddedBroker``, ``start_broker``, ``acl_text``,
  ``write_acl``, ``write_password_file``, ``free_port``.
- :mod:`edgedfl.brokers.pki`: ``make_test_pki`` (a CA, server and client certificates).
- :mod:`edgedfl.brokers.secure`: ``write_secure_swarm``, ``SecureSwarm``, ``secure_broker`` (mTLS, a
  password per device, the ACL: ``edgedfl broker --secure``, ``edgedfl emulate --secure``).

The broker only relays; nothing here aggregates. Names load on first use.
"""

from __future__ import annotations

from edgedfl._lazy import lazy_getattr

_EXPORTS = {
    "MosquittoBroker": "launch",
    "EmbeddedBroker": "launch",
    "BrokerTls": "launch",
    "start_broker": "launch",
    "acl_text": "launch",
    "write_acl": "launch",
    "write_password_file": "launch",
    "free_port": "launch",
    "mosquitto_available": "launch",
    "make_test_pki": "pki",
    "SecureSwarm": "secure",
    "write_secure_swarm": "secure",
    "secure_broker": "secure",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("edgedfl.brokers", _EXPORTS)
