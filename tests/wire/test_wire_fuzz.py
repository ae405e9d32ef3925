"""Hypothesis fuzzing of every decoder: only typed errors, bounded memory, the process lives.

Each property feeds a decoder bytes it did not make (random, truncated,
mutated, with absurd length claims) or structurally wrong tensors, and checks
that a decoder either refuses them with a :class:`~edgedfl.errors.WireError`
(nothing else may escape) or returns something that holds up: a decoded
envelope or body survives re-encoding unchanged, and a body is only accepted
when it is well formed. Memory claims are checked with tracemalloc: a message
that *claims* gigabytes must cost almost nothing to refuse.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedfl.errors import PayloadTooLarge, TensorValidationError, WireError
from edgedfl.wire import (
    CHUNK_HEADER_BYTES,
    MAGIC,
    SCHEMA_VERSION,
    Envelope,
    KeyRing,
    Limits,
    MaskRegistry,
    Reassembler,
    Signer,
    TensorSpec,
    decode_envelope,
    decode_masks,
    decode_tensors,
    decode_update,
    encode_envelope,
    encode_masks,
    encode_tensors,
    encode_update,
    inspect_update,
    mask_id,
    parse_chunk_header,
    split_message,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOLDEN = Path(__file__).parent / "golden"
SAMPLES = [p.read_bytes() for p in sorted(GOLDEN.glob("*.bin"))]
SIGNED = (GOLDEN / "update_signed.bin").read_bytes()
ORIGINAL = {sample: decode_envelope(sample) for sample in SAMPLES}
#: which decoder takes the body of each golden envelope kind (an error envelope has no body)
BODY_DECODER = {"hello": "tensors", "mask": "masks", "update": "update", "error": None}
MASK_BODY = decode_envelope((GOLDEN / "mask.bin").read_bytes()).body
SIGNER = Signer.from_seed(bytes(range(32)), "test-key")
RING = KeyRing.of(SIGNER)
SMALL = Limits(max_message_bytes=1 << 20, max_header_bytes=4096, max_body_header_bytes=1 << 16,
               max_dense_elements=1 << 16, max_total_dense_elements=1 << 18, max_tensors=64)
T = TypeVar("T")


def _decode(fn: Callable[[], T]) -> T | WireError:
    """``fn()``'s result, or the WireError it raised; any other exception propagates and fails the test."""
    try:
        return fn()
    except WireError as exc:
        assert isinstance(exc, ValueError)  # every leaf is also the builtin a caller would catch
        return exc


def _refused(result: object) -> bool:
    return isinstance(result, WireError)


def _check_envelope(data: bytes, env: Envelope, *, verified: bool) -> None:
    assert isinstance(env, Envelope)
    assert data.endswith(env.body) and hashlib.sha256(env.body).hexdigest() == env.sha256
    again = encode_envelope(env)  # relaying keeps the signature
    assert decode_envelope(again) == env
    if verified:
        assert env.key_id == SIGNER.key_id and env.signed
        assert decode_envelope(again, keyring=RING) == env


def _check_update(data: bytes, out: dict[str, np.ndarray]) -> None:
    info = inspect_update(data, limits=SMALL)
    assert {k: v.shape for k, v in out.items()} == info.shapes
    assert sum(v.size for v in out.values()) <= SMALL.max_total_dense_elements
    for value in out.values():
        assert value.dtype == np.float32 and np.isfinite(value).all()
    again = decode_update(encode_update(out, precision="fp32"), limits=SMALL)
    assert set(again) == set(out) and all(np.array_equal(again[k], out[k]) for k in out)


def _check_masks(out: dict[str, np.ndarray], registry: MaskRegistry) -> None:
    for mask in out.values():
        assert mask.dtype == np.bool_ and mask_id(mask) in registry
    again = decode_masks(encode_masks(out), limits=SMALL)
    assert set(again) == set(out) and all(np.array_equal(again[k], out[k]) for k in out)


def _check_tensors(out: dict[str, np.ndarray]) -> None:
    for value in out.values():
        assert value.dtype.kind != "f" or np.isfinite(value).all()
    again = decode_tensors(encode_tensors(out), limits=SMALL)
    assert set(again) == set(out)
    assert all(again[k].dtype == out[k].dtype and np.array_equal(again[k], out[k]) for k in out)


