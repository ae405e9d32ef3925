"""Who averages with whom inside a cluster, and with which weights.

Each device keeps its ``degree`` best-linked peers of its own cluster; the
union of those choices is the (undirected) gossip graph, made connected by
adding the best link between components; Metropolis weights on it give a
symmetric, doubly stochastic mixing matrix, so repeated averaging converges to
the cluster's plain mean whatever the graph looks like.

Decisions:

* **Link quality** is any "higher is better" score per ordered pair
  ``(a, b)``: a measured rate in bit/s, a 0..1 quality, ... A pair measured in
  both directions scores the worse of the two (an exchange needs both ways); a
  pair measured one way scores that; an unmeasured pair scores ``unknown``
  (default 0: below any measured link, so measured links are preferred).
* **Union of choices** (a peer chosen by either end is a neighbour): the
  graph is symmetric, which Metropolis weights need; degrees may therefore
  exceed ``degree`` for popular, well-connected devices.
* **Connectivity repair** adds, while the graph has several components, the
  single best link between two different components (Kruskal-like), so a
  cluster never falls apart into groups that would drift away from each other.
* **Ties** (equal scores) go to the peer nearest in the ring of sorted node
  ids, then to the next id after the chooser: deterministic from the same
  published link qualities, and with no link information at all the graph is a
  ring lattice (every device has about ``degree`` neighbours), not a star
  around the alphabetically first devices.
* **Flat gossip** (ablation): :func:`flat_clustering` puts the whole swarm in
  one cluster; the graph and weights are then computed exactly the same way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping

import numpy as np

from edgedfl.errors import TopologyError
from edgedfl.topology.clustering import Clustering

#: ordered pair (a, b) -> "higher is better" link score (rate in bit/s, 0..1 quality, ...)
LinkQuality = Mapping[tuple[str, str], float]


@dataclasses.dataclass(frozen=True)
class NeighbourGraph:
    """An undirected graph over ``nodes`` (sorted); ``edges`` are (a, b) pairs with a < b, sorted."""

    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if list(self.nodes) != sorted(set(self.nodes)):
            raise TopologyError(f"graph nodes must be sorted and distinct: {self.nodes}")
        known = set(self.nodes)
        for a, b in self.edges:
            if not a < b or a not in known or b not in known:
                raise TopologyError(f"bad edge {(a, b)}: needs a < b, both graph nodes")
        if list(self.edges) != sorted(set(self.edges)):
            raise TopologyError("graph edges must be sorted and distinct")

    @functools.cached_property
    def _adjacency(self) -> dict[str, tuple[str, ...]]:
        """node -> its sorted neighbours, built once (a graph of 1,000 nodes is asked for all of them)."""
        adjacent: dict[str, list[str]] = {n: [] for n in self.nodes}
        for a, b in self.edges:
            adjacent[a].append(b)
            adjacent[b].append(a)
        return {n: tuple(sorted(peers)) for n, peers in adjacent.items()}

    def neighbours(self, node: str) -> tuple[str, ...]:
        """Sorted neighbours of ``node`` (not itself)."""
        try:
            return self._adjacency[node]
        except (KeyError, TypeError):
            raise TopologyError(f"node {node!r} is not in this graph") from None

    def degree(self, node: str) -> int:
        return len(self.neighbours(node))

    def components(self) -> list[tuple[str, ...]]:
        """Connected components, each sorted, ordered by their smallest node."""
        parent = {n: n for n in self.nodes}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b in self.edges:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        groups: dict[str, list[str]] = {}
        for n in self.nodes:
            groups.setdefault(find(n), []).append(n)
        return sorted((tuple(sorted(g)) for g in groups.values()), key=lambda g: g[0])

    def is_connected(self) -> bool:
        return len(self.components()) <= 1


def link_score(quality: LinkQuality, a: str, b: str, unknown: float = 0.0) -> float:
    """Symmetric score of the link a-b: the worse direction if both are known, else the known one."""
    known = [float(quality[p]) for p in ((a, b), (b, a)) if p in quality]
    return min(known) if known else unknown


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
    score = _scores(nodes, quality, unknown)
    if score is None:
        return _neighbour_graph_by_sorting(nodes, quality, degree, unknown)
    n = len(nodes)
    # Each member ranks the others by (best score first, nearest in the ring of sorted ids, next id after
    # it). The last two keys depend only on the offset k = (j - i) % n: ring order 1, n-1, 2, n-2, ...
    # Laying every row out in that order, a stable sort on the score alone gives the same ranking as
    # sorting on the whole key, all rows at once.
    offsets = np.array(sorted(range(1, n), key=lambda k: (min(k, n - k), k)), dtype=np.int64)  # (n-1,)
    others = (np.arange(n)[:, None] + offsets[None, :]) % n  # (n, n-1): row i's peers in tie order
    order = np.argsort(-np.take_along_axis(score, others, axis=1), axis=1, kind="stable")  # (n, n-1)
    chosen = np.take_along_axis(others, order if degree is None else order[:, :degree], axis=1)  # (n, c)
    mine = np.broadcast_to(np.arange(n)[:, None], chosen.shape)  # (n, c)
    pairs = np.unique(np.minimum(mine, chosen) * n + np.maximum(mine, chosen))  # (e,) i * n + j, i < j
    edges = [(int(p) // n, int(p) % n) for p in pairs]
    root = list(range(n))  # union-find over positions

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    parts = n
    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            root[max(ri, rj)] = min(ri, rj)
            parts -= 1
    if parts > 1:
        # Connectivity repair. Adding the best link (highest score, then smallest ids) between two
        # components, again and again, is Kruskal's algorithm on the links sorted by that key: a link
        # it passes over lies inside one component, and stays inside one as components grow.
        comp = np.array([find(i) for i in range(n)])  # (n,)
        a, b = np.triu_indices(n, 1)  # (n(n-1)/2,) every pair i < j
        across = comp[a] != comp[b]
        a, b = a[across], b[across]
        for t in np.lexsort((b, a, -score[a, b])):
            ri, rj = find(int(a[t])), find(int(b[t]))
            if ri != rj:
                root[max(ri, rj)] = min(ri, rj)
                edges.append((int(a[t]), int(b[t])))
                parts -= 1
                if parts == 1:
                    break
    return NeighbourGraph(nodes, tuple(sorted((nodes[i], nodes[j]) for i, j in edges)))


def _scores(nodes: tuple[str, ...], quality: LinkQuality, unknown: float) -> np.ndarray | None:
    """:func:`link_score` of every pair of ``nodes`` (n, n) (diagonal 0), or None if one is NaN.

    NaN scores are left to :func:`_neighbour_graph_by_sorting`: Python's sort and min place a NaN
    by where it happens to be, which only the same sequence of comparisons reproduces. Likewise an
    int ``unknown`` that a float cannot hold (Python compares ints and floats exactly).
    """
    n = len(nodes)
    at = {node: i for i, node in enumerate(nodes)}
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for pair, value in quality.items():
        if isinstance(pair, tuple) and len(pair) == 2:  # other keys are never looked up
            i, j = at.get(pair[0]), at.get(pair[1])
            if i is not None and j is not None and i != j:
                rows.append(i)
                cols.append(j)
                values.append(float(value))
    measured = np.full((n, n), np.nan)  # (n, n) a -> b as published, nan: not measured
    measured[rows, cols] = values
    known = np.zeros((n, n), dtype=bool)  # (n, n)
    known[rows, cols] = True
    if np.isnan(measured[known]).any() or float(unknown) != unknown:
        return None
    # the worse direction if both are measured, else the measured one, else `unknown`
    score = np.where(known & known.T, np.minimum(measured, measured.T),
                     np.where(known, measured, np.where(known.T, measured.T, float(unknown))))  # (n, n)
    np.fill_diagonal(score, 0.0)
    return None if np.isnan(score).any() else score


def _neighbour_graph_by_sorting(
    nodes: tuple[str, ...], quality: LinkQuality, degree: int | None, unknown: float
) -> NeighbourGraph:
    """:func:`neighbour_graph` by the definition (O(n^2 log n) per call); kept for NaN link scores."""
    edges: set[tuple[str, str]] = set()
    n = len(nodes)
    at = {node: i for i, node in enumerate(nodes)}
    for i, a in enumerate(nodes):
        # best score first; equal scores -> nearest in the ring of sorted ids, then the next id after a
        ranked = sorted(
            (b for b in nodes if b != a),
            key=lambda b: (-link_score(quality, a, b, unknown), _ring(i, at[b], n), (at[b] - i) % n),
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


def cluster_graphs(
    clustering: Clustering, quality: LinkQuality | None = None, degree: int | None = 3, *, unknown: float = 0.0
) -> dict[int, NeighbourGraph]:
    """slot -> the gossip graph of that cluster's members."""
    return {slot: neighbour_graph(members, quality, degree, unknown=unknown) for slot, members in clustering.groups}


