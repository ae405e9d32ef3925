"""Aggregation: combine a device's update with its neighbours' (layer L3, numpy only, no torch).

* :mod:`~edgedfl.aggregation.base`: the :class:`Aggregator` contract and the checks every aggregator shares.
* :mod:`~edgedfl.aggregation.mean`: :class:`WeightedMean` (Metropolis gossip; every method's default).
* :mod:`~edgedfl.aggregation.robust`: :class:`CoordinateMedian`, :class:`TrimmedMean`, :class:`NormClipping`, :class:`AdaptiveClipping` (the default).
* :mod:`~edgedfl.aggregation.config`: :class:`AggregationConfig` and :func:`for_method`.

Usage on a node (weights from :func:`edgedfl.topology.metropolis_weights` and
:func:`edgedfl.topology.present_weights`)::

    agg = for_method("solora")
    new = agg.aggregate(own, [(w_j, update_j), ...], own_weight=w_ii, masks=model.get_masks(slot))
"""

from edgedfl.aggregation.base import WEIGHT_TOLERANCE, Aggregator, Update, mask_for
from edgedfl.aggregation.config import ROBUST, AggregationConfig, for_method
from edgedfl.aggregation.mean import WeightedMean
from edgedfl.aggregation.robust import AdaptiveClipping, CoordinateMedian, NormClipping, TrimmedMean

__all__ = [
    "ROBUST",
    "WEIGHT_TOLERANCE",
    "AdaptiveClipping",
    "AggregationConfig",
    "Aggregator",
    "CoordinateMedian",
    "NormClipping",
    "TrimmedMean",
    "Update",
    "WeightedMean",
    "for_method",
    "mask_for",
]
