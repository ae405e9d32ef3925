"""Latent codes and routing maths (numpy): statistics, distances, top-k weights, wire validation."""

from __future__ import annotations

import numpy as np
import pytest

from edgedfl.errors import TensorValidationError
from edgedfl.routing.codes import (
    LatentCode,
    code_spec,
    decode_code,
    distances,
    encode_code,
    route_weights,
    stack_codes,
)
from edgedfl.wire import encode_tensors


def _gauss(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float = 0.5) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, centre.shape[0]))  # (n, D)


def test_code_statistics_and_exact_merge():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((40, 6))
    code = LatentCode.from_features(z)
    np.testing.assert_allclose(code.mean, z.mean(0))
    np.testing.assert_allclose(code.cov, np.cov(z.T, bias=True), atol=1e-12)
    merged = LatentCode.from_features(z[:15]).merged(LatentCode.from_features(z[15:]))
    assert merged.count == 40
    np.testing.assert_allclose(merged.mean, code.mean, atol=1e-12)
    np.testing.assert_allclose(merged.cov, code.cov, atol=1e-12)


def test_precision_factor_whitens_the_regularised_covariance():
    code = LatentCode.from_features(np.random.default_rng(1).standard_normal((30, 5)))
    P = code.precision_factor(0.1)
    reg = code.cov + 0.1 * np.trace(code.cov) / 5 * np.eye(5)
    np.testing.assert_allclose(P @ P.T, np.linalg.inv(reg), rtol=1e-8, atol=1e-10)


def test_router_picks_the_expert_of_well_separated_inputs():
    # Prepare: K experts, each with its own subspace view; task k's features sit around centre k.
    rng = np.random.default_rng(2)
    K, D = 4, 8
    centres = 3.0 * rng.standard_normal((K, K, D))  # centres[task, expert]: task seen through expert's A
    codes = [LatentCode.from_features(_gauss(rng, centres[k, k], 64)) for k in range(K)]
    means, factors = stack_codes(codes, ridge=0.1)
    # Execute: held-out prompts of every task, projected into every expert's subspace
    truth = np.repeat(np.arange(K), 25)
    z = np.stack([np.stack([_gauss(rng, centres[t, e], 1)[0] for e in range(K)]) for t in truth])  # (N, K, D)
    chosen = distances(z, means, factors).argmin(1)
    # Assert
    assert (chosen == truth).mean() == 1.0


def test_top_k_weights():
    d = np.array([[5.0, 1.0, 3.0, 9.0]])
    top1 = route_weights(d, 1)
    np.testing.assert_array_equal(top1, [[0, 1, 0, 0]])
    top2 = route_weights(d, 2, temperature=1.0)
    assert top2[0, 0] == 0 and top2[0, 3] == 0
    assert top2.sum() == pytest.approx(1.0)
    assert top2[0, 2] / top2[0, 1] == pytest.approx(np.exp(-(3.0 - 1.0) / 2))
    np.testing.assert_allclose(route_weights(d, 10).sum(1), 1.0)  # k > K is all experts


def test_code_round_trips_through_the_wire():
    code = LatentCode.from_features(np.random.default_rng(3).standard_normal((20, 6)))
    back = decode_code(encode_code(code), dim=6)
    assert back.count == 20
    np.testing.assert_allclose(back.mean, code.mean, rtol=1e-6)
    np.testing.assert_allclose(back.cov, code.cov, rtol=1e-5, atol=1e-7)
    assert set(code_spec(6).shapes) == {"latent.count", "latent.mean", "latent.cov"}


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda t: t.update({"latent.mean": np.zeros(5, np.float32)}), "shape"),
        (lambda t: t["latent.mean"].__setitem__(0, np.nan), "NaN"),
        (lambda t: t["latent.cov"].__setitem__((0, 1), 5.0), "symmetric"),
        (lambda t: t.update({"latent.cov": -np.eye(6, dtype=np.float32)}), "positive"),
        (lambda t: t.update({"latent.count": np.array([1.0], np.float32)}), "count"),
        (lambda t: t.update({"latent.cov": t["latent.cov"].astype(np.float16)}), "dtype"),
        (lambda t: t.update({"extra": np.zeros(1, np.float32)}), "unexpected"),
    ],
)
def test_a_bad_received_code_is_rejected(tamper, match):
    tensors = LatentCode.from_features(np.random.default_rng(4).standard_normal((20, 6))).to_tensors()
    tensors = {k: v.copy() for k, v in tensors.items()}
    tamper(tensors)
    with pytest.raises(TensorValidationError, match=match):
        decode_code(encode_tensors(tensors), dim=6)
