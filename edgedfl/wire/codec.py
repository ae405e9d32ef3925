"""Tensors <-> safetensors bodies: dense, sparse-with-mask-reference, fp16 / int8 / fp32.

Three body kinds, each a plain safetensors file whose ``__metadata__`` has
one key, ``"edgedfl"``, holding canonical JSON with a ``"codec"`` naming the
layout (layouts in FORMAT.md):

* ``update/1`` (:func:`encode_update` / :func:`decode_update`): a sparse
  tensor travels as a 1-D vector of its values at the mask's ``True``
  positions, in row-major order, plus the id of that mask; a dense tensor as
  itself. Values are fp16 (default), fp32, or int8 with a per-tensor fp32
  scale in a sibling tensor ``"<name>#scale"`` (``value = q * scale``,
  ``scale = max|x| / 127``, symmetric, round half to even).
* ``mask/1`` (:func:`encode_masks` / :func:`decode_masks`): boolean masks as
  ``np.packbits`` bits (big bit order, row-major), sent once per cluster and
  kept by receivers in a :class:`MaskRegistry`.
* ``tensors/1`` (:func:`encode_tensors` / :func:`decode_tensors`): plain
  dense arrays kept in their dtype (task signatures, latent codes).

Decisions:

* A mask id is the sha256 (hex) of ``u8 ndim | u64be dims | packed bits``.
  The shape is hashed too, so a 4x2 and a 2x4 mask with the same bits never
  share an id. Ids are content addresses: equal masks agree without a leader.
* ``decode_update`` returns dense float32 arrays with zeros outside the mask,
  and validates before it allocates them: names, wire dtypes and dense shapes
  (against the spec and ``Limits``) from the header, then finiteness and norms
  on the transmitted values.
* An update naming a mask the receiver does not hold raises
  :class:`UnknownMask`; :func:`inspect_update` lists the ids a body needs, so
  the protocol can ask for them or wait.
* Encoding drops whatever lies outside a mask (B's masked entries are zero by
  construction) and refuses non-finite values or fp16 overflow: a sender never
  puts on the wire what a receiver must reject.
* Mask bytes are counted once: :func:`encode_masks` returns the bytes that
  travel, ``MaskRegistry.nbytes`` the packed size per id, and
  :class:`UpdateInfo` splits an update into value, scale and header bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from edgedfl.errors import ConfigError, MalformedMessage, PayloadTooLarge, TensorValidationError, UnknownMask
from edgedfl.wire.envelope import canonical_json, parse_header_json
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits
from edgedfl.wire.safetensors_io import RawTensor, read_safetensors, write_safetensors
from edgedfl.wire.validate import TensorSpec, check_entry, check_names, check_total_bytes, check_values

Precision = Literal["fp16", "int8", "fp32"]
#: every value precision an update may travel in
PRECISIONS: tuple[Precision, ...] = ("fp16", "int8", "fp32")

#: The one ``__metadata__`` key edgedfl writes. One key, because safetensors
#: writes metadata from a hash map: several keys would come out in random order
#: and the same update would not always encode to the same bytes.
META_KEY = "edgedfl"
UPDATE_CODEC = "update/1"
MASK_CODEC = "mask/1"
TENSORS_CODEC = "tensors/1"
TENSORS_KEY = "tensors"
MASKS_KEY = "masks"
SCALE_SUFFIX = "#scale"

_WIRE_DTYPE: dict[str, np.dtype[Any]] = {"fp16": np.dtype("<f2"), "fp32": np.dtype("<f4"), "int8": np.dtype("i1")}
#: safetensors dtype of update values -> numpy dtype name checked against TensorSpec.dtypes.
_VALUE_DTYPES = {"F16": "float16", "F32": "float32", "I8": "int8"}
_FP16_MAX = float(np.finfo(np.float16).max)


# --- masks --------------------------------------------------------------------


def _as_mask(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TensorValidationError(f"{what}: mask must be a bool array, got {mask.dtype}")
    return mask


def _mask_id_from_packed(shape: tuple[int, ...], packed: bytes) -> str:
    prefix = struct.pack(f">B{len(shape)}Q", len(shape), *shape)
    return hashlib.sha256(prefix + packed).hexdigest()


def pack_mask(mask: np.ndarray) -> bytes:
    """Row-major ``np.packbits`` (big bit order) of a bool mask: how masks travel."""
    return np.packbits(_as_mask(mask, "pack_mask").ravel(), bitorder="big").tobytes()


def mask_id(mask: np.ndarray) -> str:
    """Content id of a mask: sha256 hex of ``u8 ndim | u64be dims | packed bits``."""
    mask = _as_mask(mask, "mask_id")
    if mask.ndim > 255:
        raise TensorValidationError("mask_id: more than 255 dimensions")
    return _mask_id_from_packed(tuple(mask.shape), pack_mask(mask))


class MaskRegistry:
    """Masks a node holds, by id, with the flat indices a decoder scatters into.

    Bounded (``max_masks``, ``max_bytes`` of unpacked masks plus indices):
    when full, the least recently used mask is forgotten, and an update that
    still needs it raises :class:`UnknownMask` until it is sent again.
    """

    def __init__(self, *, max_masks: int = 4096, max_bytes: int = 512 * 1024 * 1024) -> None:
        if max_masks <= 0 or max_bytes <= 0:
            raise ConfigError(f"MaskRegistry: max_masks={max_masks}, max_bytes={max_bytes} must be > 0")
        self.max_masks = max_masks
        self.max_bytes = max_bytes
        self._masks: OrderedDict[str, tuple[np.ndarray, np.ndarray, int]] = OrderedDict()
        self._bytes = 0

    def add(self, mask: np.ndarray) -> str:
        """Store ``mask`` (copied, read-only) and return its id; adding it again is a no-op."""
        mask = _as_mask(mask, "MaskRegistry.add")
        packed = pack_mask(mask)
        mid = _mask_id_from_packed(tuple(mask.shape), packed)
        if mid in self._masks:
            self._masks.move_to_end(mid)
            return mid
        self._store(mid, np.array(mask, dtype=np.bool_, copy=True), len(packed))
        return mid

    def _store(self, mid: str, mask: np.ndarray, packed_nbytes: int) -> None:
        indices = np.flatnonzero(mask)
        mask.flags.writeable = False
        indices.flags.writeable = False
        cost = mask.nbytes + indices.nbytes
        if cost > self.max_bytes:
            raise PayloadTooLarge(f"mask {mid[:12]} needs {cost} bytes, registry limit {self.max_bytes}")
        while self._masks and (len(self._masks) >= self.max_masks or self._bytes + cost > self.max_bytes):
            _, (old_mask, old_idx, _) = self._masks.popitem(last=False)
            self._bytes -= old_mask.nbytes + old_idx.nbytes
        self._masks[mid] = (mask, indices, packed_nbytes)
        self._bytes += cost

    def get(self, mid: str) -> np.ndarray:
        """The mask with id ``mid`` (read-only). :raises UnknownMask: not held."""
        return self._entry(mid)[0]

    def indices(self, mid: str) -> np.ndarray:
        """Row-major flat positions of the mask's ``True`` entries (read-only int64)."""
        return self._entry(mid)[1]

    def nbytes(self, mid: str) -> int:
        """Packed size of the mask in bytes: what it costs on the wire, once."""
        return self._entry(mid)[2]

    def _entry(self, mid: str) -> tuple[np.ndarray, np.ndarray, int]:
        entry = self._masks.get(mid)
        if entry is None:
            raise UnknownMask(f"mask {mid[:16]}... is not held by this receiver")
        self._masks.move_to_end(mid)
        return entry

    def missing(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` this registry does not hold."""
        return {mid for mid in ids if mid not in self._masks}

    def __contains__(self, mid: object) -> bool:
        return mid in self._masks

    def __len__(self) -> int:
        return len(self._masks)

    @property
    def total_bytes(self) -> int:
        """Memory held for masks and their indices."""
        return self._bytes


def encode_masks(masks: Mapping[str, np.ndarray]) -> bytes:
    """A ``mask/1`` body: each named bool mask as packed bits, with its shape and id."""
    tensors: dict[str, np.ndarray] = {}
    table: dict[str, dict[str, object]] = {}
    for name, mask in masks.items():
        _check_name(name)
        mask = _as_mask(mask, f"mask {name!r}")
        packed = np.packbits(mask.ravel(), bitorder="big")
        tensors[name] = packed
        table[name] = {"id": _mask_id_from_packed(tuple(mask.shape), packed.tobytes()), "shape": list(mask.shape)}
    return write_safetensors(tensors, _meta(MASK_CODEC, MASKS_KEY, table))


def decode_masks(
    body: bytes, *, registry: MaskRegistry | None = None, limits: Limits = DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """Parse a ``mask/1`` body into name -> bool mask; also add each to ``registry`` if given.

    :raises MalformedMessage: not a mask body, or bits that do not fit the shape.
    :raises IntegrityError: never; an id that does not match the bits is malformed.
    """
    meta, raw = read_safetensors(body, limits=limits)
    table = _codec_table(meta, MASK_CODEC, MASKS_KEY)
    if set(table) != set(raw):
        raise MalformedMessage(f"mask body lists {sorted(table)[:5]} but holds {sorted(raw)[:5]}")
    result: dict[str, np.ndarray] = {}
    for name, info in table.items():
        shape = _shape_of(info, name, limits)
        if not isinstance(info, dict) or set(info) != {"id", "shape"} or not isinstance(info["id"], str):
            raise MalformedMessage(f"mask {name!r}: entry must be {{'id', 'shape'}}")
        mid: str = info["id"]
        packed = raw[name]
        size = _prod(shape)
        if packed.dtype != "U8" or packed.shape != ((size + 7) // 8,):
            raise MalformedMessage(f"mask {name!r}: expected {(size + 7) // 8} U8 bytes for shape {shape}")
        if _mask_id_from_packed(shape, packed.array.tobytes()) != mid:
            raise MalformedMessage(f"mask {name!r}: id does not match its bits and shape")
        mask = np.unpackbits(packed.array, count=size, bitorder="big").view(np.bool_).reshape(shape)
        if registry is not None:
            if mid not in registry:
                registry._store(mid, mask, packed.nbytes)
            mask = registry.get(mid)
        result[name] = mask
    return result


# --- updates ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UpdateInfo:
    """What an ``update/1`` body holds, read from its header alone (no values decoded)."""

    #: tensor name -> mask id, for the sparse tensors.
    mask_ids: dict[str, str]
    #: tensor name -> "fp16" | "fp32" | "int8".
    precision: dict[str, str]
    #: tensor name -> dense shape.
    shapes: dict[str, tuple[int, ...]]
    #: bytes of transmitted values (without scales).
    value_bytes: int
    #: bytes of int8 scales.
    scale_bytes: int
    #: bytes of the safetensors header and length prefix.
    header_bytes: int
    #: number of transmitted values.
    nnz: int
    #: number of dense elements the update stands for.
    dense_elements: int


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or SCALE_SUFFIX in name or name == "__metadata__":
        raise TensorValidationError(f"tensor name {name!r}: must be a non-empty str without {SCALE_SUFFIX!r}")


def _quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = np.float32(peak / 127.0)
    if scale == 0:
        return np.zeros(values.shape, np.int8), np.zeros((1,), np.float32)
    q = np.rint(values / scale)
    np.clip(q, -127, 127, out=q)
    return q.astype(np.int8), np.array([scale], np.float32)


def encode_update(
    tensors: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray | str] | None = None,
    precision: Precision = "fp16",
    *,
    registry: MaskRegistry | None = None,
) -> bytes:
    """An ``update/1`` body. Tensors named in ``masks`` travel sparse (values + mask id).

    :param tensors: name -> float array (any float dtype; cast to ``precision``).
    :param masks: name -> bool array of the tensor's shape (entries outside it
        are dropped), or name -> mask id of a mask held in ``registry``.
    :param precision: "fp16" (default), "int8" (per-tensor fp32 scale) or "fp32".
    :param registry: masks this node holds. Array masks are added to it, and
        its cached indices make gathering ~10x faster; passing mask ids skips
        hashing the masks on every round.
    :raises TensorValidationError: non-finite values, fp16 overflow, a mask of the wrong shape.
    :raises UnknownMask: a mask id not held in ``registry``.
    """
    if precision not in _WIRE_DTYPE:
        raise ConfigError(f"precision={precision!r}: must be one of {PRECISIONS}")
    masks = masks or {}
    unknown = sorted(set(masks) - set(tensors))
    if unknown:
        raise TensorValidationError(f"masks given for tensors that are not in the update: {unknown[:10]}")
    wire_dtype = _WIRE_DTYPE[precision]
    out: dict[str, np.ndarray] = {}
    table: dict[str, dict[str, object]] = {}
    for name, tensor in tensors.items():
        _check_name(name)
        array = np.asarray(tensor)
        if array.dtype.kind != "f":
            raise TensorValidationError(f"tensor {name!r}: expected a float array, got {array.dtype}")
        entry: dict[str, object] = {"shape": list(array.shape)}
        mask = masks.get(name)
        if mask is None:
            values = array
        else:
            mid, values = _gather(name, array, mask, registry)
            entry["mask"] = mid
        sumsq = check_values(name, values, None)
        if precision == "int8":
            q, scale = _quantize_int8(values.astype(np.float32, copy=False))
            out[name] = q
            out[name + SCALE_SUFFIX] = scale
        else:
            # No element can exceed fp16's range unless the sum of squares does: skip the scan then.
            if precision == "fp16" and sumsq > _FP16_MAX**2 and float(np.max(np.abs(values))) > _FP16_MAX:
                raise TensorValidationError(f"tensor {name!r}: values beyond fp16 range; send fp32 or int8")
            out[name] = values.astype(wire_dtype, copy=False)
        table[name] = entry
    return write_safetensors(out, _meta(UPDATE_CODEC, TENSORS_KEY, table))


def _gather(
    name: str, array: np.ndarray, mask: np.ndarray | str, registry: MaskRegistry | None
) -> tuple[str, np.ndarray]:
    """(mask id, values at the mask's True positions in row-major order)."""
    if isinstance(mask, str):
        if registry is None:
            raise ConfigError(f"tensor {name!r}: a mask given by id needs a registry")
        mid = mask
        if registry.get(mid).shape != array.shape:
            raise TensorValidationError(f"tensor {name!r}: mask {mid[:12]} shape != tensor shape {array.shape}")
    else:
        mask = _as_mask(mask, f"tensor {name!r}")
        if mask.shape != array.shape:
            raise TensorValidationError(f"tensor {name!r}: mask shape {mask.shape} != tensor shape {array.shape}")
        if registry is None:
            packed = np.packbits(mask.ravel(), bitorder="big").tobytes()
            # compress on flat views is ~3x faster than 2-D boolean indexing.
            return _mask_id_from_packed(mask.shape, packed), np.compress(mask.ravel(), array.ravel())
        mid = registry.add(mask)
    return mid, np.take(array.ravel(), registry.indices(mid))


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shape_of(info: object, name: str, limits: Limits) -> tuple[int, ...]:
    shape = info.get("shape") if isinstance(info, dict) else None
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise MalformedMessage(f"tensor {name!r}: dense shape {shape!r} is not a list of ints >= 0")
    if len(shape) > 255:
        raise MalformedMessage(f"tensor {name!r}: more than 255 dimensions")
    if _prod(tuple(shape)) > limits.max_dense_elements:
        raise PayloadTooLarge(f"tensor {name!r}: shape {shape} exceeds {limits.max_dense_elements} elements")
    return tuple(shape)


def _meta(codec: str, key: str | None = None, table: object = None) -> dict[str, str]:
    content: dict[str, object] = {"codec": codec}
    if key is not None:
        content[key] = table
    return {META_KEY: canonical_json(content).decode("ascii")}


def _codec_table(meta: dict[str, str], codec: str, key: str | None) -> dict[str, Any]:
    """The body's table under ``key`` after checking it is a ``codec`` body (and nothing else)."""
    if set(meta) != {META_KEY}:
        raise MalformedMessage(f"body metadata keys {sorted(meta)[:5]}, expected [{META_KEY!r}]")
    content = parse_header_json(meta[META_KEY].encode("utf-8"), "body metadata")
    if content.get("codec") != codec:
        raise MalformedMessage(f"body codec {content.get('codec')!r}, expected {codec!r}")
    expected_keys = {"codec"} if key is None else {"codec", key}
    if set(content) != expected_keys:
        raise MalformedMessage(f"{codec} metadata has keys {sorted(content)}, expected {sorted(expected_keys)}")
    if key is None:
        return {}
    table = content[key]
    if not isinstance(table, dict):
        raise MalformedMessage(f"{codec} metadata {key!r} must be an object")
    return table


@dataclasses.dataclass(frozen=True)
class _Planned:
    name: str
    shape: tuple[int, ...]
    values: RawTensor
    scale: RawTensor | None
    mask_id: str | None


def _plan_update(body: bytes, limits: Limits) -> tuple[list[_Planned], int]:
    """Parse and cross-check an update body's header; no values are touched."""
    meta, raw = read_safetensors(body, limits=limits)
    table = _codec_table(meta, UPDATE_CODEC, TENSORS_KEY)
    value_names = {n for n in raw if not n.endswith(SCALE_SUFFIX)}
    if set(table) != value_names:
        extra, absent = sorted(value_names - set(table)), sorted(set(table) - value_names)
        raise MalformedMessage(f"update table and tensors disagree (untabled {extra[:5]}, absent {absent[:5]})")
    planned: list[_Planned] = []
    total_dense = 0
    for name, info in table.items():
        shape = _shape_of(info, name, limits)
        assert isinstance(info, dict)
        if not set(info) <= {"shape", "mask"}:
            raise MalformedMessage(f"tensor {name!r}: unknown keys {sorted(set(info) - {'shape', 'mask'})}")
        values = raw[name]
        if values.dtype not in _VALUE_DTYPES:
            raise MalformedMessage(f"tensor {name!r}: value dtype {values.dtype} is not F16, F32 or I8")
        scale = raw.get(name + SCALE_SUFFIX)
        if (values.dtype == "I8") != (scale is not None):
            raise MalformedMessage(f"tensor {name!r}: int8 values need a {SCALE_SUFFIX} tensor, others none")
        if scale is not None and (scale.dtype != "F32" or scale.shape != (1,)):
            raise MalformedMessage(f"tensor {name!r}: scale must be one F32 value")
        mid = info.get("mask")
        if mid is not None:
            if not isinstance(mid, str) or len(mid) != 64:
                raise MalformedMessage(f"tensor {name!r}: mask id {mid!r} is not a sha256 hex")
            if len(values.shape) != 1:
                raise MalformedMessage(f"tensor {name!r}: sparse values must be 1-D, got {values.shape}")
        elif values.shape != shape:
            raise MalformedMessage(f"tensor {name!r}: dense values {values.shape} != shape {shape}")
        total_dense += _prod(shape)
        if total_dense > limits.max_total_dense_elements:
            raise PayloadTooLarge(f"update stands for more than {limits.max_total_dense_elements} elements")
        planned.append(_Planned(name, shape, values, scale, mid))
    orphans = sorted(n[: -len(SCALE_SUFFIX)] for n in raw if n.endswith(SCALE_SUFFIX)
                     if n[: -len(SCALE_SUFFIX)] not in table)
    if orphans:
        raise MalformedMessage(f"scale tensors without values: {orphans[:5]}")
    return planned, len(body)


def inspect_update(body: bytes, *, limits: Limits = DEFAULT_LIMITS) -> UpdateInfo:
    """Header-only summary of an ``update/1`` body: which masks it needs, byte counts."""
    planned, total = _plan_update(body, limits)
    value_bytes = sum(p.values.nbytes for p in planned)
    scale_bytes = sum(p.scale.nbytes for p in planned if p.scale is not None)
    return UpdateInfo(
        mask_ids={p.name: p.mask_id for p in planned if p.mask_id is not None},
        precision={p.name: {"F16": "fp16", "F32": "fp32", "I8": "int8"}[p.values.dtype] for p in planned},
        shapes={p.name: p.shape for p in planned},
        value_bytes=value_bytes,
        scale_bytes=scale_bytes,
        header_bytes=total - value_bytes - scale_bytes,
        nnz=sum(p.values.array.size for p in planned),
        dense_elements=sum(_prod(p.shape) for p in planned),
    )


def _lookup_mask(masks: MaskRegistry | Mapping[str, np.ndarray] | None, mid: str, name: str) -> np.ndarray:
    """Flat indices of mask ``mid`` (from a registry, or a name -> mask / id -> mask mapping)."""
    if isinstance(masks, MaskRegistry):
        return masks.indices(mid)
    if masks is not None:
        for key in (mid, name):
            candidate = masks.get(key)
            if candidate is not None and mask_id(candidate) == mid:
                return np.flatnonzero(candidate)
    raise UnknownMask(f"tensor {name!r}: mask {mid[:16]}... is not held by this receiver")


def decode_update(
    body: bytes,
    *,
    spec: TensorSpec | None = None,
    masks: MaskRegistry | Mapping[str, np.ndarray] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, np.ndarray]:
    """Validate and decode an ``update/1`` body into dense float32 arrays (zeros outside masks).

    ``masks`` is a :class:`MaskRegistry`, or a mapping from mask id or tensor
    name to a bool mask (checked against the id the body names).

    :raises MalformedMessage: not an update body, or internally inconsistent.
    :raises PayloadTooLarge: a claimed size beyond ``limits``.
    :raises UnknownMask: a sparse tensor refers to a mask not in ``masks``.
    :raises TensorValidationError: the ``spec`` refuses names, dtypes, shapes,
        norms or size, or a value is NaN or infinite.
    """
    planned, total = _plan_update(body, limits)
    if spec is not None:
        check_names([p.name for p in planned], spec)
        check_total_bytes(total, spec)
        for p in planned:
            check_entry(p.name, _VALUE_DTYPES[p.values.dtype], p.shape, spec)
    result: dict[str, np.ndarray] = {}
    for p in planned:
        if p.scale is not None:
            scale = float(p.scale.array[0])
            if not (scale >= 0 and np.isfinite(scale)):
                raise TensorValidationError(f"tensor {p.name!r}: int8 scale {scale!r} is not finite and >= 0")
            values = p.values.array.astype(np.float32) * np.float32(scale)
        else:
            values = p.values.array.astype(np.float32)
        check_values(p.name, values, spec)
        if p.mask_id is None:
            result[p.name] = values.reshape(p.shape)
            continue
        indices = _lookup_mask(masks, p.mask_id, p.name)
        if indices.size != values.size:
            raise MalformedMessage(
                f"tensor {p.name!r}: {values.size} values for a mask with {indices.size} positions"
            )
        dense = np.zeros(_prod(p.shape), np.float32)
        dense[indices] = values
        result[p.name] = dense.reshape(p.shape)
    return result


# --- plain tensors --------------------------------------------------------------


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """A ``tensors/1`` body: dense arrays in their own dtype (signatures, latent codes)."""
    for name in tensors:
        _check_name(name)
    return write_safetensors({k: np.asarray(v) for k, v in tensors.items()}, _meta(TENSORS_CODEC))


def decode_tensors(
    body: bytes, *, spec: TensorSpec | None = None, limits: Limits = DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """Parse a ``tensors/1`` body into read-only arrays, validated against ``spec`` if given."""
    meta, raw = read_safetensors(body, limits=limits)
    _codec_table(meta, TENSORS_CODEC, None)
    if spec is not None:
        check_names(raw, spec)
        check_total_bytes(len(body), spec)
    result: dict[str, np.ndarray] = {}
    for name, tensor in raw.items():
        if spec is not None:
            check_entry(name, tensor.array.dtype.name, tensor.shape, spec)
        check_values(name, tensor.array, spec)
        result[name] = tensor.array
    return result
