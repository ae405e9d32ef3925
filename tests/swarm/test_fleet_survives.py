"""A fleet survives its devices: a killed device is restarted and resumes; --out never deletes what a user owns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgedfl.emulation.fleet import EmulationError, Fleet, FleetConfig, clear_run_dir
from edgedfl.node.config import SwarmConfig
from edgedfl.train.config import TrainConfig


def test_an_earlier_run_is_replaced_and_nothing_else_is_deleted(tmp_path: Path) -> None:
    # Prepare: a folder with the user's own file
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    # Execute + Assert: refused without --overwrite, the file intact; with it, still intact
    with pytest.raises(EmulationError, match="overwrite"):
        clear_run_dir(out)
    clear_run_dir(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"

    # an earlier run in the folder: its files and device folders go, the user's file stays
    (out / "fleet_config.json").write_text("{}")
    (out / "report.json").write_text("{}")
    (out / "dev00").mkdir()
    (out / "dev00" / "node_config.json").write_text("{}")
    (out / "mydata").mkdir()
    clear_run_dir(out)
    assert sorted(p.name for p in out.iterdir()) == ["mydata", "notes.txt"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_device_is_restarted_resumes_and_is_counted_in_full(tmp_path: Path) -> None:
    # Prepare: three tiny devices; dev02 is SIGKILLed right after publishing round 2
    swarm = SwarmConfig(model="tiny", rounds=3, local_steps=4, n_train=32, n_eval=8, n_signature=8,
                        n_calibration=8, degree=2, round_deadline_s=8.0, join_timeout_s=60.0,
                        train=TrainConfig(lr=1e-2, batch_size=4, max_length=64, progress=False))
    cfg = FleetConfig(devices=3, tasks=["arith"], swarm=swarm, timeout_s=300,
                      node_overrides={"dev02": {"crash_after_round": 2}})

    # Execute: the emulator alone brings it back
    report = Fleet(cfg, tmp_path).run()

    # Assert: the run finished with every device; the crash and restart are in the report
    dev = report["per_device"]["dev02"]
    assert dev["crashes"] == [-9] and dev["resumed_after"] == 1
    assert all(not d["crashes"] for n, d in report["per_device"].items() if n != "dev02")
    rows = [json.loads(line) for line in (tmp_path / "dev02" / "rounds.jsonl").read_text().splitlines()]
    assert sorted({r["round"] for r in rows}) == [0, 1, 2, 3]
    # bytes sent before the kill (hello, statistics, rounds 1 and 2) still count
    final = json.loads((tmp_path / "dev02" / "final.json").read_text())
    assert all(final["bytes_by_round"].get(str(r), 0) > 0 for r in (0, 1, 2, 3))
    assert report["final"]["total_bytes"] == sum(r["bytes_sent"] for r in report["rounds"])
