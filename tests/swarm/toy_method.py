"""A fourth adapter method, added the way a user adds one: one object, no edit inside edgedfl.

Orthogonal dense LoRA: solora's orthogonal frozen A per slot, clusters and
routing, but B dense (no masks). Named ``toy_method:ORTHO_DENSE`` in a config
or on the command line, so every device process resolves it the same way.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgedfl.adapters import solora
from edgedfl.adapters.methods import AdapterMethod


@dataclasses.dataclass(frozen=True)
class OrthoDense(AdapterMethod):
    def init_A(self, seed: int, layer: str, d_in: int, rank: int, slot: int, num_slots: int,
               a_scale: float) -> np.ndarray:
        return solora.slot_A(seed, layer, d_in, rank, slot, num_slots, a_scale)  # (r, d_in)


ORTHO_DENSE = OrthoDense(name="ortho-dense", summary="orthogonal frozen A, dense B, clusters, routing",
                         trains_A=False, sparse=False, clusters=True, default_lr=5e-3)
