"""The layers of DESIGN.md hold: a module imports only from its own layer or below, nothing imports the CLI,
the layers a phone speaks (wire, transport, protocol, topology, aggregation) never import torch, the byte
floor (transport) never reads the wire format, and routing does not lean on training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edgedfl"

LAYERS = {
    "_version": 0, "_lazy": 0, "_parent": 0, "errors": 0, "config": 0,
    "wire": 1, "topology": 1, "devices": 1, "data": 1,
    "transport": 2, "brokers": 2, "netlab": 2, "model": 2, "adapters": 2,
    "protocol": 3, "train": 3, "aggregation": 3, "routing": 3, "export": 3, "infer": 3, "android": 3,
    "node": 4, "doctor": 4, "experts": 4,
    "emulation": 5, "bench": 5, "cli": 5, "dashboard": 5,
}


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return [m for m in out if m == "edgedfl" or m.startswith("edgedfl.")]


def _modules() -> list[tuple[str, Path]]:
    mods = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        mods.append((".".join(rel.parts), path))
    return mods


def test_every_package_has_a_layer():
    units = {_unit(m) for m, _ in _modules()} - {"__init__", "py"}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_imports_only_point_down():
    bad = []
    for module, path in _modules():
        unit = _unit(module)
        if unit not in LAYERS:
            continue
        for target in _imports(path):
            t_unit = _unit(target)
            if t_unit in LAYERS and LAYERS[t_unit] > LAYERS[unit]:
                bad.append(f"{module} (L{LAYERS[unit]}) imports {target} (L{LAYERS[t_unit]})")
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = [f"{m} imports {t}" for m, p in _modules() if _unit(m) != "cli"
           for t in _imports(p) if _unit(t) == "cli"]
    assert not bad, bad


def _imports_of_package(pkg: str) -> list[tuple[str, str]]:
    return [(m, t) for m, p in _modules() if _unit(m) == pkg for t in _imports(p)]


def test_transport_moves_bytes_only():
    """The byte floor knows nothing of what the bytes mean: no wire format, no protocol."""
    bad = [f"{m} imports {t}" for m, t in _imports_of_package("transport") if _unit(t) in ("wire", "protocol")]
    assert not bad, bad


def test_routing_does_not_import_train():
    bad = [f"{m} imports {t}" for m, t in _imports_of_package("routing") if _unit(t) == "train"]
    assert not bad, bad


def test_no_file_passes_800_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 800}
    assert not long, long


@pytest.mark.parametrize("package", ["edgedfl.wire", "edgedfl.transport", "edgedfl.protocol", "edgedfl.brokers", "edgedfl.topology",
                                     "edgedfl.aggregation", "edgedfl.data", "edgedfl.routing"])
def test_phone_side_packages_do_not_import_torch(package):
    code = f"import sys, {package}; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{package} pulls in {out.stdout.strip()}"
