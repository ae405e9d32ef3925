"""Results every device of a process computes alike (the clustering of the same hellos, a cluster's gossip
graph), computed once per process and shared: see :func:`shared_result`."""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["digest", "shared_result"]

_LOCK = threading.Lock()
_SHARED: collections.OrderedDict[str, Any] = collections.OrderedDict()


def shared_result(key: str, make: Callable[[], Any]) -> Any:
    """``make()``, computed once per process for equal inputs (``key``, a digest of them).

    Every member computes the same clustering of the same hellos and its cluster's same gossip graph;
    in a device host of hundreds of devices each computing them alone costs 250 x the CPU and, at a
    thousand devices, an (m, m) table per device at once (a host of 250 ran out of memory). Results
    are immutable and shared; the lock makes one device compute while the others wait.
    """
    with _LOCK:
        if key in _SHARED:
            _SHARED.move_to_end(key)
            return _SHARED[key]
        value = make()
        _SHARED[key] = value
        while len(_SHARED) > 8:
            _SHARED.popitem(last=False)
        return value


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()
