"""A received expert keeps every value: the receiver adopts the expert's mask for that slot."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgedfl.adapters import solora
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.node import Node
from edgedfl.topology.clustering import Clustering


def _meet(a: Node, b: Node) -> None:
    """Both say hello and pin each other's key (admission tofu, the default): experts are signed."""
    a.hello()
    b.hello()
    deadline = time.monotonic() + 10
    while not ("b" in a.protocol.peers and "a" in b.protocol.peers) and time.monotonic() < deadline:
        a.protocol.poll(0.05)
        b.protocol.poll(0.05)


@pytest.mark.parametrize("random_masks", [False, True])
def test_another_clusters_expert_arrives_whole(tmp_path, random_masks: bool) -> None:
    # Prepare: two tiny-model nodes on an in-memory hub, each the only member of its cluster
    swarm = SwarmConfig(name="masks", model="tiny", max_slots=2, rounds=1, random_masks=random_masks)
    nodes = {}
    for nid in ("a", "b"):
        node = Node(NodeConfig(node_id=nid, broker=f"memory://experts-{random_masks}", swarm=swarm,
                               state_dir=str(tmp_path / nid)))
        node.load()
        node.connect()
        nodes[nid] = node
    a, b = nodes["a"], nodes["b"]
    _meet(a, b)
    clustering = Clustering.from_dict({"slots": {"0": ["a"], "1": ["b"]}, "silhouette": None})
    for node in (a, b):
        node.place(clustering)
    # a's calibrated mask of slot 0 differs from the uncalibrated default b holds for slot 0
    if random_masks:
        a.adapted.set_uniform_masks(0, swarm.adapter.density, random_positions=True)
    else:  # spectrum-shaped: entries apportioned by a skewed energy per direction of A
        a.adapted.set_masks(0, {
            solora.b_key(n): solora.make_mask(swarm.seed, n, 0, d_out, swarm.adapter.rank, 0.4, np.arange(1.0, swarm.adapter.rank + 1) ** 2)
            for n, (_, d_out) in a.adapted.layer_shapes().items()})
    rng = np.random.default_rng(0)
    shapes = a.adapted.expected_update_shapes()
    a.adapted.set_update(0, {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    sent = a.adapted.get_update(0)
    default = b.adapted.get_masks(0)
    assert any((default[k] != (v != 0)).any() for k, v in sent.items())

    # Execute: a speaks for its cluster at the last round; b collects
    a.share_expert(swarm.rounds)
    loaded = b.collect_experts(timeout_s=10)

    # Assert: every value of a's expert is in b's slot 0 (fp16 on the wire), b's mask is a's
    assert loaded == {0: swarm.rounds}
    got = b.adapted.get_update(0)
    for k, v in sent.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float16).astype(np.float32))
    for layer, m in a.adapted.get_masks(0).items():
        np.testing.assert_array_equal(b.adapted.get_masks(0)[layer], m)
    for node in (a, b):
        node.protocol.close()


def test_an_expert_that_arrives_dense_is_not_masked_by_the_receiver(tmp_path) -> None:
    # Prepare: as above, but a publishes slot 0's expert dense (no mask travels)
    swarm = SwarmConfig(name="dense", model="tiny", max_slots=2, rounds=1)
    nodes = {}
    for nid in ("a", "b"):
        node = Node(NodeConfig(node_id=nid, broker="memory://experts-dense", swarm=swarm,
                               state_dir=str(tmp_path / nid)))
        node.load()
        node.connect()
        node.place(Clustering.from_dict({"slots": {"0": ["a"], "1": ["b"]}, "silhouette": None}))
        nodes[nid] = node
    a, b = nodes["a"], nodes["b"]
    _meet(a, b)
    rng = np.random.default_rng(1)
    dense = {k: rng.normal(size=s).astype(np.float16) for k, s in a.adapted.expected_update_shapes().items()}

    # Execute
    a.protocol.publish_expert(0, swarm.rounds, dense, {}, meta={"task": "arith"})
    loaded = b.collect_experts(timeout_s=10)

    # Assert: every entry arrived, none zeroed by b's default mask of slot 0
    assert loaded == {0: swarm.rounds}
    got = b.adapted.get_update(0)
    for k, v in dense.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float32))
    for node in (a, b):
        node.protocol.close()
