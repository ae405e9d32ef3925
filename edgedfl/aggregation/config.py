"""Which aggregator a method uses: :class:`AggregationConfig` and the :func:`for_method` factory.

Every method aggregates through the same :class:`~edgedfl.aggregation.base.Aggregator`
interface; they differ only in which tensors travel (and so are accepted), which
the method object says (:attr:`~edgedfl.adapters.methods.AdapterMethod.suffixes`):

=========  ===========================  ==============================================
method     tensors                      neighbours (chosen by the node / topology)
=========  ===========================  ==============================================
solora     sparse ``.lora_B`` + mask    best-linked peers of the own cluster
lora       ``.lora_A`` and ``.lora_B``  all neighbours (flat gossip)
ffa        dense ``.lora_B``            all neighbours (flat gossip)
=========  ===========================  ==============================================

``robust`` swaps the weighted mean for a coordinate-wise median or trimmed
mean; ``clip_norm`` wraps either in norm clipping. The defaults (plain weighted
mean, no clipping) are what the paper and the baselines do.
"""

from __future__ import annotations

import dataclasses

from edgedfl.adapters.methods import get_method
from edgedfl.aggregation.base import Aggregator
from edgedfl.aggregation.mean import WeightedMean
from edgedfl.aggregation.robust import CoordinateMedian, NormClipping, TrimmedMean
from edgedfl.config import ConfigBase, check, option
from edgedfl.errors import ConfigError

#: robust options (None or "mean": the plain weighted mean)
ROBUST = ("mean", "median", "trimmed")



def for_method(
    method: str, robust: str | None = None, *, trim_fraction: float = 0.2, clip_norm: float | None = None
) -> Aggregator:
    """The aggregator of ``method`` (averaging the tensors it sends), optionally robust and/or norm-clipped."""
    names = get_method(method).suffixes
    agg: Aggregator
    if robust in (None, "mean"):
        agg = WeightedMean(names=names)
    elif robust == "median":
        agg = CoordinateMedian(names=names)
    elif robust == "trimmed":
        agg = TrimmedMean(trim_fraction, names=names)
    else:
        raise ConfigError(f"robust={robust!r}: choose from {ROBUST} or None")
    return agg if clip_norm is None else NormClipping(agg, clip_norm)


@dataclasses.dataclass
class AggregationConfig(ConfigBase):
    """How a node combines its update with its neighbours' (shared by the whole swarm)."""

    method: str = option("solora", help="adapter method whose tensors are aggregated: solora, lora or ffa")
    robust: str = option(
        "mean", help="'mean' (Metropolis-weighted mean), 'median' (coordinate-wise) or 'trimmed' (trimmed mean)"
    )
    trim_fraction: float = option(0.2, help="trimmed mean: fraction dropped at each end, in [0, 0.5)")
    clip_norm: float | None = option(
        None, help="clip each neighbour's delta (neighbour - own, L2 over all tensors) to this norm; None: off"
    )

    def __post_init__(self) -> None:
        name = type(self).__name__
        get_method(self.method)  # ConfigError names the known methods
        check(self.robust in ROBUST, name, "robust", self.robust, f"choose from {ROBUST}")
        check(0 <= self.trim_fraction < 0.5, name, "trim_fraction", self.trim_fraction, "must be in [0, 0.5)")
        check(self.clip_norm is None or self.clip_norm > 0, name, "clip_norm", self.clip_norm,
              "must be None or > 0")

    def build(self) -> Aggregator:
        return for_method(self.method, self.robust, trim_fraction=self.trim_fraction, clip_norm=self.clip_norm)
