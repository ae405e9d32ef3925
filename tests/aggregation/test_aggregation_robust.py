"""What the robust options are for: one Byzantine neighbour, and bounded influence under clipping."""

from __future__ import annotations

import numpy as np
import pytest

from edgedfl.aggregation import CoordinateMedian, NormClipping, TrimmedMean, Update, WeightedMean

SHAPE = (8, 4)


def honest(seed: int) -> Update:
    # honest updates: a shared direction plus small disagreement
    rng = np.random.default_rng(seed)
    return {"l.lora_B": (1.0 + 0.1 * rng.standard_normal(SHAPE)).astype(np.float32)}  # (d_out, r)


def byzantine_round() -> tuple[Update, list[tuple[float, Update]], Update]:
    own = honest(0)
    neighbours = [(0.2, honest(i)) for i in range(1, 4)]
    attacker = {"l.lora_B": (1e6 * honest(99)["l.lora_B"]).astype(np.float32)}
    honest_mean = np.mean([own["l.lora_B"]] + [u["l.lora_B"] for _, u in neighbours], axis=0)  # (d_out, r)
    return own, neighbours + [(0.2, attacker)], {"l.lora_B": honest_mean}


@pytest.mark.parametrize("agg", [CoordinateMedian(), TrimmedMean(0.2)], ids=["median", "trimmed"])
def test_robust_aggregators_resist_one_outlier(agg: object) -> None:
    own, neighbours, reference = byzantine_round()
    out = agg.aggregate(own, neighbours, own_weight=0.2)  # type: ignore[attr-defined]
    assert np.abs(out["l.lora_B"] - reference["l.lora_B"]).max() < 0.3


def test_the_plain_mean_does_not() -> None:
    own, neighbours, reference = byzantine_round()
    out = WeightedMean().aggregate(own, neighbours, own_weight=0.2)
    assert np.abs(out["l.lora_B"] - reference["l.lora_B"]).max() > 1e4


def test_clipping_bounds_each_neighbours_influence() -> None:
    own, neighbours, reference = byzantine_round()
    max_norm = 0.5
    out = NormClipping(WeightedMean(), max_norm).aggregate(own, neighbours, own_weight=0.2)
    # the attacker moves the result by at most its weight times max_norm, the honest ones are within it too
    drift = float(np.linalg.norm(out["l.lora_B"].astype(np.float64) - own["l.lora_B"]))
    assert drift <= sum(w for w, _ in neighbours) * max_norm + 1e-5
    assert np.abs(out["l.lora_B"] - reference["l.lora_B"]).max() < 1.0


def test_clipping_leaves_small_deltas_alone_and_shrinks_large_ones_to_max_norm() -> None:
    clip = NormClipping(WeightedMean(), max_norm=1.0)
    own = {"a.lora_B": np.zeros((2, 2), np.float32), "b.lora_B": np.zeros((3,), np.float32)}
    small = {"a.lora_B": np.full((2, 2), 0.1, np.float32), "b.lora_B": np.zeros((3,), np.float32)}
    large = {"a.lora_B": np.full((2, 2), 3.0, np.float32), "b.lora_B": np.full((3,), 4.0, np.float32)}
    assert np.allclose(clip.clip(own, small)["a.lora_B"], 0.1)
    clipped = clip.clip(own, large)
    norm = np.sqrt(sum(float((v**2).sum()) for v in clipped.values()))  # one norm over all tensors
    assert norm == pytest.approx(1.0)
    # direction kept
    assert np.allclose(clipped["a.lora_B"] / clipped["b.lora_B"][0], 0.75)


def test_clipping_measures_only_inside_the_mask() -> None:
    clip = NormClipping(WeightedMean(), max_norm=1.0)
    mask = np.array([[True, False], [False, False]])
    own = {"l.lora_B": np.zeros((2, 2), np.float32)}
    nb = {"l.lora_B": np.array([[0.5, 1e6], [1e6, 1e6]], np.float32)}  # garbage outside the mask
    out = clip.aggregate(own, [(0.5, nb)], own_weight=0.5, masks={"l.lora_B": mask})
    assert out["l.lora_B"][0, 0] == pytest.approx(0.25) and np.all(out["l.lora_B"][~mask] == 0)


def test_weighted_mean_uses_the_weights() -> None:
    own = {"l.lora_B": np.zeros((2,), np.float32)}
    nb = {"l.lora_B": np.ones((2,), np.float32)}
    out = WeightedMean().aggregate(own, [(0.25, nb)], own_weight=0.75)
    assert np.allclose(out["l.lora_B"], 0.25)


def test_trimmed_mean_without_enough_participants_is_the_plain_mean() -> None:
    own = {"l.lora_B": np.zeros((2,), np.float32)}
    nb = {"l.lora_B": np.full((2,), 3.0, np.float32)}
    assert np.allclose(TrimmedMean(0.2).aggregate(own, [(0.9, nb)], own_weight=0.1)["l.lora_B"], 1.5)


def test_adaptive_clipping_bounds_one_scaled_neighbour_and_leaves_honest_ones_alone() -> None:
    from edgedfl.aggregation import AdaptiveClipping, AggregationConfig

    rng = np.random.default_rng(3)
    own = {"l.lora_B": rng.standard_normal((4, 3)).astype(np.float32)}
    honest = [{"l.lora_B": own["l.lora_B"] + 0.1 * rng.standard_normal((4, 3)).astype(np.float32)} for _ in range(4)]
    attacker = {"l.lora_B": own["l.lora_B"] * 100}
    w = 1 / 6
    plain = WeightedMean()
    clip = AdaptiveClipping(WeightedMean(), 3.0)
    # honest neighbours only: nobody is an outlier, the result is the plain mean
    ref = plain.aggregate(own, [(0.2, u) for u in honest], own_weight=0.2)
    got = clip.aggregate(own, [(0.2, u) for u in honest], own_weight=0.2)
    np.testing.assert_allclose(got["l.lora_B"], ref["l.lora_B"], rtol=1e-6)
    # one attacker of five: without clipping it drags the model far; with it, the model stays near the honest mean
    nbs = [(w, u) for u in honest] + [(w, attacker)]
    dragged = plain.aggregate(own, nbs, own_weight=w)["l.lora_B"]
    held = clip.aggregate(own, nbs, own_weight=w)["l.lora_B"]
    honest_mean = plain.aggregate(own, [(w, u) for u in honest] + [(w, own)], own_weight=w)["l.lora_B"]
    assert np.linalg.norm(dragged - honest_mean) > 10 * np.linalg.norm(held - honest_mean)
    # the swarm's default is this clipping
    assert isinstance(AggregationConfig().build(own_change=0.0), AdaptiveClipping)
    assert not isinstance(AggregationConfig(auto_clip=0.0).build(own_change=1.0), AdaptiveClipping)
