"""The maths of sparse-and-orthogonal LoRA, in numpy (no torch: a phone can run it).

Notation, per adapted linear layer ``W: d_in -> d_out``, rank ``r``, slots ``K``:

* **A of slot k** ``A_k`` (r, d_in) is rows ``k*r .. (k+1)*r-1`` of an
  orthonormal basis derived from (swarm seed, layer name): a QR of seeded
  Gaussian column blocks, signs fixed so the factorisation is unique. Hence
  ``A_i @ A_j.T == 0`` for i != j up to float rounding, the basis of slot k does
  not change when more slots are added (block k depends on blocks 0..k only),
  and any peer regenerates ``A_k`` from the seed: A is never sent. When
  ``K * r > d_in`` there is no room for exact orthogonality: every slot of that
  layer falls back to independent Gaussians (warned), scaled the same way.

* **Spectrum proxy.** Calibration inputs ``X`` (N, d_in) of the layer give the
  slot's projected covariance ``C = (X A_kᵀ)ᵀ (X A_kᵀ)`` (r, r). Its eigenvalues
  give the effective rank ``erank = exp(H(λ/Σλ))`` in [1, r]; ``energy`` is the
  share of the input energy the slot's subspace captures, ``tr(C) / ||X||²``
  normalised by the share a random r-dim subspace would capture (r / d_in).

* **Density allocation.** Layer ℓ with ``n_ℓ = d_out * r`` entries of B gets
  ``ρ_ℓ = clip(c * score_ℓ, ρ_min, 1)``, with c found by bisection so that
  ``Σ ρ_ℓ n_ℓ = budget * Σ n_ℓ`` (one global budget, water-filling).

* **Mask.** B (d_out, r): column j of B multiplies direction j of A, so the
  ``round(ρ_ℓ n_ℓ)`` kept entries are spread over columns in proportion to the
  calibration energy on each direction (``diag C``, a floor of one entry per
  column), and rows inside a column are a seeded permutation of (seed, layer,
  slot). Same inputs -> same mask on every device: members of a cluster
  derive their shared mask from the statistics they all publish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings

import numpy as np

#: numpy dtype in which bases are built; cast by the caller.
_F64 = np.float64


class OrthogonalityFallbackWarning(UserWarning):
    """slots x r exceeds d_in: A falls back to independent Gaussians for this layer."""


def b_key(layer: str) -> str:
    """The name of a layer's B in an update, and so of its mask: one spelling everywhere."""
    return f"{layer}.lora_B"


