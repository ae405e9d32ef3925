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
from collections.abc import Iterable, Mapping

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

    def neighbours(self, node: str) -> tuple[str, ...]:
        """Sorted neighbours of ``node`` (not itself)."""
        if node not in self.nodes:
            raise TopologyError(f"node {node!r} is not in this graph")
        return tuple(sorted([b for a, b in self.edges if a == node] + [a for a, b in self.edges if b == node]))

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
