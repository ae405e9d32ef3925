"""Checks a receiver runs on tensors before anything touches a model.

:class:`TensorSpec` says what a receiver expects (names -> shapes, allowed
dtypes, norm bounds, a size bound); :func:`validate_tensors` checks a dict of
arrays against it. Each failure is a :class:`TensorValidationError` whose
message names the tensor and the problem.

The codec calls the same checks piecewise: shapes, dtypes and names from a
body's header *before* it allocates the dense arrays, and finiteness and norms
on the transmitted values (zeros outside a sparse mask change neither), so a
hostile claim costs no memory and an honest update costs one pass.

Decisions:

* Finiteness is always checked, spec or not: a NaN that reaches an average
  poisons every neighbour.
* Norms are computed in float32 with a float64 accumulator; a tensor whose sum
  of squares overflows fails the bound, it does not pass as ``inf``.
* ``max_abs`` / ``max_l2`` are a float for every tensor or a mapping for some
  (unlisted names are unbounded).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

import numpy as np

from edgedfl.errors import ConfigError, TensorValidationError

#: dtype names (numpy's) a spec allows unless told otherwise: what the codec sends.
WIRE_DTYPES = frozenset({"float16", "float32", "int8"})


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """What a receiver accepts: exact names and shapes, dtypes, norm and size bounds."""

    #: Expected tensor name -> shape.
    shapes: Mapping[str, tuple[int, ...]]
    #: Allowed dtype names (numpy spelling: "float16", "float32", "int8", ...).
    dtypes: frozenset[str] = WIRE_DTYPES
    #: Largest allowed |x| per element: one bound for all tensors, or per tensor name.
    max_abs: float | Mapping[str, float] | None = None
    #: Largest allowed L2 norm: one bound for all tensors, or per tensor name.
    max_l2: float | Mapping[str, float] | None = None
    #: Largest total size in bytes (of the arrays given, or of the encoded body when decoding).
    max_total_bytes: int | None = None
    #: Whether expected tensors may be absent (a partial update).
    allow_missing: bool = False
    #: Whether tensors not in ``shapes`` may be present.
    allow_extra: bool = False

    def __post_init__(self) -> None:
        shapes = {}
        for name, shape in self.shapes.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"TensorSpec.shapes: bad tensor name {name!r}")
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ConfigError(f"TensorSpec.shapes[{name!r}]={shape!r}: dims must be ints >= 0")
            shapes[name] = tuple(int(d) for d in shape)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "dtypes", frozenset(self.dtypes))
        for field in ("max_abs", "max_l2"):
            bound = getattr(self, field)
            values = bound.values() if isinstance(bound, Mapping) else [] if bound is None else [bound]
            if any(not (isinstance(v, (int, float)) and v >= 0) for v in values):
                raise ConfigError(f"TensorSpec.{field}={bound!r}: bounds must be numbers >= 0")
        if self.max_total_bytes is not None and self.max_total_bytes < 0:
            raise ConfigError(f"TensorSpec.max_total_bytes={self.max_total_bytes!r}: must be >= 0")

    @classmethod
    def like(cls, tensors: Mapping[str, np.ndarray], **kwargs: object) -> TensorSpec:
        """A spec expecting exactly the names and shapes of ``tensors``."""
        return cls(shapes={k: tuple(v.shape) for k, v in tensors.items()}, **kwargs)  # type: ignore[arg-type]

    def abs_bound(self, name: str) -> float | None:
        return _bound(self.max_abs, name)

    def l2_bound(self, name: str) -> float | None:
        return _bound(self.max_l2, name)


def _bound(bound: float | Mapping[str, float] | None, name: str) -> float | None:
    if isinstance(bound, Mapping):
        value = bound.get(name)
        return None if value is None else float(value)
    return None if bound is None else float(bound)


def check_names(names: Iterable[str], spec: TensorSpec) -> None:
    """Missing and unexpected tensor names, both listed in one error."""
    present = set(names)
    problems = []
    if not spec.allow_missing:
        missing = sorted(set(spec.shapes) - present)
        if missing:
            problems.append(f"missing tensors {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
    if not spec.allow_extra:
        extra = sorted(present - set(spec.shapes))
        if extra:
            problems.append(f"unexpected tensors {extra[:10]}" + (" ..." if len(extra) > 10 else ""))
    if problems:
        raise TensorValidationError("; ".join(problems))


def check_entry(name: str, dtype: str, shape: tuple[int, ...], spec: TensorSpec) -> None:
    """dtype and shape of one tensor, from a header, before any data is read."""
    if dtype not in spec.dtypes:
        raise TensorValidationError(f"tensor {name!r}: dtype {dtype} not allowed (allowed: {sorted(spec.dtypes)})")
    expected = spec.shapes.get(name)
    if expected is not None and tuple(shape) != expected:
        raise TensorValidationError(f"tensor {name!r}: shape {tuple(shape)}, expected {expected}")


def check_values(name: str, values: np.ndarray, spec: TensorSpec | None) -> float:
    """Finiteness (always) and the spec's norm bounds, on the values that were sent.

    ``values`` may be the non-zero part of a sparse tensor: zeros change
    neither finiteness nor the norms, so the result is the dense tensor's.
    Returns the sum of squares (callers use it to skip further scans).
    """
    if values.dtype.kind != "f" or values.size == 0:
        wide = values.ravel().astype(np.float64)
        sumsq = float(np.dot(wide, wide)) if values.size else 0.0
    else:
        flat = values.ravel()
        if flat.dtype != np.float32 and flat.dtype != np.float64:
            flat = flat.astype(np.float32)
        # One BLAS pass: NaN or Inf anywhere makes the sum of squares non-finite.
        with np.errstate(over="ignore", invalid="ignore"):
            sumsq = float(np.dot(flat, flat))
        if not math.isfinite(sumsq):
            bad = ~np.isfinite(flat)
            if bad.any():
                n_nan = int(np.isnan(flat).sum())
                raise TensorValidationError(
                    f"tensor {name!r}: {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values"
                )
            # Finite values whose float32 squares overflowed: recompute exactly enough in float64.
            wide = flat.astype(np.float64)
            sumsq = float(np.dot(wide, wide))
    if spec is None:
        return sumsq
    l2_bound = spec.l2_bound(name)
    if l2_bound is not None:
        l2 = math.sqrt(sumsq) if math.isfinite(sumsq) else math.inf
        if l2 > l2_bound:
            raise TensorValidationError(f"tensor {name!r}: L2 norm {l2:.6g} exceeds {l2_bound:.6g}")
    abs_bound = spec.abs_bound(name)
    if abs_bound is not None and values.size:
        peak = float(np.max(np.abs(values)))
        if peak > abs_bound:
            raise TensorValidationError(f"tensor {name!r}: max |x| {peak:.6g} exceeds {abs_bound:.6g}")
    return sumsq


def check_total_bytes(total: int, spec: TensorSpec) -> None:
    if spec.max_total_bytes is not None and total > spec.max_total_bytes:
        raise TensorValidationError(f"tensors total {total} bytes, limit {spec.max_total_bytes}")


def validate_tensors(tensors: Mapping[str, np.ndarray], spec: TensorSpec) -> None:
    """Check names, dtypes, shapes, finiteness, norms and total size against ``spec``.

    :raises TensorValidationError: on the first problem found; the message names
        the tensor and what is wrong with it.
    """
    check_names(tensors.keys(), spec)
    total = 0
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise TensorValidationError(f"tensor {name!r}: expected a numpy array, got {type(array).__name__}")
        check_entry(name, array.dtype.name, tuple(array.shape), spec)
        total += array.nbytes
        check_total_bytes(total, spec)
        check_values(name, array, spec)
