"""The on-disk layout of an Android bundle and its manifest (stdlib + numpy + safetensors; no torch).

A bundle is one folder per phone::

    manifest.json        what the phone needs to know (below), sorted JSON
    train.pte            ExecuTorch training program: loss + gradients of B only
    features.pte         ExecuTorch program on the frozen base: pooled hidden states
                         (task signature) and per-layer input statistics (mask calibration)
    infer.pte            ExecuTorch program, XNNPACK: base + every expert + router
    tokenizer.json       the model's tokenizer (Hugging Face ``tokenizers`` format)
    lora_A.safetensors   A of every slot and layer, ``slot<k>/<layer>`` (r, d_in) float32
    masks.safetensors    the phone's masks of B as packed bits, ``<layer>`` uint8
    signature.safetensors  ``projection`` (hidden, dim): the swarm's signature projection

Decisions:

* **A is a program input, not a constant.** The programs do not depend on the
  slot, so a phone exported before the swarm clustered (or that re-clusters
  later) uses the same files: it feeds the A of whatever slot its cluster owns.
  A is still never sent over the air: it is generated from the swarm seed at
  export time (:func:`edgedfl.adapters.solora.slot_A`) and stored for every
  slot, so an app needs no port of numpy's random generator.
* **Masks travel as packed bits** (``numpy.packbits``, big bit order, row-major
  over B's (d_out, r)): 1 bit per entry of B. The masks of a cluster come from
  its round-0 calibration, so the bundle holds the phone's masks as known at
  export (uniform masks of the planned slot unless given); a phone in a live
  swarm replaces them with its cluster's masks, derived with the same numpy
  code every node runs.
* **The signature projection is stored too** (``topology.projection_matrix``,
  evaluated at export), for the same reason as A: no RNG port on the phone.
* The manifest names every program input in order, so an app binds tensors by
  position without reading Python.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.errors import ConfigError

#: bumped when a file or a manifest field changes meaning
BUNDLE_VERSION = 1

MANIFEST = "manifest.json"
TRAIN_PTE = "train.pte"
FEATURES_PTE = "features.pte"
INFER_PTE = "infer.pte"
TOKENIZER = "tokenizer.json"
LORA_A = "lora_A.safetensors"
MASKS = "masks.safetensors"
SIGNATURE = "signature.safetensors"

#: the default output folder, relative to the repository root: android_bridge/out/<node>/
DEFAULT_OUT = Path("android_bridge") / "out"


def default_bundle_dir(node: str) -> Path:
    return DEFAULT_OUT / node


def a_key(slot: int, layer: str) -> str:
    """Key of one A in ``lora_A.safetensors``."""
    return f"slot{slot}/{layer}"


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean (d_out, r) -> uint8 bits (ceil(d_out * r / 8),), big bit order, row-major."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1))


def unpack_mask(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    n = shape[0] * shape[1]
    flat = np.unpackbits(np.asarray(bits, dtype=np.uint8))
    if flat.size < n or flat.size - n >= 8:
        raise ConfigError(f"packed mask has {flat.size} bits, expected {n} (+ < 8 padding) for shape {shape}")
    return flat[:n].astype(bool).reshape(shape)


def write_masks(path: str | os.PathLike[str], masks: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({layer: pack_mask(m) for layer, m in sorted(masks.items())}, str(path))


def read_masks(path: str | os.PathLike[str], shapes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Masks (layer -> bool (d_out, r)) from a packed file; ``shapes`` layer -> (d_out, r)."""
    from safetensors.numpy import load_file

    packed = load_file(str(path))
    if set(packed) != set(shapes):
        raise ConfigError(f"{path}: masks for {sorted(packed)[:3]}..., expected layers {sorted(shapes)[:3]}...")
    return {layer: unpack_mask(packed[layer], shapes[layer]) for layer in shapes}


def read_lora_A(path: str | os.PathLike[str], slot: int, layers: list[str]) -> list[np.ndarray]:
    """A of ``slot`` for ``layers``, in that order (what the programs take as inputs)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    missing = [n for n in layers if a_key(slot, n) not in tensors]
    if missing:
        raise ConfigError(f"{path} has no A of slot {slot} for {missing[:3]}")
    return [np.ascontiguousarray(tensors[a_key(slot, n)], dtype=np.float32) for n in layers]


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a bundle, checked for version and the presence of every file it names."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{folder} is not an Android bundle: no {MANIFEST} (run `edgedfl android export`)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    version = manifest.get("bundle_version")
    if version != BUNDLE_VERSION:
        raise ConfigError(f"{path}: bundle_version {version!r}, this edgedfl reads {BUNDLE_VERSION}")
    files = [p["file"] for p in manifest["programs"].values()]
    files += [manifest[k]["file"] for k in ("tokenizer", "lora_A", "masks", "signature")]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{folder}: bundle files missing: {missing}")
    return manifest


def layer_shapes(manifest: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """layer -> B's shape (d_out, r)."""
    r = int(manifest["rank"])
    return {entry["name"]: (int(entry["d_out"]), r) for entry in manifest["layers"]}
