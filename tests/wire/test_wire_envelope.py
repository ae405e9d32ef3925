"""Envelope encoding, decoding, signing and the errors each rejection raises."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from edgedfl.errors import (
    EdgeDFLError,
    IntegrityError,
    MalformedMessage,
    PayloadTooLarge,
    SchemaVersionError,
    SignatureError,
    UnknownSigner,
)
from edgedfl.wire import (
    SCHEMA_VERSION,
    Envelope,
    KeyRing,
    Limits,
    Signer,
    canonical_json,
    decode_envelope,
    encode_envelope,
    encode_tensors,
    is_envelope,
)

SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))


def _env(**overrides: object) -> Envelope:
    fields: dict[str, object] = {"kind": "update", "swarm": "s1", "sender": "node-1", "round": 7, "slot": 2, "seq": 11,
                                     "body": b"\x00safetensors-ish\xff" * 10, "meta": {"k": "v", "\u00fc": "\u20ac"}}
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["presence", "hello", "update", "expert", "ack", "mask"])
def test_unsigned_round_trip_every_kind(kind: str) -> None:
    env = _env(kind=kind)
    data = encode_envelope(env)
    assert is_envelope(data)
    assert decode_envelope(data) == env


def test_empty_body_and_big_ints_round_trip() -> None:
    env = _env(body=b"", round=2**63 - 1, slot=0, seq=2**40, meta={})
    assert decode_envelope(encode_envelope(env)) == env


def test_signed_round_trip_and_relay_keeps_signature() -> None:
    signer = Signer.from_seed(SEED_A, "node-1-key")
    env = _env()
    data = encode_envelope(env, signer)
    decoded = decode_envelope(data, keyring=KeyRing.of(signer))
    assert decoded.signed and decoded.key_id == "node-1-key" and decoded.unsigned() == env
    # A relay re-encodes what it received without the author's key: bytes stay identical.
    assert encode_envelope(decoded) == data


def test_encoding_is_deterministic_and_header_canonical() -> None:
    env = _env()
    a, b = encode_envelope(env), encode_envelope(env)
    assert a == b
    (header_len,) = struct.unpack(">I", a[6:10])
    header = a[10 : 10 + header_len]
    import json

    assert header == canonical_json(json.loads(header))
    assert header.isascii()


def test_error_envelope_round_trips_and_carries_no_body() -> None:
    env = Envelope.for_error("s1", "node-2", "boom: bad tensor", round=3, seq=4)
    decoded = decode_envelope(encode_envelope(env))
    assert decoded.is_error and decoded.error == "boom: bad tensor" and decoded.body == b""


def test_error_and_body_never_both() -> None:
    with pytest.raises(MalformedMessage):
        Envelope("error", "s", "n", body=b"x", error="e")
    with pytest.raises(MalformedMessage):
        Envelope("error", "s", "n")
    with pytest.raises(MalformedMessage):
        Envelope("update", "s", "n", error="e")


@pytest.mark.parametrize(
    "overrides",
    [{"kind": "gossip"}, {"swarm": ""}, {"sender": "a/b"}, {"sender": "+"}, {"round": -1},
     {"seq": 2**63}, {"slot": True}, {"meta": {"k": 1}}, {"body": "text"}],
)
def test_bad_fields_are_malformed(overrides: dict[str, object]) -> None:
    with pytest.raises(MalformedMessage):
        _env(**overrides)


def test_flipped_body_byte_unknown_key_and_bad_signature_are_distinct() -> None:
    signer_a = Signer.from_seed(SEED_A, "a")
    ring = KeyRing.of(signer_a)
    data = bytearray(encode_envelope(_env(), signer_a))

    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    with pytest.raises(IntegrityError):
        decode_envelope(bytes(flipped), keyring=ring)
    with pytest.raises(IntegrityError):  # integrity is checked without a key ring too
        decode_envelope(bytes(flipped))

    stranger = encode_envelope(_env(), Signer.from_seed(SEED_B, "b"))
    with pytest.raises(UnknownSigner):
        decode_envelope(stranger, keyring=ring)

    # Same key id, other key: a forged signature.
    forged = encode_envelope(_env(), Signer.from_seed(SEED_B, "a"))
    with pytest.raises(SignatureError) as info:
        decode_envelope(forged, keyring=ring)
    assert not isinstance(info.value, UnknownSigner)

    # A header altered after signing (round bumped to replay it as a later one).
    replayed = encode_envelope(dataclasses.replace(decode_envelope(bytes(data)), round=8))
    with pytest.raises(SignatureError):
        decode_envelope(replayed, keyring=ring)


def test_unsigned_is_refused_when_keys_are_configured() -> None:
    ring = KeyRing.of(Signer.from_seed(SEED_A, "a"))
    with pytest.raises(SignatureError):
        decode_envelope(encode_envelope(_env()), keyring=ring)


def test_key_restricted_to_its_senders() -> None:
    signer = Signer.from_seed(SEED_A, "a")
    ring = KeyRing()
    ring.add("a", signer.public_bytes(), senders={"node-1"})
    decode_envelope(encode_envelope(_env(sender="node-1"), signer), keyring=ring)
    with pytest.raises(SignatureError):
        decode_envelope(encode_envelope(_env(sender="node-2"), signer), keyring=ring)


def test_default_key_id_is_the_fingerprint() -> None:
    signer = Signer.from_seed(SEED_A)
    assert len(signer.key_id) == 16 and "SEED" not in repr(signer)


def _with_header(header: bytes, body: bytes = b"", *, version: int = SCHEMA_VERSION, flags: int = 0) -> bytes:
    return b"EDFL" + struct.pack(">BBI", version, flags, len(header)) + header + body


def test_preamble_problems() -> None:
    good = encode_envelope(_env())
    with pytest.raises(MalformedMessage):
        decode_envelope(b"")
    with pytest.raises(MalformedMessage):
        decode_envelope(b"XXXX" + good[4:])
    with pytest.raises(SchemaVersionError):
        decode_envelope(good[:4] + bytes([SCHEMA_VERSION + 1]) + good[5:])
    with pytest.raises(MalformedMessage):
        decode_envelope(good[:5] + b"\x80" + good[6:])
    with pytest.raises(MalformedMessage):
        decode_envelope(good[:-1])
    with pytest.raises(MalformedMessage):
        decode_envelope(good + b"\x00")


def test_absurd_header_length_refused_before_reading() -> None:
    data = b"EDFL" + struct.pack(">BBI", SCHEMA_VERSION, 0, 2**32 - 1) + b"{}"
    with pytest.raises(PayloadTooLarge):
        decode_envelope(data)
    data = b"EDFL" + struct.pack(">BBI", SCHEMA_VERSION, 0, 1000) + b"{}"
    with pytest.raises(MalformedMessage):
        decode_envelope(data)


def test_limits_bound_message_and_meta() -> None:
    data = encode_envelope(_env(meta={str(i): "x" for i in range(10)}))
    with pytest.raises(PayloadTooLarge):
        decode_envelope(data, limits=Limits(max_message_bytes=len(data) - 1))
    with pytest.raises(MalformedMessage):
        decode_envelope(data, limits=Limits(max_meta_items=5))


@pytest.mark.parametrize(
    "header",
    [b"[]", b"{", b"\xff\xfe", b'{"kind":"update","kind":"hello"}', b"{}",
     canonical_json({"body_len": 0, "body_sha256": "0" * 64, "kind": "hello", "meta": {}, "round": 0,
                     "sender": "n", "seq": 0, "slot": 0, "swarm": "s", "extra": 1}),
     canonical_json({"body_len": 0, "body_sha256": "0" * 64, "kind": "hello", "meta": {}, "round": 1.5,
                     "sender": "n", "seq": 0, "slot": 0, "swarm": "s"}),
     canonical_json({"body_len": 0, "body_sha256": "0" * 64, "kind": "hello", "meta": {}, "round": 0,
                     "sender": "n", "seq": 0, "slot": 0, "swarm": "s", "key_id": "k"})],
)
def test_bad_headers_are_malformed(header: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_envelope(_with_header(header))


def test_every_rejection_is_an_edgedfl_error_and_a_value_error() -> None:
    with pytest.raises(EdgeDFLError) as info:
        decode_envelope(b"garbage!!!!!")
    assert isinstance(info.value, ValueError)


def test_body_of_tensors_travels_inside() -> None:
    import numpy as np

    body = encode_tensors({"sig": np.ones(4, np.float32)})
    assert decode_envelope(encode_envelope(_env(kind="hello", body=body))).body == body
