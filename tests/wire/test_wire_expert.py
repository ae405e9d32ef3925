"""The expert body codec: the layout FORMAT.md 2.4 writes down, round trips, and typed rejections."""

from __future__ import annotations

import numpy as np
import pytest

from edgedfl.errors import MalformedMessage, TensorValidationError, WireError
from edgedfl.wire.codec import decode_tensors, encode_tensors
from edgedfl.wire.expert import decode_expert, encode_expert


def _expert() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    mask = rng.random((6, 4)) < 0.3
    b_sparse = (rng.standard_normal((6, 4)) * mask).astype(np.float16)
    b_dense = rng.standard_normal((3, 4)).astype(np.float16)
    latent = {"mean": rng.standard_normal(5).astype(np.float32), "n": np.array([7.0], np.float32)}
    return {"l0.lora_B": b_sparse, "l1.lora_B": b_dense}, latent, {"l0.lora_B": mask}


def test_the_body_is_the_documented_tensors_layout() -> None:
    tensors, latent, masks = _expert()
    by_hand = {
        "l0.lora_B": tensors["l0.lora_B"][masks["l0.lora_B"]],  # values under the mask, row-major
        "mask.l0.lora_B": np.packbits(masks["l0.lora_B"].reshape(-1)),
        "shape.l0.lora_B": np.array([6, 4], np.int64),
        "l1.lora_B": tensors["l1.lora_B"],
        "latent.mean": latent["mean"], "latent.n": latent["n"],
    }
    assert encode_expert(tensors, latent, masks) == encode_tensors(by_hand)


def test_round_trip_rebuilds_dense_tensors_and_masks() -> None:
    tensors, latent, masks = _expert()
    got = decode_expert(encode_expert(tensors, latent, masks))
    for k, v in tensors.items():
        np.testing.assert_array_equal(got.tensors[k], v)
    np.testing.assert_array_equal(got.masks["l0.lora_B"], masks["l0.lora_B"])
    assert set(got.masks) == {"l0.lora_B"} and set(got.latent) == {"mean", "n"}


def _body(**over: np.ndarray | None) -> bytes:
    tensors, latent, masks = _expert()
    raw = decode_tensors(encode_expert(tensors, latent, masks))
    for k, v in over.items():
        k = k.replace("__", ".")
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    return encode_tensors(raw)


@pytest.mark.parametrize("over", [
    {"l0__lora_B": None},  # mask and shape without their tensor
    {"shape__l0__lora_B": None},  # a sparse tensor with only its mask
    {"shape__l0__lora_B": np.array([6, 4, 1], np.int64)},  # not two sizes
    {"shape__l0__lora_B": np.array([6, 4], np.int32)},  # wrong dtype
    {"mask__l0__lora_B": np.zeros(2, np.uint8)},  # bits do not cover the shape
    {"l0__lora_B": np.zeros(1, np.float16)},  # value count is not the mask's
])
def test_malformed_experts_are_typed_rejections(over: dict[str, np.ndarray | None]) -> None:
    with pytest.raises(MalformedMessage):
        decode_expert(_body(**over))


def test_garbage_is_a_wire_error_and_a_bad_mask_shape_a_validation_error() -> None:
    with pytest.raises(WireError):
        decode_expert(b"\x00" * 40)
    tensors, latent, _ = _expert()
    with pytest.raises(TensorValidationError):
        encode_expert(tensors, latent, {"l0.lora_B": np.ones((2, 2), bool)})
