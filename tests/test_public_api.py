"""The public API: every name in ``edgedfl.__all__`` resolves, without importing torch at import time."""

from __future__ import annotations

import subprocess
import sys

import edgedfl


def test_every_public_name_resolves() -> None:
    for name in edgedfl.__all__:
        assert getattr(edgedfl, name) is not None, name


def test_import_edgedfl_and_touching_the_api_stays_torch_free() -> None:
    code = ("import sys, edgedfl\n"
            "for n in edgedfl.__all__: getattr(edgedfl, n)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_script_builds_a_swarm_from_the_top_level_names(tmp_path) -> None:
    swarm = edgedfl.SwarmConfig(name="api", rounds=2)
    fleet = edgedfl.Fleet(edgedfl.FleetConfig(devices=2, tasks=["arith"], swarm=swarm), tmp_path)
    assert fleet.cfg.swarm.rounds == 2 and edgedfl.get_method(swarm.method).sparse
    assert isinstance(edgedfl.NodeConfig(swarm=swarm).swarm, edgedfl.SwarmConfig)
    assert issubclass(edgedfl.Node, edgedfl.SwarmMember)
