"""The neighbour protocol of DESIGN.md over any transport: one endpoint per device.

- :mod:`edgedfl.protocol.endpoint`: :class:`NeighbourProtocol`, built from
  :mod:`~edgedfl.protocol.state` (what it holds), :mod:`~edgedfl.protocol.sending`,
  :mod:`~edgedfl.protocol.receiving` and :mod:`~edgedfl.protocol.rounds`.
- :mod:`edgedfl.protocol.topics`: the topic tree ``edgedfl/<swarm>/...``.
- :mod:`edgedfl.protocol.types`: its config, what it hands back (peers, experts, updates, rounds).
- :mod:`edgedfl.protocol.outbox` and :mod:`edgedfl.protocol.ledger`: the on-disk stores that make
  update delivery exactly-once (over :mod:`edgedfl.protocol.store`).

It speaks :mod:`edgedfl.wire` over :mod:`edgedfl.transport`, and never imports torch.
"""

from __future__ import annotations

from edgedfl._lazy import lazy_getattr

_EXPORTS = {
    "NeighbourProtocol": "endpoint",
    "Topics": "topics",
    "ProtocolConfig": "types",
    "PeerInfo": "types",
    "ExpertInfo": "types",
    "ReceivedUpdate": "types",
    "RemoteError": "types",
    "RoundResult": "types",
    "message_id": "types",
    "Outbox": "outbox",
    "Ledger": "ledger",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("edgedfl.protocol", _EXPORTS)
