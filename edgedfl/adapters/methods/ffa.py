"""FFA-LoRA (the baseline): frozen random A, dense B averaged with every neighbour."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgedfl.adapters.methods.base import AdapterMethod, kaiming_A


@dataclasses.dataclass(frozen=True)
class FFA(AdapterMethod):
    def init_A(self, seed: int, layer: str, d_in: int, rank: int, slot: int, num_slots: int,
               a_scale: float) -> np.ndarray:
        return kaiming_A(seed, layer, d_in, rank, slot)  # (r, d_in)


FFA_LORA = FFA(
    name="ffa", summary="FFA-LoRA: frozen random A, dense B averaged with all neighbours",
    trains_A=False, sparse=False, clusters=False, default_lr=1e-2,
)
