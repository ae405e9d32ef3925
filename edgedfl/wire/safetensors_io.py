"""Bounded, strict reading (and writing) of safetensors bytes.

Writing goes through ``safetensors.numpy.save``. Reading parses the format
here, because a receiver must bound every claim before it acts on it: the
8-byte header length against ``Limits.max_body_header_bytes``, the tensor
count, each tensor's byte range against the buffer, each dtype against a
fixed table. Tensors come back as read-only ``np.frombuffer`` views of the
received bytes: nothing is copied and nothing is unpickled.

The checks are those of the safetensors specification: little-endian u64
header length, a JSON object of ``{"dtype", "shape", "data_offsets"}`` entries
plus an optional ``"__metadata__"`` of strings, and data ranges that tile the
data section exactly (no gaps, no overlaps, nothing after the last tensor).
Anything else is a :class:`MalformedMessage`; a header over the limit a
:class:`PayloadTooLarge`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import safetensors.numpy

from edgedfl.errors import MalformedMessage, PayloadTooLarge
from edgedfl.wire.envelope import parse_header_json
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits

#: safetensors dtype string -> numpy dtype (little endian). BF16 has no numpy type: refused.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


@dataclasses.dataclass(frozen=True)
class RawTensor:
    """One tensor of a parsed body: its safetensors dtype, shape and a read-only view."""

    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


def write_safetensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """``safetensors.numpy.save`` with C-contiguous inputs (it reads raw memory)."""
    flat = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return safetensors.numpy.save(flat, metadata=dict(metadata) if metadata is not None else None)


def read_safetensors(
    data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[dict[str, str], dict[str, RawTensor]]:
    """Parse safetensors bytes into (metadata, name -> :class:`RawTensor`) with every claim bounded."""
    buf = data if isinstance(data, bytes) else bytes(data)
    total = len(buf)
    if total < 8:
        raise MalformedMessage(f"safetensors body of {total} bytes is shorter than its 8-byte length prefix")
    header_len = int.from_bytes(buf[:8], "little")
    if header_len > limits.max_body_header_bytes:
        raise PayloadTooLarge(
            f"safetensors header length {header_len} exceeds limit {limits.max_body_header_bytes}"
        )
    if 8 + header_len > total:
        raise MalformedMessage(f"safetensors header claims {header_len} bytes, only {total - 8} follow")
    header = parse_header_json(buf[8 : 8 + header_len], "safetensors header")
    data_start = 8 + header_len
    data_len = total - data_start

    metadata_raw = header.pop("__metadata__", None)
    metadata: dict[str, str] = {}
    if metadata_raw is not None:
        if not isinstance(metadata_raw, dict) or not all(isinstance(v, str) for v in metadata_raw.values()):
            raise MalformedMessage("safetensors __metadata__ must map strings to strings")
        metadata = metadata_raw
    if len(header) > limits.max_tensors:
        raise PayloadTooLarge(f"body holds {len(header)} tensors, limit {limits.max_tensors}")

    ranges: list[tuple[int, int, str]] = []
    parsed: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise MalformedMessage(f"safetensors entry {name!r} must have exactly {sorted(_ENTRY_KEYS)}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise MalformedMessage(f"tensor {name!r}: unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise MalformedMessage(f"tensor {name!r}: shape {shape!r} is not a list of ints >= 0")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise MalformedMessage(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise MalformedMessage(f"tensor {name!r}: data_offsets [{begin}, {end}] outside {data_len} data bytes")
        # Python ints: a product of absurd dims cannot overflow, it just fails to match.
        if math.prod(shape) * DTYPES[dtype].itemsize != end - begin:
            raise MalformedMessage(f"tensor {name!r}: shape {shape} x {dtype} does not fill [{begin}, {end}]")
        ranges.append((begin, end, name))
        parsed[name] = (dtype, tuple(shape), begin, end)

    ranges.sort()
    cursor = 0
    for begin, end, name in ranges:
        if begin != cursor:
            raise MalformedMessage(f"tensor {name!r}: data starts at {begin}, expected {cursor} (gap or overlap)")
        cursor = end
    if cursor != data_len:
        raise MalformedMessage(f"{data_len - cursor} bytes after the last tensor")

    tensors: dict[str, RawTensor] = {}
    for name, (dtype, shape, begin, end) in parsed.items():
        np_dtype = DTYPES[dtype]
        array = np.frombuffer(buf, dtype=np_dtype, count=(end - begin) // np_dtype.itemsize,
                              offset=data_start + begin).reshape(shape)
        tensors[name] = RawTensor(dtype, shape, array)
    return metadata, tensors
