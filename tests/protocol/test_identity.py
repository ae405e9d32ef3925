"""Identity: every message signed; keys pinned on first use or taken from a key ring; forgeries counted."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from proto_helpers import Swarm, pump, tensors

from edgedfl.wire.signing import KeyRing, Signer, load_or_create_signer, read_keyring, write_keyring


@pytest.fixture
def swarm(tmp_path):
    s = Swarm(tmp_path)
    yield s
    s.close()


def _node(swarm: Swarm, name: str, **kw):
    return swarm.node(name, signer=kw.pop("signer", None) or Signer.generate(), **kw)


def test_tofu_pins_a_key_at_the_first_hello_and_refuses_another_later(swarm: Swarm, tmp_path) -> None:
    # Prepare: a and b trust on first use; a later, another "a" (a new key) says hello
    a, b = _node(swarm, "a", tofu=True), _node(swarm, "b", tofu=True)
    a.publish_hello({"device": "phone"}, np.ones(4, np.float32))
    b.publish_hello({"device": "laptop"}, np.ones(4, np.float32))  # b's acks are verified by a against b's key
    pump([a, b], lambda: "a" in b.peers and b.peers["a"].signature is not None and "b" in a.peers)
    assert b.keyring is not None and b.keyring.key_of("a") == a.signer.key_id

    # Execute: a's signed update is accepted; an impostor with another key for "a" is refused
    a.publish_update(1, 0, tensors(1), receivers=["b"])
    pump([a, b], lambda: not a.pending())
    impostor = Swarm(tmp_path / "x")
    impostor.hub = swarm.hub
    fake = impostor.node("a", signer=Signer.generate())
    fake.publish_hello({"device": "laptop"}, np.zeros(4, np.float32))
    pump([b], lambda: b.rejects["KeyChanged"] >= 1)

    # Assert: the pinned key stays, its signature counted as verified; the pin survives a restart
    assert set(b.round_updates(1, 0)) == {"a"} and b.keyring.key_of("a") == a.signer.key_id
    pins = json.loads((tmp_path / "b" / "pins.json").read_text())
    assert pins[a.signer.key_id]["senders"] == ["a"]
    impostor.close()


def test_unsigned_and_unknown_signer_messages_are_dropped_and_counted(swarm: Swarm) -> None:
    ring_owner = Signer.generate()
    b = swarm.node("b", signer=Signer.generate(), keyring=KeyRing.of(ring_owner))
    unsigned = swarm.node("u")  # no key at all
    stranger = _node(swarm, "s")
    unsigned.publish_hello({}, np.ones(4, np.float32))
    stranger.publish_hello({}, np.ones(4, np.float32))
    stranger.publish_update(1, 0, tensors(1), receivers=["b"])
    pump([b, unsigned, stranger], lambda: b.rejects["SignatureError"] >= 1 and b.rejects["UnknownSigner"] >= 2)
    assert "u" not in b.peers or b.peers["u"].signature is None
    assert "s" not in b.peers or b.peers["s"].signature is None
    assert b.round_updates(1, 0) == {}


def test_a_device_key_file_is_created_once_private_and_reloaded(tmp_path) -> None:
    path = tmp_path / "state" / "identity.key"
    first = load_or_create_signer(path, "n1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_or_create_signer(path, "n1")
    assert again.public_bytes() == first.public_bytes()
    ring = KeyRing()
    ring.add("n1", first.public_bytes(), senders=["n1"])
    back = read_keyring(write_keyring(tmp_path / "ring.json", ring))
    assert back.entries() == ring.entries() and back.key_of("n1") == "n1"
