"""``edgedfl infer`` in a process where importing torch fails; ``edgedfl export onnx`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _no_torch_env(tmp_path: Path) -> dict[str, str]:
    fake = tmp_path / "notorch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is not allowed in edgedfl infer')\n")
    path = [str(fake.parent), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), HF_HUB_OFFLINE="1")


def test_infer_runs_without_torch(exported, mixed_prompts, tmp_path):
    env = _no_torch_env(tmp_path)
    guard = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True,
                           check=False)
    assert guard.returncode != 0 and "not allowed" in guard.stderr  # the guard really bites
    prompts, _ = mixed_prompts
    out = subprocess.run(
        [sys.executable, "-m", "edgedfl.cli", "infer", "--model", str(exported), "--max-new-tokens", "4",
         prompts[0], prompts[1]],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("expert 0 (topic) | ") and lines[1].startswith("expert 1 (arith) | ")
    assert "tok/s" in lines[0] and "prefill" in lines[0]


def test_infer_modules_import_neither_torch_nor_transformers():
    code = ("import sys; import edgedfl.infer, edgedfl.cli.infer; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow
def test_export_command_from_a_bundle(routed_tok, tmp_path):
    from edgedfl.routing.bundle import save_bundle

    routed, _ = routed_tok
    save_bundle(tmp_path / "experts", routed, "tiny")
    out = subprocess.run(
        [sys.executable, "-m", "edgedfl.cli", "export", "onnx", "--experts", str(tmp_path / "experts"),
         "--out", str(tmp_path / "m.onnx"), "--int8"],
        capture_output=True, text=True, timeout=600, check=False, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["int8"] and info["experts"] == ["topic", "arith", "strtf"]
    assert (tmp_path / "tokenizer.json").is_file()
    run = subprocess.run(
        [sys.executable, "-m", "edgedfl.cli", "infer", "--model", str(tmp_path / "m.onnx"), "--expert", "strtf",
         "--max-new-tokens", "2", "Task: x\nAnswer:"],
        capture_output=True, text=True, timeout=120, check=False, env=_no_torch_env(tmp_path),
    )
    assert run.returncode == 0 and run.stdout.startswith("expert 2 (strtf)"), run.stderr
