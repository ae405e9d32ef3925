"""Atomic checkpoints: a SIGKILL during a write loses nothing; the resumed run matches an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedfl.errors import CheckpointError
from edgedfl.train.checkpoint import CheckpointManager

PROC = Path(__file__).with_name("train_proc.py")


def _run(ckpt: Path, log: Path, steps: int, kill_at: int | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(PROC), str(ckpt), str(log), str(steps)]
    if kill_at is not None:
        args.append(str(kill_at))
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)


def _losses(log: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a re-run step overwrites the killed run's value
    return out


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_resumes_and_matches_uninterrupted(tmp_path):
    steps = 15
    ref = _run(tmp_path / "ref", tmp_path / "ref.log", steps)
    assert ref.returncode == 0, ref.stderr

    killed = _run(tmp_path / "run", tmp_path / "run.log", steps, kill_at=10)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mgr = CheckpointManager(tmp_path / "run")
    latest = mgr.latest()
    assert latest is not None and latest.name == "step-00000005"  # step 10 was cut off mid-write
    assert not list((tmp_path / "run").glob(".tmp-*"))  # the torn write was cleaned up

    resumed = _run(tmp_path / "run", tmp_path / "run.log", steps)
    assert resumed.returncode == 0, resumed.stderr
    ref_losses, run_losses = _losses(tmp_path / "ref.log"), _losses(tmp_path / "run.log")
    assert sorted(run_losses) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert run_losses[step] == pytest.approx(ref_losses[step], abs=1e-6), step
    ref_final = json.loads((tmp_path / "ref.log.final.json").read_text())
    run_final = json.loads((tmp_path / "run.log.final.json").read_text())
    for key in ref_final:
        np.testing.assert_allclose(np.array(run_final[key]), np.array(ref_final[key]), atol=1e-6)


def test_latest_pointing_at_a_corrupt_checkpoint_falls_back(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=5)
    mgr.save(1, {"a.bin": b"one"})
    second = mgr.save(2, {"a.bin": b"two"})
    (second / "a.bin").write_bytes(b"tw0")  # bit rot / torn write behind the manifest's back
    assert mgr.latest().name == "step-00000001"
    assert mgr.load()["a.bin"] == b"one"
    with pytest.raises(CheckpointError):
        mgr.load(second)


def test_no_checkpoint_is_a_typed_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        CheckpointManager(tmp_path / "empty").load()


def test_prunes_to_keep(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in range(1, 5):
        mgr.save(step, {"x": str(step).encode()})
    assert [p.name for p in mgr.list_complete()] == ["step-00000003", "step-00000004"]
    assert (tmp_path / "LATEST").read_text().strip() == "step-00000004"
    assert os.listdir(tmp_path).count("LATEST.tmp") == 0
