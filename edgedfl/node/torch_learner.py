"""The learner of a Python node: a (quantized) transformers base with the method's slots, trained with AdamW.

It wraps what the lower layers already do (:mod:`edgedfl.model`,
:mod:`edgedfl.adapters`, :mod:`edgedfl.train`, :mod:`edgedfl.routing`) behind
the :class:`~edgedfl.node.learner.Learner` calls a swarm member makes.
Checkpoints are the trainer's (atomic, ``<state_dir>/ckpt``), with the
member's place in the swarm in their ``extra``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.adapters.solora import LayerStats
from edgedfl.data.examples import Example
from edgedfl.model.placement import model_device, to_numpy
from edgedfl.model.quantize import load_device_base
from edgedfl.node.config import NodeConfig
from edgedfl.node.learner import Answers, Learner, Metrics, Route
from edgedfl.node.signature import signature_and_spread
from edgedfl.routing import LatentCode
from edgedfl.routing.calibrate import compute_code
from edgedfl.routing.router import RoutedModel
from edgedfl.train.batching import collate_prompts
from edgedfl.train.checkpoint import CheckpointManager
from edgedfl.train.evaluate import evaluate, generate_answers
from edgedfl.train.trainer import TrainConfig, Trainer

#: prompts per generation batch (new tokens per answer: the swarm's ``train.max_new_tokens``, as every
#: evaluation in the swarm)
EVAL_BATCH = 16


class TorchLearner(Learner):
    """One node's model: base + quantization + slots (:class:`~edgedfl.adapters.model.AdaptedModel`) + trainer."""

    def __init__(self, config: NodeConfig) -> None:
        self.cfg = config
        self.swarm = config.swarm
        self.state = Path(config.state_dir)
        self.adapted: Any = None
        self.tok: Any = None
        self.quant = ""
        self.trainer: Trainer | None = None
        self.train_examples: list[Example] = []
        self.router_config = self.swarm.router
        self.routed: RoutedModel | None = None
        self.slot = 0

    def adapter_config(self) -> AdapterConfig:
        return self.swarm.adapter_config()

    def train_config(self) -> TrainConfig:
        return self.swarm.train_config()

    def load(self, train_examples: Sequence[Example]) -> None:
        import torch

        torch.manual_seed(self.swarm.seed)
        base, self.tok, self.quant = load_device_base(self.swarm.model, self.swarm.seed, self.cfg)
        self.adapted = attach_adapter(base, self.adapter_config())
        self.train_examples = list(train_examples)

    def signature(self, prompts: Sequence[str]) -> np.ndarray:
        sig, self._spread = signature_and_spread(self.adapted, self.tok, list(prompts), seed=self.swarm.seed,
                                                 max_length=self.swarm.max_length, depth=self.swarm.signature_depth)
        return sig

    def signature_spread(self) -> float | None:
        return getattr(self, "_spread", None)

    def place(self, slot: int) -> None:
        self.slot = slot
        self.adapted.activate(slot)
        # the optimizer is built over this slot's parameters
        self.trainer = Trainer(self.adapted, self.tok, self.train_examples, self.train_config(),
                               checkpoint_dir=str(self.state / "ckpt"))

    # -- masks and calibration -----------------------------------------------------------

    def calibration(self, slot: int, prompts: Sequence[str]) -> tuple[dict[str, LayerStats], LatentCode]:
        batches = (collate_prompts(self.tok, list(prompts[i : i + 8]), self.swarm.max_length)
                   for i in range(0, len(prompts), 8))
        own = self.adapted.calibrate(batches, slot)
        code = compute_code(self.adapted, self.tok, list(prompts), self.router_config, slot,
                            max_length=self.swarm.max_length)
        self.adapted.activate(slot)  # the routing probe toggles adapters: restore what trains
        return own, code

    def derive_masks(self, slot: int, pooled: Mapping[str, LayerStats]) -> None:
        masks, densities = self.adapted.masks_from_stats(slot, dict(pooled))
        self.adapted.set_masks(slot, masks, densities)

    def random_masks(self, slot: int) -> None:
        self.adapted.set_uniform_masks(slot, self.swarm.adapter.density, random_positions=True)

    def masks(self, slot: int) -> dict[str, np.ndarray] | None:
        return self.adapted.get_masks(slot) if self.adapted.spec.sparse else None

    def set_masks(self, slot: int, masks: Mapping[str, np.ndarray] | None) -> None:
        if masks is None:
            self.adapted.drop_masks(slot)
        else:
            self.adapted.set_masks(slot, dict(masks))

    # -- rounds ------------------------------------------------------------------------

    def train(self, round: int, steps: int) -> list[float]:
        assert self.trainer is not None
        self.trainer.train(max_steps=round * steps, resume=False, save_at_end=False)
        return [float(h["loss"]) for h in self.trainer.history[-steps:]]

    def update_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.adapted.expected_update_shapes())

    def get_update(self, slot: int) -> dict[str, np.ndarray]:
        return self.adapted.get_update(slot)

    def set_update(self, slot: int, tensors: Mapping[str, np.ndarray]) -> None:
        self.adapted.set_update(slot, dict(tensors))

    def evaluate(self, examples: Sequence[Example]) -> Metrics:
        m = evaluate(self.adapted.peft_model, self.tok, examples, batch_size=EVAL_BATCH,
                     max_length=self.swarm.max_length, max_new_tokens=self.swarm.train.max_new_tokens)
        return Metrics(m["exact_match"], m["loss"], m["hits"])

    # -- the end ------------------------------------------------------------------------

    def set_routing(self, codes: Sequence[LatentCode]) -> None:
        self.routed = RoutedModel(self.adapted, list(codes), self.router_config)

    def save_experts(self, path: Path, names: Sequence[str]) -> Path | None:
        assert self.routed is not None, "set_routing first"
        from edgedfl.routing.bundle import save_bundle

        self.routed.names = list(names)
        return save_bundle(path, self.routed, self.swarm.model)

    def answer(self, prompts: Sequence[str], route: Route) -> Answers:
        if route == "own":  # one adapter: the plain peft model with the own slot
            self.adapted.activate(self.slot)
            return Answers(generate_answers(self.adapted.peft_model, self.tok, list(prompts), batch_size=EVAL_BATCH,
                                            max_length=self.swarm.max_length, max_new_tokens=self.swarm.train.max_new_tokens))
        assert self.routed is not None, "set_routing first"
        texts: list[str] = []
        experts: list[int] = []
        for i in range(0, len(prompts), EVAL_BATCH):
            chunk = list(prompts[i : i + EVAL_BATCH])
            mode, slots = ("oracle", [route] * len(chunk)) if isinstance(route, int) else (route, None)
            got, chosen = self.routed.generate_text(self.tok, chunk, mode, slots, max_new_tokens=self.swarm.train.max_new_tokens,
                                                    max_length=self.swarm.max_length)
            texts += got
            experts += [int(e) for e in to_numpy(chosen.experts).reshape(-1)]
        return Answers(texts, experts)

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, state: dict[str, Any]) -> None:
        assert self.trainer is not None
        self.trainer.extra = state
        self.trainer.save_checkpoint()

    def saved_state(self) -> dict[str, Any] | None:
        latest = CheckpointManager(self.state / "ckpt").latest()
        if latest is None:
            return None
        extra: dict[str, Any] = json.loads((latest / "state.json").read_text())["extra"]
        return extra

    def restore(self) -> None:
        assert self.trainer is not None, "place first"
        self.trainer.resume()

    def final_tags(self) -> dict[str, Any]:
        return {"quant": self.quant, "device": str(model_device(self.adapted.peft_model))}
