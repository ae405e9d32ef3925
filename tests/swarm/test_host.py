"""Device hosts (many devices per process over one shared base) and the Ray engine, on the tiny model.

The same seed must give the same run whether each device has a process of its
own, all devices share one host, or hosts run as Ray actors on two Ray nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgedfl.emulation.fleet import Fleet, FleetConfig
from edgedfl.node.config import SwarmConfig
from edgedfl.train.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NODES = ("dev00", "dev01", "dev02", "dev03")


def _swarm(name: str, rounds: int = 2) -> SwarmConfig:
    return SwarmConfig(model="tiny", rounds=rounds, local_steps=10, n_train=64, n_eval=16, n_signature=8,
                       n_calibration=8, round_deadline_s=120.0, join_timeout_s=180.0, seed=3, name=name,
                       train=TrainConfig(lr=1e-2, batch_size=8, max_length=96, progress=False))


def _run(out: Path, name: str, rounds: int = 2, **fleet) -> dict:
    cfg = FleetConfig(devices=4, tasks=["arith", "strtf"], swarm=_swarm(name, rounds), timeout_s=600, **fleet)
    return Fleet(cfg, out).run()


def _numbers(run: Path, *, with_bytes: bool = True) -> dict:
    """Everything a device measured, round by round, that packing must not change.

    ``with_bytes=False`` leaves out the bytes sent: they include the protocol's re-sends, and a message
    is re-sent when its receiver did not acknowledge it within ``ack_timeout_s`` -- which depends on how
    the CPUs were shared at that moment (a peer busy computing, a Ray actor starting later), in any
    engine. The bytes are compared apart, within what one re-sent message adds.
    """
    out = {}
    for node in NODES:
        rows = [json.loads(x) for x in (run / node / "rounds.jsonl").read_text().splitlines()]
        final = json.loads((run / node / "final.json").read_text())
        out[node] = {"rounds": [(r["round"], r["loss"], r["accuracy"], r.get("train_loss"), r["peers"])
                                + ((r["bytes_sent"],) if with_bytes else ()) for r in rows],
                     "clusters": final["clusters"], "final": final["final"]["modes"],
                     "routing": final["final"].get("routing")}
        if with_bytes:
            out[node]["bytes"] = final["total_bytes"]
    return out


def _same_bytes_but_resends(run: Path, base: Path) -> None:
    """Every device sent the same bytes in both runs, up to a few re-sent messages (a round-0 statistics
    message is about 1 kB here; a quarter of the round or 4 kB, whichever is larger)."""
    for node in NODES:
        a = json.loads((run / node / "final.json").read_text())["bytes_by_round"]
        b = json.loads((base / node / "final.json").read_text())["bytes_by_round"]
        assert set(a) == set(b)
        for r in a:
            assert abs(a[r] - b[r]) <= max(4096, 0.25 * max(a[r], b[r])), (node, r, a[r], b[r])


@pytest.fixture(scope="module")
def process_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("per-process")
    report = _run(out, "pack")
    return out, report


def test_a_host_of_four_devices_gives_the_same_run_as_four_processes(process_run, tmp_path):
    base, report = process_run
    hosted = _run(tmp_path, "pack", per_host=4)
    assert not list(base.glob("hosts/*")) and (tmp_path / "hosts" / "host00" / "result.json").is_file()
    result = json.loads((tmp_path / "hosts" / "host00" / "result.json").read_text())
    assert result["outcome"] == {n: "done" for n in NODES} and result["bases"] == 1  # one shared base
    assert _numbers(tmp_path, with_bytes=False) == _numbers(base, with_bytes=False)
    _same_bytes_but_resends(tmp_path, base)
    assert hosted["final"]["clusters"] == report["final"]["clusters"]
    assert len(set(hosted["final"]["clusters"].values())) == 2  # arith and strtf told apart
    # each device kept its own MQTT session and key: four distinct client ids and signers on the broker side
    keys = {json.loads((tmp_path / n / "node_config.json").read_text())["node_id"] for n in NODES}
    assert keys == set(NODES)
    assert len({(tmp_path / n / "identity.key").read_bytes() for n in NODES}) == 4


def test_a_device_that_crashes_in_a_host_restarts_and_the_others_go_on(tmp_path):
    # dev01 fails right after publishing round 2 (before its round-2 checkpoint)
    report = _run(tmp_path, "crash", rounds=3, per_host=4, node_overrides={"dev01": {"crash_after_round": 2}})
    crashes = json.loads((tmp_path / "crashes.json").read_text())
    assert list(crashes) == ["dev01"] and "DeviceCrashed" in crashes["dev01"][0]
    finals = {n: json.loads((tmp_path / n / "final.json").read_text()) for n in NODES}
    assert finals["dev01"]["resumed_after"] == 1  # it resumed from its round-1 checkpoint, in the same host
    assert all(finals[n]["resumed_after"] == 0 for n in NODES if n != "dev01")
    for n in NODES:
        assert [json.loads(x)["round"] for x in (tmp_path / n / "rounds.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    # (whether every device also got the restarted device's finished expert depends on the collection
    # deadline under load: asserted where it is the point, tests/swarm/test_swarm.py)
    assert report["final"]["clusters"] == finals["dev00"]["clusters"]


def test_the_emulator_runs_without_ray_imported():
    code = ("import sys; import edgedfl.emulation.fleet, edgedfl.emulation.host, edgedfl.cli.emulate; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == "False", out.stderr


def test_hosts_as_ray_actors_on_two_ray_nodes_give_the_same_run(process_run, tmp_path):
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # a real two-node Ray cluster on this machine: a head and a second raylet, one CPU each, so the two
    # one-CPU device hosts cannot both land on the same node
    store = 80 * 1024 * 1024
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "object_store_memory": store, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=store)
        report = _run(tmp_path, "pack", engine="ray", ray_address=cluster.address, per_host=2)
    finally:
        cluster.shutdown()
    placed = json.loads((tmp_path / "hosts" / "ray.json").read_text())
    assert sorted(placed) == ["host00", "host01"]
    assert len({h["ray_node"] for h in placed.values()}) == 2  # the fleet spanned both nodes
    assert all(o == "done" for h in placed.values() for o in h["outcome"].values())
    base, expected = process_run
    assert _numbers(tmp_path, with_bytes=False) == _numbers(base, with_bytes=False)
    _same_bytes_but_resends(tmp_path, base)
    assert report["final"]["clusters"] == expected["final"]["clusters"]
    assert (tmp_path / "broker" / "mosquitto.conf").is_file()  # the engine ran its own Mosquitto
