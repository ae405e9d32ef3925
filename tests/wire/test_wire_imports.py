"""Layering: the wire format must load without torch (a phone speaks it without Python)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_edgedfl_wire_does_not_import_torch() -> None:
    code = (
        "import sys, edgedfl.wire, edgedfl.wire.codec, edgedfl.wire.chunks, edgedfl.wire.envelope;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"edgedfl.wire pulled in {proc.stdout.strip()} {proc.stderr[-2000:]}"


def test_wire_sources_never_unpickle_or_import_torch() -> None:
    from pathlib import Path

    import edgedfl.wire

    for path in Path(edgedfl.wire.__file__).parent.glob("*.py"):
        text = path.read_text()
        for banned in ("import torch", "from torch", "import pickle", "pickle.load", "allow_pickle=True", "np.load("):
            assert banned not in text, f"{path.name} contains {banned!r}"
