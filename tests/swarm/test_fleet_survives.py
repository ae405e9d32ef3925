"""A fleet survives its devices: a killed device is restarted and resumes; --out never deletes what a user owns."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edgedfl.brokers import MosquittoBroker, mosquitto_available
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
    _assert_each_update_applied_once(tmp_path)


def _assert_each_update_applied_once(run: Path) -> None:
    """Every device's ledger: at most one update per (sender, round, slot), and neighbours' updates were applied."""
    total = 0
    for ledger in sorted(run.glob("dev*/proto/ledger.sqlite")):
        with sqlite3.connect(ledger) as db:
            rows = db.execute("SELECT sender, round, slot, COUNT(*) FROM applied WHERE kind = 'update' "
                              "GROUP BY sender, round, slot").fetchall()
        assert rows, ledger
        assert all(n == 1 for *_, n in rows), (ledger, [r for r in rows if r[3] > 1])
        total += len(rows)
    assert total > 0


def _rounds_done(run: Path) -> int:
    done = 0
    for f in run.glob("dev*/rounds.jsonl"):
        done = max(done, len(f.read_text().splitlines()))
    return done


@pytest.mark.slow
@pytest.mark.integration
def test_a_broker_sigkilled_and_restarted_mid_run_costs_nothing(tmp_path: Path) -> None:
    # Prepare: a Mosquitto of this test alone (it is killed), three tiny devices on it
    if not mosquitto_available():
        pytest.skip("mosquitto binary not installed (scripts/setup.sh installs it)")
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto").start()
    swarm = SwarmConfig(model="tiny", rounds=4, local_steps=4, n_train=32, n_eval=8, n_signature=8,
                        n_calibration=8, degree=2, round_deadline_s=20.0, join_timeout_s=60.0,
                        train=TrainConfig(lr=1e-2, batch_size=4, max_length=64, progress=False))
    cfg = FleetConfig(devices=3, tasks=["arith"], swarm=swarm, broker=broker.url, timeout_s=300)
    killed = threading.Event()

    def kill_after_round_one(fleet: Fleet) -> None:
        def go() -> None:
            deadline = time.monotonic() + 240
            while _rounds_done(fleet.run_dir) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            broker.kill()  # SIGKILL: what was not yet autosaved is lost
            killed.set()
            time.sleep(2.0)
            broker.restart()
        threading.Thread(target=go, daemon=True).start()

    # Execute
    try:
        report = Fleet(cfg, tmp_path / "run").run(on_start=kill_after_round_one)
    finally:
        broker.close()

    # Assert: the broker did die mid-run; the run finished every round on every device, nothing crashed,
    # the report is complete and no update was applied twice
    assert killed.is_set()
    assert sorted(report["per_device"]) == ["dev00", "dev01", "dev02"]
    for name, dev in report["per_device"].items():
        assert not dev["crashes"], name
        rows = (tmp_path / "run" / name / "rounds.jsonl").read_text().splitlines()
        assert sorted({json.loads(r)["round"] for r in rows}) == [0, 1, 2, 3, 4], name
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2, 3, 4]
    assert report["final"]["accuracy"]
    _assert_each_update_applied_once(tmp_path / "run")