def _check_chunk(data: bytes, result: bytes | None, reassembler: Reassembler) -> None:
    header = parse_chunk_header(data)
    if result is None:  # the first chunk of a longer message: held, not returned
        assert header.count > 1 and reassembler.pending_messages == 1
    else:
        assert result == data[CHUNK_HEADER_BYTES:] and hashlib.sha256(result).digest() == header.sha256


def _all_decoders(data: bytes) -> dict[str, object]:
    """Every decoder on ``data``: decoder -> its result or the WireError it raised.

    A result that is not an error is checked (it round-trips, it is what the
    decoder promises); the caller asserts which decoders had to refuse.
    """
    registry = MaskRegistry(max_masks=8, max_bytes=1 << 20)
    decode_masks(MASK_BODY, registry=registry)  # the golden updates' mask is held
    reassembler = Reassembler(max_message_bytes=1 << 16)
    results: dict[str, object] = {
        "envelope": _decode(lambda: decode_envelope(data, limits=SMALL)),
        "signed envelope": _decode(lambda: decode_envelope(data, limits=SMALL, keyring=RING)),
        "update": _decode(lambda: decode_update(data, limits=SMALL, masks=registry)),
        "masks": _decode(lambda: decode_masks(data, limits=SMALL, registry=registry)),
        "tensors": _decode(lambda: decode_tensors(data, limits=SMALL)),
        "chunk": _decode(lambda: reassembler.add(data)),
    }
    for name, result in results.items():
        if _refused(result):
            continue
        if name in ("envelope", "signed envelope"):
            _check_envelope(data, result, verified=name == "signed envelope")  # type: ignore[arg-type]
        elif name == "update":
            _check_update(data, result)  # type: ignore[arg-type]
        elif name == "masks":
            _check_masks(result, registry)  # type: ignore[arg-type]
        elif name == "tensors":
            _check_tensors(result)  # type: ignore[arg-type]
        else:
            _check_chunk(data, result, reassembler)  # type: ignore[arg-type]
    return results


def _accepted(results: dict[str, object]) -> set[str]:
    """Decoders that returned a message (a chunk merely held for later is not one)."""
    return {name for name, result in results.items() if not _refused(result) and result is not None}


# Starts that get random bytes past the first checks: the envelope and chunk magic, a safetensors prefix.
PREFIXES = [b"", MAGIC + bytes([SCHEMA_VERSION, 0]), MAGIC + bytes([SCHEMA_VERSION, 1]), b"EDFC\x01\x00",
            struct.pack("<Q", 2) + b"{}", struct.pack("<Q", 64) + b'{"__metadata__":{"edgedfl":"']


@FUZZ
@given(st.sampled_from(PREFIXES), st.binary(max_size=2048))
def test_random_bytes(prefix: bytes, tail: bytes) -> None:
    results = _all_decoders(prefix + tail)
    # nothing made up is a message: every decoder refuses it (a chunk header may at most be held)
    assert _accepted(results) == set(), results


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in sorted(GOLDEN.glob("*.bin"))])
def test_golden_messages_pass_the_checks_the_fuzzing_applies(sample: bytes) -> None:
    # the checks on an accepted result hold for real messages (so the fuzz tests can rely on them)
    assert _accepted(_all_decoders(sample)) == ({"envelope", "signed envelope"} if sample == SIGNED else {"envelope"})
    expected = BODY_DECODER[ORIGINAL[sample].kind]
    assert _accepted(_all_decoders(ORIGINAL[sample].body)) == ({expected} if expected else set())


