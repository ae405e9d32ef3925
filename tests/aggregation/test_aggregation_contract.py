"""One contract, every aggregator (STYLE point 3): what any aggregator must guarantee."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from edgedfl.aggregation import (
    WEIGHT_TOLERANCE,
    AdaptiveClipping,
    AggregationConfig,
    Aggregator,
    CoordinateMedian,
    NormClipping,
    TrimmedMean,
    Update,
    WeightedMean,
    for_method,
)
from edgedfl.errors import AggregationError, ConfigError, NonFiniteUpdate, UpdateMismatch
from edgedfl.topology import metropolis_weights, neighbour_graph, present_weights

AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "mean": WeightedMean,
    "median": CoordinateMedian,
    "trimmed": lambda: TrimmedMean(0.25),
    "clip+mean": lambda: NormClipping(WeightedMean(), max_norm=0.5),
    "clip+median": lambda: NormClipping(CoordinateMedian(), max_norm=0.5),
    "solora": lambda: for_method("solora"),
    "lora": lambda: for_method("lora"),
    "ffa+trimmed+clip": lambda: for_method("ffa", "trimmed", clip_norm=1.0),
    "adaptive-clip+mean": lambda: AdaptiveClipping(WeightedMean(), 3.0),
    "swarm default": lambda: AggregationConfig().build(own_change=0.1),
}

LAYERS = {"m.0.q_proj": (6, 3), "m.0.v_proj": (4, 3)}  # layer -> (d_out, r) of B


def make_update(seed: int, *, with_a: bool = False) -> Update:
    rng = np.random.default_rng(seed)
    out: Update = {}
    for layer, (d_out, r) in LAYERS.items():
        out[f"{layer}.lora_B"] = rng.standard_normal((d_out, r)).astype(np.float32)  # (d_out, r)
        if with_a:
            out[f"{layer}.lora_A"] = rng.standard_normal((r, 5)).astype(np.float32)  # (r, d_in)
    return out


def make_masks(seed: int = 99) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{layer}.lora_B": rng.random(shape) < 0.5 for layer, shape in LAYERS.items()}  # B's name -> (d_out, r)


@pytest.fixture(params=sorted(AGGREGATORS))
def agg(request: pytest.FixtureRequest) -> Aggregator:
    return AGGREGATORS[request.param]()


def uses_a(agg: Aggregator) -> bool:
    return agg.names is None or ".lora_A" in agg.names


class TestAggregatorContract:
    """Every aggregator, the same guarantees."""

    def test_identical_inputs_are_a_fixed_point(self, agg: Aggregator) -> None:
        own = make_update(1, with_a=uses_a(agg))
        neighbours = [(0.2, {k: v.copy() for k, v in own.items()}) for _ in range(3)]
        out = agg.aggregate(own, neighbours, own_weight=0.4)
        assert set(out) == set(own)
        for k in own:
            assert out[k].dtype == own[k].dtype and out[k].shape == own[k].shape
            np.testing.assert_allclose(out[k], own[k], rtol=1e-6, atol=1e-7)

    def test_no_neighbours_returns_own(self, agg: Aggregator) -> None:
        own = make_update(2, with_a=uses_a(agg))
        out = agg.aggregate(own, [], own_weight=1.0)
        for k in own:
            np.testing.assert_allclose(out[k], own[k], rtol=1e-6)

    def test_inputs_are_not_modified(self, agg: Aggregator) -> None:
        own, nb = make_update(3, with_a=uses_a(agg)), make_update(4, with_a=uses_a(agg))
        before = {k: v.copy() for k, v in own.items()}, {k: v.copy() for k, v in nb.items()}
        agg.aggregate(own, [(0.5, nb)], own_weight=0.5, masks=make_masks())
        for k in own:
            assert np.array_equal(own[k], before[0][k]) and np.array_equal(nb[k], before[1][k])

    @pytest.mark.parametrize("weights", [(0.5, 0.2, 0.2), (0.3, 0.3, 0.3, 0.3), (-0.2, 0.6, 0.6), (np.nan, 0.5, 0.5)])
    def test_weights_must_be_nonnegative_and_sum_to_one(self, agg: Aggregator, weights: tuple[float, ...]) -> None:
        own = make_update(5, with_a=uses_a(agg))
        nbs = [(w, make_update(6 + i, with_a=uses_a(agg))) for i, w in enumerate(weights[1:])]
        with pytest.raises(UpdateMismatch):
            agg.aggregate(own, nbs, own_weight=weights[0])

    def test_metropolis_rounding_is_tolerated(self, agg: Aggregator) -> None:
        own = make_update(5, with_a=uses_a(agg))
        nbs = [(1 / 3, make_update(6 + i, with_a=uses_a(agg))) for i in range(2)]
        assert 1 / 3 + 1 / 3 + 1 / 3 == 1.0
        exact = agg.aggregate(own, nbs, own_weight=1 / 3)
        # Sums off by float rounding (and up to the tolerance) are accepted and change nothing that matters.
        for off in (1e-12, -1e-12, 1e-9, -1e-9, WEIGHT_TOLERANCE / 2, -WEIGHT_TOLERANCE / 2):
            assert float(np.sum([1 / 3 + off, 1 / 3, 1 / 3])) != 1.0
            out = agg.aggregate(own, nbs, own_weight=1 / 3 + off)
            for k in exact:
                np.testing.assert_allclose(out[k], exact[k], rtol=1e-5, atol=1e-5)
        # A real violation is still refused, on either side of 1.
        for off in (2 * WEIGHT_TOLERANCE, -2 * WEIGHT_TOLERANCE, 1e-3, -1e-3):
            with pytest.raises(UpdateMismatch, match="sum to 1"):
                agg.aggregate(own, nbs, own_weight=1 / 3 + off)

    def test_real_metropolis_rows_are_accepted(self, agg: Aggregator) -> None:
        # What a node hands the aggregator: a Metropolis row of a complete 7-node cluster, with the
        # weights of the neighbours that missed the deadline folded into its own (present_weights).
        nodes = [f"n{i}" for i in range(7)]
        row = metropolis_weights(neighbour_graph(nodes, None, degree=None))["n0"]
        updates = {n: make_update(20 + i, with_a=uses_a(agg)) for i, n in enumerate(nodes)}
        inexact = 0
        for k in range(len(nodes)):
            for present in itertools.combinations(nodes[1:], k):
                own_w, peer_w = present_weights(row, "n0", present)
                weights = [own_w] + [peer_w[p] for p in sorted(peer_w)]
                inexact += float(np.sum(weights)) != 1.0
                out = agg.aggregate(updates["n0"], [(peer_w[p], updates[p]) for p in sorted(peer_w)],
                                    own_weight=own_w)
                assert set(out) == set(updates["n0"])
        assert inexact, "no row summed to anything but exactly 1: the tolerance was not exercised"

    def test_masked_entries_are_exactly_zero(self, agg: Aggregator) -> None:
        masks = make_masks()
        own = make_update(7, with_a=uses_a(agg))
        nbs = [(0.25, make_update(8 + i, with_a=uses_a(agg))) for i in range(3)]
        out = agg.aggregate(own, nbs, own_weight=0.25, masks=masks)
        for name, mask in masks.items():
            b = out[name]
            assert np.all(b[~mask] == 0.0)
            assert np.all(b[mask] != 0.0)  # the kept entries are aggregated, not dropped
        # one spelling: a mask keyed by the layer instead of its tensor is refused, not silently unused
        by_layer = {k.removesuffix(".lora_B"): v for k, v in masks.items()}
        with pytest.raises(UpdateMismatch):
            agg.aggregate(own, nbs, own_weight=0.25, masks=by_layer)

    def test_permuting_neighbours_changes_nothing(self, agg: Aggregator) -> None:
        own = make_update(11, with_a=uses_a(agg))
        nbs = [(w, make_update(12 + i, with_a=uses_a(agg))) for i, w in enumerate((0.1, 0.2, 0.3))]
        ref = agg.aggregate(own, nbs, own_weight=0.4, masks=make_masks())
        for perm in itertools.permutations(nbs):
            out = agg.aggregate(own, list(perm), own_weight=0.4, masks=make_masks())
            assert all(np.array_equal(out[k], ref[k]) for k in ref)  # bit for bit

    def test_mismatched_names_are_typed_errors(self, agg: Aggregator) -> None:
        own = make_update(13, with_a=uses_a(agg))
        missing = dict(own)
        missing.pop(min(own))
        extra = dict(own) | {"m.9.q_proj.lora_B": np.zeros((2, 3), np.float32)}
        for bad in (missing, extra):
            with pytest.raises(UpdateMismatch) as info:
                agg.aggregate(own, [(0.25, own), (0.25, bad)], own_weight=0.5)
            assert info.value.neighbour == 1

    def test_mismatched_shapes_are_typed_errors(self, agg: Aggregator) -> None:
        own = make_update(14, with_a=uses_a(agg))
        key = min(own)
        bad = dict(own) | {key: np.zeros((own[key].shape[0] + 1, own[key].shape[1]), np.float32)}
        with pytest.raises(UpdateMismatch) as info:
            agg.aggregate(own, [(0.5, bad)], own_weight=0.5)
        assert info.value.neighbour == 0
        with pytest.raises(UpdateMismatch):
            agg.aggregate(own, [(0.5, own)], own_weight=0.5, masks={"m.0.q_proj.lora_B": np.ones((2, 2), bool)})
        with pytest.raises(UpdateMismatch):
            agg.aggregate(own, [(0.5, own)], own_weight=0.5, masks={"nowhere": np.ones((6, 3), bool)})

    @pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
    def test_non_finite_neighbour_is_rejected(self, agg: Aggregator, bad_value: float) -> None:
        own = make_update(15, with_a=uses_a(agg))
        poisoned = {k: v.copy() for k, v in own.items()}
        poisoned[max(own)][0, 0] = bad_value
        with pytest.raises(NonFiniteUpdate) as info:
            agg.aggregate(own, [(0.25, make_update(16, with_a=uses_a(agg))), (0.25, poisoned)], own_weight=0.5)
        assert info.value.neighbour == 1
        assert isinstance(info.value, AggregationError) and isinstance(info.value, ValueError)
        with pytest.raises(NonFiniteUpdate) as own_info:
            agg.aggregate(poisoned, [(0.5, own)], own_weight=0.5)
        assert own_info.value.neighbour is None

    def test_result_stays_within_the_inputs_range(self, agg: Aggregator) -> None:
        # every aggregator here is a convex combination per coordinate (clipping only shrinks towards own)
        own = make_update(17, with_a=uses_a(agg))
        nbs = [(0.2, make_update(18 + i, with_a=uses_a(agg))) for i in range(4)]
        out = agg.aggregate(own, nbs, own_weight=0.2)
        for k in own:
            stack = np.stack([own[k]] + [u[k] for _, u in nbs])  # (m, *shape)
            assert np.all(out[k] >= stack.min(axis=0) - 1e-6) and np.all(out[k] <= stack.max(axis=0) + 1e-6)


def test_method_names_are_enforced() -> None:
    with_a = make_update(20, with_a=True)
    with pytest.raises(UpdateMismatch, match="lora_A"):
        for_method("solora").aggregate(with_a, [], own_weight=1.0)
    with pytest.raises(UpdateMismatch):
        for_method("ffa").aggregate(with_a, [], own_weight=1.0)
    for_method("lora").aggregate(with_a, [], own_weight=1.0)


def test_lora_baseline_averages_both_a_and_b() -> None:
    own, nb = make_update(21, with_a=True), make_update(22, with_a=True)
    out = for_method("lora").aggregate(own, [(0.5, nb)], own_weight=0.5)
    for k in own:
        np.testing.assert_allclose(out[k], (own[k].astype(np.float64) + nb[k]) / 2, rtol=1e-6)


def test_factory_and_config() -> None:
    assert isinstance(for_method("solora"), WeightedMean)
    assert isinstance(for_method("ffa", "median"), CoordinateMedian)
    clipped = for_method("lora", "trimmed", trim_fraction=0.1, clip_norm=2.0)
    assert isinstance(clipped, NormClipping) and isinstance(clipped.inner, TrimmedMean)
    assert clipped.inner.trim_fraction == 0.1 and clipped.max_norm == 2.0
    assert isinstance(AggregationConfig(robust="median", clip_norm=1.0, auto_clip=0.0).build(), NormClipping)
    default = AggregationConfig(robust="median", clip_norm=1.0).build()  # clipping from the round's deltas is on
    assert isinstance(default, AdaptiveClipping) and isinstance(default.inner, NormClipping)
    for bad in ({"method": "fedavg"}, {"robust": "krum"}, {"trim_fraction": 0.5}, {"clip_norm": 0.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AggregationConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        for_method("fedavg")
    with pytest.raises(ConfigError):
        for_method("solora", "krum")
    with pytest.raises(ConfigError):
        TrimmedMean(0.6)
    with pytest.raises(ConfigError):
        NormClipping(WeightedMean(), float("inf"))
