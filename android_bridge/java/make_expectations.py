"""Writes what the Java codec's JUnit tests expect of every golden file of the wire format.

The golden files (tests/wire/golden/, written by tests/wire/make_golden.py) pin the bytes; this
script pins their *meaning* for the Java side, from the same inputs: for each file the envelope
fields, the generator's inputs (so Java can build the file from scratch and compare bytes), and
what the Python reference decodes (so Java can compare its decoded tensors exactly). Floats travel
as their float32 bit patterns (ints), so nothing is lost to decimal spelling and the strict wire
JSON reader of the Java codec (which has no floats) can read the file.

Run it whenever the golden files change; tests/android/test_java_codec.py fails while the
committed file is stale::

    python android_bridge/java/make_expectations.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "wire" / "golden"
OUT = Path(__file__).resolve().parent / "src" / "test" / "resources" / "golden_expectations.json"

sys.path.insert(0, str(ROOT / "tests" / "wire"))
import make_golden as g

from edgedfl.wire import (
    KeyRing,
    MaskRegistry,
    decode_envelope,
    decode_masks,
    decode_tensors,
    decode_update,
    mask_id,
    parse_chunk_header,
)
from edgedfl.wire.safetensors_io import read_safetensors


def _f32_bits(array: np.ndarray) -> list[int]:
    return [int(v) for v in np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).ravel()]


def _bits(mask: np.ndarray) -> str:
    return "".join("1" if b else "0" for b in mask.ravel())


def _mask_entry(mask: np.ndarray) -> dict[str, Any]:
    return {"shape": list(mask.shape), "id": mask_id(mask), "bits": _bits(mask)}


def _envelope_fields(data: bytes, ring: KeyRing) -> dict[str, Any]:
    env = decode_envelope(data, keyring=ring if data[5] & 1 else None)
    return {
        "kind": env.kind, "swarm": env.swarm, "sender": env.sender, "round": env.round, "slot": env.slot,
        "seq": env.seq, "meta": dict(env.meta), "error": env.error, "key_id": env.key_id, "body_len": len(env.body),
    }


def _body(name: str, data: bytes, ring: KeyRing, registry: MaskRegistry) -> dict[str, Any] | None:
    env = decode_envelope(data, keyring=ring if data[5] & 1 else None)
    if not env.body:
        return None
    meta, _ = read_safetensors(env.body)
    codec = json.loads(meta["edgedfl"])["codec"]
    if codec == "tensors/1":
        _, raw = read_safetensors(env.body)
        decoded = decode_tensors(env.body)
        return {"codec": codec, "tensors": {
            n: {"dtype": raw[n].dtype, "shape": list(raw[n].shape), "data_hex": np.ascontiguousarray(a).tobytes().hex()}
            for n, a in decoded.items()
        }}
    if codec == "mask/1":
        masks = decode_masks(env.body, registry=registry)
        assert set(masks) == set(g.masks()), name
        return {"codec": codec, "masks": {n: _mask_entry(m) for n, m in masks.items()}}
    assert codec == "update/1", (name, codec)
    decoded = decode_update(env.body, masks=registry)
    precision = env.meta["precision"]
    return {
        "codec": codec,
        "precision": precision,
        "inputs": {n: {"shape": list(a.shape), "f32_bits": _f32_bits(a)} for n, a in g.update_tensors().items()},
        "input_masks": {n: _mask_entry(m) for n, m in g.update_masks().items()},
        "decoded": {n: {"shape": list(a.shape), "f32_bits": _f32_bits(a)} for n, a in decoded.items()},
    }


def expectations() -> dict[str, Any]:
    """The whole expectations document (checks that the golden files on disk are current)."""
    cases = g.cases()
    for name, data in cases.items():
        if (GOLDEN / name).read_bytes() != data:
            raise SystemExit(f"{name}: golden file differs from make_golden.py's output; fix that first")
    signer = g.test_signer()
    ring = KeyRing.of(signer)
    registry = MaskRegistry()
    files: dict[str, Any] = {}
    # mask.bin first: the updates' sparse tensors decode against its masks.
    for name in sorted(cases, key=lambda n: (n != "mask.bin", n)):
        data = cases[name]
        if name.startswith("chunks/"):
            h = parse_chunk_header(data)
            files[name] = {"chunk": {
                "message": name.split("/", 1)[1].rsplit(".", 2)[0] + ".bin", "index": h.index, "count": h.count,
                "chunk_size": h.chunk_size, "total": h.total, "message_id_hex": h.message_id.hex(),
                "sha256_hex": h.sha256.hex(),
            }}
            continue
        files[name] = {"envelope": _envelope_fields(data, ring), "body": _body(name, data, ring, registry)}
    return {
        "about": "what android_bridge/java's JUnit tests expect of tests/wire/golden; "
                 "written by android_bridge/java/make_expectations.py",
        "test_key": {"seed_hex": g.TEST_KEY_SEED.hex(), "key_id": g.TEST_KEY_ID,
                     "public_hex": signer.public_bytes().hex()},
        "chunk_data_bytes": g.CHUNK_DATA_BYTES,
        "files": files,
    }


def render() -> str:
    return json.dumps(expectations(), indent=1, sort_keys=True) + "\n"


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"{OUT} ({len(json.loads(OUT.read_text())['files'])} golden files)")


if __name__ == "__main__":
    main()
