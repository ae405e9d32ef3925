"""Deterministic clustering of task signatures into expert slots, with no coordinator.

Every node receives the same hellos, runs :func:`cluster` on the same
signatures and therefore agrees on the clusters without a leader. A cluster is
an expert slot: its members train and average one slot's sparse B.

Decisions (and why):

* **Agglomerative average linkage (UPGMA) on cosine distance** by default. It
  has no random initialisation, so "the same inputs give the same output" holds
  by construction rather than by a shared seed, and it makes no assumption on
  cluster shape or size (a task held by 1 device and one held by 7 are both
  fine). Spherical k-means with a seeded k-means++ start (``method="kmeans"``)
  is kept for comparison.
* **Fast enough for 1,000 devices, exactly the textbook result.** The linkage
  keeps a matrix of average distances between the active clusters, updated by
  Lance-Williams (O(n^2) overall instead of the O(n^3) recomputed means), and
  silhouette works on blocks of the distance matrix. Heights and silhouettes
  are bit for bit those of the plain definitions (a fresh mean of the original
  distances, per-row sums): where a running average could round to a
  different 1e-9 grid point, the mean is recomputed the plain way (see
  :func:`_average_linkage`). Every device of one process computes the same
  clustering from the same hellos, so :func:`cluster` remembers its last
  results, keyed by the exact input bytes.
* **K by silhouette, top-down, with a floor.** The dendrogram of all nodes
  is cut at every K in 2..max_clusters; the cut with the highest mean
  silhouette wins (ties: the smaller K) if it reaches ``min_silhouette``, else
  everyone is one cluster. The same rule then runs inside each cluster found,
  until nothing splits or ``max_clusters`` is reached: silhouette prefers the
  coarsest strong structure, and two tasks that are close to each other but
  far from the rest would otherwise share one expert. ``min_silhouette`` 0.5
  sits above what pure noise reaches (at most ~0.35 over 200 random swarms of
  3..16 nodes in 64 dims) and below real task structure (0.8-0.99).
  Silhouette is a ratio of distances, so it does not depend on the scale of the
  signatures: pooled LLM hidden states share a large common direction, which
  makes all cosine distances small, but their relative structure survives.
  A device alone in its cluster is scored against the typical within-cluster
  distance of the others (see :func:`silhouette`), so a task held by a single
  device is not merged into a neighbour for want of a within-cluster distance.
  A cut must also separate groups at least ``min_split_distance`` apart (two
  devices of one task differ only by prompt sampling noise). With fewer than
  3 nodes silhouette is undefined and that floor alone decides. Measured on
  SmolLM2-135M (last layer, mean over tokens, 32 prompts per device, the
  built-in tasks): one task's devices lie 0.0004-0.006 apart, topic vs yesno
  (both BBC articles) 0.02-0.03, the other task pairs 0.12-0.30; hence this
  config's default floor 0.01. The swarm does not use it: its signatures pool
  a middle layer, where distances are far smaller and depend on the model, so
  it splits on ``spread_factor`` 3.5 with no fixed floor (``SwarmConfig``
  ``split_spread``, ``min_split``; bench/results/clustering.md). A fixed cut
  (``distance_threshold``) is available instead of silhouette.
* **Ties broken by node id.** Nodes are sorted by id first; distances are
  rounded to 1e-9 so that the last-bit differences between two devices' BLAS
  cannot reorder merges; equal merge heights go to the pair whose smallest ids
  are smallest. Nothing depends on dict or insertion order.
* **Canonical slots.** Clusters are numbered by their smallest node id: the
  cluster holding the alphabetically first node is slot 0, and so on.
* **Stable slots across re-clustering** (:func:`relabel`): a new cluster takes
  the slot of the previous cluster it shares most nodes with (greedy, largest
  overlap first; ties: smaller previous slot, then smaller smallest node id);
  unmatched clusters take the lowest slot number never used before (so the
  finished expert of a cluster that left is not overwritten), and reuse a
  vanished cluster's slot only when ``max_slots`` leaves nothing else; slots in
  ``reserved`` are never handed out.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from edgedfl.config import ConfigBase, check, option
from edgedfl.errors import TopologyError
from edgedfl.topology.signatures import _rng, distance_matrix

CLUSTER_METHODS = ("agglomerative", "kmeans")

#: distances are compared on this grid, so float noise across devices cannot reorder merges
_DECIMALS = 9
#: linkage: pairs whose running average is within this of the smallest compete for the next merge
#: (the pair with the smallest rounded height is within 1e-9 plus float noise of it)
_CANDIDATES = 2e-9
#: linkage: a running average this close (in grid cells) to a rounding boundary is recomputed exactly;
#: 0.05 cells = 5e-11, far above the drift of a running average (about 3 ulp per merge: < 1e-12 at n = 1,000)
_GRID_MARGIN = 0.05


@dataclasses.dataclass
class ClusterConfig(ConfigBase):
    """How task signatures become clusters (one per expert slot). Shared by the whole swarm."""

    max_clusters: int = option(8, help="at most this many clusters (expert slots)")
    method: str = option(
        "agglomerative",
        help="'agglomerative' (average linkage on cosine distance, no randomness) or 'kmeans' "
        "(spherical k-means, k-means++ start seeded by `seed`)",
    )
    distance_threshold: float | None = option(
        None,
        help="agglomerative only: cut the dendrogram at this cosine distance instead of choosing K by "
        "silhouette (None: automatic K)",
    )
    min_silhouette: float = option(
        0.5, help="automatic K: the best cut's mean silhouette must reach this, else one cluster"
    )
    min_split_distance: float = option(
        0.01,
        help="never separate groups whose average cosine distance is below this (sampling noise of one "
        "task); with fewer than 3 nodes it alone decides whether two nodes split",
    )
    spread_factor: float = option(
        0.0,
        help="never separate groups closer than this many times the median spread of their nodes (each "
        "device's expected same-task distance, measured on its own prompts and announced in its hello); "
        "0: the fixed min_split_distance alone",
    )
    seed: int = option(0, help="swarm seed; used by method='kmeans' for its k-means++ start")

    def __post_init__(self) -> None:
        name = type(self).__name__
        check(self.max_clusters >= 1, name, "max_clusters", self.max_clusters, "must be >= 1")
        check(self.method in CLUSTER_METHODS, name, "method", self.method, f"choose from {CLUSTER_METHODS}")
        check(
            self.distance_threshold is None or 0 <= self.distance_threshold <= 2,
            name, "distance_threshold", self.distance_threshold, "must be None or a cosine distance in [0, 2]",
        )
        check(
            self.distance_threshold is None or self.method == "agglomerative",
            name, "distance_threshold", self.distance_threshold, "only applies to method='agglomerative'",
        )
        check(-1 <= self.min_silhouette <= 1, name, "min_silhouette", self.min_silhouette, "must be in [-1, 1]")
        check(0 <= self.min_split_distance <= 2, name, "min_split_distance", self.min_split_distance,
              "must be a cosine distance in [0, 2]")
        check(self.spread_factor >= 0, name, "spread_factor", self.spread_factor, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class Clustering:
    """Which node is in which expert slot. Immutable; equal clusterings compare equal.

    ``groups`` holds ``(slot, sorted member ids)`` pairs sorted by slot. Slot
    numbers are canonical after :func:`cluster` (0..K-1 by smallest node id)
    and may have gaps after :func:`relabel` (a slot whose cluster left).
    """

    groups: tuple[tuple[int, tuple[str, ...]], ...]
    #: mean silhouette of the chosen cut (None: one cluster, or not computed); not part of equality
    silhouette: float | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        slots = [s for s, _ in self.groups]
        if slots != sorted(set(slots)) or any(s < 0 for s in slots):
            raise TopologyError(f"slots must be distinct, sorted and >= 0, got {slots}")
        for slot, members in self.groups:
            if not members or list(members) != sorted(set(members)):
                raise TopologyError(f"slot {slot}: members must be non-empty, sorted and distinct: {members}")
            dup = seen.intersection(members)
            if dup:
                raise TopologyError(f"node(s) {sorted(dup)} in more than one cluster")
            seen.update(members)

    # -- construction -----------------------------------------------------------

    @classmethod
    def from_clusters(cls, clusters: Iterable[Iterable[str]], silhouette: float | None = None) -> Clustering:
        """Canonical numbering: clusters ordered by their smallest node id -> slots 0, 1, ..."""
        sets = [tuple(sorted(set(c))) for c in clusters]
        sets = [c for c in sets if c]
        sets.sort(key=lambda c: c[0])
        return cls(tuple((i, c) for i, c in enumerate(sets)), silhouette)

    @classmethod
    def from_assignment(cls, assignment: Mapping[str, int]) -> Clustering:
        """From node -> slot (e.g. the slots peers announce, for a node that joins late)."""
        by_slot: dict[int, list[str]] = {}
        for node, slot in assignment.items():
            by_slot.setdefault(int(slot), []).append(node)
        return cls(tuple((s, tuple(sorted(by_slot[s]))) for s in sorted(by_slot)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Clustering:
        """Inverse of :meth:`to_dict`."""
        try:
            slots = {int(k): v for k, v in data["slots"].items()}
            return cls(tuple((s, tuple(sorted(slots[s]))) for s in sorted(slots)), data.get("silhouette"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TopologyError(f"not a clustering: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly ``{"slots": {"0": [ids...]}, "silhouette": float | None}``."""
        return {"slots": {str(s): list(m) for s, m in self.groups}, "silhouette": self.silhouette}

    # -- queries ------------------------------------------------------------------

    @property
    def slots(self) -> dict[int, tuple[str, ...]]:
        """slot -> sorted member ids."""
        return dict(self.groups)

    @property
    def assignment(self) -> dict[str, int]:
        """node -> slot."""
        return {n: s for s, members in self.groups for n in members}

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node, sorted."""
        return tuple(sorted(n for _, members in self.groups for n in members))

    @property
    def num_clusters(self) -> int:
        return len(self.groups)

    @property
    def slot_numbers(self) -> tuple[int, ...]:
        return tuple(s for s, _ in self.groups)

    def slot_of(self, node: str) -> int:
        for slot, members in self.groups:
            if node in members:
                return slot
        raise TopologyError(f"node {node!r} is in no cluster")

    def members(self, slot: int) -> tuple[str, ...]:
        for s, members in self.groups:
            if s == slot:
                return members
        raise TopologyError(f"no cluster in slot {slot}; slots are {list(self.slot_numbers)}")

    def peers(self, node: str) -> tuple[str, ...]:
        """The other members of ``node``'s cluster."""
        return tuple(m for m in self.members(self.slot_of(node)) if m != node)

    def without(self, nodes: Iterable[str]) -> Clustering:
        """The same slots minus ``nodes``; a cluster left empty disappears (its slot number is free)."""
        gone = set(nodes)
        kept = tuple((s, tuple(m for m in members if m not in gone)) for s, members in self.groups)
        return Clustering(tuple((s, m) for s, m in kept if m), self.silhouette)


