"""A device in a swarm: the protocol side and what trains, composed.

- :mod:`edgedfl.node.config`: ``SwarmConfig`` (shared, with its adapter/train/aggregation/protocol parts)
  and ``NodeConfig`` (one device).
- :mod:`edgedfl.node.member`: ``SwarmMember``, a device's whole life on the wire (torch-free).
- :mod:`edgedfl.node.learner`: ``Learner``, the interface of what trains (``Metrics``, ``Answers``).
- :mod:`edgedfl.node.torch_learner`: ``TorchLearner``, a quantized transformers base with the method's slots.
- :mod:`edgedfl.node.node`: ``Node`` = ``SwarmMember`` + ``TorchLearner`` (``python -m edgedfl.node``).
- :mod:`edgedfl.node.links`, :mod:`edgedfl.node.signature`: byte counting / emulated links, task signatures.
"""

from edgedfl.node.config import NodeConfig, SwarmConfig

__all__ = ["NodeConfig", "SwarmConfig"]
