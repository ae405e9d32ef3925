"""Weighted mean: the aggregation of every method, inside a cluster (solora) or over all neighbours.

With Metropolis weights (:func:`edgedfl.topology.metropolis_weights`) the
repeated weighted mean is gossip averaging that converges to the plain mean of
the cluster. The baselines need nothing special: standard LoRA sends
``.lora_A`` and ``.lora_B`` and both are averaged (the well-known inexactness
of averaging A and B separately is part of that baseline); FFA-LoRA sends only
a dense ``.lora_B``; solora sends a sparse ``.lora_B`` and passes the
cluster's shared mask, outside of which the result is exactly zero.
"""

from __future__ import annotations

import numpy as np

from edgedfl.aggregation.base import Aggregator


class WeightedMean(Aggregator):
    """``sum_i w_i x_i`` over own + neighbours.

    Bit-for-bit independent of the order of neighbours: the weighted terms are
    sorted per coordinate before summing, so two runs whose updates arrive in a
    different order produce identical bytes.
    """

    name = "mean"

    def combine(self, name: str, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
        terms = stack * weights.reshape((-1,) + (1,) * (stack.ndim - 1))  # (m, *shape)
        return np.sort(terms, axis=0).sum(axis=0)  # (*shape)
