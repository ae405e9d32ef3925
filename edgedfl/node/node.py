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
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.devices import get_profile
from edgedfl.model.loading import load_model
from edgedfl.model.quantize import quantize_model
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.links import CountingTransport
from edgedfl.node.member import CALIBRATION_ROUND, SwarmMember, device_examples, eval_examples
from edgedfl.node.signature import task_signature
from edgedfl.routing import LatentCode, RouterConfig
from edgedfl.routing.calibrate import compute_code
from edgedfl.routing.router import RoutedModel
from edgedfl.topology.clustering import Clustering
from edgedfl.train.batching import collate_prompts
from edgedfl.train.checkpoint import CheckpointManager
from edgedfl.train.evaluate import evaluate, normalise_answer
from edgedfl.train.trainer import TrainConfig, Trainer
from edgedfl.protocol.endpoint import NeighbourProtocol

log = logging.getLogger("edgedfl.node")


class Node(SwarmMember):
    """One device. ``run()`` does the whole life; the pieces are methods for tests and tools."""

    def __init__(self, config: NodeConfig) -> None:
        self.cfg = config
        self.swarm = config.swarm
        self.me = config.node_id
        self.state = Path(config.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.status: dict[str, Any] = {"node": self.me, "state": "starting", "round": 0, "bytes": 0}
        self.adapted: Any = None
        self.tok: Any = None
        self.trainer: Trainer | None = None
        self.protocol: NeighbourProtocol | None = None
        self.link: CountingTransport | None = None
        self.clustering: Clustering | None = None
        self.slot = 0
        self.neighbours: tuple[str, ...] = ()
        self.weights: dict[str, float] = {}
        self.router_config = RouterConfig()
        #: the cluster's pooled latent code (solora), from round 0
        self.cluster_code: LatentCode | None = None

    # -- set-up ---------------------------------------------------------------------

    @staticmethod
    def adapter_config_of(s: SwarmConfig) -> AdapterConfig:
        """The adapter every device of swarm ``s`` attaches."""
        return AdapterConfig(
            method=s.method, rank=s.rank, alpha=s.alpha, target_modules=list(s.target_modules),
            num_slots=s.num_slots, seed=s.seed, density=s.density, density_proxy=s.density_proxy,
        )

    @staticmethod
    def train_config_of(s: SwarmConfig) -> TrainConfig:
        """The local training every device of swarm ``s`` runs (all rounds' steps)."""
        return TrainConfig(
            lr=s.learning_rate, batch_size=s.batch_size, max_steps=s.rounds * s.local_steps,
            max_length=s.max_length, seed=s.seed, progress=False, eval_batch_size=16,
        )

    def _adapter_config(self) -> AdapterConfig:
        return self.adapter_config_of(self.swarm)

    def load(self) -> None:
        """Model, quantization, slots, data."""
        import torch

        torch.manual_seed(self.swarm.seed)
        profile = get_profile(self.cfg.profile)
        base, self.tok = load_model(self.swarm.model, seed=self.swarm.seed)
        base, self.quant = quantize_model(base, self.cfg.quant, profile)
        self.adapted = attach_adapter(base, self._adapter_config())
        self.train_examples, self.test_examples = device_examples(self.cfg)
        self.train_config = self.train_config_of(self.swarm)

    # -- joining ----------------------------------------------------------------------

    def hello(self) -> np.ndarray:
        assert self.protocol is not None and self.link is not None
        prompts = [e.prompt for e in self.train_examples[: self.swarm.n_signature]]
        sig = task_signature(self.adapted, self.tok, prompts, seed=self.swarm.seed, max_length=self.swarm.max_length)
        self.publish_own_hello(sig)
        return sig

    def place(self, clustering: Clustering) -> None:
        """Take this device's place in ``clustering``: train and follow its slot."""
        assert self.protocol is not None
        self.take_place(clustering)
        self.adapted.activate(self.slot)
        self.protocol.follow_slot(self.slot)

    def calibrate_masks(self) -> None:
        """Round 0: swap calibration statistics inside the cluster; everyone derives the same masks."""
        assert self.protocol is not None and self.link is not None and self.clustering is not None
        if self.swarm.method != "solora":
            return
        prompts = [e.prompt for e in self.train_examples[: self.swarm.n_calibration]]
        batches = (collate_prompts(self.tok, prompts[i : i + 8], self.swarm.max_length)
                   for i in range(0, len(prompts), 8))
        own = self.adapted.calibrate(batches, self.slot)
        code = compute_code(self.adapted, self.tok, prompts, self.router_config, self.slot,
                            max_length=self.swarm.max_length)
        self.adapted.activate(self.slot)  # the routing probe toggles adapters: restore what trains
        pooled = self.exchange_calibration(own, code)
        if self.swarm.random_masks:  # the ablation: same budget, positions at random
            self.adapted.set_uniform_masks(self.slot, self.swarm.density, random_positions=True)
            return
        masks, densities = self.adapted.masks_from_stats(self.slot, pooled)
        self.adapted.set_masks(self.slot, masks, densities)

    # -- rounds -----------------------------------------------------------------------

    def _wire_masks(self) -> dict[str, np.ndarray] | None:
        if self.swarm.method != "solora":
            return None
        return {f"{layer}.lora_B": m for layer, m in self.adapted.get_masks(self.slot).items()}

    def run_round(self, r: int) -> dict[str, Any]:
        assert self.protocol is not None and self.link is not None and self.trainer is not None
        self.link.round = r
        t0 = time.monotonic()
        self._set_status("training", round=r)
        self.trainer.train(max_steps=r * self.swarm.local_steps, resume=False, save_at_end=False)
        train_s = time.monotonic() - t0
        if self.cfg.slowdown > 1:
            time.sleep(train_s * (self.cfg.slowdown - 1))
        own = self.adapted.get_update(self.slot)
        self._set_status("publishing", round=r)
        masks = self.adapted.get_masks(self.slot) if self.swarm.method == "solora" else None
        got = self.exchange_round(r, own, wire_masks=self._wire_masks(), masks=masks)
        self.adapted.set_update(self.slot, got["mixed"])
        self._set_status("evaluating", round=r)
        metrics = evaluate(self.adapted.peft_model, self.tok, self.test_examples, batch_size=16,
                           max_length=self.swarm.max_length, max_new_tokens=8)
        self.share_expert(r)
        row = {
            "round": r, "node": self.me, "slot": self.slot, "task": self.cfg.data,
            "accuracy": metrics["exact_match"], "loss": metrics["loss"],
            "train_loss": float(np.mean([h["loss"] for h in self.trainer.history[-self.swarm.local_steps:]])),
            "peers": got["peers"], "quorum_short": got["quorum_short"], "rejects": dict(self.protocol.rejects),
            "bytes_sent": self.link.bytes_by_round.get(r, 0), "wall_s": time.monotonic() - t0,
            "train_s": train_s, "waited_s": got["waited_s"],
        }
        self.trainer.extra = self._extra(r)
        self.trainer.save_checkpoint()
        with open(self.state / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        self._set_status("round done", round=r, accuracy=row["accuracy"])
        return row

    def _after_publish(self, r: int) -> None:
        self._set_status("collecting", round=r)
        if self.cfg.crash_after_round == r:
            os.kill(os.getpid(), signal.SIGKILL)

    def own_update(self) -> dict[str, np.ndarray]:
        return self.adapted.get_update(self.slot)

    def evaluate_before(self) -> None:
        """Round 0 of the report: accuracy and loss of the base with the untrained expert (B = 0)."""
        assert self.link is not None
        m = evaluate(self.adapted.peft_model, self.tok, self.test_examples, batch_size=16,
                     max_length=self.swarm.max_length, max_new_tokens=8)
        row = {"round": CALIBRATION_ROUND, "node": self.me, "slot": self.slot, "task": self.cfg.data,
               "accuracy": m["exact_match"], "loss": m["loss"], "peers": [], "quorum_short": False,
               "bytes_sent": self.link.bytes_by_round.get(CALIBRATION_ROUND, 0)}
        with open(self.state / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def _make_trainer(self) -> Trainer:
        return Trainer(self.adapted, self.tok, self.train_examples, self.train_config,
                       checkpoint_dir=str(self.state / "ckpt"))

    def _extra(self, r: int) -> dict[str, Any]:
        assert self.clustering is not None
        code = None
        if self.cluster_code is not None:
            code = {k: v.tolist() for k, v in self.cluster_code.to_tensors().items()}
        return {"round": r, "clustering": self.clustering.to_dict(), "slot": self.slot,
                "neighbours": list(self.neighbours), "weights": self.weights, "code": code}

    def collect_experts(self, timeout_s: float, *, fell_behind: bool = False) -> dict[int, int]:
        """Load every cluster's finished expert into its slot; returns slot -> round of the expert.

        A device that fell behind (rounds closed without any neighbour, e.g. after
        a restart on a broker that kept nothing for it) also adopts its own
        cluster's finished expert, published by the speaker at the last round.
        """
        assert self.protocol is not None
        loaded = {}
        for slot in self.wait_for_experts(timeout_s, fell_behind=fell_behind):
            info = self.protocol.experts[slot]
            tensors = {k: v.astype(np.float32) for k, v in info.tensors.items()}
            if self.swarm.method == "solora":
                # the expert's own mask: this device's mask of another cluster's slot is only the
                # uncalibrated default, and re-masking with it would zero much of the expert
                if set(info.masks) == set(tensors):
                    self.adapted.set_masks(slot, {k.removesuffix(".lora_B"): m for k, m in info.masks.items()})
                else:
                    self.adapted.drop_masks(slot)
            self.adapted.set_update(slot, tensors)
            loaded[slot] = info.round
        return loaded

    def final_eval(self, loaded: dict[int, int]) -> dict[str, Any]:
        """Every device answers the mixed test set of ``eval_tasks`` with all the experts it holds.

        Modes (``final_modes``): ``implicit`` routes each prompt by the experts'
        latent codes (the device's inference setup), ``oracle`` applies the true
        task's expert, ``merge`` the sum of all experts. A slot without an expert
        gets a code no prompt is near, so it is never chosen (and adds zero when merged).
        """
        assert self.protocol is not None
        tasks = list(self.swarm.eval_tasks) or [self.cfg.data]
        test = {t: self.test_examples if t == self.cfg.data else eval_examples(self.cfg, t) for t in tasks}
        modes = list(self.swarm.final_modes)
        out: dict[str, Any] = {"modes": {m: {} for m in modes}, "routing_accuracy": None, "setup": modes[0]}
        if self.swarm.method != "solora" or self.swarm.num_slots == 1 or self.cluster_code is None:
            self.adapted.activate(self.slot)  # one adapter: every mode is the same model
            for t, exs in test.items():
                acc = evaluate(self.adapted.peft_model, self.tok, exs, batch_size=16,
                               max_length=self.swarm.max_length, max_new_tokens=8, with_loss=False)["exact_match"]
                for m in modes:
                    out["modes"][m][t] = acc
            return out
        codes, task_slot = self.routing_table(loaded)
        routed = RoutedModel(self.adapted, codes, self.router_config)
        hits = total = 0
        for t, exs in test.items():
            for mode in modes:
                if mode == "oracle" and t not in task_slot:
                    continue
                answers: list[str] = []
                for i in range(0, len(exs), 16):
                    chunk = exs[i : i + 16]
                    slots = [task_slot[t]] * len(chunk) if mode == "oracle" else None
                    texts, route = routed.generate_text(self.tok, [e.prompt for e in chunk], mode, slots,
                                                        max_new_tokens=8, max_length=self.swarm.max_length)
                    answers += texts
                    if mode == "implicit" and t in task_slot:
                        hits += int((route.experts == task_slot[t]).sum())
                        total += len(chunk)
                out["modes"][mode][t] = float(np.mean(
                    [normalise_answer(a) == normalise_answer(e.completion) for a, e in zip(answers, exs)]))
        out["routing_accuracy"] = hits / total if total else None
        return out

    # -- resuming ------------------------------------------------------------------------

    def after_place(self) -> None:
        self.trainer = self._make_trainer()

    def resume(self) -> int | None:
        latest = CheckpointManager(self.state / "ckpt").latest()
        if latest is None:
            return None
        # the slot comes first: the optimizer must be built over that slot's parameters
        extra = json.loads((latest / "state.json").read_text())["extra"]
        self.place(Clustering.from_dict(extra["clustering"]))
        if extra.get("code"):
            self.cluster_code = LatentCode.from_tensors({k: np.asarray(v, dtype=np.float32)
                                                         for k, v in extra["code"].items()})
        self.trainer = self._make_trainer()
        self.trainer.resume()
        return int(extra["round"])

    def final_fields(self) -> dict[str, Any]:
        return {"quant": self.quant}
