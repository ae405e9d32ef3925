"""A phone's life in a swarm, run on a bundle only: what an Android app does, in Python.

A phone is the same :class:`~edgedfl.node.member.SwarmMember` as a Python node
(the protocol side, torch-free: join, calibration exchange, rounds, experts,
final evaluation) around a different learner: :class:`PhoneLearner` trains
and answers through the bundle's ExecuTorch programs, with everything else
from edgedfl's torch-free layers (wire, protocol, topology, aggregation,
data, the numpy maths of :mod:`edgedfl.adapters.solora`):

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
* Updates and masks cross the learner's boundary keyed ``<layer>.lora_B``, as
  everywhere; the programs' inputs and the bundle's files are per layer (the
  bundle format, read by the app), converted only here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.adapters import solora
from edgedfl.adapters.solora import b_key
from edgedfl.android import manifest as mf
from edgedfl.data.examples import Example, normalise_answer
from edgedfl.errors import ConfigError
from edgedfl.node.config import NodeConfig
from edgedfl.node.learner import Answers, Learner, Metrics, Route
from edgedfl.node.member import SwarmMember, write_json
from edgedfl.routing import LatentCode, RouterConfig, stack_codes
from edgedfl.topology import normalise
from edgedfl.topology.signatures import signature_spread

from .runtime import Features, Inference, Trainer, completion_nll
from .text import PhoneTokenizer, train_batch

DEVICE = "android-standin"


def _by_layer(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``<layer>.lora_B`` -> layer: the programs' inputs and the bundle's files are per layer."""
    return {k.removesuffix(".lora_B"): v for k, v in tensors.items()}


