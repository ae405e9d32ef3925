"""Task latent codes and the routing maths, in numpy (no torch: a phone can route and validate).

An expert's **latent code** summarises what its task's prompts look like to
the frozen base, seen through that expert's own adapter: for every calibration
prompt, the hidden state at the routing layer is pooled over the prompt
(``h`` (d,)), projected through the expert's A of each routing module and
concatenated (``z = [A_q h; A_k h; A_v h]`` (D,), D = modules x r). The code is
the count, mean ``mu`` (D,) and covariance ``S`` (D, D) of those ``z``. Raw
statistics travel (not the inverse), so the members of a cluster can pool
their codes exactly (:meth:`LatentCode.merged`) and every receiver applies the
same ridge.

**Score.** A prompt's projection ``z_k`` into expert k's subspace is scored by
the squared Mahalanobis distance

    d_k = (z_k - mu_k)ᵀ (S_k + λ·tr(S_k)/D·I)⁻¹ (z_k - mu_k) = ||(z_k - mu_k) P_k||²

with ``P_k = L_k⁻ᵀ`` from the Cholesky factor of the regularised covariance
(precomputed once per code). The ridge is relative to the mean eigenvalue so
one λ fits every layer and model scale. The best expert is the smallest d.

**Top-k weights.** The k nearest experts get weights ``softmax(-d / 2T)`` over
those k (at T = 1 the ratio of Gaussian likelihoods with a shared
normaliser); the others get 0. Top-1 is a one-hot row.

**Wire.** One code is a ``tensors/1`` body of three float32 tensors
(:data:`CODE_TENSORS`); :func:`code_spec` is the receiver's
:class:`~edgedfl.wire.TensorSpec` and :func:`decode_code` additionally checks
what a spec cannot (symmetry, positive semi-definiteness, a count of at least
two prompts), raising :class:`~edgedfl.errors.TensorValidationError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from edgedfl.errors import TensorValidationError
from edgedfl.wire.codec import decode_tensors, encode_tensors
from edgedfl.wire.validate import TensorSpec, validate_tensors

#: tensor names of one code on the wire and on disk (prefixed ``slot<k>/`` in a bundle)
CODE_TENSORS = ("latent.count", "latent.mean", "latent.cov")
#: largest |value| a received code may hold (pooled hidden states projected through A are O(1..100))
MAX_ABS = 1e6


@dataclasses.dataclass
class LatentCode:
    """Statistics of one expert's routing features: count, mean (D,), covariance (D, D)."""

    count: int
    mean: np.ndarray  # (D,)
    cov: np.ndarray  # (D, D), population covariance (divided by count)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, z: np.ndarray) -> LatentCode:
        """The code of routing features ``z`` (N, D) of N calibration prompts."""
        z = np.asarray(z, dtype=np.float64)  # (N, D)
        if z.ndim != 2 or z.shape[0] < 2:
            raise ValueError(f"need features of shape (N >= 2, D), got {z.shape}")
        mean = z.mean(axis=0)  # (D,)
        centred = z - mean  # (N, D)
        return cls(int(z.shape[0]), mean, centred.T @ centred / z.shape[0])

    def merged(self, other: LatentCode) -> LatentCode:
        """Exact pooled statistics of two sets of prompts (cluster members combine their codes)."""
        if other.dim != self.dim:
            raise ValueError(f"codes of dimension {self.dim} and {other.dim} cannot be merged")
        n = self.count + other.count
        mean = (self.count * self.mean + other.count * other.mean) / n  # (D,)
        second = (self.count * (self.cov + np.outer(self.mean, self.mean))
                  + other.count * (other.cov + np.outer(other.mean, other.mean))) / n  # (D, D)
        return LatentCode(n, mean, second - np.outer(mean, mean))

    def precision_factor(self, ridge: float) -> np.ndarray:
        """``P`` (D, D) with ``(z - mu) P`` whitened: ``P Pᵀ = (S + ridge·tr(S)/D·I)⁻¹``."""
        cov = 0.5 * (self.cov + self.cov.T)  # (D, D)
        scale = max(float(np.trace(cov)) / self.dim, 1e-12)
        reg = cov + ridge * scale * np.eye(self.dim)  # (D, D)
        lower = np.linalg.cholesky(reg)  # (D, D), reg = L Lᵀ
        return np.linalg.inv(lower).T  # (D, D) = L⁻ᵀ

    # -- wire ---------------------------------------------------------------------

    def to_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {
            f"{prefix}latent.count": np.array([self.count], dtype=np.float32),
            f"{prefix}latent.mean": self.mean.astype(np.float32),
            f"{prefix}latent.cov": self.cov.astype(np.float32),
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], prefix: str = "", *, dim: int | None = None) -> LatentCode:
        """Validate (against :func:`code_spec`) and load; ``dim`` None = take it from the mean."""
        plain = {k.removeprefix(prefix): np.asarray(v) for k, v in tensors.items() if k.startswith(prefix)}
        if dim is None:
            dim = int(plain.get("latent.mean", np.zeros(0)).shape[0]) if "latent.mean" in plain else 0
        validate_tensors(plain, code_spec(dim))
        return _checked(plain)


