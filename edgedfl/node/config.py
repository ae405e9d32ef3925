"""Settings of a swarm run: what every device shares (SwarmConfig) and what is its own (NodeConfig).

Shared settings must be identical on every device of a swarm (the seed fixes
A, masks and the clustering; the method decides what travels); per-device
settings say who this device is, what data it has and how it connects.
Both save as sorted JSON; ``edgedfl node --config FILE`` reads a NodeConfig
whose ``swarm`` field holds the shared part.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from edgedfl.adapters.config import DEFAULT_TARGETS, AdapterConfig
from edgedfl.adapters.methods import get_method
from edgedfl.config import ConfigBase, check, option
from edgedfl.devices import PROFILES

if TYPE_CHECKING:
    from edgedfl.train.trainer import TrainConfig

TOPOLOGIES = ("clusters", "flat")
#: final evaluation modes: implicit routing (ours), the true task's expert, the sum of all experts
FINAL_MODES = ("implicit", "oracle", "merge")


@dataclasses.dataclass
class SwarmConfig(ConfigBase):
    name: str = option("demo", help="swarm name: the MQTT topic prefix edgedfl/<name>/...")
    seed: int = option(0, help="swarm seed: A, masks, clustering and data order derive from it")
    model: str = option("tiny", help="base model: tiny, smollm2, a hub id, a directory or a .gguf")
    method: str = option("solora", help="solora (ours), lora (standard decentralized LoRA), ffa (FFA-LoRA), "
                         "or a registered / 'module:OBJECT' adapter method")
    topology: str = option("clusters", help="clusters (ours) or flat (one gossip over every device)")
    rank: int = option(8, help="LoRA rank")
    alpha: float = option(16.0, help="LoRA alpha")
    target_modules: list[str] = option(help="adapted linear layers", factory=lambda: list(DEFAULT_TARGETS))
    density: float = option(0.25, help="solora: global fraction of B entries kept")
    density_proxy: str = option("erank", help="solora: erank, energy or uniform")
    random_masks: bool = option(False, help="ablation: random mask positions instead of spectrum-based")
    max_slots: int = option(4, help="most clusters (expert slots) the swarm forms")
    rounds: int = option(3, help="federated rounds")
    local_steps: int = option(10, help="optimizer steps per round")
    batch_size: int = option(8, help="examples per step")
    lr: float = option(0.0, help="AdamW learning rate; 0 = the method's tuned default (its default_lr)")
    max_length: int = option(128, help="tokens per example")
    precision: str = option("fp16", help="value precision on the wire: fp16, int8 or fp32")
    aggregator: str = option("mean", help="mean (Metropolis), median or trimmed (trimmed mean)")
    clip_norm: float = option(0.0, help="clip each neighbour's difference to this L2 norm (0 = off)")
    degree: int = option(3, help="neighbours each device averages with inside its cluster")
    expected_devices: int = option(0, help="devices to wait for before clustering (0 = whoever said hello)")
    join_timeout_s: float = option(120.0, help="how long to wait for the expected devices' hellos")
    round_deadline_s: float = option(60.0, help="a round closes at this deadline if the quorum reported")
    quorum: float = option(0.5, help="fraction of a device's neighbours needed to close a round")
    expert_every: int = option(0, help="share finished experts across clusters every N rounds (0 = only at the end)")
    n_train: int = option(400, help="training examples per device")
    n_eval: int = option(40, help="test examples per task for evaluation")
    n_signature: int = option(16, help="prompts pooled into the task signature")
    n_calibration: int = option(16, help="prompts for the mask calibration")
    eval_tasks: list[str] = option(
        help="tasks of the final mixed test set every device answers with all experts (empty = its own task)",
        factory=list,
    )
    final_modes: list[str] = option(
        help="final evaluation modes: implicit (routed by latent codes), oracle (the true task's expert), "
        "merge (sum of all experts); the first is the device's inference setup", factory=lambda: ["implicit"],
    )

    def __post_init__(self) -> None:
        n = type(self).__name__
        AdapterConfig(method=self.method)  # a ConfigError names the known methods
        check(self.topology in TOPOLOGIES, n, "topology", self.topology, f"choose from {TOPOLOGIES}")
        check(self.rounds >= 1, n, "rounds", self.rounds, "must be >= 1")
        check(self.local_steps >= 1, n, "local_steps", self.local_steps, "must be >= 1")
        check(self.lr >= 0, n, "lr", self.lr, "must be > 0, or 0 for the method's default")
        check(self.max_slots >= 1, n, "max_slots", self.max_slots, "must be >= 1")
        check(self.precision in ("fp16", "int8", "fp32"), n, "precision", self.precision, "fp16, int8 or fp32")
        check(self.aggregator in ("mean", "median", "trimmed"), n, "aggregator", self.aggregator,
              "mean, median or trimmed")
        check(0 < self.quorum <= 1, n, "quorum", self.quorum, "must be in (0, 1]")
        check(self.degree >= 1, n, "degree", self.degree, "must be >= 1")
        check(self.round_deadline_s > 0, n, "round_deadline_s", self.round_deadline_s, "must be > 0")
        check(bool(self.final_modes) and all(m in FINAL_MODES for m in self.final_modes), n, "final_modes",
              self.final_modes, f"a non-empty subset of {FINAL_MODES}")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the method's tuned default when it is 0 (``AdapterMethod.default_lr``: each method's
        best of 2e-3, 5e-3 and 1e-2 on held-out training examples, tuned the same way for the three built-in
        methods; see "Learning rates" in README.md)."""
        return self.lr or get_method(self.method).default_lr

    def adapter_config(self) -> AdapterConfig:
        """The adapter every device of this swarm attaches."""
        return AdapterConfig(
            method=self.method, rank=self.rank, alpha=self.alpha, target_modules=list(self.target_modules),
            num_slots=self.num_slots, seed=self.seed, density=self.density, density_proxy=self.density_proxy,
        )

    def train_config(self) -> TrainConfig:
        """The local training every device of this swarm runs (all rounds' steps)."""
        from edgedfl.train.trainer import TrainConfig

        return TrainConfig(
            lr=self.learning_rate, batch_size=self.batch_size, max_steps=self.rounds * self.local_steps,
            max_length=self.max_length, seed=self.seed, progress=False, eval_batch_size=16,
        )

    @property
    def num_slots(self) -> int:
        """Expert slots on every model: one per possible cluster (1 for flat gossip)."""
        return 1 if self.topology == "flat" else self.max_slots


