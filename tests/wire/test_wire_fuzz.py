"""Hypothesis fuzzing of every decoder: only typed errors, bounded memory, the process lives.

Each property feeds a decoder bytes it did not make (random, truncated,
mutated, with absurd length claims) or structurally wrong tensors, and checks
that the only exceptions are subclasses of ``EdgeDFLError``. Memory claims
are checked with tracemalloc: a message that *claims* gigabytes must cost
almost nothing to refuse.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedfl.errors import EdgeDFLError, TensorValidationError
from edgedfl.wire import (
    SCHEMA_VERSION,
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
    encode_masks,
    encode_update,
    split_message,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOLDEN = Path(__file__).parent / "golden"
SAMPLES = [p.read_bytes() for p in sorted(GOLDEN.glob("*.bin"))]
SIGNER = Signer.from_seed(bytes(range(32)), "test-key")
RING = KeyRing.of(SIGNER)
SMALL = Limits(max_message_bytes=1 << 20, max_header_bytes=4096, max_body_header_bytes=1 << 16,
               max_dense_elements=1 << 16, max_total_dense_elements=1 << 18, max_tensors=64)


def _only_typed(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except EdgeDFLError:
        return None
    # anything else propagates and fails the test


def _all_decoders(data: bytes) -> None:
    registry = MaskRegistry(max_masks=8, max_bytes=1 << 20)
    _only_typed(lambda: decode_envelope(data, limits=SMALL))
    _only_typed(lambda: decode_envelope(data, limits=SMALL, keyring=RING))
    _only_typed(lambda: decode_update(data, limits=SMALL, masks=registry))
    _only_typed(lambda: decode_masks(data, limits=SMALL, registry=registry))
    _only_typed(lambda: decode_tensors(data, limits=SMALL))
    _only_typed(lambda: Reassembler(max_message_bytes=1 << 16).add(data))


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _all_decoders(data)


@FUZZ
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_and_mutated_golden_messages(sample: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(sample)))
    _all_decoders(sample[:cut])
    mutated = bytearray(sample)
    for _ in range(draw.draw(st.integers(1, 4))):
        pos = draw.draw(st.integers(0, len(mutated) - 1))
        mutated[pos] = draw.draw(st.integers(0, 255))
    _all_decoders(bytes(mutated))
    env = _only_typed(lambda: decode_envelope(bytes(mutated), limits=SMALL))
    if env is not None:  # a harmless mutation (e.g. a digit of round): the body must still be checked
        _all_decoders(env.body)  # type: ignore[attr-defined]


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
            _all_decoders(data)
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
        _only_typed(lambda: decode_update(body, masks={"x": mask}))  # default limits: 64 Mi elements
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


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["a", "b", "a#scale", "z"]),
                    st.tuples(st.sampled_from(["float16", "float32", "int8", "float64", "uint8", "int32"]),
                              st.lists(st.integers(0, 5), max_size=3)), max_size=4),
    st.dictionaries(st.sampled_from(["a", "b", "y"]),
                    st.fixed_dictionaries({"shape": st.lists(st.integers(0, 6), max_size=3)},
                                          optional={"mask": st.sampled_from(["0" * 64, "g", 5])}), max_size=3),
)
def test_hand_made_update_bodies(arrays: dict[str, tuple[str, list[int]]], table: dict[str, object]) -> None:
    tensors = {k: np.zeros(shape, dtype) for k, (dtype, shape) in arrays.items()}
    _only_typed(lambda: decode_update(_raw_update(tensors, table), spec=TensorSpec(shapes={"a": (2, 3)})))
    _only_typed(lambda: decode_update(_raw_update(tensors, table)))


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
        result = _only_typed(lambda c=chunk: r.add(c))  # type: ignore[misc]
        if result is not None:
            assert result in MESSAGES
        assert r.pending_bytes <= 1500 and r.pending_messages <= 3
    for error in r.drain_errors():
        assert isinstance(error, EdgeDFLError)
