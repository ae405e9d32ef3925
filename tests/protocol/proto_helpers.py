"""Helpers of the protocol tests: a swarm of NeighbourProtocol nodes on one in-memory hub."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.protocol import NeighbourProtocol, ProtocolConfig
from edgedfl.transport.memory import MemoryHub, MemoryTransport

SWARM = "lab"
_hub_ids = itertools.count(1)


def tensors(seed: int = 0, shape: tuple[int, int] = (4, 3)) -> dict[str, np.ndarray]:
    """A tiny deterministic update (two B matrices)."""
    rng = np.random.default_rng(seed)
    return {
        "layers.0.q.B": rng.standard_normal(shape).astype(np.float32),
        "layers.0.v.B": rng.standard_normal(shape).astype(np.float32),
    }


def pump(nodes: list[NeighbourProtocol], until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let every node handle its messages until ``until()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the timeout")
        for n in nodes:
            n.poll(0.01)


class Swarm:
    """Makes protocol nodes on one memory hub, each with its own state directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.hub = MemoryHub(f"proto-{next(_hub_ids)}", max_payload=64 * 1024)
        self.tmp_path = tmp_path
        self.nodes: list[NeighbourProtocol] = []

    def node(
        self, name: str, *, slots: tuple[int, ...] = (0,), start: bool = True, **kwargs: Any
    ) -> NeighbourProtocol:
        kwargs.setdefault("config", ProtocolConfig(ack_timeout_s=0.2, max_backoff_s=0.4, chunk_bytes=4096))
        t = MemoryTransport(self.hub, name, will=NeighbourProtocol.will_message(SWARM, name))
        p = NeighbourProtocol(t, SWARM, name, state_dir=self.tmp_path / name, slots=slots, **kwargs)
        if start:
            p.start()
        self.nodes.append(p)
        return p

    def close(self) -> None:
        for n in self.nodes:
            n.close()
