"""A new adapter method is one object: registered (or named module:OBJECT), it runs a whole swarm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedfl.adapters import AdapterConfig, attach_adapter, get_method, method_names, register
from edgedfl.errors import ConfigError
from edgedfl.model.tiny import tiny_model

HERE = Path(__file__).resolve().parent


def test_a_registered_method_attaches_with_its_own_A_and_dense_B() -> None:
    sys.path.insert(0, str(HERE))
    try:
        from toy_method import ORTHO_DENSE
    finally:
        sys.path.remove(str(HERE))
    register(ORTHO_DENSE)
    assert "ortho-dense" in method_names() and get_method("ortho-dense") is ORTHO_DENSE
    adapted = attach_adapter(tiny_model(), AdapterConfig(method="ortho-dense", num_slots=2, rank=4))
    layer = next(iter(adapted.layers))
    a0, a1 = adapted.A(0, layer).detach().double().numpy(), adapted.A(1, layer).detach().double().numpy()
    np.testing.assert_allclose(a0 @ a1.T, 0.0, atol=1e-6)  # orthogonal slots, as solora
    assert not adapted.masks and set(adapted.get_update(0)) == {f"{n}.lora_B" for n in adapted.layers}
    with pytest.raises(ConfigError, match="ortho-dense"):
        register(type(ORTHO_DENSE)(**{**ORTHO_DENSE.__dict__, "default_lr": 1.0}))  # a second object, same name


def test_an_unknown_method_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="solora"):
        AdapterConfig(method="nope")
    with pytest.raises(ConfigError, match="cannot import"):
        get_method("no_such_module:THING")


def test_a_swarm_runs_with_a_method_named_by_its_module_path(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "edgedfl.cli", "emulate", "--devices", "4", "--tasks", "arith,strtf", "--model", "tiny",
         "--rounds", "2", "--local-steps", "3", "--method", "toy_method:ORTHO_DENSE", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "toy_method:ORTHO_DENSE"
    clusters = report["final"]["clusters"]  # node -> slot: it clusters by task, as the method says
    assert len(set(clusters.values())) == 2 and clusters["dev00"] == clusters["dev02"] != clusters["dev01"]
    for dev in sorted(out.glob("dev*")):
        final = json.loads((dev / "final.json").read_text())
        other = [s for s in final["experts"] if int(s) != final["slot"]]
        assert other, f"{dev.name} got no other cluster's expert"
        assert final["final"]["routing_accuracy"] is not None  # implicit routing ran
        from safetensors.numpy import load_file

        state = load_file(str(max((dev / "ckpt").glob("step-*")) / "adapter.safetensors"))
        assert not [k for k in state if k.endswith(".mask")]  # dense B: no masks anywhere
        b = np.concatenate([v.reshape(-1) for k, v in state.items() if k.startswith(f"slot{final['slot']}/")])
        assert (b != 0).mean() > 0.9  # trained dense