class _Memo:
    """A small thread-safe LRU of clusterings keyed by their exact inputs (process-wide, bounded)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Clustering] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Clustering | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: Clustering) -> Clustering:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: :func:`cluster` results by exact inputs (sorted ids, signature and spread bytes, config): a few
#: swarms' worth, each entry about n * dim * 8 bytes of key
_CLUSTER_MEMO = _Memo(16)


# -- clustering -------------------------------------------------------------------


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

    The height of a merge is ``round(mean of the original distances between
    the two clusters, 9)``; the next merge is the pair with the smallest
    (height, min index a, min index b), i.e. ties go to the smallest node ids:
    deterministic.

    A cluster lives in the row of its smallest index, so the tie-break key of
    rows x < y is (height, x, y). ``avg`` (n, n) holds the average distance of
    every two active clusters, kept by the Lance-Williams update (the
    size-weighted mean of the two merged rows), and ``nearest`` (n,) each
    row's minimum: O(n) work per merge in the usual case instead of a mean per
    pair. A running average can differ from a fresh mean in its last bits
    (< 1e-12 at n = 1,000), so it is only trusted where it sits well inside
    one cell of the 1e-9 grid (``_GRID_MARGIN``); otherwise the height is the
    fresh mean, computed as the definition does. Every pair within
    ``_CANDIDATES`` of the smallest average competes: the pair with the
    smallest rounded height always lies within 1e-9 of it.
    """
    n = d.shape[0]
    members: list[list[int]] = [[i] for i in range(n)]  # row -> its cluster's sorted indices (if active)
    size = np.ones(n)  # (n,)
    avg = np.array(d, dtype=np.float64)  # (n, n); inf on the diagonal and for merged-away rows
    np.fill_diagonal(avg, np.inf)
    nearest = avg.min(axis=1) if n > 1 else np.full(n, np.inf)  # (n,)
    merges: list[tuple[list[int], list[int], float]] = []
    for _ in range(n - 1):
        x, y, height = _next_merge(d, avg, nearest, members)
        merges.append((members[x], members[y], height))
        # Lance-Williams: the merged cluster's average distance to k is the size-weighted mean of x's and y's
        merged = (size[x] * avg[x] + size[y] * avg[y]) / (size[x] + size[y])  # (n,); inf at x, y, merged rows
        was_x, was_y = avg[:, x].copy(), avg[:, y].copy()  # (n,)
        avg[x], avg[:, x] = merged, merged
        avg[y], avg[:, y] = np.inf, np.inf
        members[x], members[y] = sorted(members[x] + members[y]), []
        size[x] += size[y]
        # Only columns x (now the merged cluster) and y (gone) changed. A row whose minimum may have been
        # at x or y is searched again, unless the merged cluster is at least as close; any other row keeps
        # its minimum or has come closer to x.
        stale = ((nearest == was_x) | (nearest == was_y)) & (merged > nearest) & np.isfinite(nearest)  # (n,)
        stale[x] = stale[y] = False
        nearest = np.minimum(nearest, merged)
        nearest[stale] = avg[stale].min(axis=1)
        nearest[x], nearest[y] = merged.min(), np.inf
    return merges


