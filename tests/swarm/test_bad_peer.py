"""A signed, admitted peer that sends a bad message of every kind never stops a node: each is a counted rejection.

The stranger of ``test_rogue.py`` is stopped by signatures; this peer has a
key the node pinned (admission tofu), so only the checks at the door stand
between its messages and the model.
"""

from __future__ import annotations

import numpy as np

from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.node import Node
from edgedfl.protocol import NeighbourProtocol
from edgedfl.topology.clustering import Clustering
from edgedfl.train.config import TrainConfig
from edgedfl.transport.url import transport_from_url
from edgedfl.wire.signing import Signer


def test_a_pinned_peer_sending_bad_messages_of_every_kind_never_stops_a_node(tmp_path) -> None:
    # Prepare: a real node and a peer with its own key, on one in-memory hub
    swarm = SwarmConfig(name="bad", model="tiny", max_slots=2, rounds=2, local_steps=2, n_train=16, n_eval=4,
                        n_signature=4, n_calibration=4, expected_devices=2, join_timeout_s=3.0,
                        round_deadline_s=3.0, degree=1, quorum=1.0,
                        train=TrainConfig(lr=1e-2, batch_size=4, max_length=64, progress=False))
    node = Node(NodeConfig(node_id="a", broker="memory://bad-peer", swarm=swarm, state_dir=str(tmp_path / "a")))
    node.load()
    node.connect()
    evil = NeighbourProtocol(transport_from_url("memory://bad-peer", client_id="evil"), "bad", "evil",
                             state_dir=tmp_path / "evil", signer=Signer.generate(), tofu=True,
                             settings=swarm.digest())
    evil.start()
    rejects = node.protocol.rejects

    # hello: a task signature of the wrong length; the join goes on without the peer
    own = node.hello()
    evil.publish_hello({"profile": "laptop", "link_rate_bps": 1e8}, np.ones(own.shape[0] + 1, np.float32))
    clustering = node.join(own)
    assert clustering.assignment == {"a": 0} and rejects["TopologyError"] >= 1

    # the peer in the node's cluster (and a third cluster whose expert the node will wait for)
    node.place(Clustering.from_dict({"slots": {"0": ["a", "evil"], "1": ["ghost"]}, "silhouette": None}))
    evil.follow_slot(0)
    # round 0: calibration statistics with a tensor missing and another of the wrong shape
    layer = next(iter(node.learner.update_shapes())).removesuffix(".lora_B")
    evil.publish_update(0, 0, {f"{layer}.cov": np.eye(3, dtype=np.float32)}, receivers=["a"], precision="fp32")
    node.calibrate_masks()  # the node pools its own statistics alone, at the deadline
    assert node.cluster_code is not None and rejects["TensorValidationError"] >= 1

    # round 1: an update with foreign names; round 2: the right names, absurd values
    evil.publish_update(1, 0, {"x.lora_B": np.zeros((2, 2), np.float32)}, receivers=["a"])
    shapes = node.learner.update_shapes()
    evil.publish_update(2, 0, {k: np.full(s, 5e4, np.float32) for k, s in shapes.items()}, receivers=["a"])
    rows = [node.run_round(1), node.run_round(2)]
    assert all(r["peers"] == [] and r["quorum_short"] for r in rows)
    assert rejects["TensorValidationError"] >= 3
    # an ack with an unknown status, addressed to the node
    evil._try_publish(evil.topics.ack("a", "evil"), evil._envelope("ack", meta={"to": "a", "id": "a/1/1", "status": "weird"}))

    # an expert for a cluster the peer is not in; then one from that cluster's member that does not fit the model
    evil.publish_expert(1, 2, {"x.lora_B": np.ones((2, 2), np.float16)}, {})
    ghost = NeighbourProtocol(transport_from_url("memory://bad-peer", client_id="ghost"), "bad", "ghost",
                              state_dir=tmp_path / "ghost", signer=Signer.generate(), tofu=True,
                              settings=swarm.digest())
    ghost.start()
    ghost.publish_hello({"profile": "laptop", "link_rate_bps": 1e8}, np.ones(own.shape[0], np.float32))
    ghost.publish_expert(1, 2, {"x.lora_B": np.ones((2, 2), np.float16)}, {})
    loaded = node.collect_experts(3.0)

    # Assert: no expert was loaded, the node still answers, every bad message is counted
    assert loaded == {} and rejects["TensorValidationError"] >= 4 and rejects["NotAMember"] == 1
    assert rejects["MalformedMessage"] >= 1
    assert node.protocol.rejects_by_sender["evil"] >= 5 and node.protocol.rejects_by_sender["ghost"] == 1
    final = node.final_eval(loaded)
    assert final["modes"]["implicit"]
    node.protocol.close()
    evil.close()
    ghost.close()
