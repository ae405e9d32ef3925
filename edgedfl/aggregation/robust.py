"""Robust aggregation: coordinate-wise median, trimmed mean, and norm clipping.

For clusters that may hold a faulty or malicious device (a Byzantine update).

Decisions:

* **Median and trimmed mean count every participant once** (own + each
  neighbour) and do not use the mixing weights (which are still checked).
  Robust statistics resist an outlier by counting it as one voice; weighting by
  Metropolis weights would let a peer with a large weight win alone. The price
  is a mixing step that is not doubly stochastic, which is the usual trade of
  Byzantine-robust gossip.
* **Trimmed mean** drops ``floor(trim_fraction * m)`` lowest and highest values
  of each coordinate over the m participants; with too few participants to
  trim anything it is the plain (unweighted) mean.
* **Norm clipping** measures each neighbour's whole update relative to one's
  own (the global L2 norm of ``neighbour - own`` over all tensors, inside the
  masks) and scales that delta down to ``max_norm`` before the inner
  aggregator runs. So no single neighbour can move the model by more than
  ``w * max_norm`` under a weighted mean, whatever it sends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgedfl.aggregation.base import Aggregator, Update, mask_for
from edgedfl.errors import ConfigError


class CoordinateMedian(Aggregator):
    """Coordinate-wise median over own + neighbours (each counted once)."""

    name = "median"

    def combine(self, name: str, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.median(stack, axis=0)  # (*shape)


class TrimmedMean(Aggregator):
    """Coordinate-wise mean after dropping the ``trim_fraction`` lowest and highest values."""

    name = "trimmed"

    def __init__(self, trim_fraction: float = 0.2, *, names: Sequence[str] | None = None) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise ConfigError(f"TrimmedMean.trim_fraction={trim_fraction!r}: must be in [0, 0.5)")
        super().__init__(names=names)
        self.trim_fraction = trim_fraction

    def __repr__(self) -> str:
        return f"TrimmedMean(trim_fraction={self.trim_fraction})"

    def combine(self, name: str, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
        m = stack.shape[0]
        k = math.floor(self.trim_fraction * m)
        ordered = np.sort(stack, axis=0)  # (m, *shape)
        return ordered[k : m - k].mean(axis=0)  # (*shape)


class NormClipping(Aggregator):
    """Clip each neighbour's delta (neighbour - own, global L2 norm) to ``max_norm``, then run ``inner``."""

    def __init__(self, inner: Aggregator, max_norm: float) -> None:
        if not (max_norm > 0 and math.isfinite(max_norm)):
            raise ConfigError(f"NormClipping.max_norm={max_norm!r}: must be a finite number > 0")
        super().__init__(names=inner.names)
        self.inner = inner
        self.max_norm = float(max_norm)
        self.name = f"clip+{inner.name}"

    def __repr__(self) -> str:
        return f"NormClipping({self.inner!r}, max_norm={self.max_norm})"

    def aggregate(
        self,
        own: Update,
        neighbours: Sequence[tuple[float, Update]],
        *,
        own_weight: float,
        masks: dict[str, np.ndarray] | None = None,
    ) -> Update:
        self._check(own, neighbours, own_weight, masks)
        clipped = [(w, self.clip(own, update, masks)) for w, update in neighbours]
        return self.inner.aggregate(own, clipped, own_weight=own_weight, masks=masks)

    def clip(self, own: Update, update: Update, masks: dict[str, np.ndarray] | None = None) -> Update:
        """``update`` moved towards ``own`` so that ``||update - own|| <= max_norm`` (within the masks)."""
        return _moved(own, _masked_deltas(own, update, masks), self.max_norm)

    def combine(self, name: str, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.inner.combine(name, stack, weights)


class AdaptiveClipping(Aggregator):
    """Clip each neighbour's delta to ``factor`` x a bound taken from this round's own updates, then run ``inner``.

    The bound is the larger of the median of the neighbours' delta norms and
    ``floor`` (the device's own change this round). With one Byzantine
    neighbour among several honest ones, the median is an honest delta, so a
    scaled or noisy update moves the model no further than ``factor`` honest
    ones would; honest neighbours are rarely clipped (a delta over ``factor``
    times the median is an outlier), so a fleet that agrees still reaches the
    same average on every member. No constant depends on the model or the
    learning rate.
    """

    def __init__(self, inner: Aggregator, factor: float, floor: float = 0.0) -> None:
        if not (factor > 0 and math.isfinite(factor)):
            raise ConfigError(f"AdaptiveClipping.factor={factor!r}: must be a finite number > 0")
        super().__init__(names=inner.names)
        self.inner = inner
        self.factor = float(factor)
        self.floor = float(floor) if math.isfinite(floor) else 0.0
        self.name = f"adaptive-clip+{inner.name}"

    def __repr__(self) -> str:
        return f"AdaptiveClipping({self.inner!r}, factor={self.factor}, floor={self.floor})"

    def aggregate(
        self,
        own: Update,
        neighbours: Sequence[tuple[float, Update]],
        *,
        own_weight: float,
        masks: dict[str, np.ndarray] | None = None,
    ) -> Update:
        self._check(own, neighbours, own_weight, masks)
        if not neighbours:
            return self.inner.aggregate(own, neighbours, own_weight=own_weight, masks=masks)
        deltas = [_masked_deltas(own, update, masks) for _, update in neighbours]  # each neighbour once
        bound = self.factor * max(float(np.median([_norm(d) for d in deltas])), self.floor)
        if bound <= 0:  # every neighbour equals the own update: nothing to clip
            return self.inner.aggregate(own, neighbours, own_weight=own_weight, masks=masks)
        clipped = [(w, _moved(own, d, bound)) for (w, _), d in zip(neighbours, deltas)]
        return self.inner.aggregate(own, clipped, own_weight=own_weight, masks=masks)

    def combine(self, name: str, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.inner.combine(name, stack, weights)


def _masked_deltas(own: Update, update: Update, masks: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """``update - own`` per tensor (float64), zero outside the masks."""
    deltas: dict[str, np.ndarray] = {}
    for k in sorted(own):
        delta = np.asarray(update[k], dtype=np.float64) - np.asarray(own[k], dtype=np.float64)  # (*shape)
        found = mask_for(k, masks) if masks else None
        deltas[k] = delta if found is None else np.where(np.asarray(found, dtype=bool), delta, 0.0)
    return deltas


def _norm(deltas: dict[str, np.ndarray]) -> float:
    """Global L2 norm over every tensor."""
    return math.sqrt(sum(float((d * d).sum()) for d in deltas.values()))


def _moved(own: Update, deltas: dict[str, np.ndarray], max_norm: float) -> Update:
    """``own + deltas``, the deltas scaled down together so that their norm is at most ``max_norm``."""
    norm = _norm(deltas)
    scale = 1.0 if norm <= max_norm else max_norm / norm
    return {k: np.asarray(own[k], dtype=np.float64) + scale * d for k, d in deltas.items()}
