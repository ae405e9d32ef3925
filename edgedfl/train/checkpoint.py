"""Atomic, self-checking checkpoints on disk: safetensors + JSON, never pickle.

Layout of a run directory::

    ckpt/
      LATEST                    name of the newest complete checkpoint
      step-00000050/
        adapter.safetensors     trained weights and masks of every slot
        optimizer.safetensors   optimizer state tensors
        state.json              optimizer hyper-parameters, trainer position, RNG states, metrics
        MANIFEST.json           size and sha256 of every file above (written last)

A checkpoint is written into a temporary sibling directory, every file and the
directory are fsync'ed, the directory is renamed into place, and only then is
``LATEST`` replaced (temp file + fsync + rename). A process killed at any point
leaves either the previous checkpoint or the new one, complete: a loader that
finds ``LATEST`` pointing at a missing or corrupt directory falls back to the
newest directory whose manifest verifies, and leftover temporaries are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedfl.errors import CheckpointError

log = logging.getLogger("edgedfl.train")

PREFIX = "step-"
TMP_PREFIX = ".tmp-"
LATEST = "LATEST"
MANIFEST = "MANIFEST.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CheckpointManager:
    """Writes and finds checkpoints in ``root``; keeps the newest ``keep``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        keep: int = 2,
        after_file: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)
        #: called with a file name after each file is durable (crash-safety tests hook in here)
        self.after_file = after_file

    def save(self, step: int, files: dict[str, bytes]) -> Path:
        """Write ``files`` (name -> bytes) as the checkpoint of ``step``, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{step:08d}"
        final = self.root / name
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=self.root))
        manifest: dict[str, Any] = {"step": step, "files": {}}
        try:
            for fname, data in sorted(files.items()):
                _write_durable(tmp / fname, data)
                manifest["files"][fname] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                if self.after_file:
                    self.after_file(fname)
            _write_durable(tmp / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())
            _fsync_dir(tmp)
            if final.exists():  # re-saving a step (after a resume): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._point_latest(name)
        self._prune()
        return final

    def _point_latest(self, name: str) -> None:
        tmp = self.root / f"{LATEST}.tmp"
        _write_durable(tmp, (name + "\n").encode())
        os.replace(tmp, self.root / LATEST)
        _fsync_dir(self.root)
        if self.after_file:
            self.after_file(LATEST)

    def _prune(self) -> None:
        complete = self.list_complete()
        for path in complete[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)

    def verify(self, path: Path) -> bool:
        """True when ``path`` holds a manifest and every file matches it."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            for fname, meta in manifest["files"].items():
                f = path / fname
                if f.stat().st_size != meta["size"] or _sha256(f) != meta["sha256"]:
                    return False
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def list_complete(self) -> list[Path]:
        """Verified checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
        return [p for p in dirs if self.verify(p)]

    def latest(self) -> Path | None:
        """The newest complete checkpoint: LATEST if it verifies, else the newest that does."""
        if not self.root.is_dir():
            return None
        for leftover in self.root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a write that was cut off
        pointer = self.root / LATEST
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if candidate.is_dir() and self.verify(candidate):
                newer = [p for p in self.list_complete() if p.name > candidate.name]
                return newer[-1] if newer else candidate
            log.warning("LATEST points at %s, which is missing or incomplete; falling back", candidate.name)
        complete = self.list_complete()
        return complete[-1] if complete else None

    def load(self, path: Path | None = None) -> dict[str, bytes]:
        path = path or self.latest()
        if path is None:
            raise CheckpointError(f"no complete checkpoint in {self.root}")
        if not self.verify(path):
            raise CheckpointError(f"checkpoint {path} fails its manifest check")
        manifest = json.loads((path / MANIFEST).read_text())
        return {fname: (path / fname).read_bytes() for fname in manifest["files"]}