def _next_merge(
    d: np.ndarray, avg: np.ndarray, nearest: np.ndarray, members: list[list[int]]
) -> tuple[int, int, float]:
    """The next UPGMA merge ``(x, y, height)``, rows x < y: the smallest (rounded height, x, y).

    ``avg`` (n, n) holds running averages, ``nearest`` (n,) their row minima.
    Only pairs within ``_CANDIDATES`` of the smallest average can hold the
    smallest rounded height. Their grid cells (height = cell * 1e-9) come from
    the running average, except near a rounding boundary where the fresh mean
    of the original distances decides, exactly as the definition computes it.
    Rows are visited in ascending order, so the scan stops as soon as a row
    reaches the lowest cell any pair can have (many equal distances: O(n)).
    """
    lowest = float(nearest.min())
    limit = lowest + _CANDIDATES
    floor_cell = np.floor(lowest * 10.0**_DECIMALS + 0.5 - _GRID_MARGIN)  # no pair rounds below this
    best: tuple[float, int, int, float] | None = None  # (cell, x, y, height)
    for x in np.flatnonzero(nearest <= limit):
        ys = x + 1 + np.flatnonzero(avg[x, x + 1:] <= limit)  # (p,) ascending
        if not ys.size:
            continue
        grid = avg[x, ys] * 10.0**_DECIMALS  # (p,)
        cells = np.floor(grid + 0.5)  # (p,)
        heights: dict[int, float] = {}
        for f in np.flatnonzero(np.abs(grid - np.floor(grid) - 0.5) < _GRID_MARGIN):
            heights[int(f)] = h = round(float(d[np.ix_(members[x], members[ys[f]])].mean()), _DECIMALS)
            cells[f] = np.rint(h * 10.0**_DECIMALS)
        t = int(np.argmin(cells))  # the first minimum: the smallest y
        if best is None or cells[t] < best[0]:
            height = heights[t] if t in heights else round(float(avg[x, ys[t]]), _DECIMALS)
            best = (float(cells[t]), int(x), int(ys[t]), height)
        if best[0] <= floor_cell:
            break
    assert best is not None
    return best[1], best[2], best[3]


