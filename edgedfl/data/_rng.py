"""Seeded random streams that are identical in every process and on every machine.

``random.Random(str)`` happens to be stable too, but spelling the derivation out
(SHA-256 of the parts) makes the guarantee explicit and independent of
``PYTHONHASHSEED`` and of the Python version's seeding algorithm.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(*parts: object) -> int:
    """A 64-bit integer seed from any printable parts (``derive_seed("topic", 0)``)."""
    key = "\x1f".join(repr(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def rng_for(*parts: object) -> random.Random:
    """A ``random.Random`` stream named by ``parts``."""
    return random.Random(derive_seed(*parts))


def np_rng_for(*parts: object) -> np.random.Generator:
    """A numpy ``Generator`` stream named by ``parts``."""
    return np.random.default_rng(derive_seed(*parts))
