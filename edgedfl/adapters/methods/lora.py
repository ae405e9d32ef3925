"""Standard decentralized LoRA (the baseline): A and B trained, both averaged with every neighbour."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgedfl.adapters.methods.base import AdapterMethod, kaiming_A


@dataclasses.dataclass(frozen=True)
class LoRA(AdapterMethod):
    def init_A(self, seed: int, layer: str, d_in: int, rank: int, slot: int, num_slots: int,
               a_scale: float) -> np.ndarray:
        return kaiming_A(seed, layer, d_in, rank, slot)  # (r, d_in)


LORA = LoRA(
    name="lora", summary="standard decentralized LoRA: A and B trained and averaged with all neighbours",
    trains_A=True, sparse=False, clusters=False, default_lr=2e-3,
)
