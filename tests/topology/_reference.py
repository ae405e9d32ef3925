"""Frozen reference: the topology algorithms as they were before they were made fast for n = 1,000.

Copied verbatim from ``edgedfl/topology/clustering.py`` and ``edgedfl/topology/graph.py``
(pure Python, O(n^3)); ``test_scaling_equivalence.py`` checks that the fast versions
return exactly the same results, and ``bench/bench_topology.py`` times both. Do not edit
the algorithms here: they are the specification.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from edgedfl.errors import TopologyError
from edgedfl.topology.clustering import ClusterConfig, Clustering
from edgedfl.topology.graph import LinkQuality, NeighbourGraph, link_score
from edgedfl.topology.signatures import _rng, distance_matrix

_DECIMALS = 9


def _neighbours(graph: NeighbourGraph, node: str) -> tuple[str, ...]:
    """``NeighbourGraph.neighbours`` as it was (a scan of the edges)."""
    if node not in graph.nodes:
        raise TopologyError(f"node {node!r} is not in this graph")
    return tuple(sorted([b for a, b in graph.edges if a == node] + [a for a, b in graph.edges if b == node]))


def _validated(signatures: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Sorted node ids and their signatures stacked in that order (n, dim)."""
    if not signatures:
        raise TopologyError("cannot cluster an empty set of signatures")
    ids = sorted(signatures)
    if any(not isinstance(i, str) or not i for i in ids):
        raise TopologyError(f"node ids must be non-empty strings: {ids}")
    rows = [np.asarray(signatures[i], dtype=np.float64).reshape(-1) for i in ids]
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise TopologyError(f"signatures of different sizes: { {i: r.shape[0] for i, r in zip(ids, rows)} }")
    s = np.stack(rows)  # (n, dim)
    bad = [i for i, r in zip(ids, rows) if not np.isfinite(r).all() or not np.any(r)]
    if bad:
        raise TopologyError(f"signature(s) of {bad} are non-finite or zero")
    return ids, s


def _average_linkage(d: np.ndarray) -> list[tuple[list[int], list[int], float]]:
    """UPGMA merges ``(cluster_a, cluster_b, height)`` in order; indices are positions in sorted ids.

    Ties on the (rounded) height go to the pair with the smallest (min index a,
    min index b), i.e. the smallest node ids: deterministic.
    """
    active: list[list[int]] = [[i] for i in range(d.shape[0])]
    merges: list[tuple[list[int], list[int], float]] = []
    while len(active) > 1:
        best: tuple[float, int, int, int, int] | None = None
        for x in range(len(active)):
            for y in range(x + 1, len(active)):
                h = round(float(d[np.ix_(active[x], active[y])].mean()), _DECIMALS)
                a, b = sorted((min(active[x]), min(active[y])))
                key = (h, a, b, x, y)
                if best is None or key[:3] < best[:3]:
                    best = key
        assert best is not None
        h, _, _, x, y = best
        merges.append((active[x], active[y], h))
        merged = sorted(active[x] + active[y])
        active = [c for k, c in enumerate(active) if k not in (x, y)] + [merged]
        active.sort(key=min)
    return merges


def _cut(n: int, merges: list[tuple[list[int], list[int], float]], k: int) -> list[list[int]]:
    """The K clusters left after the first n-K merges."""
    clusters: list[list[int]] = [[i] for i in range(n)]
    for a, b, _ in merges[: n - k]:
        clusters = [c for c in clusters if c != a and c != b] + [sorted(a + b)]
    return sorted(clusters, key=min)


def silhouette(d: np.ndarray, labels: np.ndarray, spreads: np.ndarray | None = None) -> float:
    """Mean silhouette of ``labels`` (n,) under distances ``d`` (n, n), rounded to the comparison grid.

    A singleton has no within-cluster distance. With ``spreads`` (n,) (each
    node's expected same-task distance, nan where unknown) a lone node's is its
    spread: "as far as a second device of its task would be". Otherwise (the
    usual convention, scoring it 0, makes two lone devices with different
    tasks look better merged) it is given the median within-cluster distance of
    the other points of this cut: "as tight as the other tasks' groups". If no
    point has a within-cluster distance either way the score is 0.
    """
    n = d.shape[0]
    uniq = np.unique(labels)
    if len(uniq) < 2:
        return 0.0
    sizes = {u: int((labels == u).sum()) for u in uniq}
    within = np.full(n, np.nan)  # (n,) mean distance to the rest of the own cluster
    between = np.zeros(n)  # (n,) mean distance to the nearest other cluster
    for i in range(n):
        own = labels == labels[i]  # (n,)
        if sizes[labels[i]] > 1:
            within[i] = d[i, own].sum() / (sizes[labels[i]] - 1)  # d[i, i] == 0
        elif spreads is not None and np.isfinite(spreads[i]):
            within[i] = spreads[i]
        between[i] = min(d[i, labels == u].mean() for u in uniq if u != labels[i])
    known = ~np.isnan(within)
    if not known.any():
        return 0.0
    typical = float(np.median(within[known]))
    a = np.where(known, within, typical)  # (n,)
    denom = np.maximum(a, between)  # (n,)
    scores = np.where(denom > 0, (between - a) / np.where(denom > 0, denom, 1.0), 0.0)  # (n,)
    return round(float(scores.mean()), _DECIMALS)


