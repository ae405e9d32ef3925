"""One device's life in a swarm: join, agree on clusters, calibrate, run rounds, share experts.

::

    load + quantize the base, attach the slots        (model, adapters)
    hello: profile + task signature                    (no raw data leaves the device)
    wait for the swarm's hellos, cluster them          (same result on every device, no coordinator)
    round 0: cluster members swap calibration stats    -> the cluster's shared masks (solora)
    rounds 1..R: train local steps, send sparse B to the neighbours in the cluster,
                 collect until all arrived or deadline + quorum, Metropolis-average,
                 evaluate, checkpoint (atomic)
    every few rounds and at the end: the cluster's speaker publishes the finished expert;
    every device collects every cluster's expert into its slots

A node killed at any point restarts from its newest complete checkpoint: it
keeps its clustering and masks, re-sends what its outbox holds, and continues
at the next round; peers that moved on have their updates for those rounds
already queued for it, so it catches up without waiting for deadlines.

Files in ``state_dir``: ``ckpt/`` (atomic checkpoints), ``proto/`` (outbox and
ledger), ``status.json`` (the live view reads it), ``rounds.jsonl`` (one row
per round), ``final.json``.

A node is composition: the protocol side every device shares
(:class:`~edgedfl.node.member.SwarmMember`) around a
:class:`~edgedfl.node.torch_learner.TorchLearner`.
"""

from __future__ import annotations

from typing import Any

from edgedfl.node.config import NodeConfig
from edgedfl.node.member import SwarmMember
from edgedfl.node.torch_learner import TorchLearner

__all__ = ["Node"]


class Node(SwarmMember):
    """One device in Python. ``run()`` does the whole life; the pieces are methods for tests and tools."""

    learner: TorchLearner

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config, TorchLearner(config))

    @property
    def adapted(self) -> Any:
        """The node's :class:`~edgedfl.adapters.model.AdaptedModel` (after :meth:`load`)."""
        return self.learner.adapted
