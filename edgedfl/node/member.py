"""A swarm member's whole life, torch-free: the protocol side of every device, around a :class:`Learner`.

A device is composition: a :class:`SwarmMember` (this file) holds a
:class:`~edgedfl.node.learner.Learner` (what trains: a Python node's torch
model, or a phone's ExecuTorch programs). Everything a device says, hears and
decides lives here once:

* round 0: swap calibration statistics and latent codes inside the cluster and
  pool them in one order, so every member derives the same masks and code;
* every round: publish the own sparse B, collect the neighbours' until all
  arrived or the deadline (with quorum), Metropolis-average;
* the cluster's speaker publishes the finished expert on schedule; at the end
  every member waits for the other clusters' experts and builds the routing
  table (a code per slot, a slot per task);
* the per-round row, the status for the live view, checkpoints through the
  learner, and the final evaluation in every mode.

Only numpy, the wire/protocol/topology layers and the torch-free parts of
adapters and routing are imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import resource
import signal
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.adapters.methods import AdapterMethod
from edgedfl.adapters.solora import LayerStats
from edgedfl.data.examples import Example, normalise_answer
from edgedfl.data.sources import load_examples, task_label
from edgedfl.data.tasks import TASKS
from edgedfl.errors import AggregationError, DataError, QuorumNotReached, TopologyError, WireError
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.learner import Learner, Metrics, Route
from edgedfl.node.links import CountingTransport
from edgedfl.node.metrics import MetricsReporter
from edgedfl.node.shared import digest as _digest
from edgedfl.node.shared import shared_result as _shared_result
from edgedfl.protocol.endpoint import NeighbourProtocol
from edgedfl.routing.codes import LatentCode
from edgedfl.topology import cluster, flat_clustering, metropolis_weights, neighbour_graph
from edgedfl.topology.clustering import Clustering
from edgedfl.topology.graph import present_weights
from edgedfl.transport.url import transport_from_url
from edgedfl.wire.signing import load_or_create_signer, read_keyring
from edgedfl.wire.validate import TensorSpec, validate_tensors

log = logging.getLogger("edgedfl.node")

#: an expert's name in the bundle a device writes (task labels outside this stay "slot<k>")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: the round number of the calibration exchange (training rounds count from 1)
CALIBRATION_ROUND = 0
#: prefix of the latent code's tensors inside the round-0 statistics
CODE_PREFIX = "code."
#: largest |value| accepted in a neighbour's update or a finished expert: a sanity bound at the door
#: (trained B entries are orders of magnitude smaller); clipping in aggregation does the rest
MAX_UPDATE_ABS = 1e4


def far_code(dim: int) -> LatentCode:
    """A code no prompt is near: a slot without an expert is never routed to (and merges as zero)."""
    return LatentCode(2, np.full(dim, 1e6), np.eye(dim))  # (D,), (D, D)


_POOL_LOCK = threading.Lock()


def _pool(source: str, split: str, n: int | None, seed: int) -> tuple[Example, ...]:
    """A task's examples, generated or read once per process: the devices of a host (hundreds of them)
    each take their shard of the same pool, which costs as much to make as the whole fleet's data. The
    lock makes the first device build it while the others wait for it, rather than all building it."""
    with _POOL_LOCK:
        return _pool_once(source, split, n, seed)


@functools.lru_cache(maxsize=16)
def _pool_once(source: str, split: str, n: int | None, seed: int) -> tuple[Example, ...]:
    return tuple(load_examples(source, split, n=n, seed=seed))


def device_examples(cfg: NodeConfig) -> tuple[list[Example], list[Example]]:
    """This device's training examples and its own task's test prompts.

    The task's train split (a file's hash split, :mod:`edgedfl.data.sources`)
    is dealt into ``shards`` disjoint training shards, one per device holding
    the task; the test prompts come from the test split, never from training rows.
    """
    s = cfg.swarm
    n, shards = s.n_train, max(cfg.shards, 1)
    if cfg.data in TASKS:
        pool = _pool(cfg.data, "train", n * shards, s.seed)
    else:
        pool = _pool(cfg.data, "train", None, s.seed)
        if len(pool) < shards:
            raise DataError(f"{cfg.data}: {len(pool)} training examples for {shards} devices")
    return list(pool[cfg.shard :: shards][:n]), eval_examples(cfg, cfg.data)


def eval_examples(cfg: NodeConfig, task: str) -> list[Example]:
    """The ``n_eval`` test prompts of ``task`` this device answers: for a built-in task, its own slice.

    Devices split the test split (block ``eval_shard`` of ``eval_shards``), so a
    fleet is scored on ``n_eval x eval_shards`` distinct prompts per task while
    each device still answers ``n_eval``: more prompts, same compute.
    """
    n, k, seed = cfg.swarm.n_eval, max(cfg.eval_shards, 1), cfg.swarm.seed
    if task in TASKS:
        cap = TASKS[task].capacity("test", seed)
        size = n * k if cap is None else max(min(n * k, cap), n)  # fewer than n: load_examples says so
        pool = _pool(task, "test", size, seed)
    else:  # a file or hf: dataset: its whole test split, divided the same way
        pool = _pool(task, "test", None, seed)
        if not pool:
            raise DataError(f"{task}: its test split is empty (a single file puts about a fifth of its rows there)")
        size = min(len(pool), n * k)
        n = min(n, size)
    # contiguous blocks; a split too small for every device's block wraps (slices then overlap)
    return [pool[(cfg.eval_shard * n + j) % size] for j in range(n)]


def _fits(signature: np.ndarray, own: np.ndarray) -> bool:
    return signature.shape == own.shape and bool(np.isfinite(signature).all())


def corrupt(update: Mapping[str, np.ndarray], attack: str, *, seed: tuple[int, int]) -> dict[str, np.ndarray]:
    """What a Byzantine device sends instead of ``update`` (benchmarks: ``NodeConfig.attack``)."""
    kind, _, value = attack.partition(":")
    rng = np.random.default_rng(list(seed))
    out = {}
    for k in sorted(update):
        v = np.asarray(update[k], dtype=np.float32)
        if kind == "scale":
            out[k] = v * float(value)
        elif kind == "flip":
            out[k] = -v
        else:  # noise
            out[k] = (rng.standard_normal(v.shape) * float(value)).astype(np.float32) * (v != 0)  # (*shape)
    return out


def write_json(path: Path, data: Any) -> None:
    """Atomically (temp file + rename), so the live view never reads half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class RoundExchange:
    """One round on the wire: the aggregated tensors and who took part."""

    mixed: dict[str, np.ndarray]
    peers: list[str]
    quorum_short: bool
    waited_s: float


