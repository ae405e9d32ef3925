"""The body of a finished expert (kind ``expert``): a ``tensors/1`` body with a fixed layout.

An expert carries its B tensors and its task latent code (``latent.<name>``).
A B tensor named in ``masks`` travels sparse under three names: ``<name>``
(1-D, the values under the mask in row-major order), ``mask.<name>``
(``numpy.packbits`` of the flattened bool mask, big bit order, uint8) and
``shape.<name>`` (int64 ``[rows, cols]``). A tensor with neither is dense.
Layout and rejections: FORMAT.md, section 2.4.

:func:`encode_expert` / :func:`decode_expert` are the only code that knows
this layout; the protocol calls them, the Java codec mirrors them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from edgedfl.errors import MalformedMessage, TensorValidationError
from edgedfl.wire.codec import decode_tensors, encode_tensors
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["LATENT_PREFIX", "MASK_PREFIX", "SHAPE_PREFIX", "ExpertBody", "decode_expert", "encode_expert"]

#: Prefix of latent-code tensors inside an expert body.
LATENT_PREFIX = "latent."
#: Prefixes of a sparse expert tensor's mask (numpy.packbits of the bool mask, row-major, big bit
#: order; uint8) and shape (int64 (2,)): the tensor itself then holds only the values under the mask.
MASK_PREFIX = "mask."
SHAPE_PREFIX = "shape."


@dataclasses.dataclass(frozen=True)
class ExpertBody:
    """A decoded expert: dense B tensors, the latent code, and the masks of those that travelled sparse."""

    tensors: dict[str, np.ndarray]
    latent: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]


def encode_expert(tensors: Mapping[str, np.ndarray], latent: Mapping[str, np.ndarray],
                  masks: Mapping[str, np.ndarray] | None = None) -> bytes:
    """The body bytes of an expert; tensors named in ``masks`` travel sparse.

    :raises TensorValidationError: a mask whose shape is not its tensor's.
    """
    body: dict[str, np.ndarray] = {}
    for k, v in tensors.items():
        mask = None if masks is None else masks.get(k)
        if mask is None:
            body[k] = v
            continue
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != v.shape:
            raise TensorValidationError(f"expert tensor {k!r}: mask shape {mask.shape} != {v.shape}")
        body[k] = np.ascontiguousarray(np.asarray(v)[mask])  # (nnz,), row-major order
        body[MASK_PREFIX + k] = np.packbits(mask.reshape(-1))
        body[SHAPE_PREFIX + k] = np.array(v.shape, dtype=np.int64)
    for k, v in latent.items():
        body[LATENT_PREFIX + k] = v
    return encode_tensors(body)


def decode_expert(body: bytes, *, limits: Limits = DEFAULT_LIMITS) -> ExpertBody:
    """Decode and check an expert body; sparse tensors come back dense (zero outside the mask).

    :raises MalformedMessage: a mask or shape without its tensor, a shape that is
        not two positive sizes within the limits, mask bits that do not cover the
        shape, or a value count that is not the mask's count (and every
        ``tensors/1`` rejection).
    """
    raw = decode_tensors(body, limits=limits)
    latent = {k[len(LATENT_PREFIX):]: np.array(v) for k, v in raw.items() if k.startswith(LATENT_PREFIX)}
    tensors = {k: v for k, v in raw.items() if not k.startswith(LATENT_PREFIX)}
    out: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for name, v in tensors.items():
        if name.startswith((MASK_PREFIX, SHAPE_PREFIX)):
            base = name.split(".", 1)[1]
            if base not in tensors:
                raise MalformedMessage(f"expert: {name!r} without the tensor {base!r}")
            continue
        if MASK_PREFIX + name not in tensors and SHAPE_PREFIX + name not in tensors:
            out[name] = np.array(v)
            continue
        bits, shape_t = tensors.get(MASK_PREFIX + name), tensors.get(SHAPE_PREFIX + name)
        if bits is None or shape_t is None:
            raise MalformedMessage(f"expert: sparse tensor {name!r} needs both its mask and its shape")
        shape = tuple(int(x) for x in np.asarray(shape_t).reshape(-1))
        size = int(np.prod(shape)) if shape else 0
        if (np.asarray(shape_t).dtype != np.int64 or len(shape) != 2 or min(shape) < 1
                or size > limits.max_dense_elements):
            raise MalformedMessage(f"expert: bad shape {shape} for sparse tensor {name!r}")
        if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != -(-size // 8):
            raise MalformedMessage(f"expert: mask of {name!r} has {bits.size} bytes, {-(-size // 8)} expected")
        mask = np.unpackbits(bits)[:size].astype(bool).reshape(shape)  # (rows, cols)
        if v.ndim != 1 or v.size != int(mask.sum()):
            raise MalformedMessage(f"expert: {name!r} has {v.size} values for a mask of {int(mask.sum())}")
        dense = np.zeros(shape, dtype=v.dtype)  # (rows, cols)
        dense[mask] = v
        out[name] = dense
        masks[name] = mask
    return ExpertBody(out, latent, masks)
