"""Link-aware neighbour graphs inside a cluster and Metropolis mixing weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgedfl.errors import TopologyError
from edgedfl.topology import (
    Clustering,
    NeighbourGraph,
    cluster_graphs,
    flat_clustering,
    link_score,
    metropolis_weights,
    neighbour_graph,
    present_weights,
)


def weight_matrix(graph: NeighbourGraph) -> np.ndarray:
    w = metropolis_weights(graph)
    idx = {n: i for i, n in enumerate(graph.nodes)}
    m = np.zeros((len(idx), len(idx)))  # (n, n)
    for i, row in w.items():
        for j, v in row.items():
            m[idx[i], idx[j]] = v
    return m


def random_quality(nodes: list[str], seed: int) -> dict[tuple[str, str], float]:
    rng = np.random.default_rng(seed)
    return {(a, b): float(rng.uniform(1e6, 1e8)) for a, b in itertools.permutations(nodes, 2) if rng.random() < 0.7}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("degree", [1, 2, 3, None])
def test_metropolis_weights_are_symmetric_and_doubly_stochastic(seed: int, degree: int | None) -> None:
    nodes = [f"n{i}" for i in range(7)]
    graph = neighbour_graph(nodes, random_quality(nodes, seed), degree)
    m = weight_matrix(graph)
    assert np.allclose(m, m.T, atol=1e-15)
    assert np.allclose(m.sum(axis=0), 1.0) and np.allclose(m.sum(axis=1), 1.0)
    assert (m >= 0).all() and (np.diag(m) > 0).all()
    # gossip with these weights converges to the plain mean (connected + doubly stochastic)
    x = np.random.default_rng(seed).standard_normal(len(nodes))  # (n,)
    assert np.allclose(np.linalg.matrix_power(m, 200) @ x, x.mean(), atol=1e-6)


def test_metropolis_formula() -> None:
    # path a - b - c: deg 1, 2, 1
    w = metropolis_weights(NeighbourGraph(("a", "b", "c"), (("a", "b"), ("b", "c"))))
    assert w["a"] == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert w["b"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert metropolis_weights(NeighbourGraph(("solo",), ())) == {"solo": {"solo": 1.0}}


def test_neighbours_prefer_better_links() -> None:
    nodes = ["a", "b", "c", "d", "e"]
    # a star of fast links around "c", everything else slow
    quality = {(x, y): 1e6 for x, y in itertools.permutations(nodes, 2)}
    quality |= {(x, "c"): 1e8 for x in nodes if x != "c"} | {("c", x): 1e8 for x in nodes if x != "c"}
    graph = neighbour_graph(nodes, quality, degree=1)
    assert set(graph.edges) == {("a", "c"), ("b", "c"), ("c", "d"), ("c", "e")}
    # the worse direction counts: a fast a->b but slow b->a is not a fast link
    assert link_score({("a", "b"): 9.0, ("b", "a"): 1.0}, "a", "b") == 1.0
    assert link_score({("a", "b"): 9.0}, "b", "a") == 9.0
    assert link_score({}, "a", "b", unknown=-1.0) == -1.0


def test_measured_links_beat_unknown_ones() -> None:
    graph = neighbour_graph(["a", "b", "c", "d"], {("a", "d"): 0.2, ("d", "b"): 0.1}, degree=1)
    assert "d" in graph.neighbours("a") and "b" in graph.neighbours("d")


def test_graph_is_connected_even_when_best_links_form_islands() -> None:
    # two fast islands {a, b} and {c, d}, joined only by slow links; b-c is the best of those
    quality = {("a", "b"): 100.0, ("b", "a"): 100.0, ("c", "d"): 100.0, ("d", "c"): 100.0,
               ("b", "c"): 5.0, ("c", "b"): 5.0, ("a", "c"): 1.0, ("a", "d"): 1.0, ("b", "d"): 1.0}
    graph = neighbour_graph(["a", "b", "c", "d"], quality, degree=1)
    assert graph.is_connected()
    assert set(graph.edges) == {("a", "b"), ("c", "d"), ("b", "c")}


@pytest.mark.parametrize("n", [2, 5, 9])
def test_unknown_links_give_a_ring_lattice_not_a_star(n: int) -> None:
    nodes = [f"n{i}" for i in range(n)]
    graph = neighbour_graph(nodes, None, degree=2)
    assert graph.is_connected()
    assert max(graph.degree(x) for x in nodes) <= 2


def test_graph_is_deterministic_and_independent_of_member_order() -> None:
    nodes = [f"n{i}" for i in range(8)]
    quality = random_quality(nodes, 3)
    ref = neighbour_graph(nodes, quality, 2)
    assert neighbour_graph(list(reversed(nodes)), dict(reversed(list(quality.items()))), 2) == ref


def test_complete_graph_and_cluster_graphs_and_flat_variant() -> None:
    nodes = ["a", "b", "c", "d"]
    full = neighbour_graph(nodes, None, degree=None)
    assert len(full.edges) == 6
    clustering = Clustering.from_clusters([["a", "c"], ["b", "d"]])
    graphs = cluster_graphs(clustering, None, degree=3)
    assert graphs[0].edges == (("a", "c"),) and graphs[1].edges == (("b", "d"),)
    flat = flat_clustering(nodes)
    assert flat.slots == {0: tuple(nodes)}
    assert cluster_graphs(flat, None, degree=None)[0] == full


def test_present_weights_fold_missing_neighbours_into_self() -> None:
    w = metropolis_weights(neighbour_graph(["a", "b", "c", "d"], None, degree=None))["a"]
    own, peers = present_weights(w, "a", ["b", "d", "zz"])
    assert set(peers) == {"b", "d"}
    assert own + sum(peers.values()) == pytest.approx(1.0)
    assert own == pytest.approx(w["a"] + w["c"])
    with pytest.raises(TopologyError):
        present_weights(w, "zz", [])


def test_bad_graph_inputs_are_typed_errors() -> None:
    with pytest.raises(TopologyError):
        neighbour_graph([], None)
    with pytest.raises(TopologyError):
        neighbour_graph(["a", "b"], None, degree=0)
    with pytest.raises(TopologyError):
        NeighbourGraph(("a", "b"), (("b", "a"),))
    with pytest.raises(TopologyError):
        NeighbourGraph(("a",), ()).neighbours("b")