def _rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded from a stable hash of ``parts`` (not Python's salted hash)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def orthonormal_rows(seed: int, layer: str, d_in: int, n_rows: int, block: int) -> np.ndarray:
    """``n_rows`` orthonormal rows (n_rows, d_in); block b of ``block`` rows depends on blocks <= b only."""
    n_blocks = math.ceil(n_rows / block)
    g = np.concatenate(
        [_rng("A", seed, layer, b).standard_normal((d_in, block)) for b in range(n_blocks)], axis=1
    )[:, :n_rows]  # (d_in, n_rows)
    q, r = np.linalg.qr(g)  # q: (d_in, n_rows), r: (n_rows, n_rows)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return (q * signs).T.astype(_F64)  # (n_rows, d_in), unique: R has a positive diagonal


def slot_A(seed: int, layer: str, d_in: int, rank: int, slot: int, num_slots: int, scale: float) -> np.ndarray:
    """A of ``slot`` for one layer: (rank, d_in), rows of norm ``scale``.

    Exactly orthogonal to every other slot's A when ``num_slots * rank <= d_in``.
    """
    if not 0 <= slot < num_slots:
        raise ValueError(f"slot {slot} out of range for {num_slots} slots")
    if num_slots * rank <= d_in:
        rows = orthonormal_rows(seed, layer, d_in, (slot + 1) * rank, rank)
        return scale * rows[slot * rank : (slot + 1) * rank]  # (r, d_in)
    warnings.warn(
        f"{layer}: {num_slots} slots x rank {rank} > d_in {d_in}; A falls back to independent Gaussians "
        "(slots are only nearly orthogonal)",
        OrthogonalityFallbackWarning,
        stacklevel=2,
    )
    g = _rng("A-fallback", seed, layer, slot).standard_normal((rank, d_in))  # (r, d_in)
    return scale * g / np.linalg.norm(g, axis=1, keepdims=True)


@dataclasses.dataclass
class LayerStats:
    """Calibration statistics of one layer's input in one slot's subspace (what a device publishes)."""

    cov: np.ndarray  # (r, r) projected second moment, summed over tokens
    total_energy: float  # sum of ||x||^2 over the same tokens
    n_tokens: int
    d_in: int
    d_out: int

    def merged(self, other: LayerStats) -> LayerStats:
        """Pool the statistics of two devices (cluster members average what they publish)."""
        return LayerStats(
            self.cov + other.cov, self.total_energy + other.total_energy,
            self.n_tokens + other.n_tokens, self.d_in, self.d_out,
        )


def effective_rank(cov: np.ndarray) -> float:
    """exp(entropy) of the normalised eigenvalues of ``cov``: in [1, r]."""
    lam = np.clip(np.linalg.eigvalsh(cov.astype(_F64)), 0.0, None)  # (r,)
    total = lam.sum()
    if total <= 0:
        return 1.0
    p = lam[lam > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def layer_score(stats: LayerStats, proxy: str) -> float:
    r = stats.cov.shape[0]
    if proxy == "uniform":
        return 1.0
    if proxy == "erank":
        return effective_rank(stats.cov) / r
    if proxy == "energy":
        if stats.total_energy <= 0:
            return 1.0
        captured = float(np.trace(stats.cov)) / stats.total_energy  # share in the slot's subspace
        return captured / (r / stats.d_in)  # relative to a random r-dim subspace
    raise ValueError(f"unknown density proxy {proxy!r}")


def allocate_densities(
    sizes: dict[str, int], scores: dict[str, float], budget: float, floor: float
) -> dict[str, float]:
    """Per-layer densities proportional to ``scores``, clipped to [floor, 1], meeting the global budget.

    ``sizes``: layer -> number of entries of B. Water-filling by bisection on the
    proportionality constant; deterministic.
    """
    names = sorted(sizes)
    n = np.array([sizes[k] for k in names], dtype=_F64)  # (L,)
    s = np.array([max(scores[k], 1e-12) for k in names], dtype=_F64)  # (L,)
    target = budget * n.sum()

    def kept(c: float) -> float:
        return float((np.clip(c * s, floor, 1.0) * n).sum())

    lo, hi = 0.0, 1.0 / s.min()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if kept(mid) < target:
            lo = mid
        else:
            hi = mid
    rho = np.clip(hi * s, floor, 1.0)
    return {k: float(v) for k, v in zip(names, rho)}


def keep_count(density: float, numel: int) -> int:
    return max(1, min(numel, round(density * numel)))


def make_mask(
    seed: int, layer: str, slot: int, d_out: int, rank: int, density: float, col_weights: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of B (d_out, rank) with ``keep_count(density)`` True entries.

    Columns get entries in proportion to ``col_weights`` (energy per direction of
    A; uniform if None), at least one each while the budget allows, at most d_out.
    """
    total = keep_count(density, d_out * rank)
    w = np.ones(rank, dtype=_F64) if col_weights is None else np.clip(col_weights.astype(_F64), 0, None)
    if w.sum() <= 0:
        w = np.ones(rank, dtype=_F64)
    # Largest-remainder apportionment of `total` over columns, capped at d_out.
    counts = np.zeros(rank, dtype=np.int64)
    base = min(1, total // rank)
    counts += base
    remaining = total - int(counts.sum())
    while remaining > 0:
        room = counts < d_out
        share = np.where(room, w, 0.0)
        if share.sum() <= 0:
            share = room.astype(_F64)
        quota = share / share.sum() * remaining  # (rank,)
        add = np.minimum(np.floor(quota).astype(np.int64), d_out - counts)
        if add.sum() == 0:  # hand out single entries by largest remainder
            order = np.lexsort((np.arange(rank), -(quota - np.floor(quota))))
            for j in order:
                if room[j] and remaining > 0:
                    counts[j] += 1
                    remaining -= 1
            continue
        counts += add
        remaining -= int(add.sum())
    mask = np.zeros((d_out, rank), dtype=bool)  # (d_out, r)
    rng = _rng("mask", seed, layer, slot)
    for j in range(rank):
        rows = rng.permutation(d_out)[: counts[j]]
        mask[rows, j] = True
    return mask


def random_mask(seed: int, layer: str, slot: int, d_out: int, rank: int, density: float) -> np.ndarray:
    """Ablation: the same number of entries, uniformly at random over B (no spectrum)."""
    total = keep_count(density, d_out * rank)
    flat = np.zeros(d_out * rank, dtype=bool)
    flat[_rng("random-mask", seed, layer, slot).permutation(d_out * rank)[:total]] = True
    return flat.reshape(d_out, rank)
