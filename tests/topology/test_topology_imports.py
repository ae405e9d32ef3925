"""Layering: topology and aggregation load without torch (they run on every device)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["edgedfl.topology", "edgedfl.aggregation"])
def test_importing_does_not_load_torch(package: str) -> None:
    code = (
        f"import sys, {package};"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{package} pulled in {proc.stdout.strip()} {proc.stderr[-2000:]}"


@pytest.mark.parametrize("package", ["edgedfl.topology", "edgedfl.aggregation"])
def test_sources_import_only_numpy_stdlib_and_lower_layers(package: str) -> None:
    import importlib

    root = Path(importlib.import_module(package).__file__).parent  # type: ignore[arg-type]
    for path in root.glob("*.py"):
        text = path.read_text()
        for banned in ("import torch", "from torch", "edgedfl.adapters", "edgedfl.model", "edgedfl.train",
                       "edgedfl.transport", "edgedfl.node", "edgedfl.emulation", "edgedfl.cli"):
            assert banned not in text, f"{path.name} contains {banned!r}"
