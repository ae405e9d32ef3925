"""Runs sharing a persistent broker never see each other; a swarm's retained messages can be cleared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _edgedfl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgedfl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_two_runs_on_one_persistent_broker_with_other_settings_both_finish(tmp_path: Path, mosquitto) -> None:
    common = ["emulate", "--devices", "2", "--tasks", "arith", "--model", "tiny", "--rounds", "1", "--local-steps",
              "2", "--n-train", "16", "--n-eval", "4", "--broker", mosquitto.url, "--swarm", "shared", "--quiet"]

    # Execute: a rank-8 run, then a rank-4 run under the same swarm name on the same (persistent) broker
    first = _edgedfl(*common, "--rank", "8", "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    listed = _edgedfl("swarm", "list", "--broker", mosquitto.url, "--swarm", "shared")
    assert listed.returncode == 0 and "edgedfl/shared/hello/dev00" in listed.stdout  # retained, still there
    second = _edgedfl(*common, "--rank", "4", "--out", str(tmp_path / "b"))

    # Assert: the second run finished; the first run's retained hellos were refused, not used (signed by
    # keys that are not in the second fleet's key ring)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["swarm"] == "shared" and report["rejects"].get("UnknownSigner", 0) >= 1
    for dev in ("dev00", "dev01"):
        final = json.loads((tmp_path / "b" / dev / "final.json").read_text())
        assert final["slot"] == 0 and final["accuracy"] is not None

    # and the swarm's retained messages can be deleted
    cleared = _edgedfl("swarm", "clear", "--broker", mosquitto.url, "--swarm", "shared")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
    again = _edgedfl("swarm", "list", "--broker", mosquitto.url, "--swarm", "shared")
    assert again.returncode == 0 and "0 retained message(s)" in again.stdout


def test_emulate_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    proc = _edgedfl("emulate", "--devices", "2", "--tasks", "arith", "--out", str(out), "--quiet", timeout=60)
    assert proc.returncode == 1 and "--overwrite" in proc.stderr
    assert (out / "thesis.tex").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
