"""What trains on a device: the :class:`Learner` a :class:`~edgedfl.node.member.SwarmMember` holds.

A swarm member is the protocol side (join, calibration exchange, rounds,
experts, final evaluation: :mod:`edgedfl.node.member`, torch-free) plus a
learner: the one part that differs between a Python node (a quantized
transformers model with peft slots, :class:`~edgedfl.node.torch_learner.TorchLearner`)
and a phone (ExecuTorch programs, ``android_bridge.standin.phone.PhoneLearner``).

Everything crossing this boundary is numpy or a typed value: updates and
masks are ``{"<layer>.lora_B": array}`` (and ``"<layer>.lora_A"`` for a
method that trains A), the same names the wire and the aggregator use.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgedfl.adapters.solora import LayerStats
from edgedfl.data.examples import Example
from edgedfl.routing.codes import LatentCode

#: how a prompt is answered at the end: ``"own"`` (the device's own adapter alone), ``"implicit"``
#: (routed by the experts' latent codes), ``"merge"`` (the sum of all experts), or a slot (forced)
Route = Literal["own", "implicit", "merge"] | int

Tensors = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Metrics:
    """One evaluation: exact-match accuracy of greedy answers and the completion loss."""

    accuracy: float
    loss: float
    hits: str = ""  # per example in order, "1" exact match / "0" not; "" where a learner does not say


@dataclasses.dataclass(frozen=True)
class Answers:
    """Greedy answers to prompts, and the expert each was routed to (None: no routing happened)."""

    texts: list[str]
    experts: list[int] | None = None


class Learner(abc.ABC):
    """A device's trainable model, behind the calls its swarm member makes.

    Lifecycle: :meth:`load`; :meth:`signature` for the hello; :meth:`place` in a
    slot; round 0 :meth:`calibration` then :meth:`derive_masks` (sparse methods);
    each round :meth:`train`, :meth:`get_update`, :meth:`set_update`,
    :meth:`evaluate`, :meth:`save`; at the end :meth:`set_update` for every
    expert that arrived, :meth:`set_routing`, :meth:`answer`.
    """

    @abc.abstractmethod
    def load(self, train_examples: Sequence[Example]) -> None:
        """Model (or programs), tokenizer, and the examples it trains on."""

    @abc.abstractmethod
    def signature(self, prompts: Sequence[str]) -> np.ndarray:
        """The task signature (dim,) of these prompts: a seeded projection of the frozen base's pooled states."""

    def hello_profile(self) -> dict[str, Any]:
        """Extra fields of the hello's profile (e.g. the runtime)."""
        return {}

    def signature_spread(self) -> float | None:
        """The expected distance between two devices' signatures of this task, measured by the last
        :meth:`signature` on its own prompts (:func:`~edgedfl.topology.signatures.signature_spread`);
        None where a learner does not measure it (the clustering then scales its split floor by the
        other devices' spreads)."""
        return None

    @abc.abstractmethod
    def place(self, slot: int) -> None:
        """Train ``slot`` from now on."""

    @abc.abstractmethod
    def calibration(self, slot: int, prompts: Sequence[str]) -> tuple[dict[str, LayerStats], LatentCode]:
        """Per-layer input statistics in ``slot``'s subspace (keyed by layer) and the prompts' latent code."""

    @abc.abstractmethod
    def derive_masks(self, slot: int, pooled: Mapping[str, LayerStats]) -> None:
        """Set ``slot``'s masks from the cluster's pooled statistics (the same on every member)."""

    @abc.abstractmethod
    def random_masks(self, slot: int) -> None:
        """The ablation: masks of the same budget, positions at random."""

    @abc.abstractmethod
    def masks(self, slot: int) -> Tensors | None:
        """``<layer>.lora_B`` -> ``slot``'s mask, or None (dense B)."""

    @abc.abstractmethod
    def set_masks(self, slot: int, masks: Mapping[str, np.ndarray] | None) -> None:
        """Use these masks for ``slot`` (None: forget its masks: an expert that arrived dense)."""

    @abc.abstractmethod
    def train(self, round: int, steps: int) -> list[float]:
        """Run round ``round``'s ``steps`` local steps; their losses."""

    @abc.abstractmethod
    def update_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor an update (or a finished expert) of this method holds."""

    @abc.abstractmethod
    def get_update(self, slot: int) -> Tensors:
        """What this method sends for ``slot`` (dense arrays, zero outside a mask)."""

    @abc.abstractmethod
    def set_update(self, slot: int, tensors: Mapping[str, np.ndarray]) -> None:
        """Load an averaged update or a finished expert into ``slot`` (masks re-applied)."""

    @abc.abstractmethod
    def evaluate(self, examples: Sequence[Example]) -> Metrics:
        """Accuracy and loss of the own slot on ``examples``."""

    @abc.abstractmethod
    def set_routing(self, codes: Sequence[LatentCode]) -> None:
        """A latent code per slot, for ``implicit`` routing."""

    def save_experts(self, path: Path, names: Sequence[str]) -> Path | None:
        """Write every expert this device holds, with the codes of the last :meth:`set_routing`, as an
        expert bundle (what ``edgedfl export onnx --experts`` reads); None where a learner cannot."""
        return None

    @abc.abstractmethod
    def answer(self, prompts: Sequence[str], route: Route) -> Answers:
        """Greedy answers with every expert this device holds, routed by ``route``."""

    @abc.abstractmethod
    def save(self, state: dict[str, Any]) -> None:
        """Checkpoint (atomically) the trained state plus the member's ``state`` (its place in the swarm)."""

    @abc.abstractmethod
    def saved_state(self) -> dict[str, Any] | None:
        """The member's ``state`` of the newest complete checkpoint, or None (a fresh start)."""

    @abc.abstractmethod
    def restore(self) -> None:
        """Load the newest checkpoint's trained state (after the member took its saved place)."""

    def tags(self) -> dict[str, Any]:
        """Fields added to every status, round row and ``final.json`` (e.g. the device kind)."""
        return {}

    def final_tags(self) -> dict[str, Any]:
        """Fields added to ``final.json`` only (e.g. the quantization backend)."""
        return {}
