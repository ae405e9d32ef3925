"""One device's life in a swarm (``Node``) and its settings (``NodeConfig``, ``SwarmConfig``)."""

from edgedfl.node.config import NodeConfig, SwarmConfig

__all__ = ["NodeConfig", "SwarmConfig"]
