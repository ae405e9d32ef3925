"""Topology + aggregation together: masked Metropolis gossip inside clusters converges to each cluster's mean."""

from __future__ import annotations

import numpy as np

from edgedfl.aggregation import for_method
from edgedfl.topology import Clustering, cluster_graphs, metropolis_weights, present_weights


def test_masked_gossip_converges_to_the_cluster_mean_and_never_leaves_the_mask() -> None:
    clustering = Clustering.from_clusters([["a", "c", "e", "g"], ["b", "d", "f"]])
    graphs = cluster_graphs(clustering, None, degree=1)
    rng = np.random.default_rng(0)
    masks = {s: {"l.lora_B": rng.random((5, 2)) < 0.5} for s in clustering.slot_numbers}  # shared per cluster
    state = {n: {"l.lora_B": rng.standard_normal((5, 2)) * masks[clustering.slot_of(n)]["l.lora_B"]}
             for n in clustering.nodes}
    target = {s: np.mean([state[n]["l.lora_B"] for n in m], axis=0) for s, m in clustering.groups}
    agg = for_method("solora")
    for _ in range(150):
        new = {}
        for node in clustering.nodes:
            slot = clustering.slot_of(node)
            row = metropolis_weights(graphs[slot])[node]
            own_w, peers = present_weights(row, node, row)
            neighbours = [(w, state[p]) for p, w in peers.items()]
            new[node] = agg.aggregate(state[node], neighbours, own_weight=own_w, masks=masks[slot])
        state = new
    for slot, members in clustering.groups:
        for n in members:
            np.testing.assert_allclose(state[n]["l.lora_B"], target[slot], atol=1e-6)
            assert np.all(state[n]["l.lora_B"][~masks[slot]["l.lora_B"]] == 0)