@FUZZ
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_and_mutated_golden_messages(sample: bytes, draw: st.DataObject) -> None:
    original = ORIGINAL[sample]
    cut = draw.draw(st.integers(0, len(sample)))
    results = _all_decoders(sample[:cut])
    if cut < len(sample):
        assert _accepted(results) == set(), (cut, results)  # a strict prefix is never a message
    else:
        assert results["envelope"] == original
        if sample == SIGNED:
            assert results["signed envelope"] == original
        else:
            assert _refused(results["signed envelope"])

    mutated = bytearray(sample)
    for _ in range(draw.draw(st.integers(1, 4))):
        pos = draw.draw(st.integers(0, len(mutated) - 1))
        mutated[pos] = draw.draw(st.integers(0, 255))
    results = _all_decoders(bytes(mutated))
    # only the untouched signed message passes signature verification
    assert _refused(results["signed envelope"]) == (bytes(mutated) != SIGNED), results
    assert _accepted(results) <= {"envelope", "signed envelope"}, results
    env = results["envelope"]
    if not _refused(env):  # a harmless mutation (e.g. a digit of round): the body is still the one sent
        assert isinstance(env, Envelope) and env.body == original.body
        expected = BODY_DECODER[original.kind]
        assert _accepted(_all_decoders(env.body)) == ({expected} if expected else set())


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_absurd_length_claims_cost_no_memory(envelope_len: int, body_len: int, tail: bytes) -> None:
    envelope = b"EDFL" + struct.pack(">BBI", SCHEMA_VERSION, 0, envelope_len) + tail
    body = struct.pack("<Q", body_len) + tail
    huge = json.dumps({
        "x": {"dtype": "F32", "shape": [body_len % 2**40 + 1, 2**31], "data_offsets": [0, 4]},
        "__metadata__": {"edgedfl": json.dumps({"codec": "update/1", "tensors": {"x": {"shape": [2**40]}}})},
    }).encode()
    claims = struct.pack("<Q", len(huge)) + huge + b"\0" * 4
    tracemalloc.start()
    try:
        for data in (envelope, body, claims):
            assert _accepted(_all_decoders(data)) == set()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"refusing a size claim allocated {peak} bytes"


def test_claimed_dense_shape_is_refused_before_allocating() -> None:
    mask = np.ones(4, bool)
    body = safetensors.numpy.save(
        {"x": np.ones(4, np.float16)},
        metadata={"edgedfl": json.dumps({"codec": "update/1", "tensors": {"x": {"shape": [2**20, 2**10]}}})},
    )
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            decode_update(body, masks={"x": mask})  # default limits: 64 Mi elements
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


SHAPES = {"a": (6, 4), "b": (3,), "c": (2, 2, 2)}
finite = st.floats(-10, 10, width=32)


@st.composite
def tensor_dicts(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """Tensors close to SHAPES, with some names, shapes, dtypes or values wrong; flag: all correct."""
    tensors: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    ok = True
    for name, shape in SHAPES.items():
        if draw(st.integers(0, 9)) == 0:
            ok = False  # missing
            continue
        if draw(st.integers(0, 9)) == 0:
            shape = (*shape, 1)
            ok = False
        size = int(np.prod(shape))
        values = np.array(draw(st.lists(finite, min_size=size, max_size=size)), np.float32).reshape(shape)
        if draw(st.booleans()):
            masks[name] = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(shape)
        poison = draw(st.sampled_from([None] * 8 + [np.nan, np.inf, -np.inf]))
        if poison is not None:
            pos = draw(st.integers(0, size - 1))
            values.flat[pos] = poison
            # Outside its mask a value is dropped by design (B is zero there), so it harms nothing.
            ok = ok and name in masks and not masks[name].flat[pos]
        tensors[name] = values.astype(draw(st.sampled_from([np.float32, np.float16, np.float64])))
    if draw(st.integers(0, 9)) == 0:
        tensors["extra"] = np.zeros(2, np.float32)
        ok = False
    return tensors, masks, ok


@FUZZ
@given(tensor_dicts(), st.sampled_from(["fp16", "fp32", "int8"]))
def test_wrong_extra_missing_nonfinite_tensors(case: tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool],
                                               precision: str) -> None:
    tensors, masks, ok = case
    spec = TensorSpec(shapes=SHAPES, max_abs=1e4)
    try:
        # Bypass the sender's own checks where they would refuse: receivers must cope anyway.
        body = encode_update(tensors, masks, precision)  # type: ignore[arg-type]
    except TensorValidationError:
        assert not ok
        return
    registry = MaskRegistry()
    decode_masks(encode_masks(masks), registry=registry)
    try:
        out = decode_update(body, spec=spec, masks=registry)
    except TensorValidationError:
        assert not ok
        return
    assert ok
    for name, value in tensors.items():
        expected = np.where(masks.get(name, True), value.astype(np.float32), np.float32(0))
        tol = 0.0 if precision == "fp32" and value.dtype != np.float64 else 0.08 if precision == "int8" else 0.01
        np.testing.assert_allclose(out[name], expected, atol=tol, rtol=1e-3)


def _raw_update(tensors: dict[str, np.ndarray], table: dict[str, object]) -> bytes:
    meta = {"edgedfl": json.dumps({"codec": "update/1", "tensors": table})}
    return safetensors.numpy.save(tensors, metadata=meta)


SCALE = "#scale"