class SwarmMember:
    """One device in a swarm: the protocol side, around a :class:`Learner`. :meth:`run` is the whole life.

    A Python node is ``SwarmMember(config, TorchLearner(config))``
    (:class:`~edgedfl.node.node.Node`); a phone stand-in holds a learner over
    its ExecuTorch programs. The pieces are methods, for tests and tools.
    """

    def __init__(self, config: NodeConfig, learner: Learner) -> None:
        self.cfg = config
        self.swarm: SwarmConfig = config.swarm
        self.method: AdapterMethod = config.swarm.spec
        self.me = config.node_id
        self.learner = learner
        self.state = Path(config.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.status: dict[str, Any] = {"node": self.me, "state": "starting", "round": 0, "bytes": 0,
                                       **learner.tags()}
        self.protocol: NeighbourProtocol | None = None
        self.link: CountingTransport | None = None
        self.clustering: Clustering | None = None
        self.slot = 0
        self.neighbours: Sequence[str] = ()
        self.weights: dict[str, float] = {}
        #: the cluster's pooled latent code (clustering methods), from round 0
        self.cluster_code: LatentCode | None = None
        self.train_examples: list[Example] = []
        self.test_examples: list[Example] = []
        #: the signed status on the broker for dashboards (from :meth:`connect`)
        self.metrics: MetricsReporter | None = None
        #: the final evaluation's implicit routing: task -> slot -> prompts that slot's expert answered
        self.routing_counts: dict[str, dict[int, int]] = {}

    # -- status for the live view -------------------------------------------------------

    def _set_status(self, state: str, **extra: Any) -> None:
        self.status.update(state=state, **extra)
        if self.link is not None:
            self.status["bytes"] = self.link.total_bytes
            # every byte this device sent, across restarts: a restarted process starts from these
            write_json(self.state / "bytes.json", {str(r): b for r, b in self.link.bytes_by_round.items()})
        write_json(self.state / "status.json", self.status)
        if self.metrics is not None:
            self.metrics.publish()

    def _append_row(self, row: dict[str, Any]) -> None:
        with open(self.state / "rounds.jsonl", "a") as f:
            f.write(json.dumps({**row, **self.learner.tags(), "time": time.time()}, sort_keys=True) + "\n")

    # -- set-up and connecting -----------------------------------------------------------

    def load(self) -> None:
        """This device's examples, then the learner (model or programs) over them."""
        self.train_examples, self.test_examples = device_examples(self.cfg)
        self.learner.load(self.train_examples)

    def connect(self) -> None:
        """Transport (with the last will), byte counting and emulated link, neighbour protocol."""
        will = NeighbourProtocol.will_message(self.swarm.name, self.me)
        inner = transport_from_url(self.cfg.broker, client_id=self.me, will=will, **self.transport_options())
        self.link = CountingTransport(inner, rate_bps=self.cfg.link_rate_bps, latency_ms=self.cfg.link_latency_ms)
        earlier = self.state / "bytes.json"
        if earlier.is_file():  # an earlier process of this device (killed, restarted): its bytes count too
            for r, b in json.loads(earlier.read_text()).items():
                self.link.bytes_by_round[int(r)] += int(b)
        admission = self.swarm.admission
        signer = None if admission == "open" else load_or_create_signer(self.cfg.key_file or self.state / "identity.key")
        keyring = read_keyring(self.cfg.keyring) if admission == "keyring" else None
        self.protocol = NeighbourProtocol(self.link, self.swarm.name, self.me, state_dir=self.state / "proto",
                                          config=self.swarm.protocol_config(self.link.max_payload),
                                          update_spec=self.update_spec, settings=self.swarm.digest(),
                                          signer=signer, keyring=keyring, tofu=admission == "tofu")
        self.protocol.start()
        self.metrics = MetricsReporter(self)

    def transport_options(self) -> dict[str, Any]:
        """Extra keyword arguments for this device's transport (a device host shares its network loop)."""
        return {}

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

    # -- checks at the door ----------------------------------------------------------------

    def update_spec(self, slot: int, round: int) -> TensorSpec | None:
        """What a neighbour's update of (slot, round) must look like before it is accepted.

        Rounds >= 1: exactly this method's tensors and shapes, finite, each value
        below :data:`MAX_UPDATE_ABS`. Round 0: the calibration statistics
        (``<layer>.cov`` (r, r), ``<layer>.energy`` (2,)) plus the latent code,
        which :meth:`exchange_calibration` checks when it pools it.
        """
        shapes = self.learner.update_shapes() if self.train_examples else None
        if not shapes:
            return None  # not loaded yet: nothing of ours to compare with
        if round == CALIBRATION_ROUND:
            calib: dict[str, tuple[int, ...]] = {}
            for key, shape in shapes.items():
                if key.endswith(".lora_B"):
                    layer, r = key.removesuffix(".lora_B"), shape[1]
                    calib[f"{layer}.cov"], calib[f"{layer}.energy"] = (r, r), (2,)
            return TensorSpec(calib, dtypes=frozenset({"float32"}), allow_extra=True)
        return TensorSpec(shapes, max_abs=MAX_UPDATE_ABS)

    def reject(self, exc: Exception, sender: str) -> None:
        """A peer's message that got past the wire but cannot be used: counted, logged, never raised."""
        assert self.protocol is not None
        self.protocol.count_reject(exc, sender)
        log.warning("%s: refused what %s sent: %s", self.me, sender, exc)

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
            self.protocol.hold_updates()  # until this member knows its slot: other clusters' are not ours to answer
            self._follow_all_slots(True)
            self.link.round = CALIBRATION_ROUND
            sig = self.hello()
            self._set_status("joining")
            self.place(self.join(sig))
            self._follow_all_slots(False)
            self._set_status("calibrating", slot=self.slot)
            self.calibrate_masks()
            self.evaluate_before()
        assert self.clustering is not None
        # from round 1 on, only the neighbours' updates are ours to average: subscribe to theirs alone,
        # where that leaves anyone out (in a small cluster every mate is a neighbour: nothing to narrow)
        self._narrow(self.neighbours)
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
            "experts_missing": sorted(set(self.clustering.slot_numbers) - {self.slot} - set(experts)),
            "resumed_after": done, "wall_s": time.monotonic() - t_start, "rejects": dict(self.protocol.rejects),
            "rejects_by_sender": dict(self.protocol.rejects_by_sender),
            # this process's peak resident set (a device process: the device's; a device host: the host's)
            "peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            **self.learner.final_tags(), **self.learner.tags(),
        }
        write_json(self.state / "final.json", final)
        self._set_status("done")
        self.protocol.close()
        return final

    # -- joining ----------------------------------------------------------------------

    def hello(self) -> np.ndarray:
        """The retained hello: profile name, advertised link rate, the learner's extras, task signature."""
        assert self.protocol is not None
        prompts = [e.prompt for e in self.train_examples[: self.swarm.n_signature]]
        signature = self.learner.signature(prompts)
        spread = self.learner.signature_spread()
        profile = self.cfg.device_profile()
        self.protocol.publish_hello(
            {"profile": profile.name, "link_rate_bps": self.cfg.link_rate_bps or profile.link_rate_bps,
             **({"signature_spread": spread} if spread is not None else {}), **self.learner.hello_profile()},
            signature,
        )
        return signature

    def join(self, own_signature: np.ndarray) -> Clustering:
        """Wait for the swarm's hellos and cluster them (identically on every member)."""
        assert self.protocol is not None
        expected = self.swarm.expected_devices
        deadline = time.monotonic() + self.swarm.join_timeout_s
        protocol = self.protocol

        def signatures() -> dict[str, np.ndarray]:
            got = {p: info.signature for p, info in protocol.peers.items()
                   if info.signature is not None and p != self.me and _fits(info.signature, own_signature)}
            return {**got, self.me: own_signature}

        fresh, counted, seen = True, float("-inf"), 1
        while True:
            fresh = protocol.poll(1.0) > 0 or fresh  # returns as soon as a message arrives
            # the hellos are counted again at most once a second, and only when something arrived: with a
            # thousand devices waiting, a count per poll (a pass over every peer) would be the fleet's CPU
            if fresh and time.monotonic() - counted >= 1.0:
                seen, fresh, counted = len(signatures()), False, time.monotonic()
            if (expected and seen >= expected) or time.monotonic() > deadline:
                break
        sigs = signatures()
        for p, info in self.protocol.peers.items():
            if info.signature is not None and p != self.me and p not in sigs:
                self.reject(TopologyError(f"task signature of shape {info.signature.shape}, this swarm's is "
                                          f"{own_signature.shape}, or not finite"), p)
        if self.swarm.topology in ("flat", "local") or not self.method.clusters:
            return flat_clustering(sorted(sigs))
        spreads = {p: info.profile.get("signature_spread") for p, info in self.protocol.peers.items() if p in sigs}
        spreads[self.me] = self.learner.signature_spread()
        known = {p: v for p, v in spreads.items() if v is not None}
        config = self.swarm.cluster_config()
        names = sorted(sigs)
        key = _digest("cluster", names, b"".join(np.ascontiguousarray(sigs[n], dtype=np.float32).tobytes()
                                                 for n in names), sorted(known.items()), config)
        return _shared_result(key, lambda: cluster(sigs, config, spreads=known))

    def place(self, clustering: Clustering) -> None:
        """Take this member's place in ``clustering``: slot, neighbours, weights; train and follow the slot.

        Every member must build the same graph: a link's score is the slower of
        its two ends' advertised rates, known to all from the hellos.
        """
        assert self.protocol is not None
        self.clustering = clustering
        self.slot = clustering.slot_of(self.me)
        members = clustering.members(self.slot)
        rates = {p: float(info.profile.get("link_rate_bps", 0.0)) for p, info in self.protocol.peers.items()
                 if info.profile}
        rates[self.me] = self.cfg.link_rate_bps or float(self.cfg.device_profile().link_rate_bps)
        rated = [(m, rates[m]) for m in sorted(members) if m in rates]
        degree = self.swarm.degree

        def graph_of_cluster() -> Any:
            quality = {(a, b): min(ra, rb) for a, ra in rated for b, rb in rated if a != b}
            return neighbour_graph(members, quality, degree)

        if self.swarm.topology == "local":  # the no-exchange baseline: nobody to average with
            self.neighbours, self.weights = [], {self.me: 1.0}
        else:
            graph = _shared_result(_digest("graph", sorted(members), rated, degree), graph_of_cluster)
            self.neighbours = graph.neighbours(self.me)
            self.weights = metropolis_weights(graph)[self.me]
        self.learner.place(self.slot)
        self.protocol.follow_slot(self.slot)
        self.protocol.keep_slots({self.slot})
        # until the calibration is done, the calibration pool is heard too; not the whole cluster, whose
        # members may already send round 1 (in a cluster of 500, each member's every update to everyone)
        self._narrow({*self.neighbours, *self.calibration_pool()} - {self.me})
        # a slot's finished expert is taken only from a member of that cluster, for a round of this run
        self.protocol.admit_experts({s: clustering.members(s) for s in clustering.slot_numbers}, self.swarm.rounds)

    def _narrow(self, senders: Iterable[str]) -> None:
        """Receive this slot's updates from ``senders`` only, where that leaves some cluster mate out."""
        assert self.protocol is not None and self.clustering is not None
        senders = set(senders)
        if senders != set(self.clustering.members(self.slot)) - {self.me}:
            self.protocol.follow_senders(self.slot, sorted(senders))

    # -- round 0 ----------------------------------------------------------------------

    def calibrate_masks(self) -> None:
        """Round 0 (clustering methods): swap calibration statistics and codes inside the cluster;
        every member derives the same code and, for a sparse method, the same masks."""
        if not self.method.clusters:
            return
        prompts = [e.prompt for e in self.train_examples[: self.swarm.n_calibration]]
        own, code = self.learner.calibration(self.slot, prompts)
        pooled = self.exchange_calibration(own, code)
        if not self.method.sparse:
            return
        if self.swarm.random_masks:  # the ablation: same budget, positions at random
            self.learner.random_masks(self.slot)
        else:
            self.learner.derive_masks(self.slot, pooled)

    def calibration_pool(self) -> list[str]:
        """The cluster members whose statistics and codes every member pools: the first
        ``calibration_peers`` by name (all when 0), the same list on every member."""
        assert self.clustering is not None
        pool = sorted(self.clustering.members(self.slot))
        return pool[: self.swarm.calibration_peers] if self.swarm.calibration_peers else pool

    def exchange_calibration(self, own: Mapping[str, LayerStats], code: LatentCode) -> dict[str, LayerStats]:
        """Send the own statistics and code to the cluster (if this member is in the calibration pool),
        pool the pool's in node order.

        Sets ``cluster_code``; returns the pooled statistics per layer (what the
        masks derive from). Pool members that did not report in ``join_timeout_s``
        are left out, with a warning.
        """
        assert self.protocol is not None and self.link is not None and self.clustering is not None
        tensors = code.to_tensors(CODE_PREFIX)
        for layer, st in own.items():
            tensors[f"{layer}.cov"] = st.cov.astype(np.float32)
            tensors[f"{layer}.energy"] = np.array([st.total_energy, st.n_tokens], dtype=np.float32)
        members = [m for m in self.clustering.members(self.slot) if m != self.me]
        pool = self.calibration_pool()
        expected = [m for m in pool if m != self.me]
        self.link.round = CALIBRATION_ROUND
        self.link.audience = tuple(members)
        if self.me in pool:
            self.protocol.publish_update(CALIBRATION_ROUND, self.slot, tensors, receivers=members, precision="fp32")
        try:
            got = self.protocol.collect_round(
                CALIBRATION_ROUND, self.slot, expected, len(expected), self.swarm.join_timeout_s
            ).updates
        except QuorumNotReached:
            got = self.protocol.round_updates(CALIBRATION_ROUND, self.slot)
            log.warning("%s: calibration stats missing from some cluster members", self.me)
        everyone = {**({self.me: tensors} if self.me in pool else {}),
                    **{s: u.tensors for s, u in got.items() if s in pool}}
        codes: dict[str, LatentCode] = {}
        for sender in sorted(everyone):
            try:
                codes[sender] = LatentCode.from_tensors(everyone[sender], CODE_PREFIX, dim=code.dim)
            except WireError as exc:  # its statistics passed the door; its code does not fit ours
                self.reject(exc, sender)
        pooled: dict[str, LayerStats] = {}
        self.cluster_code = None
        for sender in sorted(codes):  # same order, same float sums, on every member
            t = everyone[sender]
            c = codes[sender]
            self.cluster_code = c if self.cluster_code is None else self.cluster_code.merged(c)
            for layer, st in own.items():
                e = t[f"{layer}.energy"].astype(np.float64)
                one = LayerStats(t[f"{layer}.cov"].astype(np.float64), float(e[0]), int(e[1]), st.d_in, st.d_out)
                pooled[layer] = pooled[layer].merged(one) if layer in pooled else one
        return pooled

    def evaluate_before(self) -> None:
        """Round 0 of the report: accuracy and loss of the base with the untrained expert (B = 0)."""
        assert self.link is not None
        m = self.learner.evaluate(self.test_examples)
        self._append_row({"round": CALIBRATION_ROUND, "node": self.me, "slot": self.slot, "task": self.cfg.data,
                          "accuracy": m.accuracy, "loss": m.loss, "peers": [], "quorum_short": False,
                          "bytes_sent": self.link.bytes_by_round.get(CALIBRATION_ROUND, 0)})

    # -- rounds -----------------------------------------------------------------------

    def run_round(self, r: int) -> dict[str, Any]:
        """Train, publish, collect and average, evaluate, share the expert on schedule, checkpoint; the row."""
        assert self.protocol is not None and self.link is not None
        self.link.round = r
        t0 = time.monotonic()
        self._set_status("training", round=r)
        before = self.learner.get_update(self.slot)
        losses = self.learner.train(r, self.swarm.local_steps)
        train_s = time.monotonic() - t0
        if self.cfg.slowdown > 1:
            time.sleep(train_s * (self.cfg.slowdown - 1))
        own = self.learner.get_update(self.slot)
        self._set_status("publishing", round=r)
        change = math.sqrt(sum(float(((own[k] - before[k]).astype(np.float64) ** 2).sum()) for k in own))
        got = self.exchange_round(r, own, masks=self.learner.masks(self.slot) if self.method.sparse else None,
                                  own_change=change)
        self.learner.set_update(self.slot, got.mixed)
        self._set_status("evaluating", round=r)
        metrics: Metrics = self.learner.evaluate(self.test_examples)
        self.share_expert(r)
        row = {
            "round": r, "node": self.me, "slot": self.slot, "task": self.cfg.data,
            "accuracy": metrics.accuracy, "loss": metrics.loss, "train_loss": float(np.mean(losses)),
            "peers": got.peers, "quorum_short": got.quorum_short, "rejects": dict(self.protocol.rejects),
            "bytes_sent": self.link.bytes_by_round.get(r, 0), "wall_s": time.monotonic() - t0,
            "train_s": train_s, "waited_s": got.waited_s,
        }
        if metrics.hits:  # prompt by prompt, so two runs on the same prompts compare paired
            row["hits"] = metrics.hits
        self.learner.save(self.place_state(r))
        self._append_row(row)
        self._set_status("round done", round=r, accuracy=row["accuracy"])
        return row

    def exchange_round(self, r: int, own: dict[str, np.ndarray], *, masks: dict[str, np.ndarray] | None,
                       own_change: float | None = None) -> RoundExchange:
        """Publish ``own`` (sparse under ``masks``), collect the neighbours' updates of round ``r``, aggregate.

        ``own_change``: the norm of this device's own change this round, the reference of the default
        clipping (``AggregationConfig.auto_clip``).
        """
        assert self.protocol is not None
        if self.swarm.topology == "local":  # the no-exchange baseline: the own update, nothing sent
            return RoundExchange(own, [], False, 0.0)
        sent = corrupt(own, self.cfg.attack, seed=(self.swarm.seed, r)) if self.cfg.attack else own
        if self.link is not None:
            self.link.audience = tuple(self.neighbours)
        self.protocol.publish_update(r, self.slot, sent, receivers=self.neighbours, masks=masks,
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
        agg = self.swarm.aggregation.build(own_change)
        while True:
            own_w, peer_w = present_weights(self.weights, self.me, arrived)
            peers = sorted(peer_w)
            try:
                mixed = agg.aggregate(own, [(peer_w[s], arrived[s].tensors) for s in peers], own_weight=own_w,
                                      masks=masks)
                break
            except AggregationError as exc:  # a neighbour's update that cannot be combined: the round goes on
                if exc.neighbour is None:
                    raise  # our own update: a bug here, not a peer's doing
                self.reject(exc, peers[exc.neighbour])
                arrived = {s: u for s, u in arrived.items() if s != peers[exc.neighbour]}
        return RoundExchange(mixed, sorted(arrived), short, time.monotonic() - t_collect)

    def _after_publish(self, r: int) -> None:
        """Right after the round's update is out (tests kill a member here)."""
        self._set_status("collecting", round=r)
        if self.cfg.crash_after_round == r:
            self.crash()

    def crash(self) -> None:
        """An injected crash (``crash_after_round``): the process dies as a killed device would."""
        os.kill(os.getpid(), signal.SIGKILL)

    def drop_link(self) -> None:
        """Leave as a crashed device does: the link drops with no DISCONNECT (the broker publishes the last
        will), the protocol's stores are closed; what the outbox holds stays for the next start. Idempotent."""
        inner = getattr(self.link, "inner", None)
        abort = getattr(inner, "abort", None)
        if callable(abort):
            abort()
        if self.protocol is not None:
            self.protocol.close(leave=False, close_transport=abort is None)

    # -- checkpoints -------------------------------------------------------------------

    def place_state(self, r: int) -> dict[str, Any]:
        """Where this member stands after round ``r`` (saved with the learner's checkpoint)."""
        assert self.clustering is not None
        code = None
        if self.cluster_code is not None:
            code = {k: v.tolist() for k, v in self.cluster_code.to_tensors().items()}
        return {"round": r, "clustering": self.clustering.to_dict(), "slot": self.slot,
                "neighbours": list(self.neighbours), "weights": self.weights, "code": code}

    def resume(self) -> int | None:
        """From the newest complete checkpoint: take the saved place, restore the learner; its round (None: fresh)."""
        saved = self.learner.saved_state()
        if saved is None:
            return None
        # the place comes first: a learner's optimizer is built over that slot's parameters
        self.place(Clustering.from_dict(saved["clustering"]))
        if saved.get("code"):
            self.cluster_code = LatentCode.from_tensors({k: np.asarray(v, dtype=np.float32)
                                                         for k, v in saved["code"].items()})
        self.learner.restore()
        return int(saved["round"])

    # -- experts ----------------------------------------------------------------------

    def is_speaker(self) -> bool:
        """The cluster's smallest id speaks for it (publishes its finished expert)."""
        assert self.clustering is not None
        return self.me == min(self.clustering.members(self.slot))

    def share_expert(self, r: int) -> None:
        """The speaker publishes the finished expert (fp16, sparse under the mask, and the cluster's code)."""
        assert self.protocol is not None
        every = self.swarm.expert_every
        if self.swarm.topology == "local" or not self.is_speaker() or not (r == self.swarm.rounds or (every and r % every == 0)):
            return
        tensors = {k: v.astype(np.float16) for k, v in self.learner.get_update(self.slot).items()}
        latent = self.cluster_code.to_tensors() if self.cluster_code is not None else {}
        masks = self.learner.masks(self.slot) if self.method.sparse else None
        # the task name travels only so that emulations can score oracle routing
        self.protocol.publish_expert(self.slot, r, tensors, latent, meta={"task": self.cfg.data}, masks=masks)

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

    def collect_experts(self, timeout_s: float, *, fell_behind: bool = False) -> dict[int, int]:
        """Load every cluster's finished expert into its slot; returns slot -> round of the expert.

        A sparse expert brings its own mask: this member's mask of another
        cluster's slot is only the uncalibrated default, and re-masking with it
        would zero much of the expert. One that arrived dense is not masked.
        """
        assert self.protocol is not None
        loaded = {}
        spec = TensorSpec(self.learner.update_shapes(), max_abs=MAX_UPDATE_ABS)
        for slot in self.wait_for_experts(timeout_s, fell_behind=fell_behind):
            info = self.protocol.experts[slot]
            tensors = {k: v.astype(np.float32) for k, v in info.tensors.items()}
            try:
                validate_tensors(tensors, spec)
                if info.latent:
                    LatentCode.from_tensors(info.latent)
            except WireError as exc:  # an expert that does not fit this swarm's model: not loaded
                self.reject(exc, info.sender)
                continue
            if self.method.sparse:
                self.learner.set_masks(slot, info.masks if set(info.masks) == set(tensors) else None)
            self.learner.set_update(slot, tensors)
            loaded[slot] = info.round
        return loaded

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

    # -- the final evaluation ------------------------------------------------------------

    def save_experts(self, task_slot: Mapping[str, int]) -> str | None:
        """Write the experts this device holds to ``<state>/experts`` (an expert bundle, named by task);
        the path, or None where the learner cannot (a phone) or the disk refused (logged, the run goes on)."""
        names = [f"slot{k}" for k in range(self.swarm.num_slots)]
        for task, slot in sorted(task_slot.items(), key=lambda kv: kv[1]):
            label = task_label(task) if task else ""  # a peer's claim: kept only if it is a plain short name
            if _NAME.fullmatch(label) and label not in names:
                names[slot] = label
        try:
            path = self.learner.save_experts(self.state / "experts", names)
        except OSError as exc:
            log.warning("%s: could not write the expert bundle: %s", self.me, exc)
            return None
        return str(path) if path is not None else None

    def final_eval(self, loaded: dict[int, int]) -> dict[str, Any]:
        """Every device answers the mixed test set of ``eval_tasks`` with all the experts it holds.

        Modes (``final_modes``): ``implicit`` routes each prompt by the experts'
        latent codes (the device's inference setup), ``oracle`` applies the true
        task's expert, ``merge`` the sum of all experts. A slot without an expert
        gets a code no prompt is near, so it is never chosen (and adds zero when
        merged). With one adapter (a flat method, one slot, or no code) every
        mode is the same model, answered once.
        """
        tasks = list(self.swarm.eval_tasks) or [self.cfg.data]
        test = {t: self.test_examples if t == self.cfg.data else eval_examples(self.cfg, t) for t in tasks}
        modes = list(self.swarm.final_modes)
        out: dict[str, Any] = {"modes": {m: {} for m in modes}, "routing_accuracy": None, "setup": modes[0]}
        if not self.method.clusters or self.swarm.num_slots == 1 or self.cluster_code is None:
            for t, exs in test.items():
                acc = _accuracy(self.learner.answer([e.prompt for e in exs], "own").texts, exs)
                for m in modes:
                    out["modes"][m][t] = acc
            return out
        codes, task_slot = self.routing_table(loaded)
        self.learner.set_routing(codes)
        out["expert_bundle"] = self.save_experts(task_slot)
        hits = total = 0
        for t, exs in test.items():
            for mode in modes:
                if mode == "oracle" and t not in task_slot:
                    continue
                route: Route = task_slot[t] if mode == "oracle" else mode  # type: ignore[assignment]
                got = self.learner.answer([e.prompt for e in exs], route)
                if mode == "implicit" and got.experts is not None:
                    counts = self.routing_counts.setdefault(t, {})
                    for e in got.experts:
                        counts[int(e)] = counts.get(int(e), 0) + 1
                if mode == "implicit" and t in task_slot and got.experts is not None:
                    hits += sum(int(e == task_slot[t]) for e in got.experts)
                    total += len(exs)
                out["modes"][mode][t] = _accuracy(got.texts, exs)
        out["routing_accuracy"] = hits / total if total else None
        out["routing"] = {t: {str(k): n for k, n in sorted(c.items())} for t, c in self.routing_counts.items()}
        return out


def _accuracy(answers: Sequence[str], examples: Sequence[Example]) -> float:
    return float(np.mean([normalise_answer(a) == normalise_answer(e.completion) for a, e in zip(answers, examples)]))