@dataclasses.dataclass
class NodeConfig(ConfigBase):
    node_id: str = option("node0", help="this device's name on the swarm ([A-Za-z0-9._-])")
    data: str = option("arith", help="a built-in task, a JSONL file or hf:<dataset>")
    shard: int = option(0, help="which disjoint shard of the task's training data this device holds")
    shards: int = option(1, help="how many devices share the task's training data")
    eval_shard: int = option(0, help="which slice of every task's test split this device answers")
    eval_shards: int = option(
        1, help="how many devices split the test splits: each answers n_eval prompts of its own slice, so a "
        "swarm is scored on n_eval x eval_shards distinct prompts per task at the cost of n_eval",
    )
    profile: str = option("laptop", help="device profile: phone, jetson, laptop")
    quant: str = option("auto", help="quantization backend (auto = the profile's default)")
    broker: str = option("", help="mqtt://host:port[?protocol=311&max_payload=N] of the broker")
    state_dir: str = option("node-state", help="checkpoints, outbox and metrics of this device")
    slowdown: float = option(1.0, help="emulation: multiply compute time by this (>= 1)")
    link_rate_bps: float = option(0.0, help="emulation: application-level uplink rate limit (0 = none)")
    link_latency_ms: float = option(0.0, help="emulation: added latency per publish")
    crash_after_round: int = option(0, help="tests: SIGKILL this process right after publishing this round")
    swarm: SwarmConfig = option(help="the swarm's shared settings", factory=SwarmConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = type(self).__name__
        check(self.profile in PROFILES, n, "profile", self.profile, f"choose from {sorted(PROFILES)}")
        check(self.slowdown >= 1, n, "slowdown", self.slowdown, "must be >= 1")
        check(0 <= self.shard < max(self.shards, 1), n, "shard", self.shard, f"must be in [0, {self.shards})")
        check(self.eval_shards >= 1, n, "eval_shards", self.eval_shards, "must be >= 1")
        check(0 <= self.eval_shard < self.eval_shards, n, "eval_shard", self.eval_shard,
              f"must be in [0, {self.eval_shards})")
