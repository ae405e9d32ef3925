"""A stranger on the broker, with paho alone, cannot change what a swarm learns; every attack is counted."""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path

import pytest

from edgedfl.emulation.fleet import Fleet, FleetConfig
from edgedfl.node.config import SwarmConfig
from edgedfl.train.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rogue import Rogue

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _swarm(name: str) -> SwarmConfig:
    return SwarmConfig(name=name, model="tiny", rounds=2, local_steps=4, n_train=32, n_eval=8, n_signature=8,
                       n_calibration=8, round_deadline_s=20.0, join_timeout_s=60.0, seed=5,
                       train=TrainConfig(lr=1e-2, batch_size=4, max_length=64, progress=False))


def _outcome(run: Path, report: dict) -> dict:
    rows = {}
    for dev in sorted(run.glob("dev*")):
        for line in (dev / "rounds.jsonl").read_text().splitlines():
            r = json.loads(line)
            rows[(dev.name, r["round"])] = (r["loss"], r["accuracy"])
    return {"clusters": report["final"]["clusters"], "rows": rows, "final": report["final"]["accuracy"]}


def test_a_paho_rogue_changes_nothing_and_is_counted(tmp_path: Path, mosquitto) -> None:
    devices = ["dev00", "dev01", "dev02", "dev03"]
    # Prepare: a clean run, then the same swarm (same seed) under attack, both on a real Mosquitto
    clean_cfg = FleetConfig(devices=4, tasks=["arith", "strtf"], swarm=_swarm("clean"), broker=mosquitto.url,
                            timeout_s=300)
    clean = _outcome(tmp_path / "clean", Fleet(clean_cfg, tmp_path / "clean").run())
    url = urllib.parse.urlsplit(mosquitto.url)
    rogue = Rogue(url.hostname or "127.0.0.1", int(url.port or 1883), "attacked", devices)
    rogue.before_start()

    # Execute
    fleet = Fleet(FleetConfig(devices=4, tasks=["arith", "strtf"], swarm=_swarm("attacked"), broker=mosquitto.url,
                              timeout_s=300), tmp_path / "attacked")
    try:
        report = fleet.run(on_start=lambda _: rogue.start())
    finally:
        rogue.stop()

    # Assert: same clusters, same per-round losses and accuracies, same final accuracy as the clean run
    attacked = _outcome(tmp_path / "attacked", report)
    assert attacked["clusters"] == clean["clusters"]
    assert attacked["rows"] == clean["rows"]
    assert attacked["final"] == clean["final"]
    # every kind of attack was refused and counted: garbage, unsigned forgeries, replays
    rejects = report["rejects"]
    assert rogue.sent > 50 and rogue.captured and rogue.replayed
    assert rejects.get("SignatureError", 0) > 0  # unsigned hellos, experts, updates
    assert rejects.get("ChunkError", 0) + rejects.get("MalformedMessage", 0) > 0  # random bytes
    assert rejects.get("DuplicateMessage", 0) + rejects.get("StaleRound", 0) > 0  # replays
    for n in devices:
        assert report["per_device"][n]["experts_held"]  # the real experts arrived, the fakes were refused
        assert report["per_device"][n]["experts_missing"] == []
        assert report["per_device"][n]["rejects_by_sender"].get("ghost", 0) > 0
    assert report["devices_missing_experts"] == [] and report["admission"] == "keyring"