def _by_tensor(per_layer: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {b_key(n): v for n, v in per_layer.items()}


class PhoneLearner(Learner):
    """The phone's learner: the bundle's three ExecuTorch programs, B in numpy."""

    def __init__(self, config: NodeConfig, bundle: str | Path, *, lr: float | None = None) -> None:
        self.cfg = config
        self.swarm = config.swarm
        self.bundle = Path(bundle)
        self.state = Path(config.state_dir)
        self.lr_override = lr
        self.sparse = config.swarm.spec.sparse
        self.slot = 0
        self.own_masks: dict[str, np.ndarray] = {}  # <layer>.lora_B -> mask of the own slot
        self.experts: dict[int, dict[str, np.ndarray]] = {}  # other slots' finished experts, <layer>.lora_B -> B
        self.train_examples: list[Example] = []
        self._epoch_order: list[int] = []
        self._cursor = 0
        self._epoch = 0

    # -- set-up ------------------------------------------------------------------------

    def load(self, train_examples: Sequence[Example]) -> None:
        """Bundle (checked against the swarm's settings), programs, tokenizer, data."""
        m = self.manifest = mf.load_manifest(self.bundle)
        s = self.swarm
        a = s.adapter
        wanted = {"model": s.model, "seed": s.seed, "rank": a.rank, "num_slots": s.num_slots, "method": a.method,
                  "density": a.density, "density_proxy": a.density_proxy}
        wrong = {k: (m[k], v) for k, v in wanted.items() if m[k] != v}
        train = m["programs"]["train"]
        if (train["batch_size"], train["max_length"]) != (s.train.batch_size, s.max_length):
            wrong["batch_size, max_length"] = ((train["batch_size"], train["max_length"]),
                                               (s.train.batch_size, s.max_length))
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
        self.train_examples = list(train_examples)

    def _slot_A(self, slot: int) -> list[np.ndarray]:
        return mf.read_lora_A(self.bundle / self.manifest["lora_A"]["file"], slot, self.layers)

    def tags(self) -> dict[str, Any]:
        return {"device": DEVICE}

    def final_tags(self) -> dict[str, Any]:
        return {"quant": "executorch-fp32"}

    # -- joining -------------------------------------------------------------------------

    def signature(self, prompts: Sequence[str]) -> np.ndarray:
        """The frozen base's pooled hidden states over the prompts, averaged, through the swarm's
        projection (from the bundle: ``topology.project_signature``'s matrix)."""
        a = self._slot_A(0)  # the statistics outputs are not used here; any A will do
        pooled = np.stack([self.features.run(self.tok.prompt_ids(p, self.swarm.max_length), a).pooled
                           for p in prompts])  # (n, H), at the swarm's signature layer (the bundle's program)
        self._spread = signature_spread(pooled, self.swarm.seed)  # as a node announces it
        return normalise(pooled.mean(axis=0) @ self.projection)  # (dim,)

    def signature_spread(self) -> float | None:
        return getattr(self, "_spread", None)

    def hello_profile(self) -> dict[str, Any]:
        return {"runtime": "executorch"}

    def place(self, slot: int) -> None:
        """The program gets the slot's A; masks: the bundle's if planned for this slot, else uniform."""
        self.slot = slot
        self.trainer.set_slot(self._slot_A(slot))
        if self.manifest["masks"]["slot"] == slot:
            self.set_masks(slot, _by_tensor(mf.read_masks(self.bundle / self.manifest["masks"]["file"], self.shapes)))
        else:  # before calibration: the slot's uniform masks, as a node starts
            self.set_masks(slot, {b_key(n): solora.make_mask(self.swarm.seed, n, slot, d_out, r, self.swarm.adapter.density)
                                  for n, (d_out, r) in self.shapes.items()})

    # -- masks and calibration -----------------------------------------------------------

    def masks(self, slot: int) -> dict[str, np.ndarray] | None:
        return dict(self.own_masks) if slot == self.slot and self.sparse else None

    def set_masks(self, slot: int, masks: Mapping[str, np.ndarray] | None) -> None:
        if slot != self.slot or masks is None:
            return  # another slot's expert is kept dense (zero outside its mask): nothing to mask here
        self.own_masks = {b_key(n): np.asarray(masks[b_key(n)], dtype=bool) for n in self.layers}
        if self.sparse:
            self.trainer.set_masks(_by_layer(self.own_masks))

    def calibration(self, slot: int, prompts: Sequence[str]) -> tuple[dict[str, solora.LayerStats], LatentCode]:
        """Input statistics of every adapted layer in ``slot``'s subspace over the prompts (features.pte),
        and the latent code of their routing features."""
        a = self._slot_A(slot)
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

    def derive_masks(self, slot: int, pooled: Mapping[str, solora.LayerStats]) -> None:
        """``AdaptedModel.masks_from_stats`` in numpy: the same call sequence, so the same masks."""
        s, a, r = self.swarm, self.swarm.adapter, self.swarm.adapter.rank
        sizes = {n: self.shapes[n][0] * r for n in self.layers}
        scores = {n: solora.layer_score(pooled[n], a.density_proxy) for n in self.layers}
        dens = solora.allocate_densities(sizes, scores, a.density, float(self.manifest["density_min"]))
        self.set_masks(slot, {b_key(n): solora.make_mask(s.seed, n, slot, self.shapes[n][0], r, dens[n],
                                                         np.diag(pooled[n].cov)) for n in self.layers})

    def random_masks(self, slot: int) -> None:
        self.set_masks(slot, {b_key(n): solora.random_mask(self.swarm.seed, n, slot, d, r, self.swarm.adapter.density)
                              for n, (d, r) in self.shapes.items()})

    # -- training and evaluation -----------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        """The order of the training examples in ``epoch`` (a function of seed and epoch only)."""
        return [int(i) for i in np.random.default_rng([self.swarm.seed, epoch]).permutation(len(self.train_examples))]

    def _next_examples(self, n: int) -> list[Example]:
        out: list[Example] = []
        while len(out) < n:
            if self._cursor >= len(self._epoch_order):
                self._epoch_order = self._order(self._epoch)
                self._cursor = 0
                self._epoch += 1
            out.append(self.train_examples[self._epoch_order[self._cursor]])
            self._cursor += 1
        return out

    def train(self, round: int, steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            exs = self._next_examples(self.trainer.batch_size)
            batch = train_batch(self.tok, [(e.prompt, e.completion) for e in exs], self.trainer.batch_size,
                                self.trainer.max_length)
            losses.append(self.trainer.step(batch))
        return losses

    def update_shapes(self) -> dict[str, tuple[int, ...]]:
        return {b_key(n): shape for n, shape in self.shapes.items()}  # B only: a phone's method trains B

    def get_update(self, slot: int) -> dict[str, np.ndarray]:
        """``<layer>.lora_B`` (dense, zero outside the mask; the codec sends the mask's values)."""
        return _by_tensor(self.trainer.get_B()) if slot == self.slot else dict(self.experts.get(slot, {}))

    def set_update(self, slot: int, tensors: Mapping[str, np.ndarray]) -> None:
        if slot == self.slot:
            self.trainer.set_B(_by_layer(tensors))
        else:
            self.experts[slot] = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}

    def _load_experts(self) -> None:
        own = self.trainer.get_B()
        self.infer.set_experts({**{s: _by_layer(b) for s, b in self.experts.items()}, self.slot: own})

    def evaluate(self, examples: Sequence[Example]) -> Metrics:
        """Exact match of greedy answers and completion loss, with the phone's own expert (infer.pte)."""
        self._load_experts()
        hits, nll, count = 0, 0.0, 0
        max_len = self.swarm.max_length
        for ex in examples:
            new, _ = self.infer.generate(self.tok.prompt_ids(ex.prompt, max_len), self.slot, self.swarm.train.max_new_tokens,
                                         self.tok.eos_id)
            hits += int(normalise_answer(self.tok.decode(new)) == normalise_answer(ex.completion))
            ids, labels = self.tok.encode_pair(ex.prompt, ex.completion, max_len)
            s, c = completion_nll(self.infer.logits(ids, self.slot), labels)
            nll, count = nll + s, count + c
        loss = nll / max(count, 1)
        return Metrics(hits / max(len(examples), 1), loss if math.isfinite(loss) else float("nan"))

    def set_routing(self, codes: Sequence[LatentCode]) -> None:
        means, factors = stack_codes(list(codes), self.router_config.ridge)
        self.infer.set_codes(means, factors)

    def answer(self, prompts: Sequence[str], route: Route) -> Answers:
        """``implicit`` lets the program's router pick by the experts' latent codes, a slot forces that
        expert, ``merge`` applies all of them, ``own`` the phone's own expert."""
        self._load_experts()
        pick: int | str | None
        if route == "own":
            pick = self.slot
        elif route == "implicit":
            pick = None  # the program's router picks
        else:
            pick = route  # "merge", or a slot
        texts, experts = [], []
        for p in prompts:
            new, expert = self.infer.generate(self.tok.prompt_ids(p, self.swarm.max_length), pick, self.swarm.train.max_new_tokens,
                                              self.tok.eos_id)
            texts.append(self.tok.decode(new))
            experts.append(int(expert))
        return Answers(texts, experts if route != "own" else None)

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, state: dict[str, Any]) -> None:
        """B, masks and where this phone stands, atomically (temp files + rename; state.json last)."""
        from safetensors.numpy import save_file

        ckpt = self.state / "ckpt"
        ckpt.mkdir(exist_ok=True)
        save_file(self.trainer.get_B(), str(ckpt / "B.safetensors.tmp"))
        os.replace(ckpt / "B.safetensors.tmp", ckpt / "B.safetensors")
        mf.write_masks(ckpt / "masks.safetensors.tmp", _by_layer(self.own_masks))
        os.replace(ckpt / "masks.safetensors.tmp", ckpt / "masks.safetensors")
        write_json(ckpt / "state.json", {**state, "data": {"epoch": self._epoch, "cursor": self._cursor}})

    def saved_state(self) -> dict[str, Any] | None:
        path = self.state / "ckpt" / "state.json"
        if not path.is_file():
            return None
        state: dict[str, Any] = json.loads(path.read_text())
        return state

    def restore(self) -> None:
        from safetensors.numpy import load_file

        state = self.saved_state()
        assert state is not None
        self.set_masks(self.slot, _by_tensor(mf.read_masks(self.state / "ckpt" / "masks.safetensors", self.shapes)))
        self.trainer.set_B(load_file(str(self.state / "ckpt" / "B.safetensors")))
        self._epoch, self._cursor = int(state["data"]["epoch"]), int(state["data"]["cursor"])
        self._epoch_order = self._order(self._epoch - 1) if self._epoch > 0 else []


class Phone(SwarmMember):
    """One emulated phone: a swarm member around a :class:`PhoneLearner`. ``run()`` is the whole life."""

    learner: PhoneLearner

    def __init__(self, config: NodeConfig, bundle: str | Path, *, lr: float | None = None) -> None:
        super().__init__(config, PhoneLearner(config, bundle, lr=lr))
