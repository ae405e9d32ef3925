"""The fast clustering and gossip graphs return exactly what the textbook versions (``_reference``) return.

Same clusters, slot numbers, silhouette (to the bit), merge heights, edges and
weights, on seeded random inputs built to hit the hard cases: duplicated
signatures, exact ties (lattice points, scaled copies), distances whose
averages fall on a rounding boundary of the 1e-9 grid, missing or malformed
spreads, links measured one way, not at all, or with equal scores.
"""

from __future__ import annotations

import itertools
import math
import string
from typing import Any

import _reference as ref
import numpy as np
import pytest

from edgedfl.topology import (
    ClusterConfig,
    Clustering,
    cluster,
    cluster_graphs,
    metropolis_weights,
    neighbour_graph,
)
from edgedfl.topology import clustering as fast
from edgedfl.topology.signatures import distance_matrix

# -- inputs -------------------------------------------------------------------------------------


def _ids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct ids of mixed lengths and alphabets, so sorted order is not creation order."""
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(list(string.ascii_lowercase + "0123456789-"), int(rng.integers(1, 6)))))
    return [str(i) for i in rng.permutation(sorted(out))]


def _signatures(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, dim) signatures: planted clusters, lattice ties, duplicates and scaled copies."""
    kind = int(rng.integers(4))
    if kind == 0:  # planted tasks on a large common direction, like pooled LLM states
        dim, k = int(rng.choice([8, 32, 64])), int(rng.integers(1, 7))
        centres = rng.standard_normal((k, dim)) + float(rng.choice([0.0, 4.0]))
        x = centres[rng.integers(k, size=n)] + 10 ** rng.uniform(-3, -0.5) * rng.standard_normal((n, dim))
    elif kind == 1:  # tasks with very different spreads
        dim, k = 16, int(rng.integers(2, 7))
        labels = rng.integers(k, size=n)
        x = rng.standard_normal((k, dim))[labels] + rng.choice([1e-3, 0.05, 0.3], size=k)[labels, None] \
            * rng.standard_normal((n, dim))
    elif kind == 2:  # lattice points: many exactly equal distances
        dim = int(rng.integers(2, 5))
        x = rng.integers(-1, 2, size=(n, dim)).astype(np.float64)
        x[~x.any(axis=1), 0] = 1.0
    else:  # few distinct directions, repeated
        dim, k = 6, int(rng.integers(1, 5))
        x = rng.standard_normal((k, dim))[rng.integers(k, size=n)]
    dup = rng.random(n) < 0.15  # exact duplicates and scaled copies of earlier rows
    for i in np.flatnonzero(dup)[np.flatnonzero(dup) > 0]:
        x[i] = x[int(rng.integers(i))] * float(rng.choice([1.0, 1.0, 2.0, 0.5]))
    return x


def _spreads(rng: np.random.Generator, ids: list[str]) -> dict[str, Any] | None:
    kind = int(rng.integers(5))
    if kind == 0:
        return None
    scale = 10 ** rng.uniform(-4, -1)
    out: dict[str, Any] = {i: float(scale * rng.uniform(0.5, 2.0)) for i in ids}
    if kind >= 2:  # some missing, nan, negative, out of range, malformed, None
        bad: list[Any] = [float("nan"), -0.1, 3.0, "x", None, float("inf")]
        for i in ids:
            u = rng.random()
            if u < 0.2:
                del out[i]
            elif u < 0.35:
                out[i] = bad[int(rng.integers(len(bad)))]
    if kind == 4:  # every spread the same: exact ties between lone devices
        out = {i: 0.002 for i in ids}
    return out


def _config(rng: np.random.Generator, d: np.ndarray) -> ClusterConfig:
    method = "agglomerative" if rng.random() < 0.6 else "kmeans"
    threshold: float | None = None
    if method == "agglomerative" and rng.random() < 0.3:
        # often exactly one of the distances: a merge height equal to the threshold
        threshold = float(rng.choice(d[np.triu_indices(len(d), 1)])) if rng.random() < 0.5 else \
            float(rng.uniform(0, 1))
    return ClusterConfig(
        max_clusters=int(rng.integers(1, 9)), method=method, distance_threshold=threshold,
        min_silhouette=float(rng.choice([0.5, 0.3, 0.0, -1.0])),
        min_split_distance=float(rng.choice([0.01, 0.0, 0.1])),
        spread_factor=float(rng.choice([0.0, 2.0, 5.0])), seed=int(rng.integers(100)),
    )


def _same(new: Clustering, old: Clustering) -> None:
    assert new.groups == old.groups
    # bit for bit (both None, or the same float); nan never occurs
    assert new.silhouette == old.silhouette and type(new.silhouette) is type(old.silhouette)


# -- clustering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block", range(4))
def test_cluster_matches_the_reference(block: int) -> None:
    for case in range(60):
        rng = np.random.default_rng([block, case])
        n = 3 + int(57 * rng.random() ** 2.5)  # 3..60, mostly small: the reference is O(n^3)
        ids = _ids(rng, n)
        sigs = dict(zip(ids, _signatures(rng, n)))
        spreads = _spreads(rng, ids)
        config = _config(rng, np.round(distance_matrix(np.stack([sigs[i] for i in sorted(ids)])), 9))
        fast._CLUSTER_MEMO.clear()
        _same(cluster(sigs, config, spreads), ref.cluster(sigs, config, spreads))


def test_cluster_matches_the_reference_on_tiny_swarms() -> None:
    for case in range(60):
        rng = np.random.default_rng([99, case])
        n = int(rng.integers(1, 4))
        ids = _ids(rng, n)
        sigs = dict(zip(ids, _signatures(rng, n)))
        spreads = _spreads(rng, ids)
        config = _config(rng, np.zeros((2, 2)))
        _same(cluster(sigs, config, spreads), ref.cluster(sigs, config, spreads))