def _well_formed(arrays: dict[str, tuple[str, list[int]]], table: dict[str, dict[str, object]]) -> bool:
    """Whether an update body of ``arrays`` (zeros) described by ``table`` must decode, without masks."""
    values = {k for k in arrays if not k.endswith(SCALE)}
    scaled = {k[: -len(SCALE)] for k in arrays if k.endswith(SCALE)}
    if set(table) != values or not scaled <= values:
        return False
    for name, info in table.items():
        dtype, shape = arrays[name]
        if "mask" in info:  # a sparse tensor needs its mask (none is given), and "g" or 5 is no mask id
            return False
        if dtype not in ("float16", "float32", "int8") or shape != info["shape"]:
            return False
        if (dtype == "int8") != (name in scaled) or (name in scaled and arrays[name + SCALE] != ("float32", [1])):
            return False
    return True


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["a", "b", "a#scale", "z"]),
                    st.tuples(st.sampled_from(["float16", "float32", "int8", "float64", "uint8", "int32"]),
                              st.lists(st.integers(0, 5), max_size=3)), max_size=4),
    st.dictionaries(st.sampled_from(["a", "b", "y"]),
                    st.fixed_dictionaries({"shape": st.lists(st.integers(0, 6), max_size=3)},
                                          optional={"mask": st.sampled_from(["0" * 64, "g", 5])}), max_size=3),
    st.booleans(),
)
def test_hand_made_update_bodies(arrays: dict[str, tuple[str, list[int]]], table: dict[str, dict[str, object]],
                                 describe: bool) -> None:
    if describe:  # a table that matches the arrays, so that well-formed bodies come up often
        table = {k: {"shape": shape} for k, (_, shape) in arrays.items() if not k.endswith(SCALE)}
    body = _raw_update({k: np.zeros(shape, dtype) for k, (dtype, shape) in arrays.items()}, table)
    ok = _well_formed(arrays, table)

    plain = _decode(lambda: decode_update(body))
    strict = _decode(lambda: decode_update(body, spec=TensorSpec(shapes={"a": (2, 3)})))

    # accepted exactly when well formed, and then as the table says: zeros of the tabled shapes
    assert _refused(plain) != ok, (arrays, table, plain)
    if ok:
        assert isinstance(plain, dict)
        assert {k: v.shape for k, v in plain.items()} == {k: tuple(info["shape"]) for k, info in table.items()}
        assert all(v.dtype == np.float32 and not v.any() for v in plain.values())
    # the spec only adds checks: it accepts exactly one tensor "a" of shape (2, 3), as decoded without it
    assert _refused(strict) != (ok and table == {"a": {"shape": [2, 3]}}), (arrays, table, strict)
    if not _refused(strict):
        assert isinstance(strict, dict) and isinstance(plain, dict)
        assert set(strict) == set(plain) and all(np.array_equal(strict[k], plain[k]) for k in plain)


MESSAGES = [bytes(range(256)) * 3, b"", b"short", bytes(1000)]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(MESSAGES) - 1), st.integers(0, 30), st.integers(0, 3)),
                max_size=60),
       st.integers(1, 300))
def test_duplicate_out_of_order_unfinished_and_corrupt_chunks(
    ops: list[tuple[int, int, int]], chunk_size: int
) -> None:
    clock = [0.0]
    r = Reassembler(max_message_bytes=2000, max_chunks=64, max_pending_messages=3, timeout_s=5,
                    max_pending_bytes=1500, clock=lambda: clock[0])
    split = [split_message(m, chunk_size) for m in MESSAGES]
    for which, index, action in ops:
        chunks = split[which]
        chunk = chunks[index % len(chunks)]
        if action == 1:  # corrupt one data or header byte
            pos = (index * 7919) % len(chunk)
            chunk = chunk[:pos] + bytes([chunk[pos] ^ 0x5A]) + chunk[pos + 1:]
        elif action == 2:
            clock[0] += 2.0  # time passes; unfinished messages eventually expire
        elif action == 3:
            chunk = chunk[: len(chunk) // 2]
        result = _decode(lambda c=chunk: r.add(c))  # type: ignore[misc]
        if not _refused(result) and result is not None:
            assert result == MESSAGES[which]  # a corrupt chunk never completes a message, let alone another's
        assert r.pending_bytes <= 1500 and r.pending_messages <= 3
    for error in r.drain_errors():
        assert isinstance(error, WireError)