def _labels(n: int, clusters: list[list[int]]) -> np.ndarray:
    labels = np.empty(n, dtype=np.int64)  # (n,)
    for k, c in enumerate(clusters):
        labels[c] = k
    return labels


def _spherical_kmeans(unit: np.ndarray, k: int, seed: int) -> list[list[int]]:
    """Spherical k-means on unit rows (n, dim), k-means++ start from a generator seeded by (seed, n, k)."""
    n = unit.shape[0]
    rng = _rng("kmeans++", seed, n, k)
    centres = [int(rng.integers(n))]
    for _ in range(1, k):
        dist = np.min(1.0 - unit @ unit[centres].T, axis=1).clip(0.0, None)  # (n,)
        dist[centres] = 0.0
        if dist.sum() <= 0:
            break
        p = dist**2 / (dist**2).sum()
        centres.append(int(rng.choice(n, p=p)))
    c = unit[centres]  # (k, dim)
    labels = np.full(n, -1)
    for _ in range(100):
        sim = np.round(unit @ c.T, _DECIMALS)  # (n, k)
        new = np.argmax(sim, axis=1)  # ties -> lowest centre index
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(c.shape[0]):
            if np.any(labels == j):
                m = unit[labels == j].sum(axis=0)  # (dim,)
                c[j] = m / max(np.linalg.norm(m), 1e-12)
    return sorted(([int(i) for i in np.flatnonzero(labels == j)] for j in np.unique(labels)), key=min)


