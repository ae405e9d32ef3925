"""The phone stand-in (android_bridge/standin) in an emulated swarm next to Python nodes.

One small fleet on the tiny model (``Fleet`` with ``android=1``, what ``edgedfl
emulate --android 1`` runs): the stand-in's updates are decoded and applied by its
cluster mate, a Python node (it lists the stand-in among the peers of every round,
rejects nothing, and after the last Metropolis average holds the same B as the
stand-in, up to fp16 on the wire); both derived the same masks; the stand-in's
loss falls. Plus the import boundary: importing the stand-in loads no torch, and
running it loads no model code (ExecuTorch's Python bindings do load the torch
library: on a phone the same calls go through ExecuTorch's Java/C++ API).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedfl.android import is_executorch_available
from edgedfl.android import manifest as mf

REPO = Path(__file__).resolve().parents[2]
#: model code a phone does not have; the stand-in must never load it. (The swarm's settings hold the
#: training settings, ``edgedfl.train.config``: a dataclass, which the phone reads like every device.)
FORBIDDEN = ("transformers", "peft", "edgedfl.model", "edgedfl.adapters.model", "edgedfl.train.trainer",
             "edgedfl.train.evaluate", "edgedfl.train.local", "edgedfl.train.batching", "edgedfl.train.checkpoint",
             "edgedfl.train.loss",
             "edgedfl.node.node", "edgedfl.node.torch_learner", "edgedfl.android.export", "edgedfl.android.programs")


def test_forbidden_covers_every_module_of_training_but_its_config() -> None:
    train = {p.stem for p in (REPO / "edgedfl" / "train").glob("*.py")} - {"__init__", "config"}
    assert {f"edgedfl.train.{m}" for m in train} <= set(FORBIDDEN)


def _modules_after(code: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_importing_the_standin_imports_no_torch() -> None:
    mods = _modules_after("import android_bridge.standin.phone, android_bridge.standin.runtime, "
                          "android_bridge.standin.text, android_bridge.standin.__main__")
    assert not _loaded(mods, "torch")
    assert not _loaded(mods, "executorch")
    for name in FORBIDDEN:
        assert not _loaded(mods, name), name


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not is_executorch_available():
        pytest.skip("executorch not installed (pip install -e '.[android]')")
    from edgedfl.emulation.fleet import Fleet, FleetConfig
    from edgedfl.node.config import SwarmConfig
    from edgedfl.train.config import TrainConfig

    run = tmp_path_factory.mktemp("fleet")
    swarm = SwarmConfig(model="tiny", rounds=2, local_steps=4, n_train=32, n_eval=6, n_signature=8, n_calibration=8,
                        round_deadline_s=60, join_timeout_s=120,
                        train=TrainConfig(lr=0.0, batch_size=4, max_length=64, progress=False))
    cfg = FleetConfig(devices=3, tasks=["arith", "strtf"], android=1, timeout_s=400, swarm=swarm)
    Fleet(cfg, run).run()  # start, wait for every device, stop
    return run


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_standin_updates_are_applied_by_its_python_cluster_mate(fleet_run: Path) -> None:
    phone, mate = fleet_run / "dev02", fleet_run / "dev00"  # both hold task arith
    final = json.loads((phone / "final.json").read_text())
    assert final["device"] == "android-standin"
    assert final["clusters"]["dev02"] == final["clusters"]["dev00"]
    slot = final["slot"]

    # the Python node decoded and applied the stand-in's update in every round
    mate_rows = [r for r in _rows(mate / "rounds.jsonl") if r["round"] >= 1]
    assert [r["round"] for r in mate_rows] == [1, 2]
    for r in mate_rows:
        assert "dev02" in r["peers"] and not r["quorum_short"]
        assert not r["rejects"], r["rejects"]
    phone_rows = _rows(phone / "rounds.jsonl")
    assert all("dev00" in r["peers"] for r in phone_rows if r["round"] >= 1)

    # same masks from the cluster's round-0 statistics, and after the last average the same B
    from safetensors.numpy import load_file

    ckpts = sorted((mate / "ckpt").glob("step-*"))
    node_state = load_file(str(ckpts[-1] / "adapter.safetensors"))
    layers = [k[len(f"slot{slot}/") : -len(".mask")] for k in node_state
              if k.startswith(f"slot{slot}/") and k.endswith(".mask")]
    assert len(layers) == 8
    masks = mf.read_masks(phone / "ckpt" / "masks.safetensors",
                          {n: node_state[f"slot{slot}/{n}.mask"].shape for n in layers})
    phone_b = load_file(str(phone / "ckpt" / "B.safetensors"))
    for n in layers:
        assert np.array_equal(masks[n], node_state[f"slot{slot}/{n}.mask"].astype(bool)), n
        node_b = node_state[f"slot{slot}/{n}.lora_B"]
        assert np.abs(node_b).max() > 0
        np.testing.assert_allclose(phone_b[n], node_b, atol=2e-3)  # two fp16 updates averaged 1/2 : 1/2


@pytest.mark.slow
def test_standin_learns_and_reports_like_a_node(fleet_run: Path) -> None:
    phone = fleet_run / "dev02"
    rows = _rows(phone / "rounds.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert rows[1]["train_loss"] > rows[2]["train_loss"]
    status = json.loads((phone / "status.json").read_text())
    assert status["state"] == "done"
    final = json.loads((phone / "final.json").read_text())
    assert set(final["final"]["modes"]) == {"implicit"} and final["total_bytes"] > 0
    from edgedfl.emulation.report import build_report

    report = build_report(fleet_run, method="solora", tasks=["arith", "strtf"], seed=0, topology="clusters",
                          model="tiny", wall_s=0.0)
    assert report["devices"] == 3 and "dev02" in report["final"]["clusters"]


@pytest.mark.slow
def test_running_the_standin_loads_no_model_code(fleet_run: Path) -> None:
    """The stand-in's whole set-up (bundle, three programs, tokenizer, data) loads no model code."""
    bundle = fleet_run / "dev02" / "bundle"
    config = fleet_run / "dev02" / "node_config.json"
    mods = _modules_after(
        "from edgedfl.node.config import NodeConfig\n"
        "from android_bridge.standin.phone import Phone\n"
        f"cfg = NodeConfig.load({str(config)!r})\n"
        f"cfg.state_dir = {str(fleet_run / 'probe')!r}\n"
        f"p = Phone(cfg, {str(bundle)!r}); p.load()\n"
        "p.learner.trainer.set_slot(p.learner._slot_A(0)); p.learner.signature(['Question: 1 + 1?'])\n"
    )
    assert _loaded(mods, "executorch")
    for name in FORBIDDEN:
        assert not _loaded(mods, name), name
