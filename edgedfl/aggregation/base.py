"""The aggregator contract: combine a device's own update with its neighbours'.

An update is a dict of tensor name -> numpy array, as
``AdaptedModel.get_update`` returns: ``"<layer>.lora_B"`` (d_out, r) for every
method, plus ``"<layer>.lora_A"`` (r, d_in) for standard LoRA.

Every aggregator goes through :meth:`Aggregator.aggregate`, which does the
checks once for all implementations, in this order, before any arithmetic:

1. the neighbours' updates have exactly the own update's names and shapes
   (:class:`~edgedfl.errors.UpdateMismatch`, naming the neighbour);
2. every value is finite (:class:`~edgedfl.errors.NonFiniteUpdate`): a NaN is
   rejected, never averaged in, so one broken peer cannot poison a model;
3. the mixing weights are finite, >= 0 and sum to 1 (the node folds the weight
   of a neighbour that missed the deadline into its own, see
   :func:`edgedfl.topology.present_weights`);
4. masks (sparse methods: the cluster's shared mask of B) are keyed by the
   name of the tensor they mask (``"<layer>.lora_B"``, one spelling from the
   adapter through the wire to here) and have its shape.

Then the subclass combines each tensor's stack (m, *shape) with the weights
(m,), row 0 being the own update; the result is cast to the own update's
dtype, and masked-out entries are set to exactly zero. Computation is in
float64 so that the order of neighbours changes nothing but the last bits.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import numpy as np

from edgedfl.errors import NonFiniteUpdate, UpdateMismatch

#: tensor name -> array, as AdaptedModel.get_update returns
Update = dict[str, np.ndarray]

#: how far the weights may sum from 1 (float rounding of Metropolis rows)
WEIGHT_TOLERANCE = 1e-6


def mask_for(name: str, masks: dict[str, np.ndarray]) -> np.ndarray | None:
    """The mask of tensor ``name`` (masks are keyed by the tensor they mask), or None."""
    return masks.get(name)


class Aggregator(abc.ABC):
    """Combine one's own update with weighted neighbour updates. Stateless; safe to reuse.

    ``names``: if given, every tensor name must end with one of these suffixes
    (e.g. ``(".lora_B",)`` for solora and FFA, where A never travels).
    """

    #: short name used in configs and reports
    name: str = "aggregator"

    def __init__(self, *, names: Sequence[str] | None = None) -> None:
        self.names = tuple(names) if names is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def aggregate(
        self,
        own: Update,
        neighbours: Sequence[tuple[float, Update]],
        *,
        own_weight: float,
        masks: dict[str, np.ndarray] | None = None,
    ) -> Update:
        """The new value of ``own`` after mixing with ``neighbours`` (weight, update) pairs.

        ``own_weight`` + the neighbour weights must sum to 1. ``masks``: name or
        layer -> bool array; entries outside a mask are exactly zero in the
        result. Raises :class:`UpdateMismatch` / :class:`NonFiniteUpdate`
        (``.neighbour`` = index into ``neighbours``, None for ``own``).
        """
        weights = self._check(own, neighbours, own_weight, masks)
        updates = [own] + [u for _, u in neighbours]
        out: Update = {}
        for key in sorted(own):
            stack = np.stack([np.asarray(u[key], dtype=np.float64) for u in updates])  # (m, *shape)
            found = mask_for(key, masks) if masks else None
            mask = None if found is None else np.asarray(found, dtype=bool)  # (*shape)
            if mask is not None:
                stack = stack * mask  # (m, *shape): what lies outside the mask is not part of the update
            value = self.combine(key, stack, weights)  # (*shape)
            if mask is not None:
                value = np.where(mask, value, 0.0)
            out[key] = value.astype(np.asarray(own[key]).dtype, copy=False)
        return out

    @abc.abstractmethod
    def combine(self, name: str, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Combine one tensor: ``stack`` (m, *shape) float64 with row 0 = own, ``weights`` (m,) summing to 1."""

    # -- checks shared by every aggregator --------------------------------------------

    def _check(
        self,
        own: Update,
        neighbours: Sequence[tuple[float, Update]],
        own_weight: float,
        masks: dict[str, np.ndarray] | None,
    ) -> np.ndarray:
        if not own:
            raise UpdateMismatch("own update is empty")
        if self.names is not None:
            bad = sorted(k for k in own if not k.endswith(self.names))
            if bad:
                raise UpdateMismatch(f"{self!r} accepts tensors ending in {self.names}, got {bad[:3]}")
        shapes = {k: np.shape(v) for k, v in own.items()}
        self._finite(own, None)
        for i, (_, update) in enumerate(neighbours):
            if set(update) != set(shapes):
                missing, extra = sorted(set(shapes) - set(update)), sorted(set(update) - set(shapes))
                raise UpdateMismatch(
                    f"neighbour {i}: tensors differ from own (missing {missing[:3]}, unexpected {extra[:3]})",
                    neighbour=i,
                )
            for k, shape in shapes.items():
                if np.shape(update[k]) != shape:
                    raise UpdateMismatch(f"neighbour {i}: {k} has shape {np.shape(update[k])}, own {shape}",
                                         neighbour=i)
            self._finite(update, i)
        weights = np.array([own_weight] + [w for w, _ in neighbours], dtype=np.float64)  # (m,)
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise UpdateMismatch(f"mixing weights must be finite and >= 0, got {weights.tolist()}")
        if not math.isclose(float(weights.sum()), 1.0, abs_tol=WEIGHT_TOLERANCE):
            raise UpdateMismatch(f"mixing weights must sum to 1, got {float(weights.sum())!r}")
        if masks:
            used = set()
            for k, shape in shapes.items():
                m = mask_for(k, masks)
                if m is None:
                    continue
                used.add(k)
                if np.shape(m) != shape:
                    raise UpdateMismatch(f"mask of {k} has shape {np.shape(m)}, tensor {shape}")
            unused = sorted(set(masks) - used)
            if unused:
                raise UpdateMismatch(f"masks for tensors not in the update: {unused[:3]}")
        return weights

    @staticmethod
    def _finite(update: Update, index: int | None) -> None:
        for k in sorted(update):
            if not np.isfinite(np.asarray(update[k])).all():
                who = "own update" if index is None else f"neighbour {index}"
                raise NonFiniteUpdate(f"{who}: {k} holds NaN or inf", neighbour=index)
