"""What every swarm member does on the wire, torch-free: shared by the node and the phone stand-in.

A member (a Python :class:`~edgedfl.node.node.Node`, or the phone stand-in that
trains through an ExecuTorch program) differs in how it trains, evaluates and
holds B. What it says and hears is the same, and lives here:

* round 0: swap calibration statistics and latent codes inside the cluster and
  pool them in one order, so every member derives the same masks and code;
* every round: publish the own sparse B, collect the neighbours' until all
  arrived or the deadline (with quorum), Metropolis-average;
* the cluster's speaker publishes the finished expert on schedule; at the end
  every member waits for the other clusters' experts and builds the routing
  table (a code per slot, a slot per task).

Only numpy, the wire/transport/topology layers and the torch-free parts of
adapters and routing are imported here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgedfl.adapters.solora import LayerStats
from edgedfl.aggregation import for_method
from edgedfl.data.examples import Example
from edgedfl.data.sources import load_examples
from edgedfl.data.tasks import TASKS
from edgedfl.errors import QuorumNotReached
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.links import CountingTransport
from edgedfl.routing.codes import LatentCode
from edgedfl.topology.clustering import Clustering
from edgedfl.topology.graph import present_weights
from edgedfl.transport.protocol import NeighbourProtocol

log = logging.getLogger("edgedfl.node")

#: the round number of the calibration exchange (training rounds count from 1)
CALIBRATION_ROUND = 0
#: prefix of the latent code's tensors inside the round-0 statistics
CODE_PREFIX = "code."


def far_code(dim: int) -> LatentCode:
    """A code no prompt is near: a slot without an expert is never routed to (and merges as zero)."""
    return LatentCode(2, np.full(dim, 1e6), np.eye(dim))  # (D,), (D, D)


def device_examples(cfg: NodeConfig) -> tuple[list[Example], list[Example]]:
    """This device's training examples and its own task's test prompts.

    A built-in task is split into ``shards`` disjoint training shards (one per
    device holding the task); any other source keeps its first 90% for training.
    """
    s = cfg.swarm
    n, shards = s.n_train, max(cfg.shards, 1)
    if cfg.data in TASKS:
        pool = load_examples(cfg.data, "train", n=n * shards, seed=s.seed)
        return pool[cfg.shard :: shards][:n], eval_examples(cfg, cfg.data)
    pool = load_examples(cfg.data, seed=s.seed)
    return pool[: len(pool) * 9 // 10][:n], pool[len(pool) * 9 // 10 :][: s.n_eval]


def eval_examples(cfg: NodeConfig, task: str) -> list[Example]:
    """The ``n_eval`` test prompts of built-in ``task`` this device answers: its own slice.

    Devices split the test split (block ``eval_shard`` of ``eval_shards``), so a
    fleet is scored on ``n_eval x eval_shards`` distinct prompts per task while
    each device still answers ``n_eval``: more prompts, same compute.
    """
    n, k, seed = cfg.swarm.n_eval, max(cfg.eval_shards, 1), cfg.swarm.seed
    cap = TASKS[task].capacity("test", seed)
    size = n * k if cap is None else max(min(n * k, cap), n)  # fewer than n: load_examples says so
    pool = load_examples(task, "test", n=size, seed=seed)
    # contiguous blocks; a split too small for every device's block wraps (slices then overlap)
    return [pool[(cfg.eval_shard * n + j) % size] for j in range(n)]


class SwarmMember:
    """The wire side of a swarm member; subclasses set the attributes below and ``own_update``."""

    me: str
    cfg: NodeConfig
    swarm: SwarmConfig
    protocol: NeighbourProtocol | None
    link: CountingTransport | None
    clustering: Clustering | None
    slot: int
    neighbours: Sequence[str]
    weights: dict[str, float]
    cluster_code: LatentCode | None

    def own_update(self) -> dict[str, np.ndarray]:
        """``<layer>.lora_B`` -> this member's B of its slot (dense, zero outside the mask)."""
        raise NotImplementedError

    def _wire_masks(self) -> dict[str, np.ndarray] | None:
        """``<layer>.lora_B`` -> the slot's mask (solora: B travels sparse), or None (dense)."""
        raise NotImplementedError

    # -- round 0 ----------------------------------------------------------------------

    def exchange_calibration(self, own: Mapping[str, LayerStats], code: LatentCode) -> dict[str, LayerStats]:
        """Send the own statistics and code to the cluster, pool everyone's in node order.

        Sets ``cluster_code``; returns the pooled statistics per layer (what the
        masks derive from). Members that did not report in ``join_timeout_s``
        are left out, with a warning.
        """
        assert self.protocol is not None and self.link is not None and self.clustering is not None
        tensors = code.to_tensors(CODE_PREFIX)
        for layer, st in own.items():
            tensors[f"{layer}.cov"] = st.cov.astype(np.float32)
            tensors[f"{layer}.energy"] = np.array([st.total_energy, st.n_tokens], dtype=np.float32)
        members = [m for m in self.clustering.members(self.slot) if m != self.me]
        self.link.round = CALIBRATION_ROUND
        self.protocol.publish_update(CALIBRATION_ROUND, self.slot, tensors, receivers=members, precision="fp32")
        try:
            got = self.protocol.collect_round(
                CALIBRATION_ROUND, self.slot, members, len(members), self.swarm.join_timeout_s
            ).updates
        except QuorumNotReached:
            got = self.protocol.round_updates(CALIBRATION_ROUND, self.slot)
            log.warning("%s: calibration stats missing from some cluster members", self.me)
        everyone = {self.me: tensors, **{s: u.tensors for s, u in got.items()}}
        pooled: dict[str, LayerStats] = {}
        self.cluster_code = None
        for sender in sorted(everyone):  # same order, same float sums, on every member
            t = everyone[sender]
            c = LatentCode.from_tensors(t, CODE_PREFIX)
            self.cluster_code = c if self.cluster_code is None else self.cluster_code.merged(c)
            for layer, st in own.items():
                e = t[f"{layer}.energy"].astype(np.float64)
                one = LayerStats(t[f"{layer}.cov"].astype(np.float64), float(e[0]), int(e[1]), st.d_in, st.d_out)
                pooled[layer] = pooled[layer].merged(one) if layer in pooled else one
        return pooled

    # -- rounds -----------------------------------------------------------------------

    def exchange_round(self, r: int, own: dict[str, np.ndarray], *, wire_masks: dict[str, np.ndarray] | None,
                       masks: dict[str, np.ndarray] | None) -> dict[str, Any]:
        """Publish ``own``, collect the neighbours' updates of round ``r``, aggregate.

        Returns ``mixed`` (the aggregated tensors), ``peers`` (who arrived),
        ``quorum_short`` and ``waited_s`` (collect plus aggregation).
        """
        assert self.protocol is not None
        self.protocol.publish_update(r, self.slot, own, receivers=self.neighbours, masks=wire_masks,
                                     precision=self.swarm.precision)  # type: ignore[arg-type]
        self._after_publish(r)
        quorum = min(len(self.neighbours), math.ceil(self.swarm.quorum * len(self.neighbours)))
        t_collect = time.monotonic()
        try:
            arrived = self.protocol.collect_round(r, self.slot, self.neighbours, quorum,
                                                  self.swarm.round_deadline_s).updates
            short = False
        except QuorumNotReached:
            arrived = {s: u for s, u in self.protocol.round_updates(r, self.slot).items() if s in self.neighbours}
            short = True
        own_w, peer_w = present_weights(self.weights, self.me, arrived)
        agg = for_method(self.swarm.method, robust=None if self.swarm.aggregator == "mean" else self.swarm.aggregator,
                         clip_norm=self.swarm.clip_norm or None)
        mixed = agg.aggregate(own, [(peer_w[s], arrived[s].tensors) for s in sorted(peer_w)],
                              own_weight=own_w, masks=masks)
        return {"mixed": mixed, "peers": sorted(arrived), "quorum_short": short,
                "waited_s": time.monotonic() - t_collect}

    def _after_publish(self, r: int) -> None:
        """Hook right after the round's update is out (tests kill a node here)."""

    # -- experts ----------------------------------------------------------------------

    def is_speaker(self) -> bool:
        """The cluster's smallest id speaks for it (publishes its finished expert)."""
        assert self.clustering is not None
        return self.me == min(self.clustering.members(self.slot))

    def share_expert(self, r: int) -> None:
        """The speaker publishes the finished expert (fp16 B, sparse under the mask, and the cluster's code)."""
        assert self.protocol is not None
        every = self.swarm.expert_every
        if not self.is_speaker() or not (r == self.swarm.rounds or (every and r % every == 0)):
            return
        tensors = {k: v.astype(np.float16) for k, v in self.own_update().items()}
        latent = self.cluster_code.to_tensors() if self.cluster_code is not None else {}
        # the task name travels only so that emulations can score oracle routing
        self.protocol.publish_expert(self.slot, r, tensors, latent, meta={"task": self.cfg.data},
                                     masks=self._wire_masks())

    def wait_for_experts(self, timeout_s: float, *, fell_behind: bool = False) -> list[int]:
        """Slots whose finished expert this member should load, after waiting up to ``timeout_s``.

        Every other cluster's; and the own cluster's too for a member that fell
        behind (rounds closed without any neighbour, e.g. after a restart on a
        broker that kept nothing for it), once the speaker published the last round.
        """
        assert self.protocol is not None and self.clustering is not None
        wanted = set(self.clustering.slot_numbers) - {self.slot}
        deadline = time.monotonic() + timeout_s
        while wanted - set(self.protocol.experts) and time.monotonic() < deadline:
            self.protocol.poll(0.2)
        if fell_behind:
            own = self.protocol.experts.get(self.slot)
            if own is not None and own.sender != self.me and own.round >= self.swarm.rounds:
                wanted.add(self.slot)
        return sorted(wanted & set(self.protocol.experts))

    def routing_table(self, loaded: Mapping[int, int]) -> tuple[list[LatentCode], dict[str, int]]:
        """(a code per slot, far codes for empty slots; task -> slot) from the experts in ``loaded``."""
        assert self.protocol is not None and self.cluster_code is not None
        codes = {self.slot: self.cluster_code}
        task_slot = {self.cfg.data: self.slot}
        for slot in loaded:
            info = self.protocol.experts[slot]
            if info.latent:
                codes[slot] = LatentCode.from_tensors(info.latent)
            task_slot.setdefault(str(info.meta.get("task", "")), slot)
        nowhere = far_code(self.cluster_code.dim)
        return [codes.get(k, nowhere) for k in range(self.swarm.num_slots)], task_slot
