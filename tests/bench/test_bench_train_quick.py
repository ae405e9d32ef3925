"""bench/bench_train.py on the tiny model: both modes run end to end and write their tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_train.py"


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600,
                          check=False, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_step_mode_measures_time_and_memory_of_every_variant(tmp_path):
    variants = ["peft-lora fp32", "edgedfl solora none", "edgedfl solora none; full logits", "edgedfl solora torchao-int8"]
    _run("--quick", "--variants", ",".join(variants),
         "--out", str(tmp_path / "train"))
    rows = {r["variant"]: r for r in json.loads((tmp_path / "train.json").read_text())["rows"]}
    assert list(rows) == [v.replace("; ", ", ") for v in variants]
    ref = rows["peft-lora fp32"]
    assert ref["step_ratio"] == 1.0 and ref["memory_ratio"] == 1.0 and ref["base_ratio"] == 1.0
    for r in rows.values():
        assert r["step_s_median"] > 0 and r["added_mb"] > 0 and r["base_mb"] > 0
    md = (tmp_path / "train.md").read_text()
    assert "| edgedfl solora torchao-int8 |" in md and "Command: `python bench/bench_train.py" in md


def test_run_mode_trains_every_variant_on_the_same_batches(tmp_path):
    _run("--run-steps", "8", "--warmup", "2", "--model", "tiny", "--task", "parity", "--n-train", "64",
         "--n-eval", "16", "--out", str(tmp_path / "run"), "--variants",
         "peft-lora fp32,edgedfl lora none,edgedfl lora none bf16,edgedfl solora torchao-int8 bf16")
    rows = {r["variant"]: r for r in json.loads((tmp_path / "run.json").read_text())["rows"]}
    assert set(rows) == {"peft-lora fp32", "edgedfl lora none", "edgedfl lora none bf16",
                         "edgedfl solora torchao-int8 bf16"}
    # the same batches: at the first step (B = 0: the base alone) plain peft LoRA and edgedfl's lora on an
    # fp32 base see the same loss (edgedfl's skips the head where no label is: the same mean, other float sums)
    assert rows["edgedfl lora none"]["train_loss_first"] == pytest.approx(rows["peft-lora fp32"]["train_loss_first"],
                                                                         rel=1e-4)
    # a bfloat16 base: the same batch, the same loss up to bfloat16's rounding
    assert rows["edgedfl lora none bf16"]["train_loss_first"] == pytest.approx(
        rows["edgedfl lora none"]["train_loss_first"], rel=0.05)
    for r in rows.values():  # and every variant learns
        assert r["train_loss_last20"] < r["train_loss_first"], r
    assert rows["edgedfl solora torchao-int8 bf16"]["lr"] != rows["peft-lora fp32"]["lr"]  # each method at its own rate
    assert all(r["step_s_median"] > 0 and r["held_out_loss"] > 0 for r in rows.values())
    assert "| peft-lora fp32 | 0.002 |" in (tmp_path / "run.md").read_text()
