"""Sparse-and-orthogonal LoRA (ours): orthogonal frozen A per slot, sparse B, clusters, routing."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgedfl.adapters import solora
from edgedfl.adapters.methods.base import AdapterMethod


@dataclasses.dataclass(frozen=True)
class SoLoRA(AdapterMethod):
    def init_A(self, seed: int, layer: str, d_in: int, rank: int, slot: int, num_slots: int,
               a_scale: float) -> np.ndarray:
        # slot k takes rows k*r .. (k+1)*r-1 of one seeded orthonormal basis: A_i A_j^T = 0
        return solora.slot_A(seed, layer, d_in, rank, slot, num_slots, a_scale)  # (r, d_in)


SOLORA = SoLoRA(
    name="solora", summary="sparse-orthogonal LoRA (ours): frozen orthogonal A, sparse B, clusters, routing",
    trains_A=False, sparse=True, clusters=True, default_lr=5e-3,
)
