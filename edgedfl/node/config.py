"""Settings of a swarm run: what every device shares (SwarmConfig) and what is its own (NodeConfig).

Shared settings must be identical on every device of a swarm (the seed fixes
A, masks and the clustering; the method decides what travels); per-device
settings say who this device is, what data it has and how it connects.
Both save as sorted JSON; ``edgedfl node --config FILE`` reads a NodeConfig
whose ``swarm`` field holds the shared part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from edgedfl.adapters.config import AdapterConfig
from edgedfl.adapters.methods import AdapterMethod, get_method
from edgedfl.aggregation.config import AggregationConfig
from edgedfl.config import ConfigBase, check, option
from edgedfl.devices import DeviceConfig
from edgedfl.protocol.types import ProtocolConfig
from edgedfl.routing.config import RouterConfig
from edgedfl.topology.signatures import DEFAULT_DEPTH
from edgedfl.train.config import TrainConfig
from edgedfl.wire.codec import PRECISIONS

TOPOLOGIES = ("clusters", "flat", "local")
#: expert slots of a swarm whose max_slots is 0 (auto) and nobody told it how many tasks there are
DEFAULT_SLOTS = 4

#: who may take part in a swarm (SwarmConfig.admission)
ADMISSIONS = ("tofu", "keyring", "open")
#: final evaluation modes: implicit routing (ours), the true task's expert, the sum of all experts
FINAL_MODES = ("implicit", "oracle", "merge")


#: flat keys of the first SwarmConfig files -> (part, field): such files still load
LEGACY_FLAT_KEYS: dict[str, tuple[str, str]] = {
    "method": ("adapter", "method"), "rank": ("adapter", "rank"), "alpha": ("adapter", "alpha"),
    "target_modules": ("adapter", "target_modules"), "density": ("adapter", "density"),
    "density_proxy": ("adapter", "density_proxy"), "lr": ("train", "lr"), "batch_size": ("train", "batch_size"),
    "max_length": ("train", "max_length"), "aggregator": ("aggregation", "robust"),
    "clip_norm": ("aggregation", "clip_norm"),
}


def _swarm_train() -> TrainConfig:
    # lr 0: the method's tuned default; max_steps and seed are set by the swarm
    return TrainConfig(lr=0.0, batch_size=8, max_length=128, progress=False, eval_batch_size=16)


@dataclasses.dataclass
class SwarmConfig(ConfigBase):
    """What every device of a swarm shares. Its parts are the very configs their packages use.

    ``adapter`` (:class:`~edgedfl.adapters.config.AdapterConfig`), ``train``
    (:class:`~edgedfl.train.trainer.TrainConfig`), ``aggregation``
    (:class:`~edgedfl.aggregation.config.AggregationConfig`) and ``protocol``
    (:class:`~edgedfl.protocol.types.ProtocolConfig`). A few of their fields
    belong to the swarm and are set from it (so they can never disagree):
    ``adapter.seed`` and ``train.seed`` (= ``seed``), ``adapter.num_slots``
    (= :attr:`num_slots`), ``train.max_steps`` (= ``rounds x local_steps``),
    ``aggregation.method`` (= ``adapter.method``). ``train.lr`` 0 is the
    method's tuned default. A file written before the parts existed (flat
    keys such as ``rank`` or ``lr``) still loads (:data:`LEGACY_FLAT_KEYS`).
    """

    name: str = option("demo", help="swarm name: the MQTT topic prefix edgedfl/<name>/...")
    seed: int = option(0, help="swarm seed: A, masks, clustering and data order derive from it")
    model: str = option("tiny", help="base model: tiny, smollm2, gemma3-270m, a hub id, a directory or a .gguf")
    topology: str = option("clusters", help="clusters (ours), flat (one gossip over every device) or local (a baseline: every device trains alone and sends no update)")
    random_masks: bool = option(False, help="ablation: random mask positions instead of spectrum-based")
    max_slots: int = option(0, help="most clusters (expert slots) the swarm forms; 0: the number of distinct tasks "
                                    "in the emulator, 4 for a node on its own (DEFAULT_SLOTS)")
    min_split: float = option(
        0.0, help="clustering: groups of devices closer than this cosine distance never split, whatever their "
        "spreads (0 = the spreads alone decide, see split_spread). A fixed floor depends on the model and the "
        "signature layer: at signature_depth 1.0 (the last layer) 0.01 was right for the built-in tasks but "
        "merged tasks that share their inputs (bench/results/clustering.md)",
    )
    split_spread: float = option(
        3.5, help="clustering: never split groups closer than this many times the median signature spread of "
        "their devices (a spread is how far a second device of the same task would lie, measured by each device "
        "on its own prompts and announced in its hello). Measured at signature_depth 0.6 on SmolLM2 and Gemma 3 "
        "270M over two suites (bench/results/clustering.md): same-task devices lie at most 2.8x their spread "
        "apart, different tasks at least 4.4x",
    )
    signature_depth: float = option(
        DEFAULT_DEPTH, help="the task signature pools the decoder layer at this fraction of the model's depth "
        "(round(depth x layers), at least layer 1); 1.0: the last layer after the final norm. Middle layers "
        "tell apart tasks that share their inputs and differ in the question asked, which the last layer "
        "blurs (bench/results/clustering.md)",
    )
    rounds: int = option(3, help="federated rounds")
    local_steps: int = option(10, help="optimizer steps per round")
    precision: str = option("fp16", help=f"value precision on the wire: {', '.join(PRECISIONS)}")
    admission: str = option("tofu", help="who may take part: tofu (every message signed; a node's key is pinned at "
                                         "its first hello), keyring (only keys in each device's key ring file), "
                                         "open (nothing signed or checked: old clients and tests only)")
    degree: int = option(3, help="neighbours each device averages with inside its cluster")
    expected_devices: int = option(0, help="devices to wait for before clustering (0 = whoever said hello)")
    join_timeout_s: float = option(120.0, help="how long to wait for the expected devices' hellos")
    round_deadline_s: float = option(60.0, help="a round closes at this deadline if the quorum reported")
    quorum: float = option(0.5, help="fraction of a device's neighbours needed to close a round")
    expert_every: int = option(0, help="share finished experts across clusters every N rounds (0 = only at the end)")
    n_train: int = option(400, help="training examples per device")
    n_eval: int = option(40, help="test examples per task for evaluation")
    n_signature: int = option(32, help="prompts pooled into the task signature: the sampling noise of a signature "
                              "(its spread) falls as 1/N while the distance between two tasks does not, so more prompts "
                              "widen the margin the split rule works in (16 merged first/last on one long-suite seed: "
                              "bench/results/clustering-long-n32.md)")
    n_calibration: int = option(16, help="prompts for the mask calibration")
    calibration_peers: int = option(16, help="the first N members of a cluster (by name) pool their mask calibration statistics and codes for all members (0 = every member): a cluster of m costs m x N messages instead of m x m")
    eval_tasks: list[str] = option(
        help="tasks of the final mixed test set every device answers with all experts (empty = its own task)",
        factory=list,
    )
    final_modes: list[str] = option(
        help="final evaluation modes: implicit (routed by latent codes), oracle (the true task's expert), "
        "merge (sum of all experts); the first is the device's inference setup", factory=lambda: ["implicit"],
    )
    adapter: AdapterConfig = option(help="the adapter: method (solora, lora, ffa or 'module:OBJECT'), rank, "
                                         "alpha, targets, density budget", factory=AdapterConfig)
    train: TrainConfig = option(help="local training: lr (0 = the method's tuned default), batch size, "
                                     "max_length, ...", factory=_swarm_train)
    aggregation: AggregationConfig = option(help="how neighbours' updates are combined: robust (mean, median, "
                                                 "trimmed), clip_norm", factory=AggregationConfig)
    protocol: ProtocolConfig = option(help="the neighbour protocol's timings and bounds", factory=ProtocolConfig)
    router: RouterConfig = option(help="the implicit router every device computes latent codes with and routes "
                                       "by: layer (-1: 0.4 of the depth), modules, pooling, ridge, top_k",
                                  factory=RouterConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = type(self).__name__
        check(self.split_spread >= 0, n, "split_spread", self.split_spread, "must be >= 0")
        check(0 <= self.min_split <= 2, n, "min_split", self.min_split, "must be a cosine distance in [0, 2]")
        check(0 < self.signature_depth <= 1, n, "signature_depth", self.signature_depth, "must be in (0, 1]")
        check(self.topology in TOPOLOGIES, n, "topology", self.topology, f"choose from {TOPOLOGIES}")
        check(self.rounds >= 1, n, "rounds", self.rounds, "must be >= 1")
        check(self.local_steps >= 1, n, "local_steps", self.local_steps, "must be >= 1")
        check(self.max_slots >= 0, n, "max_slots", self.max_slots, "must be >= 0 (0: auto)")
        check(self.precision in PRECISIONS, n, "precision", self.precision, f"choose from {PRECISIONS}")
        check(self.admission in ADMISSIONS, n, "admission", self.admission, f"choose from {ADMISSIONS}")
        check(0 < self.quorum <= 1, n, "quorum", self.quorum, "must be in (0, 1]")
        check(self.degree >= 1, n, "degree", self.degree, "must be >= 1")
        check(self.calibration_peers >= 0, n, "calibration_peers", self.calibration_peers, "must be >= 0 (0: all)")
        check(self.round_deadline_s > 0, n, "round_deadline_s", self.round_deadline_s, "must be > 0")
        check(bool(self.final_modes) and all(m in FINAL_MODES for m in self.final_modes), n, "final_modes",
              self.final_modes, f"a non-empty subset of {FINAL_MODES}")
        # the parts' swarm-owned fields follow the swarm
        self.adapter = dataclasses.replace(self.adapter, seed=self.seed, num_slots=self.num_slots)
        self.train = dataclasses.replace(self.train, seed=self.seed, max_steps=self.rounds * self.local_steps)
        self.aggregation = dataclasses.replace(self.aggregation, method=self.adapter.method)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwarmConfig:
        """Also reads the flat keys of files written before the parts existed (``LEGACY_FLAT_KEYS``)."""
        data = dict(data)
        parts: dict[str, dict[str, Any]] = {}
        for key, (part, field) in LEGACY_FLAT_KEYS.items():
            if key in data:
                value = data.pop(key)
                if key == "clip_norm" and not value:
                    value = None  # the flat form spelled "off" as 0
                parts.setdefault(part, {})[field] = value
        for part, fields in parts.items():
            given = data.get(part)
            base = given.to_dict() if isinstance(given, ConfigBase) else dict(given or {})
            if part == "train" and not given:
                base = _swarm_train().to_dict()
            data[part] = {**base, **fields}
        return super().from_dict(data)

    @property
    def method(self) -> str:
        """The adapter method's name (``adapter.method``)."""
        return self.adapter.method

    @property
    def spec(self) -> AdapterMethod:
        """The adapter method object: what trains, what travels, masks, clusters."""
        return get_method(self.adapter.method)

    @property
    def learning_rate(self) -> float:
        """``train.lr``, or the method's tuned default when it is 0 (``AdapterMethod.default_lr``: each method's
        best of 2e-3, 5e-3 and 1e-2 on held-out training examples, tuned the same way for the three built-in
        methods; see "Learning rates" in README.md)."""
        return self.train.lr or self.spec.default_lr

    @property
    def max_length(self) -> int:
        """Tokens per example (``train.max_length``): training, evaluation, signatures, calibration."""
        return self.train.max_length

    @property
    def num_slots(self) -> int:
        """Expert slots on every model: one per possible cluster (1 for flat gossip)."""
        return 1 if self.topology in ("flat", "local") else self.slots_limit

    @property
    def slots_limit(self) -> int:
        """``max_slots``, with 0 (auto) read as :data:`DEFAULT_SLOTS` (the emulator sets it to its task count)."""
        return self.max_slots or DEFAULT_SLOTS

    def cluster_config(self) -> Any:
        """The clustering every member runs on the hellos (identical on all of them)."""
        from edgedfl.topology import ClusterConfig

        return ClusterConfig(max_clusters=self.slots_limit, seed=self.seed, spread_factor=self.split_spread,
                             min_split_distance=self.min_split)

    def digest(self) -> str:
        """A fingerprint of every shared setting: hellos and experts carry it, and one made under other
        settings (a stale retained message of another run on the same broker) is refused."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def adapter_config(self) -> AdapterConfig:
        """The adapter every device of this swarm attaches."""
        return self.adapter

    def train_config(self) -> TrainConfig:
        """The local training every device of this swarm runs (all rounds' steps), its lr resolved."""
        return dataclasses.replace(self.train, lr=self.learning_rate)

    def protocol_config(self, max_payload: int) -> ProtocolConfig:
        """The protocol of a device whose transport takes ``max_payload`` bytes per publish.

        An ack is awaited at least 10 s and half a round's deadline before a re-send; a chunk fits the
        transport's limit with room for the envelope (and stays under ~1 MB, DESIGN.md).
        """
        p = self.protocol
        return dataclasses.replace(
            p, ack_timeout_s=max(p.ack_timeout_s, 10.0, self.round_deadline_s / 2),
            chunk_bytes=min(p.chunk_bytes, max(16_384, max_payload - 4096)),
        )


@dataclasses.dataclass
class NodeConfig(DeviceConfig):
    """One device of a swarm: who it is, its data, profile and quantization (``DeviceConfig``), how it
    connects, and the swarm it joins."""

    node_id: str = option("node0", help="this device's name on the swarm ([A-Za-z0-9._-])")
    shard: int = option(0, help="which disjoint shard of the task's training data this device holds")
    shards: int = option(1, help="how many devices share the task's training data")
    eval_shard: int = option(0, help="which slice of every task's test split this device answers")
    eval_shards: int = option(
        1, help="how many devices split the test splits: each answers n_eval prompts of its own slice, so a "
        "swarm is scored on n_eval x eval_shards distinct prompts per task at the cost of n_eval",
    )
    broker: str = option("", help="mqtt://host:port[?protocol=311&max_payload=N] of the broker")
    state_dir: str = option("node-state", help="checkpoints, outbox and metrics of this device")
    key_file: str = option("", help="this device's Ed25519 key (created, mode 0600, on first start); "
                                    "empty = <state_dir>/identity.key")
    keyring: str = option("", help="admission keyring: the key ring file of the devices allowed to take part "
                                   "(`edgedfl keys add` writes it)")
    slowdown: float = option(1.0, help="emulation: multiply compute time by this (>= 1)")
    link_rate_bps: float = option(0.0, help="emulation: application-level uplink rate limit (0 = none)")
    link_latency_ms: float = option(0.0, help="emulation: added latency per publish")
    crash_after_round: int = option(0, help="tests: SIGKILL this process right after publishing this round")
    attack: str = option("", help="benchmarks: corrupt what this device sends each round (it trains honestly): "
                                  "'scale:K' (x K), 'flip' (x -1), 'noise:S' (Gaussian, std S); empty = honest")
    swarm: SwarmConfig = option(help="the swarm's shared settings", factory=SwarmConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = type(self).__name__
        check(self.slowdown >= 1, n, "slowdown", self.slowdown, "must be >= 1")
        check(self.swarm.admission != "keyring" or bool(self.keyring), n, "keyring", self.keyring,
              "the swarm's admission is 'keyring': name the key ring file")
        check(_attack_ok(self.attack), n, "attack", self.attack, "'', 'scale:K', 'flip' or 'noise:S'")
        check(0 <= self.shard < max(self.shards, 1), n, "shard", self.shard, f"must be in [0, {self.shards})")
        check(self.eval_shards >= 1, n, "eval_shards", self.eval_shards, "must be >= 1")
        check(0 <= self.eval_shard < self.eval_shards, n, "eval_shard", self.eval_shard,
              f"must be in [0, {self.eval_shards})")


def _attack_ok(spec: str) -> bool:
    kind, _, value = spec.partition(":")
    if kind in ("", "flip"):
        return not value
    try:
        return kind in ("scale", "noise") and float(value) >= 0
    except ValueError:
        return False