def code_spec(dim: int) -> TensorSpec:
    """What a receiver accepts as one latent code of dimension ``dim`` (modules x rank)."""
    return TensorSpec(
        shapes={"latent.count": (1,), "latent.mean": (dim,), "latent.cov": (dim, dim)},
        dtypes=frozenset({"float32"}),
        max_abs={"latent.count": 2.0**24, "latent.mean": MAX_ABS, "latent.cov": MAX_ABS},
    )


def _checked(tensors: Mapping[str, np.ndarray]) -> LatentCode:
    count = float(tensors["latent.count"][0])
    if count < 2 or count != int(count):
        raise TensorValidationError(f"latent code: count {count} is not an integer >= 2")
    cov = np.asarray(tensors["latent.cov"], dtype=np.float64)  # (D, D)
    scale = max(float(np.abs(cov).max()), 1e-30)
    if not np.allclose(cov, cov.T, atol=1e-5 * scale, rtol=0):
        raise TensorValidationError("latent code: covariance is not symmetric")
    if cov.size and float(np.linalg.eigvalsh(0.5 * (cov + cov.T)).min()) < -1e-4 * scale:
        raise TensorValidationError("latent code: covariance is not positive semi-definite")
    return LatentCode(int(count), np.asarray(tensors["latent.mean"], dtype=np.float64), cov)


def encode_code(code: LatentCode) -> bytes:
    """One code as a ``tensors/1`` wire body."""
    return encode_tensors(code.to_tensors())


def decode_code(body: bytes, dim: int) -> LatentCode:
    """Parse and validate a received code; raises a :class:`~edgedfl.errors.WireError` subclass."""
    return _checked(decode_tensors(body, spec=code_spec(dim)))


# -- scoring --------------------------------------------------------------------


def stack_codes(codes: Sequence[LatentCode], ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(means (K, D), precision factors (K, D, D)) of ``codes`` in expert order."""
    dims = {c.dim for c in codes}
    if len(dims) != 1:
        raise ValueError(f"codes of mixed dimensions {sorted(dims)}")
    means = np.stack([c.mean for c in codes])  # (K, D)
    factors = np.stack([c.precision_factor(ridge) for c in codes])  # (K, D, D)
    return means, factors


def distances(z: np.ndarray, means: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances (B, K) of projections ``z`` (B, K, D) to every code."""
    white = np.einsum("bkd,kde->bke", z - means[None], factors)  # (B, K, D)
    return (white**2).sum(-1)  # (B, K)


def route_weights(dist: np.ndarray, top_k: int = 1, temperature: float = 1.0) -> np.ndarray:
    """Weights (B, K) from distances (B, K): the ``top_k`` nearest, softmax(-d / 2T) among them."""
    dist = np.asarray(dist, dtype=np.float64)  # (B, K)
    k = min(top_k, dist.shape[1])
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # (B, k)
    chosen = np.take_along_axis(dist, order, axis=1)  # (B, k)
    logits = -(chosen - chosen[:, :1]) / (2.0 * temperature)  # (B, k), max 0
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    out = np.zeros_like(dist)
    np.put_along_axis(out, order, w, axis=1)
    return out