def _cut(n: int, merges: list[tuple[list[int], list[int], float]], k: int) -> list[list[int]]:
    """The K clusters left after the first n-K merges, each sorted, ordered by their smallest index."""
    root = list(range(n))  # union-find over indices; a cluster's root is its smallest index

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for a, b, _ in merges[: n - k]:
        ra, rb = find(a[0]), find(b[0])
        root[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):  # ascending, so every group comes out sorted
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda c: c[0])


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
    where = [np.flatnonzero(labels == u) for u in uniq]  # each cluster's points, ascending
    within = np.full(n, np.nan)  # (n,) mean distance to the rest of the own cluster
    to_cluster = np.empty((n, len(uniq)))  # (n, K) mean distance to each other cluster (inf: own)
    for k, rows in enumerate(where):
        for u, cols in enumerate(where):
            # one block of d per pair of clusters; a row sum of a block adds the same numbers in the
            # same order (numpy's pairwise sum along a contiguous row) as d[i, mask].sum() did per point
            block = d[np.ix_(rows, cols)]  # (|k|, |u|)
            if u != k:
                to_cluster[rows, u] = block.mean(axis=1)
                continue
            to_cluster[rows, u] = np.inf
            if len(rows) > 1:
                within[rows] = block.sum(axis=1) / (len(rows) - 1)  # d[i, i] == 0
            elif spreads is not None and np.isfinite(spreads[rows[0]]):
                within[rows] = spreads[rows[0]]
    between = to_cluster.min(axis=1)  # (n,) mean distance to the nearest other cluster
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

    Results are remembered per process (see :data:`_CLUSTER_MEMO`): the devices
    a host simulates all cluster the same hellos, and the answer is the same.
    """
    config = config or ClusterConfig()
    ids, s = _validated(signatures)
    spread = np.array([_spread_of(spreads, i) for i in ids])  # (n,), nan where unknown
    # the result depends on nothing else: the exact bytes make the key (a float that differs in its
    # last bit, or -0.0 for 0.0, is a different key and is simply computed again)
    key = (tuple(ids), s.shape, s.tobytes(), spread.tobytes(), tuple(sorted(config.to_dict().items())))
    found = _CLUSTER_MEMO.get(key)
    if found is None:
        found = _CLUSTER_MEMO.put(key, _cluster(ids, s, spread, config))
    return found


def _cluster(ids: list[str], s: np.ndarray, spread: np.ndarray, config: ClusterConfig) -> Clustering:
    """:func:`cluster` on validated inputs: sorted ``ids``, signatures ``s`` (n, dim), spreads (n,) or nan."""
    n = len(ids)
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
    # A group that did not split is not tried again: with fewer slots left it is offered a subset of
    # the same cuts (each K's cut does not depend on max_k), whose best score is no higher. Same
    # result as trying it again, without recomputing its linkage and silhouettes.
    settled: set[tuple[int, ...]] = set()
    changed = True
    while changed and len(clusters) < config.max_clusters:
        changed = False
        for pos, group in enumerate(clusters):
            if tuple(group) in settled:
                continue
            sub = _best_split(d[np.ix_(group, group)], unit[group], config,
                              config.max_clusters - len(clusters) + 1, _floor(config, spread, group),
                              spread[group] if np.isfinite(spread[group]).any() else None)
            if sub is None:
                settled.add(tuple(group))
                continue
            parts = [[group[i] for i in part] for part in sub[1]]
            clusters = sorted(clusters[:pos] + parts + clusters[pos + 1:], key=min)
            changed = True
            break
    return result(clusters)


def relabel(
    previous: Clustering, new: Clustering, *, reserved: Iterable[int] = (), max_slots: int | None = None
) -> Clustering:
    """``new`` renumbered so that clusters keep the slots they had in ``previous``.

    Matching is greedy by overlap (number of shared nodes), largest first; ties
    go to the smaller previous slot, then to the new cluster with the smaller
    smallest node id. So a cluster that loses or gains a node keeps its slot; a
    cluster that splits leaves its slot to the part holding most of its old
    members; two clusters that merge keep the slot of the larger share.

    Unmatched new clusters take, in order of preference: the lowest slot number
    never used by ``previous`` and not in ``reserved`` (below ``max_slots`` when
    given); then the lowest slot of ``previous`` whose cluster is gone (its
    expert is superseded: only when ``max_slots`` leaves no fresh number).
    Never a slot in ``reserved``. Raises :class:`TopologyError` when no slot is
    left. Deterministic given the same arguments.
    """
    clusters = sorted((members for _, members in new.groups), key=lambda m: m[0])
    pairs = []
    for j, members in enumerate(clusters):
        for slot, old in previous.groups:
            overlap = len(set(members) & set(old))
            if overlap:
                pairs.append((-overlap, slot, members[0], j))
    pairs.sort()
    slot_for: dict[int, int] = {}
    taken: set[int] = set()
    for _, slot, _, j in pairs:
        if j not in slot_for and slot not in taken:
            slot_for[j] = slot
            taken.add(slot)
    blocked = set(reserved)
    old_slots = set(previous.slot_numbers)
    limit = max_slots if max_slots is not None else len(clusters) + len(old_slots) + len(blocked) + 1
    fresh = [k for k in range(limit) if k not in old_slots | blocked | taken]
    vanished = sorted(old_slots - taken - blocked)
    for j in range(len(clusters)):
        if j in slot_for:
            continue
        pool = fresh if fresh else vanished
        if not pool:
            raise TopologyError(
                f"no free expert slot for cluster {clusters[j]} (max_slots={max_slots}, reserved={sorted(blocked)})"
            )
        slot_for[j] = pool.pop(0)
    if max_slots is not None and any(s >= max_slots for s in slot_for.values()):
        raise TopologyError(f"clustering needs slot {max(slot_for.values())} but max_slots={max_slots}")
    groups = sorted((slot_for[j], members) for j, members in enumerate(clusters))
    return Clustering(tuple(groups), new.silhouette)
