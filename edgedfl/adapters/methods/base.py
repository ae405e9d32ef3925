"""What an adapter method is: one object that says what trains, what travels and how it is averaged.

A method is the unit a comparison is "one flag apart" on (DESIGN.md,
"Baselines live in the same code"). Everything that differs between
sparse-orthogonal LoRA and its baselines is an attribute here, so the
adapter, trainer, aggregator, node, phone stand-in and CLI ask the method
instead of comparing its name. numpy only: a phone speaks it too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from edgedfl.adapters import solora


@dataclasses.dataclass(frozen=True)
class AdapterMethod:
    """One adapter method. Subclasses set the fields and :meth:`init_A`."""

    #: the name configs, reports and the CLI use
    name: str
    #: one line for ``--help`` and the docs
    summary: str
    #: A is trained and travels (standard LoRA); otherwise A is frozen and every device
    #: regenerates it from the swarm's seed, so only B is trained and sent
    trains_A: bool
    #: B lives under a per-slot mask (masked entries stay exactly zero) and travels as the
    #: values under the mask; cluster mates derive the mask from their pooled calibration statistics
    sparse: bool
    #: devices cluster by task signature, one expert slot per cluster, and route prompts among
    #: the experts at inference; otherwise one flat gossip over every device and one adapter
    clusters: bool
    #: AdamW learning rate when a swarm's ``lr`` is 0 (tuned per method; see README.md)
    default_lr: float

    @property
    def tensors(self) -> tuple[str, ...]:
        """Per-layer tensors this method trains, sends and averages: ``lora_B`` (and ``lora_A``)."""
        return ("lora_A", "lora_B") if self.trains_A else ("lora_B",)

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Name suffixes of the tensors in an update: ``.lora_B`` (and ``.lora_A``)."""
        return tuple("." + t for t in self.tensors)

    def update_shapes(self, layer_shapes: Mapping[str, tuple[int, int]], rank: int) -> dict[str, tuple[int, int]]:
        """``<layer>.<tensor>`` -> shape of an update, from ``layer -> (d_in, d_out)``."""
        out: dict[str, tuple[int, int]] = {}
        for layer, (d_in, d_out) in layer_shapes.items():
            out[f"{layer}.lora_B"] = (d_out, rank)
            if self.trains_A:
                out[f"{layer}.lora_A"] = (rank, d_in)
        return out

    def init_A(self, seed: int, layer: str, d_in: int, rank: int, slot: int, num_slots: int,
               a_scale: float) -> np.ndarray:
        """A of ``slot`` in ``layer``, (rank, d_in), the same on every device of the swarm."""
        raise NotImplementedError


def kaiming_A(seed: int, layer: str, d_in: int, rank: int, slot: int) -> np.ndarray:
    """peft's default LoRA A init (Kaiming-uniform, a=sqrt(5)), from a seed instead of torch's RNG."""
    bound = 1.0 / np.sqrt(d_in)
    return solora._rng("kaiming-A", seed, layer, slot).uniform(-bound, bound, size=(rank, d_in))  # (r, d_in)