def _spread_of(spreads: Mapping[str, float] | None, node: str) -> float:
    """A node's announced spread as a float in [0, 2], or nan (unknown, malformed or out of range)."""
    try:
        v = float((spreads or {}).get(node, float("nan")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return round(v, _DECIMALS) if 0.0 <= v <= 2.0 else float("nan")


def _min_between(d: np.ndarray, clusters: list[list[int]]) -> float:
    """Smallest average distance between two of ``clusters`` (inf for one cluster)."""
    best = float("inf")
    for x in range(len(clusters)):
        for y in range(x + 1, len(clusters)):
            best = min(best, float(d[np.ix_(clusters[x], clusters[y])].mean()))
    return round(best, _DECIMALS)


def _floor(config: ClusterConfig, spreads: np.ndarray, group: list[int]) -> float:
    """The split floor of ``group``: the fixed one, or ``spread_factor`` x its nodes' median spread if larger."""
    known = spreads[group]
    known = known[np.isfinite(known)]
    if config.spread_factor <= 0 or known.size == 0:
        return config.min_split_distance
    return round(max(config.min_split_distance, config.spread_factor * float(np.median(known))), _DECIMALS)


def _best_split(
    d: np.ndarray, unit: np.ndarray, config: ClusterConfig, max_k: int, floor: float,
    spreads: np.ndarray | None = None,
) -> tuple[float, list[list[int]]] | None:
    """The best cut of these points into 2..max_k groups by silhouette, or None when none qualifies.

    ``d`` (m, m) and ``unit`` (m, dim) are restricted to the points considered;
    returned groups index into them. A cut qualifies when its groups are at least
    ``floor`` apart and its silhouette reaches ``min_silhouette``.
    """
    m = d.shape[0]
    if m < (2 if spreads is not None and bool(np.isfinite(spreads).all()) else 3) or max_k < 2:
        return None
    if config.method == "agglomerative":
        merges = _average_linkage(d)

        def candidate(k: int) -> list[list[int]] | None:
            # merges[m-k] is the merge this cut undoes: the gap between the closest two of the k groups
            return _cut(m, merges, k) if merges[m - k][2] >= floor else None
    else:

        def candidate(k: int) -> list[list[int]] | None:
            clusters = _spherical_kmeans(unit, k, config.seed)
            return clusters if len(clusters) == k and _min_between(d, clusters) >= floor else None

    best: tuple[float, list[list[int]]] | None = None
    # every point alone is a cut worth scoring only when each has its own within-task scale (a spread)
    alone = spreads is not None and bool(np.isfinite(spreads).all())
    for k in range(2, min(max_k, m if alone else m - 1) + 1):
        clusters_k = candidate(k)
        if clusters_k is None:
            continue
        score = silhouette(d, _labels(m, clusters_k), spreads)
        if best is None or score > best[0]:  # strict: ties keep the smaller K
            best = (score, clusters_k)
    return best if best is not None and best[0] >= config.min_silhouette else None


def cluster(signatures: Mapping[str, np.ndarray], config: ClusterConfig | None = None,
            spreads: Mapping[str, float] | None = None) -> Clustering:
    """Group nodes by task signature; every node computing this on the same hellos gets the same result.

    ``signatures``: node id -> signature (dim,) (normalised or not; cosine
    distance is scale-free). ``spreads``: node id -> its expected same-task
    distance (:func:`~edgedfl.topology.signatures.signature_spread`, from its
    hello); a node without one (or a non-finite or negative one) is left out of
    the median. Returns a canonical :class:`Clustering` (slot 0 holds the
    smallest node id). Raises :class:`TopologyError` on empty, mismatched, zero
    or non-finite signatures.
    """
    config = config or ClusterConfig()
    ids, s = _validated(signatures)
    n = len(ids)
    spread = np.array([_spread_of(spreads, i) for i in ids])  # (n,), nan where unknown
    d = np.round(distance_matrix(s), _DECIMALS)  # (n, n)
    unit = s / np.linalg.norm(s, axis=1, keepdims=True)  # (n, dim)

    def result(clusters: list[list[int]]) -> Clustering:
        score = silhouette(d, _labels(n, clusters), spread) if 1 < len(clusters) < n else None
        return Clustering.from_clusters(([ids[i] for i in c] for c in clusters), score)

    if n == 1 or config.max_clusters == 1:
        return result([list(range(n))])
    if config.distance_threshold is not None:
        # fixed cut: merge while the next merge is within the threshold, then down to max_clusters
        merges = _average_linkage(d)
        k = n - sum(1 for _, _, h in merges if h <= config.distance_threshold)
        return result(_cut(n, merges, min(max(k, 1), config.max_clusters)))
    if n == 2 and not np.isfinite(spread).all():
        # no silhouette with two points and no spreads: the floor alone decides
        split = d[0, 1] >= _floor(config, spread, [0, 1]) and d[0, 1] > 0
        return result([[0], [1]] if split else [[0, 1]])

    # Top-down: the best cut of everyone, then the best cut inside each cluster,
    # until no cluster splits or max_clusters is reached. Silhouette favours the
    # coarsest strong structure (two BBC tasks close to each other but far from
    # arithmetic look like one group at the top level); looking inside each
    # group finds them. Clusters are visited in order of smallest node id.
    clusters: list[list[int]] = [list(range(n))]
    changed = True
    while changed and len(clusters) < config.max_clusters:
        changed = False
        for pos, group in enumerate(clusters):
            sub = _best_split(d[np.ix_(group, group)], unit[group], config,
                              config.max_clusters - len(clusters) + 1, _floor(config, spread, group),
                              spread[group] if np.isfinite(spread[group]).any() else None)
            if sub is not None:
                parts = [[group[i] for i in part] for part in sub[1]]
                clusters = sorted(clusters[:pos] + parts + clusters[pos + 1:], key=min)
                changed = True
                break
    return result(clusters)


def neighbour_graph(
    members: Iterable[str], quality: LinkQuality | None = None, degree: int | None = 3, *, unknown: float = 0.0
) -> NeighbourGraph:
    """The gossip graph of one cluster: each member's ``degree`` best links, symmetric and connected.

    ``degree=None`` (or >= members - 1) gives the complete graph: every member
    averages with every other (the baselines' "all neighbours").
    """
    nodes = tuple(sorted(set(members)))
    if not nodes:
        raise TopologyError("a neighbour graph needs at least one node")
    if degree is not None and degree < 1:
        raise TopologyError(f"degree must be >= 1 or None, got {degree}")
    quality = quality or {}
    edges: set[tuple[str, str]] = set()
    n = len(nodes)
    for i, a in enumerate(nodes):
        # best score first; equal scores -> nearest in the ring of sorted ids, then the next id after a
        ranked = sorted(
            (b for b in nodes if b != a),
            key=lambda b: (-link_score(quality, a, b, unknown), _ring(i, nodes.index(b), n), (nodes.index(b) - i) % n),
        )
        for b in ranked if degree is None else ranked[:degree]:
            edges.add((min(a, b), max(a, b)))
    graph = NeighbourGraph(nodes, tuple(sorted(edges)))
    while not graph.is_connected():
        comp = {n: k for k, c in enumerate(graph.components()) for n in c}
        bridges = [
            (-link_score(quality, a, b, unknown), a, b)
            for i, a in enumerate(nodes) for b in nodes[i + 1:] if comp[a] != comp[b]
        ]
        _, a, b = min(bridges)
        graph = NeighbourGraph(nodes, tuple(sorted(set(graph.edges) | {(a, b)})))
    return graph


def _ring(i: int, j: int, n: int) -> int:
    """Distance between positions i and j on a ring of n."""
    d = (j - i) % n
    return min(d, n - d)


def metropolis_weights(graph: NeighbourGraph) -> dict[str, dict[str, float]]:
    """Metropolis-Hastings mixing weights: node -> {node or neighbour -> weight}.

    ``w_ij = 1 / (1 + max(deg_i, deg_j))`` for neighbours, ``w_ii = 1 - sum_j w_ij``;
    symmetric, rows and columns sum to 1, all weights in (0, 1]. Non-neighbours
    are absent (weight 0).
    """
    deg = {n: len(_neighbours(graph, n)) for n in graph.nodes}
    weights: dict[str, dict[str, float]] = {}
    for i in graph.nodes:
        row = {j: 1.0 / (1 + max(deg[i], deg[j])) for j in _neighbours(graph, i)}
        row[i] = 1.0 - sum(row.values())
        weights[i] = dict(sorted(row.items()))
    return weights
