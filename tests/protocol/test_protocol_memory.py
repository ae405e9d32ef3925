"""The neighbour protocol on the in-memory transport: delivery, dedupe, staleness, quorum, acks."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from proto_helpers import SWARM, Swarm, pump, tensors

from edgedfl.errors import ConfigError, QuorumNotReached, TensorValidationError
from edgedfl.protocol import NeighbourProtocol, ProtocolConfig
from edgedfl.protocol.store import ACK_APPLIED, ACK_DUPLICATE, ACK_REJECTED, ACK_STALE
from edgedfl.wire.codec import encode_update
from edgedfl.wire.signing import KeyRing, Signer
from edgedfl.wire.validate import TensorSpec


def test_update_is_applied_once_and_acked(swarm: Swarm) -> None:
    # Prepare
    a, b, c = swarm.node("a"), swarm.node("b"), swarm.node("c")
    upd = tensors(1, (64, 32))  # several 4 KiB chunks
    # Execute
    mid = a.publish_update(0, 0, upd, receivers=["b", "c"])
    pump([a, b, c], lambda: not a.pending())
    # Assert
    for node in (b, c):
        got = node.round_updates(0, 0)
        assert set(got) == {"a"} and got["a"].message_id == mid
        np.testing.assert_allclose(got["a"].tensors["layers.0.q.B"], upd["layers.0.q.B"], atol=2e-3)
    entry = a.outbox.get(mid)
    assert entry is not None and entry.acks == {"b": ACK_APPLIED, "c": ACK_APPLIED}
    assert len(entry.parts) > 1


def test_duplicate_delivery_is_deduplicated_and_reacked(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    mid = a.publish_update(0, 0, tensors(), receivers=["b"])
    pump([a, b], lambda: not a.pending())
    entry = a.outbox.get(mid)
    assert entry is not None
    # Execute: QoS 1 delivers the same message again (here: its chunks published once more)
    for part in entry.parts:
        a.transport.publish(part.topic, part.payload)
    b.poll(0.0)
    # Assert: applied once; the copy counted, and not answered again (right after our ack: a redelivery)
    assert [r.message_id for r in b.ledger.applied(round=0, slot=0)] == [mid]
    assert b.rejects["DuplicateMessage"] == 1
    sent: list[str] = []
    real = b._try_publish
    b._try_publish = lambda topic, payload, **kw: (sent.append(topic), real(topic, payload, **kw))[1]  # type: ignore[method-assign]
    # a copy after the sender's re-send interval is its re-send (our ack was lost): answered again
    now = time.monotonic()
    b._clock = lambda: now + b.config.ack_timeout_s  # type: ignore[method-assign]
    for part in entry.parts:
        a.transport.publish(part.topic, part.payload)
    b.poll(0.0)
    assert sent == [b.topics.ack("a", "b")] and b.rejects["DuplicateMessage"] == 2
    # and a copy right after that one is not
    for part in entry.parts:
        a.transport.publish(part.topic, part.payload)
    b.poll(0.0)
    assert len(sent) == 1 and b.rejects["DuplicateMessage"] == 3


def test_a_second_sequence_for_the_same_round_is_a_duplicate(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    first = a.publish_update(0, 0, tensors(1), receivers=["b"])
    pump([a, b], lambda: not a.pending())
    # a node that lost its outbox would make a new sequence number for the same (round, slot)
    a.outbox.expire(before_round=1)
    a2_mid = a._record_and_send("update", 0, 0, encode_update(tensors(2)), None, {"b"})
    pump([a, b], lambda: not a.pending())
    assert [r.message_id for r in b.ledger.applied(round=0, slot=0)] == [first]
    entry = a.outbox.get(a2_mid)
    assert entry is not None and entry.acks == {"b": ACK_DUPLICATE}


def test_publishing_the_same_round_again_resends_the_recorded_message(swarm: Swarm) -> None:
    a = swarm.node("a")
    m1 = a.publish_update(3, 0, tensors(1), receivers=["b"])
    m2 = a.publish_update(3, 0, tensors(2), receivers=["b"])
    assert m1 == m2


def test_late_update_for_a_closed_round_is_stale_acked_not_applied(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    res = b.collect_round(0, 0, ["a"], quorum=0, deadline_s=0.05)
    assert res.missing == {"a"}
    # Execute: a's update arrives after the round closed
    mid = a.publish_update(0, 0, tensors(), receivers=["b"])
    pump([a, b], lambda: not a.pending())
    # Assert
    assert b.round_updates(0, 0) == {}
    assert b.rejects["StaleRound"] == 1
    assert b.late_peers(0, 0) == {"a"}
    entry = a.outbox.get(mid)
    assert entry is not None and entry.acks == {"b": ACK_STALE}


def test_old_round_replay_is_stale(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    b.begin_round(5)  # tolerance 1: rounds < 4 are stale
    a.publish_update(3, 0, tensors(), receivers=["b"])
    a.publish_update(4, 0, tensors(), receivers=["b"])
    pump([a, b], lambda: not a.pending())
    assert b.rejects["StaleRound"] == 1
    assert set(b.round_updates(4, 0)) == {"a"} and b.round_updates(3, 0) == {}


def test_far_future_round_is_refused(swarm: Swarm) -> None:
    a = swarm.node("a")
    b = swarm.node("b", config=ProtocolConfig(ack_timeout_s=0.2, max_rounds_ahead=2))
    b.begin_round(0)
    a.publish_update(10, 0, tensors(), receivers=["b"])
    pump([a, b], lambda: not a.pending())
    assert b.rejects["StaleRound"] == 1 and b.round_updates(10, 0) == {}


def test_round_returns_early_when_everyone_reported(swarm: Swarm) -> None:
    a, b, c = swarm.node("a"), swarm.node("b"), swarm.node("c")
    a.publish_update(0, 0, tensors(1), receivers=["c"])
    b.publish_update(0, 0, tensors(2), receivers=["c"])
    res = c.collect_round(0, 0, ["a", "b"], quorum=2, deadline_s=10.0)
    assert res.complete and set(res.updates) == {"a", "b"} and res.waited_s < 5.0


def test_silent_peer_round_closes_at_deadline_with_quorum(swarm: Swarm) -> None:
    a, b, c = swarm.node("a"), swarm.node("b"), swarm.node("c")
    swarm.node("silent")
    a.publish_update(0, 0, tensors(1), receivers=["c"])
    b.publish_update(0, 0, tensors(2), receivers=["c"])
    t0 = time.monotonic()
    res = c.collect_round(0, 0, ["a", "b", "silent"], quorum=2, deadline_s=0.5)
    elapsed = time.monotonic() - t0
    assert set(res.updates) == {"a", "b"} and res.missing == {"silent"} and not res.complete
    assert 0.5 <= elapsed < 0.5 + 0.3  # never stalls past the deadline


def test_below_quorum_raises_at_deadline(swarm: Swarm) -> None:
    a, c = swarm.node("a"), swarm.node("c")
    a.publish_update(0, 0, tensors(1), receivers=["c"])
    t0 = time.monotonic()
    with pytest.raises(QuorumNotReached):
        c.collect_round(0, 0, ["a", "b", "d"], quorum=2, deadline_s=0.3)
    assert time.monotonic() - t0 < 0.3 + 0.3
    assert set(c.round_updates(0, 0)) == {"a"}  # what did arrive stays available
    with pytest.raises(ConfigError):
        c.collect_round(1, 0, ["a"], quorum=2, deadline_s=0.1)


def test_lost_update_is_resent_after_the_ack_timeout(swarm: Swarm) -> None:
    a = swarm.node("a")
    b = swarm.node("b", start=False)  # not subscribed yet: the first send is lost
    mid = a.publish_update(0, 0, tensors(), receivers=["b"])
    a.poll(0.0)
    assert [e.message_id for e in a.pending()] == [mid]
    b.start()
    pump([a, b], lambda: not a.pending())
    entry = a.outbox.get(mid)
    assert entry is not None and entry.attempts >= 2
    assert set(b.round_updates(0, 0)) == {"a"}


def test_crashed_sender_resends_from_its_outbox_on_restart(swarm: Swarm) -> None:
    a = swarm.node("a")
    mid = a.publish_update(0, 0, tensors(7), receivers=["b"])  # b does not exist yet: lost
    # crash: the hub drops a (its will fires), a's SQLite connections are cut without any clean-up
    swarm.hub.kill("a")
    a.outbox._store._conn.close()
    a.ledger._store._conn.close()
    a._closed = True
    b = swarm.node("b")
    pump([b], lambda: "a" in b.peers)
    assert b.peers["a"].online is False
    # Execute: a restarts with the same state directory
    a2 = swarm.node("a")
    pump([a2, b], lambda: not a2.pending())
    # Assert
    assert [r.message_id for r in b.ledger.applied(round=0, slot=0)] == [mid]
    assert b.peers["a"].online is True


def test_invalid_update_gets_an_error_envelope_not_a_crash(swarm: Swarm) -> None:
    a = swarm.node("a")
    spec = TensorSpec.like(tensors(0, (4, 3)))
    b = swarm.node("b", update_spec=spec)
    mid = a.publish_update(0, 0, tensors(0, (5, 3)), receivers=["b"])  # wrong shape
    pump([a, b], lambda: not a.pending())
    assert b.round_updates(0, 0) == {} and b.rejects["TensorValidationError"] == 1
    [err] = a.remote_errors
    assert err.receiver == "b" and err.message_id == mid and err.error_type == "TensorValidationError"
    entry = a.outbox.get(mid)
    assert entry is not None and entry.acks == {"b": ACK_REJECTED}
    # b keeps working: a valid update right after is applied
    a.publish_update(1, 0, tensors(1, (4, 3)), receivers=["b"])
    pump([a, b], lambda: not a.pending())
    assert set(b.round_updates(1, 0)) == {"a"}


def test_garbage_on_an_update_topic_is_counted(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    a.transport.publish(a.topics.update(0, "a"), b"\x00garbage")
    b.poll(0.0)
    assert b.rejects["ChunkError"] == 1


def test_sparse_update_sends_its_mask_once(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    upd = tensors(3, (8, 6))
    rng = np.random.default_rng(9)
    masks = {k: rng.random(v.shape) < 0.3 for k, v in upd.items()}
    a.publish_update(0, 0, upd, masks=masks, receivers=["b"])
    a.publish_update(1, 0, upd, masks=masks, receivers=["b"])
    pump([a, b], lambda: not a.pending())
    kinds = [e.kind for e in [a.outbox.get(f"a/{r}/{s}") for r, s in ((0, 0), (0, 1), (1, 2))] if e]
    assert kinds == ["mask", "update", "update"]
    got = b.round_updates(1, 0)["a"].tensors["layers.0.q.B"]
    want = np.where(masks["layers.0.q.B"], upd["layers.0.q.B"], 0)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert len(b.masks) == 2


def test_presence_hello_expert_and_will(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    a.publish_hello({"device": "phone", "ram_gb": 8}, np.arange(16, dtype=np.float32), meta={"link": "0.9"})
    a.publish_expert(2, 7, {"q.B": np.ones((4, 3), np.float16)}, {"mean": np.zeros(8), "cov": np.eye(8)})
    pump([a, b], lambda: "a" in b.peers and b.peers["a"].signature is not None and 2 in b.experts)
    peer = b.peers["a"]
    assert (
        peer.online
        and peer.profile == {"device": "phone", "ram_gb": 8}
        and peer.hello_meta == {"link": "0.9"}
    )
    np.testing.assert_array_equal(peer.signature, np.arange(16, dtype=np.float32))
    ex = b.experts[2]
    assert (
        ex.sender == "a"
        and ex.round == 7
        and set(ex.latent) == {"mean", "cov"}
        and set(ex.tensors) == {"q.B"}
    )
    # a newcomer gets the retained state
    c = swarm.node("c")
    pump([c], lambda: "a" in c.peers and c.peers["a"].signature is not None and 2 in c.experts)
    # a crash fires the last will
    swarm.hub.kill("a")
    pump([b], lambda: b.peers["a"].online is False)


def test_a_sparse_expert_travels_as_values_mask_bits_and_shape(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    rng = np.random.default_rng(3)
    shape = (96, 8)
    masks = {f"l{i}.B": rng.random(shape) < 0.25 for i in range(3)}
    dense = {k: np.where(m, rng.normal(size=shape), 0).astype(np.float16) for k, m in masks.items()}
    latent = {"mean": np.zeros(4), "cov": np.eye(4)}
    a.publish_expert(1, 3, dense, latent, masks=masks)
    pump([a, b], lambda: 1 in b.experts)
    got = b.experts[1].tensors
    assert set(got) == set(dense)
    for k, want in dense.items():
        assert got[k].shape == shape and got[k].dtype == np.float16
        np.testing.assert_array_equal(got[k], want)
        np.testing.assert_array_equal(b.experts[1].masks[k], masks[k])  # the receiver learns the mask
    # the sparse expert is much smaller than the dense one
    sparse_bytes = len(swarm.hub._retained[f"edgedfl/{SWARM}/expert/1/a"].payload)
    a.publish_expert(2, 3, dense, latent)
    dense_bytes = len(swarm.hub._retained[f"edgedfl/{SWARM}/expert/2/a"].payload)
    assert sparse_bytes < 0.55 * dense_bytes
    with pytest.raises(TensorValidationError):
        a.publish_expert(3, 3, dense, latent, masks={"l0.B": np.ones((4, 4), bool)})


@pytest.mark.parametrize("bad", ["count", "bits", "shape", "orphan", "half"])
def test_a_malformed_sparse_expert_is_rejected_and_nothing_is_kept(swarm: Swarm, bad: str) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    mask = np.zeros((16, 8), bool)
    mask[::2, :4] = True  # 32 entries
    body = {"q.B": np.ones(32, np.float16), "mask.q.B": np.packbits(mask.reshape(-1)),
            "shape.q.B": np.array([16, 8], np.int64)}
    if bad == "count":
        body["q.B"] = np.ones(31, np.float16)
    elif bad == "bits":
        body["mask.q.B"] = body["mask.q.B"][:-1]
    elif bad == "shape":
        body["shape.q.B"] = np.array([16, 0], np.int64)
    elif bad == "orphan":
        body["mask.k.B"] = body.pop("mask.q.B")
    else:
        del body["shape.q.B"]
    a.publish_expert(4, 2, body, {})
    pump([a, b], lambda: sum(b.rejects.values()) >= 1)
    assert 4 not in b.experts and b.rejects["MalformedMessage"] == 1


def test_will_message_is_retained_offline() -> None:
    m = NeighbourProtocol.will_message(SWARM, "n1")
    assert m.topic == "edgedfl/lab/presence/n1" and m.retain and m.qos == 1
    assert m.payload == b"offline"


def test_protocol_never_imports_torch() -> None:
    code = (
        "import sys; import edgedfl.protocol.endpoint, edgedfl.protocol.outbox, edgedfl.transport.memory;"
        "import edgedfl.transport.mqtt; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_signed_swarm_accepts_known_keys_and_answers_unknown_ones_with_an_error(swarm: Swarm) -> None:
    sa, sb, stranger = Signer.generate(), Signer.generate(), Signer.generate()
    ring = KeyRing.of(sa, sb)
    a = swarm.node("a", signer=sa, keyring=ring, slots=())  # sends only
    b = swarm.node("b", signer=sb, keyring=ring)
    x = swarm.node("x", signer=stranger, keyring=ring)
    a.publish_update(0, 0, tensors(1), receivers=["b"])
    x.publish_update(0, 0, tensors(2), receivers=["b"])
    pump([a, b, x], lambda: not a.pending() and bool(x.remote_errors))
    assert set(b.round_updates(0, 0)) == {"a"}
    assert b.rejects["UnknownSigner"] >= 1
    # b could not trust x's header, so its error names no message id; x learns why all the same
    err = x.remote_errors[0]
    assert err.receiver == "b" and err.message_id is None and err.error_type == "UnknownSigner"


def test_a_hello_or_expert_made_under_other_settings_is_refused(swarm: Swarm) -> None:
    # Prepare: b and c share this swarm's settings; a is a stale device of another run (other settings)
    a, b, c = swarm.node("a", settings="0" * 32), swarm.node("b", settings="1" * 32), swarm.node("c", settings="1" * 32)
    latent = {"latent.mean": np.zeros(2, np.float32)}

    # Execute
    a.publish_hello({"device": "phone"}, np.ones(4, np.float32))
    a.publish_expert(0, 99, tensors(0), latent)
    c.publish_hello({"device": "laptop"}, np.ones(4, np.float32))
    c.publish_expert(1, 2, tensors(1), latent)
    pump([a, b, c], lambda: "c" in b.peers and b.peers["c"].signature is not None and 1 in b.experts)

    # Assert: nothing of a's is taken (its round-99 expert shadows nothing), c's is, each refusal counted
    assert b.peers.get("a") is None or b.peers["a"].signature is None
    assert 0 not in b.experts and b.experts[1].sender == "c"
    assert b.rejects["SettingsMismatch"] == 2


def test_a_per_round_spec_sees_the_round(swarm: Swarm) -> None:
    seen = []

    def spec(slot: int, round: int) -> TensorSpec | None:
        seen.append((slot, round))
        return TensorSpec.like(tensors(0)) if round else None  # round 0 (statistics): anything

    a, b = swarm.node("a"), swarm.node("b", update_spec=spec)
    a.publish_update(0, 0, {"x.cov": np.eye(2, dtype=np.float32)}, receivers=["b"])
    a.publish_update(1, 0, tensors(0, (5, 3)), receivers=["b"])  # wrong shape for round 1
    pump([a, b], lambda: not a.pending())
    assert set(b.round_updates(0, 0)) == {"a"} and b.round_updates(1, 0) == {}
    assert (0, 0) in seen and (0, 1) in seen and b.rejects["TensorValidationError"] == 1


def _expert(node: NeighbourProtocol, slot: int, round: int, value: float) -> None:
    node.publish_expert(slot, round, {"q.B": np.full((4, 3), value, np.float16)}, {})


def test_an_expert_is_taken_only_from_a_member_of_its_cluster_for_a_round_of_the_run(swarm: Swarm) -> None:
    # Prepare: a and b are the cluster of slot 0, c of slot 1; r receives
    a, b, c, r = swarm.node("a"), swarm.node("b"), swarm.node("c"), swarm.node("r")
    # Execute: before r knows the clusters, c publishes (retained) a copy for slot 0, which is not its cluster
    _expert(c, 0, 3, 9.0)
    pump([c, r], lambda: "c" in r.expert_copies.get(0, {}))
    r.admit_experts({0: ["a", "b"], 1: ["c"]}, max_round=3)
    # Assert: judged at once: dropped and counted, with the sender it claimed
    assert 0 not in r.experts and r.rejects["NotAMember"] == 1 and r.rejects_by_sender["c"] == 1

    # Execute: a non-member after the clusters are known, a round past the run's schedule, then members' copies
    _expert(c, 0, 2, 9.0)
    _expert(a, 0, 99, 9.0)
    _expert(b, 0, 3, 2.0)
    _expert(a, 0, 3, 1.0)
    _expert(c, 1, 3, 5.0)
    pump([a, b, c, r], lambda: len(r.expert_copies.get(0, {})) == 2 and 1 in r.experts)
    # Assert: refused and counted; among the members' copies of the last round the smallest id is chosen
    assert r.rejects["NotAMember"] == 2 and r.rejects["StaleRound"] == 1
    chosen = r.experts[0]
    assert (chosen.sender, chosen.round) == ("a", 3)
    np.testing.assert_array_equal(chosen.tensors["q.B"], np.full((4, 3), 1.0, np.float16))
    assert r.experts[1].sender == "c"


def test_every_receiver_chooses_the_same_expert_whatever_the_arrival_order(swarm: Swarm) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    first = swarm.node("r1")
    first.admit_experts({0: ["a", "b"]}, max_round=5)
    # r1 hears b's copy first and a's later; r2 comes when both are retained and gets them together
    _expert(b, 0, 4, 2.0)
    pump([b, first], lambda: 0 in first.experts)
    assert first.experts[0].sender == "b"
    _expert(a, 0, 4, 1.0)
    pump([a, first], lambda: len(first.expert_copies[0]) == 2)
    second = swarm.node("r2")
    second.admit_experts({0: ["a", "b"]}, max_round=5)
    pump([second], lambda: len(second.expert_copies.get(0, {})) == 2)
    assert first.experts[0].sender == second.experts[0].sender == "a"
    # a later round wins over the smaller id
    _expert(b, 0, 5, 3.0)
    pump([b, first, second], lambda: first.experts[0].round == 5 == second.experts[0].round)
    assert first.experts[0].sender == second.experts[0].sender == "b"


@pytest.mark.parametrize("profile", [{"signature_spread": "wide"}, {"signature_spread": 7.0},
                                     {"link_rate_bps": -1}, {"link_rate_bps": True}])
def test_a_hello_whose_numbers_are_not_numbers_in_range_is_refused_and_counted(swarm: Swarm, profile: dict) -> None:
    a, b = swarm.node("a"), swarm.node("b")
    a.publish_hello(profile, np.ones(4, np.float32))
    pump([a, b], lambda: sum(b.rejects.values()) > 0)
    assert b.rejects.get("MalformedMessage") == 1
    assert "a" not in b.peers or b.peers["a"].signature is None  # nothing of it was taken
    a.publish_hello({"signature_spread": 0.003, "link_rate_bps": 1e8}, np.ones(4, np.float32))  # a good one is
    pump([a, b], lambda: "a" in b.peers and b.peers["a"].signature is not None)
    assert b.peers["a"].profile["signature_spread"] == 0.003