def _grid_distances(rng: np.random.Generator, n: int) -> np.ndarray:
    """A symmetric (n, n) distance matrix on the 1e-9 grid whose cluster averages often fall on a
    rounding boundary (k + 0.5) * 1e-9, or are exact ties."""
    kind = int(rng.integers(3))
    if kind == 0:
        v = rng.integers(0, 6, size=(n, n)) * 1e-9
    elif kind == 1:
        v = rng.choice([0.1, 0.2, 0.3, 0.25], size=(n, n))
    else:  # 2**-10 = 976562.5e-9 exactly: averages land exactly halfway between grid points
        v = rng.integers(0, 4, size=(n, n)) * 2.0**-10 + rng.integers(0, 3, size=(n, n)) * 1e-9
    v = np.triu(v, 1)
    return np.round(v + v.T, 9)


def test_linkage_cut_and_silhouette_match_the_reference_bit_for_bit() -> None:
    for case in range(150):
        rng = np.random.default_rng([7, case])
        n = int(rng.integers(2, 35))
        if case % 2:
            d = _grid_distances(rng, n)
        else:
            d = np.round(distance_matrix(_signatures(rng, n)), 9)
        merges = fast._average_linkage(d)
        assert merges == ref._average_linkage(d)
        for k in range(1, n + 1):
            assert fast._cut(n, merges, k) == ref._cut(n, merges, k)
        for _ in range(4):
            labels = rng.integers(0, int(rng.integers(1, 7)), size=n)
            spreads = None if rng.random() < 0.4 else \
                np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 0.3, n))
            new, old = fast.silhouette(d, labels, spreads), ref.silhouette(d, labels, spreads)
            assert new == old, (case, new, old)


def test_silhouette_matches_on_large_clusters() -> None:
    # clusters of more than 128 points: numpy's pairwise summation splits the rows into blocks
    rng = np.random.default_rng(11)
    d = np.round(distance_matrix(rng.standard_normal((400, 16)) + 1.0), 9)
    for k in (2, 3, 7):
        labels = rng.integers(0, k, size=400)
        assert fast.silhouette(d, labels) == ref.silhouette(d, labels)


def test_cluster_memo_is_exact_and_bounded() -> None:
    rng = np.random.default_rng(3)
    ids = _ids(rng, 12)
    sigs = dict(zip(ids, _signatures(rng, 12)))
    fast._CLUSTER_MEMO.clear()
    first = cluster(sigs, ClusterConfig())
    assert cluster(dict(reversed(list(sigs.items()))), ClusterConfig()) is first  # same inputs: remembered
    assert cluster(sigs, ClusterConfig(max_clusters=2)) == ref.cluster(sigs, ClusterConfig(max_clusters=2))
    # one last-bit change of one signature is another key
    nudged = dict(sigs)
    nudged[ids[0]] = np.nextafter(sigs[ids[0]], np.inf)
    _same(cluster(nudged, ClusterConfig()), ref.cluster(nudged, ClusterConfig()))
    _same(cluster(sigs, ClusterConfig(), {ids[0]: 0.3}), ref.cluster(sigs, ClusterConfig(), {ids[0]: 0.3}))
    for seed in range(fast._CLUSTER_MEMO.size + 5):
        cluster(sigs, ClusterConfig(seed=seed))
    assert len(fast._CLUSTER_MEMO._items) == fast._CLUSTER_MEMO.size


# -- gossip graphs ------------------------------------------------------------------------------


def _quality(rng: np.random.Generator, pool: list[str]) -> dict[tuple[str, str], Any]:
    density = float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0]))
    ties = rng.random() < 0.5
    out: dict[tuple[str, str], Any] = {}
    for a, b in itertools.permutations(pool, 2):
        if rng.random() < density:
            if ties:
                out[(a, b)] = [1.0, 2.0, 3, 0.0][int(rng.integers(4))]
            else:
                out[(a, b)] = float(rng.uniform(1e6, 1e8))
    return out


@pytest.mark.parametrize("block", range(3))
def test_neighbour_graph_and_weights_match_the_reference(block: int) -> None:
    for case in range(60):
        rng = np.random.default_rng([block, 1000 + case])
        pool = _ids(rng, int(rng.integers(1, 45)))
        members = [m for m in pool if rng.random() < 0.85] or pool[:1]  # others appear only in quality
        quality = _quality(rng, pool)
        if case % 15 == 0 and quality:  # a NaN score: the definition's own ordering applies
            quality[next(iter(quality))] = math.nan
        unknown = float(rng.choice([0.0, -1.0, 2.0, 1e9]))
        for degree in (1, 2, 3, 4, 5, None):
            new = neighbour_graph(members, quality, degree, unknown=unknown)
            old = ref.neighbour_graph(members, quality, degree, unknown=unknown)
            assert new == old, (block, case, degree)
            assert metropolis_weights(new) == ref.metropolis_weights(old)


def test_cluster_graphs_match_the_reference() -> None:
    rng = np.random.default_rng(5)
    pool = _ids(rng, 30)
    quality = _quality(rng, pool)
    clustering = Clustering.from_clusters([pool[:11], pool[11:12], pool[12:]])
    for degree in (1, 3, None):
        graphs = cluster_graphs(clustering, quality, degree)
        assert graphs == {s: ref.neighbour_graph(m, quality, degree) for s, m in clustering.groups}


def test_neighbour_graph_without_link_information_is_the_reference_ring() -> None:
    for n in (1, 2, 3, 10, 33):
        nodes = [f"n{i:02d}" for i in range(n)]
        for degree in (1, 2, 3, None):
            assert neighbour_graph(nodes, None, degree) == ref.neighbour_graph(nodes, None, degree)
