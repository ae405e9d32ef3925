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

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.adapters.solora import LayerStats
from edgedfl.aggregation import for_method
from edgedfl.data.examples import Example
from edgedfl.data.sources import load_examples
from edgedfl.data.tasks import TASKS
from edgedfl.devices import get_profile
from edgedfl.errors import QuorumNotReached
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.links import CountingTransport
from edgedfl.routing.codes import LatentCode
from edgedfl.topology import ClusterConfig, cluster, flat_clustering, metropolis_weights, neighbour_graph
from edgedfl.topology.clustering import Clustering
from edgedfl.topology.graph import present_weights
from edgedfl.transport.url import transport_from_url
from edgedfl.protocol.types import ProtocolConfig
from edgedfl.protocol.endpoint import NeighbourProtocol

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
    """The ``n_eval`` test prompts of ``task`` this device answers: for a built-in task, its own slice.

    Devices split the test split (block ``eval_shard`` of ``eval_shards``), so a
    fleet is scored on ``n_eval x eval_shards`` distinct prompts per task while
    each device still answers ``n_eval``: more prompts, same compute.
    """
    n, k, seed = cfg.swarm.n_eval, max(cfg.eval_shards, 1), cfg.swarm.seed
    if task not in TASKS:  # a file or hf: dataset has no seeded split to divide: its first n_eval test examples
        return load_examples(task, "test", n=n, seed=seed)
    cap = TASKS[task].capacity("test", seed)
    size = n * k if cap is None else max(min(n * k, cap), n)  # fewer than n: load_examples says so
    pool = load_examples(task, "test", n=size, seed=seed)
    # contiguous blocks; a split too small for every device's block wraps (slices then overlap)
    return [pool[(cfg.eval_shard * n + j) % size] for j in range(n)]


