"""Tensor bodies: round trips, masks, validation, and malformed safetensors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy

from edgedfl.errors import (
    ConfigError,
    MalformedMessage,
    PayloadTooLarge,
    TensorValidationError,
    UnknownMask,
)
from edgedfl.wire import (
    Limits,
    MaskRegistry,
    TensorSpec,
    decode_masks,
    decode_tensors,
    decode_update,
    encode_masks,
    encode_tensors,
    encode_update,
    inspect_update,
    mask_id,
    validate_tensors,
)
from edgedfl.wire.safetensors_io import read_safetensors


def _update(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks = {f"l{i}.B": rng.random((16, 4)) < 0.25 for i in range(3)}
    tensors = {k: rng.standard_normal((16, 4)).astype(np.float32) * m for k, m in masks.items()}
    tensors["dense.B"] = rng.standard_normal((5, 4)).astype(np.float32)
    return tensors, masks


def _registry(masks: dict[str, np.ndarray]) -> MaskRegistry:
    registry = MaskRegistry()
    decode_masks(encode_masks(masks), registry=registry)
    return registry


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 0.0), ("fp16", 2e-3), ("int8", 0.03)])
def test_sparse_and_dense_round_trip(precision: str, atol: float) -> None:
    tensors, masks = _update()
    body = encode_update(tensors, masks, precision)  # type: ignore[arg-type]
    out = decode_update(body, spec=TensorSpec.like(tensors), masks=_registry(masks))
    assert set(out) == set(tensors)
    for name, value in tensors.items():
        assert out[name].dtype == np.float32 and out[name].shape == value.shape
        np.testing.assert_allclose(out[name], value, atol=atol)
        if name in masks:
            assert np.all(out[name][~masks[name]] == 0)


def test_sender_registry_and_mask_ids_give_the_same_bytes() -> None:
    tensors, masks = _update()
    registry = MaskRegistry()
    by_array = encode_update(tensors, masks, registry=registry)
    by_id = encode_update(tensors, {k: mask_id(m) for k, m in masks.items()}, registry=registry)
    assert by_array == by_id == encode_update(tensors, masks)


def test_entries_outside_the_mask_are_dropped() -> None:
    tensors, masks = _update()
    noisy = {k: v + 1.0 for k, v in tensors.items()}
    out = decode_update(encode_update(noisy, masks, "fp32"), masks=_registry(masks))
    name = "l0.B"
    np.testing.assert_array_equal(out[name][masks[name]], noisy[name][masks[name]])
    assert np.all(out[name][~masks[name]] == 0)


def test_masks_can_be_a_plain_mapping_by_name_or_id() -> None:
    tensors, masks = _update()
    body = encode_update(tensors, masks)
    by_name = decode_update(body, masks=masks)
    by_id = decode_update(body, masks={mask_id(m): m for m in masks.values()})
    for name in tensors:
        np.testing.assert_array_equal(by_name[name], by_id[name])


def test_unknown_mask_until_the_mask_message_arrives() -> None:
    tensors, masks = _update()
    body = encode_update(tensors, masks)
    registry = MaskRegistry()
    with pytest.raises(UnknownMask):
        decode_update(body, masks=registry)
    info = inspect_update(body)
    assert registry.missing(info.mask_ids.values()) == {mask_id(m) for m in masks.values()}
    decode_masks(encode_masks(masks), registry=registry)
    decode_update(body, masks=registry)
    # A mapping holding a different mask under the tensor's name is not accepted either.
    wrong = {k: ~m for k, m in masks.items()}
    with pytest.raises(UnknownMask):
        decode_update(body, masks=wrong)


def test_inspect_update_counts_bytes() -> None:
    tensors, masks = _update()
    body = encode_update(tensors, masks, "int8")
    info = inspect_update(body)
    nnz = sum(int(m.sum()) for m in masks.values()) + tensors["dense.B"].size
    assert info.nnz == nnz and info.value_bytes == nnz
    assert info.scale_bytes == 4 * len(tensors)
    assert info.header_bytes + info.value_bytes + info.scale_bytes == len(body)
    assert info.precision == dict.fromkeys(tensors, "int8")
    assert info.dense_elements == sum(v.size for v in tensors.values())


def test_mask_ids_and_registry() -> None:
    a = np.ones((4, 2), bool)
    b = np.ones((2, 4), bool)
    assert mask_id(a) != mask_id(b)  # same bits, different shapes
    registry = MaskRegistry(max_masks=2)
    ids = [registry.add(m) for m in (a, b, np.zeros((3,), bool))]
    assert len(registry) == 2 and ids[0] not in registry  # least recently used forgotten
    assert registry.nbytes(ids[1]) == 1
    with pytest.raises(UnknownMask):
        registry.get(ids[0])
    assert not registry.get(ids[1]).flags.writeable
    with pytest.raises(TensorValidationError):
        mask_id(np.ones(3, np.uint8))


def test_mask_body_round_trip_and_tampering() -> None:
    _, masks = _update()
    body = encode_masks(masks)
    decoded = decode_masks(body)
    for name, mask in masks.items():
        np.testing.assert_array_equal(decoded[name], mask)
    meta, raw = read_safetensors(body)
    table = json.loads(meta["edgedfl"])
    table["masks"]["l0.B"]["shape"] = [4, 16]  # same bits, another shape: the id no longer matches
    forged = safetensors.numpy.save({k: v.array for k, v in raw.items()}, metadata={"edgedfl": json.dumps(table)})
    with pytest.raises(MalformedMessage):
        decode_masks(forged)


def test_plain_tensors_round_trip_keep_dtype() -> None:
    tensors = {"sig": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.arange(3, dtype=np.int64)}
    out = decode_tensors(encode_tensors(tensors))
    for name, value in tensors.items():
        assert out[name].dtype == value.dtype
        np.testing.assert_array_equal(out[name], value)


def test_bodies_are_real_safetensors() -> None:
    tensors, masks = _update()
    loaded = safetensors.numpy.load(encode_update(tensors, masks))
    assert loaded["dense.B"].dtype == np.float16


def test_encode_refuses_what_a_receiver_would_reject() -> None:
    tensors, masks = _update()
    with pytest.raises(TensorValidationError, match="NaN"):
        encode_update({**tensors, "dense.B": np.full((2, 2), np.nan, np.float32)})
    with pytest.raises(TensorValidationError, match="fp16"):
        encode_update({"x": np.array([1e6], np.float32)})
    encode_update({"x": np.array([1e6], np.float32)}, precision="fp32")
    with pytest.raises(TensorValidationError):
        encode_update(tensors, {"l0.B": masks["l0.B"].T})
    with pytest.raises(TensorValidationError):
        encode_update(tensors, {"nope": masks["l0.B"]})
    with pytest.raises(TensorValidationError):
        encode_update({"a#scale": np.ones(2, np.float32)})
    with pytest.raises(TensorValidationError):
        encode_update({"i": np.ones(2, np.int32)})
    with pytest.raises(ConfigError):
        encode_update(tensors, precision="bf16")  # type: ignore[arg-type]


# --- validation -------------------------------------------------------------------


def _spec(**kwargs: object) -> TensorSpec:
    return TensorSpec(shapes={"a": (2, 3), "b": (4,)}, **kwargs)  # type: ignore[arg-type]


def _good() -> dict[str, np.ndarray]:
    return {"a": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float32)}


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"a": np.ones((2, 3), np.float32)}, "missing tensors \\['b'\\]"),
        ({**_good(), "c": np.ones(1, np.float32)}, "unexpected tensors \\['c'\\]"),
        ({**_good(), "a": np.ones((3, 2), np.float32)}, "'a': shape \\(3, 2\\), expected \\(2, 3\\)"),
        ({**_good(), "b": np.zeros(4, np.float64)}, "'b': dtype float64 not allowed"),
        ({**_good(), "b": np.array([0, np.nan, 0, 0], np.float32)}, "'b': 1 NaN"),
        ({**_good(), "b": np.array([0, np.inf, -np.inf, 0], np.float32)}, "'b': 0 NaN and 2 infinite"),
    ],
)
def test_validate_tensors_names_the_tensor_and_problem(tensors: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(TensorValidationError, match=match):
        validate_tensors(tensors, _spec())


def test_norm_and_size_bounds() -> None:
    good = _good()
    validate_tensors(good, _spec(max_l2=3.0, max_abs=1.0, max_total_bytes=40))
    with pytest.raises(TensorValidationError, match="'a': L2 norm"):
        validate_tensors(good, _spec(max_l2=2.0))
    with pytest.raises(TensorValidationError, match="'a': max \\|x\\|"):
        validate_tensors(good, _spec(max_abs={"a": 0.5}))
    validate_tensors(good, _spec(max_abs={"b": 0.5}))
    with pytest.raises(TensorValidationError, match="total"):
        validate_tensors(good, _spec(max_total_bytes=39))
    huge = {"a": np.full((2, 3), 3e38, np.float32), "b": good["b"]}  # squares overflow float32
    with pytest.raises(TensorValidationError, match="L2"):
        validate_tensors(huge, _spec(max_l2=1e30))
    validate_tensors(good, _spec(allow_missing=True, allow_extra=True))
    with pytest.raises(ConfigError):
        TensorSpec(shapes={"a": (-1,)})


def test_decode_update_applies_the_spec_before_allocating() -> None:
    tensors, masks = _update()
    body = encode_update(tensors, masks)
    registry = _registry(masks)
    spec = TensorSpec.like(tensors)
    wrong_shape = TensorSpec(shapes={**spec.shapes, "dense.B": (4, 5)})
    with pytest.raises(TensorValidationError, match="dense.B"):
        decode_update(body, spec=wrong_shape, masks=registry)
    with pytest.raises(TensorValidationError, match="missing"):
        decode_update(body, spec=TensorSpec(shapes={**spec.shapes, "extra": (1,)}), masks=registry)
    with pytest.raises(TensorValidationError, match="not allowed"):
        decode_update(body, spec=TensorSpec(shapes=spec.shapes, dtypes=frozenset({"float32"})), masks=registry)
    with pytest.raises(TensorValidationError, match="L2"):
        decode_update(body, spec=TensorSpec(shapes=spec.shapes, max_l2=0.1), masks=registry)
    with pytest.raises(PayloadTooLarge):
        decode_update(body, masks=registry, limits=Limits(max_dense_elements=63))


# --- malformed safetensors -----------------------------------------------------------


def _st(header: dict[str, object], data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _meta(codec: str = "tensors/1") -> dict[str, object]:
    return {"__metadata__": {"edgedfl": json.dumps({"codec": codec})}}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01\x00",
        struct.pack("<Q", 100) + b"{}",
        _st({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, **_meta()}, b"\0" * 4),
        _st({"x": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}, **_meta()}, b"\0"),
        _st({"x": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}, **_meta()}, b"\0\0"),
        _st({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, **_meta()}, b"\0" * 8),
        _st({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, **_meta()}, b"\0" * 8),
        _st({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, **_meta()}, b"\0" * 4),
        _st({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}, **_meta()}, b"\0" * 4),
        _st({"x": {"dtype": "F32", "shape": [1]}, **_meta()}, b"\0" * 4),
        _st({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        _st({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, **_meta("update/1")}, b"\0" * 4),
        _st({"__metadata__": {"edgedfl": "{not json"}}),
        _st({"__metadata__": {"edgedfl": 5}}),
        b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
    ],
)
def test_malformed_bodies_raise_malformed_message(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_tensors(body)
    with pytest.raises((MalformedMessage, PayloadTooLarge)):
        decode_update(body)


def test_absurd_safetensors_header_length_is_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_update(struct.pack("<Q", 2**63) + b"{}")


def _update_body(table: dict[str, object], tensors: dict[str, np.ndarray]) -> bytes:
    return safetensors.numpy.save(tensors, metadata={"edgedfl": json.dumps({"codec": "update/1", "tensors": table})})


@pytest.mark.parametrize(
    ("table", "tensors", "error"),
    [
        ({"a": {"shape": [2]}}, {"a": np.ones(3, np.float16)}, MalformedMessage),
        ({"a": {"shape": [2]}}, {"b": np.ones(2, np.float16)}, MalformedMessage),
        ({"a": {"shape": [2]}, "b": {"shape": [1]}}, {"a": np.ones(2, np.float16)}, MalformedMessage),
        ({"a": {"shape": [2]}}, {"a": np.ones(2, np.int8)}, MalformedMessage),
        ({"a": {"shape": [2]}}, {"a": np.ones(2, np.float16), "a#scale": np.ones(1, np.float32)}, MalformedMessage),
        ({"a": {"shape": [2]}}, {"a": np.ones(2, np.float64)}, MalformedMessage),
        ({"a": {"shape": [2], "mask": "zz"}}, {"a": np.ones(2, np.float16)}, MalformedMessage),
        ({"a": {"shape": [2], "what": 1}}, {"a": np.ones(2, np.float16)}, MalformedMessage),
        ({"a": {"shape": [2**40, 2**40]}}, {"a": np.ones(2, np.float16)}, PayloadTooLarge),
        ({"a": {"shape": [2]}}, {"a": np.array([np.nan, 1], np.float16)}, TensorValidationError),
        ({"a": {"shape": [2]}}, {"a": np.ones(2, np.int8), "a#scale": np.array([np.inf], np.float32)},
         TensorValidationError),
        ({"a": {"shape": [4], "mask": mask_id(np.array([1, 1, 0, 0], bool))}}, {"a": np.ones(3, np.float16)},
         MalformedMessage),
    ],
)
def test_inconsistent_update_bodies(table: dict[str, object], tensors: dict[str, np.ndarray], error: type) -> None:
    masks = {mask_id(np.array([1, 1, 0, 0], bool)): np.array([1, 1, 0, 0], bool)}
    with pytest.raises(error):
        decode_update(_update_body(table, tensors), masks=masks)
