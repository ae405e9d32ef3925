"""A phone's life in a swarm, run on a bundle only: what an Android app does, in Python.

It follows ``edgedfl/node/node.py`` step by step, with the model replaced by
the bundle's ExecuTorch programs and everything else taken from edgedfl's
torch-free layers (wire, transport, topology, aggregation, data, the numpy
maths of :mod:`edgedfl.adapters.solora`):

::

    hello: task signature = seeded projection of the frozen base's pooled hidden
           states over its own prompts                      (features.pte)
    join:  the swarm's hellos -> the same clustering as every node (topology)
    round 0: per-layer input statistics in its slot's subspace   (features.pte)
             swapped with the cluster -> the cluster's shared masks   (solora)
    rounds: SGD steps, masks re-applied after each              (train.pte)
            sparse B to the neighbours, collect, Metropolis mean (transport, aggregation)
            B written back into the program, evaluate             (infer.pte)
    experts: the cluster's speaker publishes; everyone collects every slot

Decisions:

* **The signature is computed on the phone** through ``features.pte``, not
  precomputed at export: a phone's prompts never leave it, not even to the
  laptop that exports its bundle.
* **Masks come from the cluster's round-0 statistics** with the same numpy
  code the nodes run, so a stand-in's masks equal its cluster mates' whatever
  slot it lands in; the bundle's masks are only the starting point.
* **Evaluation** runs greedy decoding through ``infer.pte`` with the phone's
  own expert forced (the swarm's ``own`` routing), and the completion loss from
  the same logits; scores are comparable to the nodes' (same examples, same
  exact-match rule, same loss).
* Files in ``state_dir`` are the node's: ``status.json``, ``rounds.jsonl``,
  ``final.json``, ``proto/``; its checkpoint (``ckpt/``) is B and masks as
  safetensors plus a state JSON, so a killed stand-in resumes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.adapters import solora
from edgedfl.android import manifest as mf
from edgedfl.errors import ConfigError
from edgedfl.node.config import NodeConfig
from edgedfl.node.links import CountingTransport
from edgedfl.node.member import CALIBRATION_ROUND, SwarmMember, device_examples, eval_examples, write_json
from edgedfl.routing import LatentCode, RouterConfig, stack_codes
from edgedfl.topology import normalise
from edgedfl.topology.clustering import Clustering
from edgedfl.protocol.endpoint import NeighbourProtocol

from .runtime import Features, Inference, Trainer, completion_nll
from .text import PhoneTokenizer, normalise_answer, train_batch

log = logging.getLogger("edgedfl.standin")

MAX_NEW_TOKENS = 8  # as the nodes evaluate


class Phone(SwarmMember):
    """One emulated phone. ``run()`` is the whole life; the pieces are methods for tests."""

    def __init__(self, config: NodeConfig, bundle: str | Path, *, lr: float | None = None) -> None:
        self.cfg = config
        self.swarm = config.swarm
        self.me = config.node_id
        self.bundle = Path(bundle)
        self.state = Path(config.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.status: dict[str, Any] = {"node": self.me, "state": "starting", "round": 0, "bytes": 0,
                                       "device": "android-standin"}
        self.lr_override = lr
        self.protocol: NeighbourProtocol | None = None
        self.link: CountingTransport | None = None
        self.clustering: Clustering | None = None
        self.slot = 0
        self.neighbours: tuple[str, ...] = ()
        self.weights: dict[str, float] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.experts: dict[int, dict[str, np.ndarray]] = {}  # other slots' finished experts
        self.train_losses: list[float] = []
        #: the cluster's pooled latent code (solora), from round 0
        self.cluster_code: LatentCode | None = None
        self._epoch_order: list[int] = []
        self._cursor = 0
        self._epoch = 0

    # -- set-up ------------------------------------------------------------------------

    def load(self) -> None:
        """Bundle (checked against the swarm's settings), programs, tokenizer, data."""
        m = self.manifest = mf.load_manifest(self.bundle)
        s = self.swarm
        wanted = {"model": s.model, "seed": s.seed, "rank": s.rank, "num_slots": s.num_slots, "method": s.method,
                  "density": s.density, "density_proxy": s.density_proxy}
        wrong = {k: (m[k], v) for k, v in wanted.items() if m[k] != v}
        train = m["programs"]["train"]
        if (train["batch_size"], train["max_length"]) != (s.batch_size, s.max_length):
            wrong["batch_size, max_length"] = ((train["batch_size"], train["max_length"]), (s.batch_size, s.max_length))
        if wrong:
            raise ConfigError(f"bundle {self.bundle} does not fit the swarm (bundle, swarm): {wrong}")
        self.layers = [e["name"] for e in m["layers"]]
        self.shapes = mf.layer_shapes(m)  # layer -> (d_out, r)
        self.d_in = {e["name"]: int(e["d_in"]) for e in m["layers"]}
        self.tok = PhoneTokenizer(self.bundle / m["tokenizer"]["file"], m["tokenizer"])
        lr = self.lr_override if self.lr_override is not None else float(m["training"]["lr"])
        self.trainer = Trainer(self.bundle, m, lr, float(m["training"]["momentum"]))
        self.features = Features(self.bundle, m)
        self.infer = Inference(self.bundle, m)
        self.router_config = RouterConfig.from_dict(m["programs"]["features"]["router"])
        from safetensors.numpy import load_file

        sig = m["signature"]
        self.projection = load_file(str(self.bundle / sig["file"]))[sig["tensor"]].astype(np.float64)  # (H, dim)
        # the same examples a node with this config holds
        self.train_examples, self.test_examples = device_examples(self.cfg)

    def _slot_A(self, slot: int) -> list[np.ndarray]:
        return mf.read_lora_A(self.bundle / self.manifest["lora_A"]["file"], slot, self.layers)

    # -- joining -------------------------------------------------------------------------

    def signature(self) -> np.ndarray:
        """Task signature: the frozen base's pooled hidden states over this phone's prompts, averaged,
        through the swarm's projection (from the bundle: ``topology.project_signature``'s matrix)."""
        a = self._slot_A(0)  # the statistics outputs are not used here; any A will do
        prompts = [e.prompt for e in self.train_examples[: self.swarm.n_signature]]
        pooled = np.stack([self.features.run(self.tok.prompt_ids(p, self.swarm.max_length), a).pooled
                           for p in prompts])  # (n, H)
        return normalise(pooled.mean(axis=0) @ self.projection)  # (dim,)

    def hello(self) -> np.ndarray:
        sig = self.signature()
        self.publish_own_hello(sig, runtime="executorch")
        return sig

    def place(self, clustering: Clustering) -> None:
        """Slot, neighbours and Metropolis weights, as ``Node.place``; the program gets the slot's A."""
        assert self.protocol is not None
        self.take_place(clustering)
        self.trainer.set_slot(self._slot_A(self.slot))
        if self.manifest["masks"]["slot"] == self.slot:
            self.set_masks(mf.read_masks(self.bundle / self.manifest["masks"]["file"], self.shapes))
        else:  # before calibration: the slot's uniform masks, as a node starts
            self.set_masks({n: solora.make_mask(self.swarm.seed, n, self.slot, d_out, r, self.swarm.density)
                            for n, (d_out, r) in self.shapes.items()})
        self.protocol.follow_slot(self.slot)

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        self.masks = {n: np.asarray(masks[n], dtype=bool) for n in self.layers}
        if self.swarm.method == "solora":
            self.trainer.set_masks(self.masks)

    def calibration_stats(self, slot: int) -> tuple[dict[str, solora.LayerStats], LatentCode]:
        """Input statistics of every adapted layer in ``slot``'s subspace over the calibration prompts,
        and the latent code of their routing features."""
        a = self._slot_A(slot)
        prompts = [e.prompt for e in self.train_examples[: self.swarm.n_calibration]]
        cov: np.ndarray | None = None
        energy: np.ndarray | None = None
        tokens = 0.0
        routing = []
        for p in prompts:
            f = self.features.run(self.tok.prompt_ids(p, self.swarm.max_length), a)
            cov = f.cov if cov is None else cov + f.cov
            energy = f.energy if energy is None else energy + f.energy
            tokens += f.tokens
            routing.append(f.routing)
        assert cov is not None and energy is not None
        stats = {n: solora.LayerStats(cov[i], float(energy[i]), int(tokens), self.d_in[n], self.shapes[n][0])
                 for i, n in enumerate(self.layers)}
        return stats, LatentCode.from_features(np.stack(routing))

    def masks_from_stats(self, stats: dict[str, solora.LayerStats]) -> dict[str, np.ndarray]:
        """``AdaptedModel.masks_from_stats`` in numpy: the same call sequence, so the same masks."""
        s, r = self.swarm, self.swarm.rank
        sizes = {n: self.shapes[n][0] * r for n in self.layers}
        scores = {n: solora.layer_score(stats[n], s.density_proxy) for n in self.layers}
        dens = solora.allocate_densities(sizes, scores, s.density, float(self.manifest["density_min"]))
        return {n: solora.make_mask(s.seed, n, self.slot, self.shapes[n][0], r, dens[n], np.diag(stats[n].cov))
                for n in self.layers}

    def calibrate_masks(self) -> None:
        """Round 0: swap statistics inside the cluster; every member derives the same masks."""
        assert self.protocol is not None and self.link is not None and self.clustering is not None
        if self.swarm.method != "solora":
            return
        own, code = self.calibration_stats(self.slot)
        pooled = self.exchange_calibration(own, code)
        if self.swarm.random_masks:  # the ablation: same budget, positions at random
            self.set_masks({n: solora.random_mask(self.swarm.seed, n, self.slot, d, r, self.swarm.density)
                            for n, (d, r) in self.shapes.items()})
            return
        self.set_masks(self.masks_from_stats(pooled))

    # -- training and evaluation -----------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        """The order of the training examples in ``epoch`` (a function of seed and epoch only)."""
        return [int(i) for i in np.random.default_rng([self.swarm.seed, epoch]).permutation(len(self.train_examples))]

    def _next_examples(self, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            if self._cursor >= len(self._epoch_order):
                self._epoch_order = self._order(self._epoch)
                self._cursor = 0
                self._epoch += 1
            out.append(self.train_examples[self._epoch_order[self._cursor]])
            self._cursor += 1
        return out

    def train_steps(self, steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            exs = self._next_examples(self.trainer.batch_size)
            batch = train_batch(self.tok, [(e.prompt, e.completion) for e in exs], self.trainer.batch_size,
                                self.trainer.max_length)
            losses.append(self.trainer.step(batch))
        self.train_losses += losses
        return losses

    def evaluate(self) -> dict[str, float]:
        """Exact match of greedy answers and completion loss, with the phone's own expert."""
        self.infer.set_experts({**self.experts, self.slot: self.trainer.get_B()})
        hits, nll, count = 0, 0.0, 0
        max_len = self.swarm.max_length
        for ex in self.test_examples:
            new, _ = self.infer.generate(self.tok.prompt_ids(ex.prompt, max_len), self.slot, MAX_NEW_TOKENS,
                                         self.tok.eos_id)
            hits += int(normalise_answer(self.tok.decode(new)) == normalise_answer(ex.completion))
            ids, labels = self.tok.encode_pair(ex.prompt, ex.completion, max_len)
            s, c = completion_nll(self.infer.logits(ids, self.slot), labels)
            nll, count = nll + s, count + c
        loss = nll / max(count, 1)
        return {"exact_match": hits / max(len(self.test_examples), 1), "loss": loss if math.isfinite(loss) else float("nan")}

    def evaluate_before(self) -> None:
        assert self.link is not None
        m = self.evaluate()
        row = {"round": CALIBRATION_ROUND, "node": self.me, "slot": self.slot, "task": self.cfg.data,
               "accuracy": m["exact_match"], "loss": m["loss"], "peers": [], "quorum_short": False,
               "bytes_sent": self.link.bytes_by_round.get(CALIBRATION_ROUND, 0), "device": "android-standin"}
        with open(self.state / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    # -- rounds ---------------------------------------------------------------------------

    def own_update(self) -> dict[str, np.ndarray]:
        """What travels: ``<layer>.lora_B`` (dense arrays, zero outside the mask; the codec sends the mask's values)."""
        return {f"{n}.lora_B": b for n, b in self.trainer.get_B().items()}

    def _wire_masks(self) -> dict[str, np.ndarray] | None:
        if self.swarm.method != "solora":
            return None
        return {f"{n}.lora_B": m for n, m in self.masks.items()}

    def run_round(self, r: int) -> dict[str, Any]:
        assert self.protocol is not None and self.link is not None
        self.link.round = r
        t0 = time.monotonic()
        self._set_status("training", round=r)
        losses = self.train_steps(self.swarm.local_steps)
        train_s = time.monotonic() - t0
        if self.cfg.slowdown > 1:
            time.sleep(train_s * (self.cfg.slowdown - 1))
        own = self.own_update()
        self._set_status("publishing", round=r)
        masks = self.masks if self.swarm.method == "solora" else None
        got = self.exchange_round(r, own, wire_masks=self._wire_masks(), masks=masks)
        mixed = got["mixed"]
        self.trainer.set_B({n: mixed[f"{n}.lora_B"] for n in self.layers})
        self._set_status("evaluating", round=r)
        metrics = self.evaluate()
        self.share_expert(r)
        row = {
            "round": r, "node": self.me, "slot": self.slot, "task": self.cfg.data,
            "accuracy": metrics["exact_match"], "loss": metrics["loss"], "train_loss": float(np.mean(losses)),
            "peers": got["peers"], "quorum_short": got["quorum_short"], "rejects": dict(self.protocol.rejects),
            "bytes_sent": self.link.bytes_by_round.get(r, 0), "wall_s": time.monotonic() - t0,
            "train_s": train_s, "waited_s": got["waited_s"], "device": "android-standin",
        }
        self.save_checkpoint(r)
        with open(self.state / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        self._set_status("round done", round=r, accuracy=row["accuracy"])
        return row

    def _after_publish(self, r: int) -> None:
        self._set_status("collecting", round=r)

    def collect_experts(self, timeout_s: float, *, fell_behind: bool = False) -> dict[int, int]:
        """Every other cluster's finished expert (kept for the inference program), as ``Node.collect_experts``."""
        assert self.protocol is not None
        loaded = {}
        for slot in self.wait_for_experts(timeout_s, fell_behind=fell_behind):
            info = self.protocol.experts[slot]
            b = {k.removesuffix(".lora_B"): v.astype(np.float32) for k, v in info.tensors.items()}
            if slot == self.slot:
                self.trainer.set_B(b)
            else:
                self.experts[slot] = b
            loaded[slot] = info.round
        return loaded

    def final_eval(self, loaded: dict[int, int]) -> dict[str, Any]:
        """``Node.final_eval`` through infer.pte: the mixed test set with every expert this phone holds.

        ``implicit`` lets the program's router pick by the experts' latent codes,
        ``oracle`` forces the true task's expert, ``merge`` applies all of them.
        """
        assert self.protocol is not None
        tasks = list(self.swarm.eval_tasks) or [self.cfg.data]
        test = {t: self.test_examples if t == self.cfg.data else eval_examples(self.cfg, t) for t in tasks}
        modes = list(self.swarm.final_modes)
        out: dict[str, Any] = {"modes": {m: {} for m in modes}, "routing_accuracy": None, "setup": modes[0]}
        self.infer.set_experts({**self.experts, self.slot: self.trainer.get_B()})
        task_slot: dict[str, int] = {self.cfg.data: self.slot}
        single = self.swarm.method != "solora" or self.swarm.num_slots == 1 or self.cluster_code is None
        if not single:
            assert self.cluster_code is not None
            codes, task_slot = self.routing_table(loaded)
            means, factors = stack_codes(codes, self.router_config.ridge)
            self.infer.set_codes(means, factors)
        hits = total = 0
        for t, exs in test.items():
            for mode in modes:
                if mode == "oracle" and t not in task_slot:
                    continue
                route: int | str | None = {"implicit": None, "merge": "merge"}.get(mode, task_slot.get(t))
                if single:  # one adapter: every mode is the own expert
                    route = self.slot
                right = []
                for ex in exs:
                    new, expert = self.infer.generate(self.tok.prompt_ids(ex.prompt, self.swarm.max_length), route,
                                                      MAX_NEW_TOKENS, self.tok.eos_id)
                    right.append(normalise_answer(self.tok.decode(new)) == normalise_answer(ex.completion))
                    if mode == "implicit" and not single and t in task_slot:
                        hits += int(expert == task_slot[t])
                        total += 1
                out["modes"][mode][t] = float(np.mean(right))
        out["routing_accuracy"] = hits / total if total else None
        return out

    # -- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, r: int) -> None:
        """B, masks and where this phone stands, atomically (temp files + rename; state.json last)."""
        from safetensors.numpy import save_file

        assert self.clustering is not None
        ckpt = self.state / "ckpt"
        ckpt.mkdir(exist_ok=True)
        save_file(self.trainer.get_B(), str(ckpt / "B.safetensors.tmp"))
        os.replace(ckpt / "B.safetensors.tmp", ckpt / "B.safetensors")
        mf.write_masks(ckpt / "masks.safetensors.tmp", self.masks)
        os.replace(ckpt / "masks.safetensors.tmp", ckpt / "masks.safetensors")
        write_json(ckpt / "state.json", {
            "round": r, "clustering": self.clustering.to_dict(), "slot": self.slot,
            "neighbours": list(self.neighbours), "weights": self.weights,
            "data": {"epoch": self._epoch, "cursor": self._cursor},
            "code": None if self.cluster_code is None else
            {k: v.tolist() for k, v in self.cluster_code.to_tensors().items()},
        })

    def resume(self) -> int | None:
        """Round of the newest checkpoint (state restored), or None."""
        from safetensors.numpy import load_file

        path = self.state / "ckpt" / "state.json"
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        self.place(Clustering.from_dict(state["clustering"]))
        self.set_masks(mf.read_masks(self.state / "ckpt" / "masks.safetensors", self.shapes))
        self.trainer.set_B(load_file(str(self.state / "ckpt" / "B.safetensors")))
        if state.get("code"):
            self.cluster_code = LatentCode.from_tensors({k: np.asarray(v, dtype=np.float32)
                                                         for k, v in state["code"].items()})
        self._epoch, self._cursor = int(state["data"]["epoch"]), int(state["data"]["cursor"])
        self._epoch_order = self._order(self._epoch - 1) if self._epoch > 0 else []
        return int(state["round"])

    def final_fields(self) -> dict[str, Any]:
        return {"quant": "executorch-fp32", "device": "android-standin"}