def write_json(path: Path, data: Any) -> None:
    """Atomically (temp file + rename), so the live view never reads half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


class SwarmMember:
    """The wire side of a swarm member and its whole life (:meth:`run`).

    Subclasses set the attributes below and supply how the member loads, trains,
    evaluates and checkpoints: ``load``, ``hello``, ``place``, ``calibrate_masks``,
    ``evaluate_before``, ``run_round``, ``collect_experts``, ``final_eval``,
    ``resume``, ``own_update`` (and optionally ``after_place``, ``final_fields``).
    """

    me: str
    cfg: NodeConfig
    swarm: SwarmConfig
    state: Path
    status: dict[str, Any]
    protocol: NeighbourProtocol | None
    link: CountingTransport | None
    clustering: Clustering | None
    slot: int
    neighbours: Sequence[str]
    weights: dict[str, float]
    cluster_code: LatentCode | None

    # -- what subclasses supply ---------------------------------------------------------

    def load(self) -> None:
        raise NotImplementedError

    def hello(self) -> np.ndarray:
        raise NotImplementedError

    def place(self, clustering: Clustering) -> None:
        raise NotImplementedError

    def calibrate_masks(self) -> None:
        raise NotImplementedError

    def evaluate_before(self) -> None:
        raise NotImplementedError

    def run_round(self, r: int) -> dict[str, Any]:
        raise NotImplementedError

    def collect_experts(self, timeout_s: float, *, fell_behind: bool = False) -> dict[int, int]:
        raise NotImplementedError

    def final_eval(self, loaded: dict[int, int]) -> dict[str, Any]:
        raise NotImplementedError

    def resume(self) -> int | None:
        """From the newest complete checkpoint: take the saved place and return its round (None: fresh)."""
        raise NotImplementedError

    def after_place(self) -> None:
        """After a fresh join placed this member, before calibration."""

    def final_fields(self) -> dict[str, Any]:
        """What this kind of member adds to ``final.json``."""
        return {}

    # -- status for the live view -------------------------------------------------------

    def _set_status(self, state: str, **extra: Any) -> None:
        self.status.update(state=state, **extra)
        if self.link is not None:
            self.status["bytes"] = self.link.total_bytes
        write_json(self.state / "status.json", self.status)

    # -- connecting ---------------------------------------------------------------------

    def connect(self) -> None:
        """Transport (with the last will), byte counting and emulated link, neighbour protocol."""
        will = NeighbourProtocol.will_message(self.swarm.name, self.me)
        inner = transport_from_url(self.cfg.broker, client_id=self.me, will=will)
        self.link = CountingTransport(inner, rate_bps=self.cfg.link_rate_bps, latency_ms=self.cfg.link_latency_ms)
        chunk = min(1_000_000, max(16_384, self.link.max_payload - 4096))
        proto_cfg = ProtocolConfig(ack_timeout_s=max(10.0, self.swarm.round_deadline_s / 2), chunk_bytes=chunk)
        self.protocol = NeighbourProtocol(
            self.link, self.swarm.name, self.me, state_dir=self.state / "proto", config=proto_cfg
        )
        self.protocol.start()

    def _follow_all_slots(self, on: bool) -> None:
        """During the join every slot is followed: a cluster mate may send its calibration
        statistics before this member has finished clustering, and a message published
        before a subscription exists is not delivered. Afterwards only the own slot."""
        assert self.protocol is not None
        for s in range(self.swarm.num_slots):
            if on:
                self.protocol.follow_slot(s)
            elif s != self.slot:
                self.protocol.unfollow_slot(s)

    # -- the whole life -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Join (or resume), run the remaining rounds, collect every expert, evaluate; ``final.json``."""
        t_start = time.monotonic()
        self._set_status("loading")
        self.load()
        self._set_status("connecting")
        self.connect()
        assert self.protocol is not None and self.link is not None
        done = self.resume()
        if done is not None:
            self.link.round = done + 1
            log.info("%s: resumed after round %d in slot %d", self.me, done, self.slot)
            self.hello()
        else:
            done = 0
            self._set_status("hello")
            self._follow_all_slots(True)
            self.link.round = CALIBRATION_ROUND
            sig = self.hello()
            self._set_status("joining")
            self.place(self.join(sig))
            self.after_place()
            self._set_status("calibrating", slot=self.slot)
            self.calibrate_masks()
            self._follow_all_slots(False)
            self.evaluate_before()
        assert self.clustering is not None
        self._set_status("ready", slot=self.slot, clusters=self.clustering.to_dict())
        rows = [self.run_round(r) for r in range(done + 1, self.swarm.rounds + 1)]
        self._set_status("collecting experts")
        behind = any(r["quorum_short"] and not r["peers"] for r in rows)
        experts = self.collect_experts(self.swarm.round_deadline_s, fell_behind=behind)
        self._set_status("final evaluation")
        routed = self.final_eval({s: r for s, r in experts.items() if s != self.slot})
        setup = routed["modes"][self.swarm.final_modes[0]]
        final = {
            "node": self.me, "task": self.cfg.data, "slot": self.slot,
            "clusters": self.clustering.assignment, "experts": experts,
            "accuracy": setup.get(self.cfg.data), "final": routed, "adopted_expert": self.slot in experts,
            "bytes_by_round": dict(self.link.bytes_by_round), "total_bytes": self.link.total_bytes,
            "resumed_after": done, "wall_s": time.monotonic() - t_start, **self.final_fields(),
        }
        write_json(self.state / "final.json", final)
        self._set_status("done")
        self.protocol.close()
        return final

    # -- joining ----------------------------------------------------------------------

    def publish_own_hello(self, signature: np.ndarray, **profile_extra: Any) -> None:
        """The retained hello: profile name, advertised link rate (and ``profile_extra``), task signature."""
        assert self.protocol is not None
        profile = get_profile(self.cfg.profile)
        self.protocol.publish_hello(
            {"profile": profile.name, "link_rate_bps": self.cfg.link_rate_bps or profile.link_rate_bps,
             **profile_extra}, signature,
        )

    def join(self, own_signature: np.ndarray) -> Clustering:
        """Wait for the swarm's hellos and cluster them (identically on every member)."""
        assert self.protocol is not None
        expected = self.swarm.expected_devices
        deadline = time.monotonic() + self.swarm.join_timeout_s
        while True:
            self.protocol.poll(0.2)
            sigs = {p: info.signature for p, info in self.protocol.peers.items()
                    if info.signature is not None and p != self.me}
            sigs[self.me] = own_signature
            if (expected and len(sigs) >= expected) or time.monotonic() > deadline:
                break
        if self.swarm.topology == "flat" or self.swarm.method != "solora":
            return flat_clustering(sorted(sigs))
        return cluster(sigs, ClusterConfig(max_clusters=self.swarm.max_slots, seed=self.swarm.seed))

    def take_place(self, clustering: Clustering) -> None:
        """Slot, neighbours and Metropolis weights of this member in ``clustering``.

        Every member must build the same graph: a link's score is the slower of
        its two ends' advertised rates, known to all from the hellos.
        """
        assert self.protocol is not None
        self.clustering = clustering
        self.slot = clustering.slot_of(self.me)
        members = clustering.members(self.slot)
        rates = {p: float(info.profile.get("link_rate_bps", 0.0)) for p, info in self.protocol.peers.items()
                 if info.profile}
        rates[self.me] = self.cfg.link_rate_bps or float(get_profile(self.cfg.profile).link_rate_bps)
        quality = {(a, b): min(rates[a], rates[b]) for a in members for b in members
                   if a != b and a in rates and b in rates}
        graph = neighbour_graph(members, quality, self.swarm.degree)
        self.neighbours = graph.neighbours(self.me)
        self.weights = metropolis_weights(graph)[self.me]

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
