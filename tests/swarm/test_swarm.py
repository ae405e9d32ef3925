"""The swarm end to end: real node processes, a real broker, the tiny model.

Each test runs a small fleet (a few tens of seconds on two cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedfl.emulation.fleet import Fleet, FleetConfig
from edgedfl.node.config import SwarmConfig
from edgedfl.train.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _swarm(**kw) -> SwarmConfig:
    base = {"model": "tiny", "rounds": 3, "local_steps": 10, "n_train": 64, "n_eval": 16,
            "n_signature": 8, "n_calibration": 8, "round_deadline_s": 20.0, "join_timeout_s": 60.0,
            "train": TrainConfig(lr=1e-2, batch_size=8, max_length=96, progress=False)}
    base.update(kw)
    return SwarmConfig(**base)


def _rows(run: Path, node: str) -> list[dict]:
    return [json.loads(line) for line in (run / node / "rounds.jsonl").read_text().splitlines()]


def _final(run: Path, node: str) -> dict:
    return json.loads((run / node / "final.json").read_text())


def test_four_nodes_two_tasks_over_mosquitto_find_the_clusters_and_improve(tmp_path, mosquitto):
    cfg = FleetConfig(devices=4, tasks=["arith", "strtf"], broker=mosquitto.url, swarm=_swarm(), timeout_s=300)
    Fleet(cfg, tmp_path).run()  # start, wait for every device, stop
    finals = {n: _final(tmp_path, n) for n in ("dev00", "dev01", "dev02", "dev03")}
    slots = {n: f["slot"] for n, f in finals.items()}
    # devices 0 and 2 hold arith, 1 and 3 strtf: two clusters, the right ones
    assert slots["dev00"] == slots["dev02"] != slots["dev01"] == slots["dev03"]
    # every device agreed on the same clustering without a coordinator
    assert len({json.dumps(f["clusters"], sort_keys=True) for f in finals.values()}) == 1
    for node in finals:
        rows = _rows(tmp_path, node)
        assert [r["round"] for r in rows] == [0, 1, 2, 3]
        assert rows[-1]["loss"] < rows[0]["loss"] - 0.3, (node, rows[0]["loss"], rows[-1]["loss"])
        assert all(not r["quorum_short"] and len(r["peers"]) == 1 for r in rows[1:])
        # each device ends up holding the other cluster's finished expert too
        other = 1 - finals[node]["slot"]
        assert str(other) in {str(k) for k in finals[node]["experts"]}
    # the swarm's output on disk: every device wrote the experts it holds as a bundle, named by task,
    # which routes test prompts to the same experts as the device did in its final evaluation
    from edgedfl.data.tasks import load_task
    from edgedfl.routing.bundle import load_bundle

    for node in ("dev00", "dev01"):
        bundle = finals[node]["final"]["expert_bundle"]
        assert bundle == str(tmp_path / node / "experts")
        routed, tok, meta = load_bundle(bundle)
        assert routed.names[slots["dev00"]] == "arith" and routed.names[slots["dev01"]] == "strtf"
        assert meta["model"] == "tiny"
        device_hits = finals[node]["final"]["routing_accuracy"]
        prompts = {t: [e.prompt for e in load_task(t, "test", n=16, seed=0)] for t in ("arith", "strtf")}
        hits = 0
        for t, ps in prompts.items():
            _, chosen = routed.generate_text(tok, ps, "implicit", None, max_new_tokens=1, max_length=96)
            hits += sum(int(e) == slots["dev00" if t == "arith" else "dev01"] for e in chosen.experts.reshape(-1))
        assert hits / 32 >= min(device_hits, 0.9) - 0.1, (hits, device_hits)
    # a device read and answered its own cluster's messages only (other clusters' calibration statistics
    # reach it while it still follows every slot, and are left unanswered)
    for node, f in finals.items():
        mates = {n for n, s in slots.items() if s == f["slot"]} - {node}
        assert _applied_senders(tmp_path, node) == mates, node


def _applied_senders(run: Path, node: str, round: int | None = None) -> set[str]:
    """Who sent the updates (and masks) ``node`` applied, from its ledger on disk."""
    import sqlite3

    with sqlite3.connect(run / node / "proto" / "ledger.sqlite") as db:
        q = "SELECT DISTINCT sender FROM applied" + (" WHERE round = ?" if round is not None else "")
        return {r[0] for r in db.execute(q, () if round is None else (round,))}


def test_calibration_is_pooled_from_the_first_members_and_masks_agree(tmp_path, mosquitto):
    """calibration_peers=2 in a cluster of 5: dev00 and dev01 send their statistics to all; the others only
    listen, send nothing in round 0, and every member derives the same masks."""
    import sqlite3

    cfg = FleetConfig(devices=5, tasks=["arith"], broker=mosquitto.url, per_host=5, timeout_s=300,
                      swarm=_swarm(rounds=1, local_steps=2, calibration_peers=2))
    Fleet(cfg, tmp_path).run()  # start, wait for every device, stop
    nodes = [f"dev{i:02d}" for i in range(5)]
    pool = {"dev00", "dev01"}
    for node in nodes:
        assert _applied_senders(tmp_path, node, round=0) == pool - {node}, node
        with sqlite3.connect(tmp_path / node / "proto" / "outbox.sqlite") as db:
            sent_round0 = db.execute("SELECT COUNT(*) FROM outbox WHERE round = 0 AND kind = 'update'").fetchone()[0]
            mask_ids = {k for (k,) in db.execute("SELECT key FROM meta WHERE key LIKE 'mask:%'")}
        assert sent_round0 == (1 if node in pool else 0), node
        if node == "dev00":
            reference = mask_ids
        assert mask_ids and mask_ids == reference, node  # the same masks, derived from the same pool
        assert [r["round"] for r in _rows(tmp_path, node)] == [0, 1]


def test_a_node_killed_mid_round_restarts_resumes_and_catches_up(tmp_path, mosquitto):
    swarm = _swarm(rounds=4, degree=2, quorum=0.5, round_deadline_s=6.0)
    cfg = FleetConfig(devices=3, tasks=["arith"], swarm=swarm, timeout_s=300, broker=mosquitto.url,
                      node_overrides={"dev02": {"crash_after_round": 2}})
    fleet = Fleet(cfg, tmp_path)
    fleet.start()
    try:
        proc = fleet.procs["dev02"]
        proc.wait(timeout=240)
        assert proc.returncode == -9  # SIGKILLed right after publishing round 2
        # stay down while the others close round 3 without us
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
            (tmp_path / n / "rounds.jsonl").is_file() and any(r["round"] == 3 for r in _rows(tmp_path, n))
            for n in ("dev00", "dev01")
        ):
            time.sleep(0.5)
        crashed = next(n for n in fleet.nodes if n.node_id == "dev02")
        fleet.spawn(crashed, crash_after_round=0)  # the same device comes back
        fleet.wait()
    finally:
        fleet.stop()
    final = _final(tmp_path, "dev02")
    assert final["resumed_after"] == 1  # round 2 was published but its checkpoint never written
    # rounds 0 and 1 before the kill, then 2 (redone), 3 and 4 after it: each round once, none skipped
    assert [r["round"] for r in _rows(tmp_path, "dev02")] == [0, 1, 2, 3, 4]
    # the others closed at least one round without dev02, at quorum, within the deadline
    closed_without = [r for n in ("dev00", "dev01") for r in _rows(tmp_path, n)
                      if r["round"] >= 3 and "dev02" not in r["peers"]]
    assert closed_without and all(not r["quorum_short"] for r in closed_without)
    assert all(r["waited_s"] <= swarm.round_deadline_s + 2.0 for r in closed_without)
    # after the restart dev02 caught up: the broker kept its neighbours' updates of the rounds it missed
    # for its persistent session, so each of those rounds found every neighbour's update waiting and
    # mixed it in (3 devices at degree 2: both others are its neighbours). Round 2's may have died with
    # the killed process, so only the rounds it was down for count.
    redo = [r for r in _rows(tmp_path, "dev02") if r["round"] >= 3]
    assert all(r["peers"] == ["dev00", "dev01"] and not r["quorum_short"] for r in redo), redo


def test_a_ten_times_slower_node_never_stalls_its_cluster_past_the_deadline(tmp_path):
    # enough local steps that the slow node's round (10x its training time) is far longer than the
    # deadline: a cluster that waited for it would show waits of many deadlines
    swarm = _swarm(rounds=2, degree=2, quorum=0.5, round_deadline_s=3.0, local_steps=40)
    cfg = FleetConfig(devices=3, tasks=["arith"], swarm=swarm, timeout_s=300,
                      node_overrides={"dev02": {"slowdown": 10.0}})
    Fleet(cfg, tmp_path).run()  # start, wait for every device, stop
    slack = 2.5  # aggregation and message handling after the deadline, on a loaded 2-core machine
    slow = _rows(tmp_path, "dev02")[1:]
    assert all(r["train_s"] > 0 for r in slow)
    slow_round_s = max(r["train_s"] for r in slow) * 10.0
    assert slow_round_s > swarm.round_deadline_s + slack, "the slow node is not slow enough to tell a stall"
    for node in ("dev00", "dev01"):
        rows = _rows(tmp_path, node)[1:]
        assert len(rows) == swarm.rounds
        for row in rows:
            assert row["waited_s"] <= swarm.round_deadline_s + slack, row
    fast_waits = [r for n in ("dev00", "dev01") for r in _rows(tmp_path, n)[1:] if "dev02" not in r["peers"]]
    assert fast_waits, "the slow device was never left out: the test did not exercise the deadline"


def _emulate(out: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edgedfl.cli", "emulate", "--devices", "4", "--tasks", "2", "--model", "tiny",
         "--rounds", "2", "--out", str(out), "--quiet", "--seed", "3"],
        capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    return proc, time.monotonic() - t0


def test_emulate_cli_is_quick_valid_and_deterministic(tmp_path):
    first, _ = _emulate(tmp_path / "a")
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {"method", "devices", "tasks", "seed", "rounds", "final"} <= set(report)
    assert report["method"] == "solora" and report["devices"] == 4 and report["seed"] == 3
    assert len(report["tasks"]) == 2
    for row in report["rounds"]:
        assert {"round", "accuracy", "avg_accuracy", "bytes_sent"} <= set(row)
        assert set(row["accuracy"]) == set(report["tasks"]) and row["bytes_sent"] > 0
    final = report["final"]
    assert {"avg_accuracy", "accuracy", "total_bytes", "bytes_per_device_per_round", "clusters", "wall_s"} <= set(final)
    assert final["total_bytes"] == sum(r["bytes_sent"] for r in report["rounds"])
    for png in ("report_accuracy.png", "report_bytes.png", "report_clusters.png"):
        assert (tmp_path / "a" / png).stat().st_size > 1000
    # the CLI names the swarm's expert bundle and the command that exports it
    line = next(x for x in first.stdout.splitlines() if x.startswith("experts: "))
    assert f"--experts {tmp_path / 'a' / 'dev00' / 'experts'} " in line
    assert (tmp_path / "a" / "dev00" / "experts" / "experts.json").is_file()

    second, _ = _emulate(tmp_path / "b")
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads((tmp_path / "b" / "report.json").read_text())
    assert again["final"]["clusters"] == final["clusters"]
    # each run under its own swarm name (a broker shared by runs never mixes them)
    assert report["swarm"] != again["swarm"] and report["swarm"].startswith("demo-")
    assert [r["bytes_sent"] for r in again["rounds"]] == [r["bytes_sent"] for r in report["rounds"]]
    assert [r["accuracy"] for r in again["rounds"]] == [r["accuracy"] for r in report["rounds"]]
    assert [r["loss"] for r in again["rounds"]] == [r["loss"] for r in report["rounds"]]


def test_emulate_cli_takes_a_users_jsonl_beside_a_built_in_task(tmp_path):
    # Prepare: the user's file, named by a path relative to where the command runs
    rows = [{"prompt": f"Is {i} even?\nAnswer:", "completion": " yes" if i % 2 == 0 else " no", "task": "parity"}
            for i in range(120)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # Execute
    proc = subprocess.run(
        [sys.executable, "-m", "edgedfl.cli", "emulate", "--devices", "4", "--tasks", "arith,mine.jsonl",
         "--model", "tiny", "--rounds", "1", "--local-steps", "2", "--n-train", "16", "--n-eval", "4",
         "--out", "run", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )

    # Assert: the file is a task like the built-in one: its devices, its column, its slot, its majority rate
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    path = str(tmp_path / "mine.jsonl")
    assert report["tasks"] == ["arith", path] and report["task_names"][path] == "mine"
    assert [d["task"] for _, d in sorted(report["per_device"].items())] == ["arith", path, "arith", path]
    assert set(report["rounds"][-1]["accuracy"]) == {"arith", path}
    assert 0.3 < report["majority_rate"][path] < 0.7
    assert "mine" in proc.stdout.splitlines()[1] and "major" in proc.stdout
    node = json.loads((tmp_path / "run" / "dev01" / "node_config.json").read_text())
    assert node["data"] == path and node["swarm"]["max_slots"] == 2


@pytest.mark.root
def test_as_root_links_are_shaped_for_real_in_network_namespaces(tmp_path):
    from edgedfl.netlab import can_shape_links

    if not can_shape_links():
        pytest.skip("needs root and working ip netns + tc")
    swarm = _swarm(rounds=1, n_signature=16)
    cfg = FleetConfig(devices=3, tasks=["arith"], profiles=["phone", "laptop"], shape_links=True, swarm=swarm,
                      timeout_s=300)
    fleet = Fleet(cfg, tmp_path)
    fleet.start()
    try:
        assert fleet.shaping == "netns"
        lab_namespaces = [h.ns for h in fleet.lab.hosts.values()]
        assert len(lab_namespaces) == 3
        shown = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert all(ns in shown for ns in lab_namespaces)
        fleet.wait()
    finally:
        fleet.stop()
    for node in fleet.nodes:
        assert node.broker.startswith("mqtt://10."), node.broker  # through its own shaped veth
        assert node.link_rate_bps == 0  # not shaped twice
        assert [r["round"] for r in _rows(tmp_path, node.node_id)] == [0, 1]
    assert any(_rows(tmp_path, n.node_id)[1]["peers"] for n in fleet.nodes)
    shown = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in shown for ns in lab_namespaces)  # torn down
