"""Task signatures: seeded projection, normalisation, cosine distance."""

from __future__ import annotations

import numpy as np
import pytest

from edgedfl.errors import TopologyError
from edgedfl.topology import distance_matrix, project_signature, projection_matrix, signature_distance


def test_projection_is_a_function_of_seed_and_hidden_size() -> None:
    a, b = projection_matrix(3, 32, 16), projection_matrix(3, 32, 16)
    assert a.shape == (32, 16)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, projection_matrix(4, 32, 16))


def test_signature_is_unit_norm_mean_projection() -> None:
    pooled = np.random.default_rng(0).standard_normal((10, 48))  # (n_prompts, hidden)
    sig = project_signature(pooled, seed=1, dim=24)
    assert sig.shape == (24,)
    assert np.isclose(np.linalg.norm(sig), 1.0)
    expected = pooled.mean(axis=0) @ projection_matrix(1, 48, 24)
    assert np.allclose(sig, expected / np.linalg.norm(expected))
    # a 1-d input is an already averaged state; the scale of activations does not matter
    assert np.allclose(project_signature(3.0 * pooled.mean(axis=0), seed=1, dim=24), sig)


def test_projection_roughly_preserves_cosine_distance() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(512), rng.standard_normal(512)
    y = x + 0.8 * y
    true = 1 - x @ y / np.linalg.norm(x) / np.linalg.norm(y)
    got = signature_distance(project_signature(x, 5, 64), project_signature(y, 5, 64))
    assert abs(got - true) < 0.1


@pytest.mark.parametrize("bad", [np.zeros((0, 8)), np.full((2, 8), np.nan), np.zeros((3, 8)), np.zeros((2, 2, 2))])
def test_bad_pooled_states_are_typed_errors(bad: np.ndarray) -> None:
    with pytest.raises(TopologyError):
        project_signature(bad, seed=0, dim=4)


def test_distance_is_cosine_and_matrix_symmetric() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert signature_distance(a, a * 5) == pytest.approx(0.0)
    assert signature_distance(a, b) == pytest.approx(1.0)
    assert signature_distance(a, -a) == pytest.approx(2.0)
    with pytest.raises(TopologyError):
        signature_distance(a, np.ones(3))
    d = distance_matrix(np.random.default_rng(2).standard_normal((5, 8)))
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0)
