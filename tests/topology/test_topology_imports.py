"""Layering: topology and aggregation load without torch (they run on every device)."""

from __future__ import annotations

import ast
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


#: what neither package may import (a prefix bans the module and everything under it)
BANNED = ("torch", "transformers", "peft", "edgedfl.adapters", "edgedfl.model", "edgedfl.train",
          "edgedfl.transport", "edgedfl.node", "edgedfl.emulation", "edgedfl.cli")
#: exceptions to BANNED: the adapter methods registry is torch-free (the aggregators come from it)
ALLOWED = ("edgedfl.adapters.methods",)


def _imported_modules(source: str) -> set[str]:
    """Every module a Python source imports, at any depth (imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _banned(source: str) -> list[str]:
    def under(module: str, prefixes: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    return sorted(m for m in _imported_modules(source) if under(m, BANNED) and not under(m, ALLOWED))


@pytest.mark.parametrize("package", ["edgedfl.topology", "edgedfl.aggregation"])
def test_sources_import_only_numpy_stdlib_and_lower_layers(package: str) -> None:
    import importlib

    root = Path(importlib.import_module(package).__file__).parent  # type: ignore[arg-type]
    for path in root.glob("*.py"):
        bad = _banned(path.read_text())
        assert not bad, f"{path.name} imports {bad}"


def test_the_import_check_sees_imports_and_only_imports() -> None:
    source = '''"""Docs may name edgedfl.adapters.model and torch."""
import numpy as np
from edgedfl.adapters.methods import get_method
from edgedfl.topology import graph


def f():
    from edgedfl.model import loading
    import torch.nn
'''
    assert _banned(source) == ["edgedfl.model", "edgedfl.model.loading", "torch.nn"]
