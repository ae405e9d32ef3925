"""Task signatures: what a device tells the swarm about its data, without sending any of it.

The model side pools the frozen base's hidden states over a sample of the
device's prompts (``pooled``: one row per prompt). This file turns them into a
short, fixed-size vector every peer can compare:

    signature = normalise( mean_over_prompts(pooled) @ P )      P: (hidden, dim)

Decisions:

* **Random projection, not PCA.** ``P`` is a seeded Gaussian matrix with
  N(0, 1/dim) entries, built from (swarm seed, hidden size) alone, so every
  device derives the identical matrix with no exchange, and a signature of
  ``dim`` floats (256 bytes at dim=64) stands for a hidden state of hundreds or
  thousands. Johnson-Lindenstrauss keeps cosine distances between the pooled
  means to within a few percent at dim=64, which is all the clustering needs.
* **Mean first, then project.** Projection is linear, so this equals the mean of
  projected prompts, but costs one matrix-vector product instead of n.
* **L2-normalised**, so only the direction counts: a device with longer
  prompts (larger activations) is not a different task.
* What leaves the device is a random projection of an average over many
  prompts; no prompt, token or per-prompt vector is published.

numpy + stdlib only: this runs on every device, phones included.
"""

from __future__ import annotations

import hashlib

import numpy as np

from edgedfl.errors import TopologyError

#: default signature size (floats); 64 keeps a hello small and distances faithful
DEFAULT_DIM = 64
#: default fraction of the decoder's depth whose pooled output is the signature (SwarmConfig.signature_depth;
#: measured in bench/results/clustering.md)
DEFAULT_DEPTH = 0.6


def signature_layer(num_layers: int, depth: float) -> int:
    """The decoder layer (1..num_layers) whose output a signature at fraction ``depth`` of the depth pools."""
    if num_layers < 1 or not 0 < depth <= 1:
        raise TopologyError(f"signature layer needs num_layers >= 1 and depth in (0, 1], got {num_layers}, {depth}")
    return min(num_layers, max(1, round(depth * num_layers)))


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded from a stable hash of ``parts`` (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def projection_matrix(seed: int, hidden: int, dim: int = DEFAULT_DIM) -> np.ndarray:
    """The swarm's projection (hidden, dim), identical on every device for the same (seed, hidden, dim)."""
    if hidden < 1 or dim < 1:
        raise TopologyError(f"projection needs hidden >= 1 and dim >= 1, got hidden={hidden}, dim={dim}")
    g = _rng("signature-projection", seed, hidden, dim).standard_normal((hidden, dim))  # (hidden, dim)
    return g / np.sqrt(dim)  # E||x P||^2 = ||x||^2


def project_signature(pooled: np.ndarray, seed: int, dim: int = DEFAULT_DIM) -> np.ndarray:
    """Task signature (dim,) float64, unit L2 norm, from pooled hidden states (n_prompts, hidden).

    A 1-d ``pooled`` (hidden,) is taken as an already averaged hidden state.
    Raises :class:`TopologyError` for an empty, non-finite or all-zero input.
    """
    x = np.asarray(pooled, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]  # (1, hidden)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise TopologyError(f"pooled hidden states must be (n_prompts, hidden) and non-empty, got {x.shape}")
    if not np.isfinite(x).all():
        raise TopologyError("pooled hidden states contain NaN or inf")
    mean = x.mean(axis=0)  # (hidden,)
    sig = mean @ projection_matrix(seed, x.shape[1], dim)  # (dim,)
    return normalise(sig)


def signature_spread(pooled: np.ndarray, seed: int, dim: int = DEFAULT_DIM, splits: int = 16) -> float:
    """How far apart two devices of this task are expected to be, from this device's own prompts alone.

    The prompts are split in two random halves (``splits`` times, seeded) and
    the mean cosine distance between the halves' signatures is halved: a half
    holds n/2 prompts, so the squared gap between two halves' means is about
    twice that between two devices' means over n prompts each, and a small
    cosine distance is half a squared gap of unit vectors. The clustering uses
    it as a lone device's within-task distance and scales its split floor by
    it, so neither follows a constant tuned on one model. 0.0 with fewer than 2
    prompts (nothing to measure).
    """
    x = np.asarray(pooled, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        return 0.0
    rng = _rng("signature-spread", seed, x.shape[0])
    n, gaps = x.shape[0], []
    for _ in range(splits):
        order = rng.permutation(n)
        a, b = project_signature(x[order[: n // 2]], seed, dim), project_signature(x[order[n // 2 :]], seed, dim)
        gaps.append(signature_distance(a, b))
    return float(np.mean(gaps)) / 2.0


def normalise(signature: np.ndarray) -> np.ndarray:
    """``signature`` / its L2 norm, as float64 (dim,); a typed error for zero or non-finite vectors."""
    v = np.asarray(signature, dtype=np.float64).reshape(-1)  # (dim,)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise TopologyError(f"signature cannot be normalised (norm={norm})")
    return v / norm


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine distance ``1 - cos(a, b)`` in [0, 2]; inputs need not be normalised."""
    va, vb = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if va.shape != vb.shape:
        raise TopologyError(f"signatures of different sizes: {va.shape} vs {vb.shape}")
    cos = float(normalise(va) @ normalise(vb))
    return float(min(2.0, max(0.0, 1.0 - cos)))


def distance_matrix(signatures: np.ndarray) -> np.ndarray:
    """Pairwise cosine distances (n, n) of signatures (n, dim); symmetric with an exact zero diagonal."""
    s = np.asarray(signatures, dtype=np.float64)  # (n, dim)
    unit = np.stack([normalise(row) for row in s]) if len(s) else s.reshape(0, 0)  # (n, dim)
    d = 1.0 - unit @ unit.T  # (n, n)
    d = np.clip(0.5 * (d + d.T), 0.0, 2.0)  # exact symmetry: the same distance whichever way round
    np.fill_diagonal(d, 0.0)
    return d