def flat_clustering(nodes: Iterable[str]) -> Clustering:
    """Ablation: the whole swarm as one cluster (flat gossip), slot 0."""
    return Clustering.from_clusters([list(nodes)])


def metropolis_weights(graph: NeighbourGraph) -> dict[str, dict[str, float]]:
    """Metropolis-Hastings mixing weights: node -> {node or neighbour -> weight}.

    ``w_ij = 1 / (1 + max(deg_i, deg_j))`` for neighbours, ``w_ii = 1 - sum_j w_ij``;
    symmetric, rows and columns sum to 1, all weights in (0, 1]. Non-neighbours
    are absent (weight 0).
    """
    deg = {n: graph.degree(n) for n in graph.nodes}
    weights: dict[str, dict[str, float]] = {}
    for i in graph.nodes:
        # sorted neighbours: the self weight sums them in the same order on every device
        row = {j: 1.0 / (1 + max(deg[i], deg[j])) for j in graph.neighbours(i)}
        row[i] = 1.0 - sum(row.values())
        weights[i] = dict(sorted(row.items()))
    return weights


def present_weights(row: Mapping[str, float], own: str, present: Iterable[str]) -> tuple[float, dict[str, float]]:
    """``(own_weight, {peer: weight})`` for the peers whose update arrived before the deadline.

    A missing neighbour's weight goes to ``own`` (the standard fix: the row
    still sums to 1, and the node simply keeps more of itself this round).
    """
    if own not in row:
        raise TopologyError(f"{own!r} has no self weight in this row")
    arrived = set(present)
    peers = {p: w for p, w in row.items() if p != own and p in arrived}
    return 1.0 - sum(peers.values()), dict(sorted(peers.items()))
