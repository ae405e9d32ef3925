"""One tiny routed model (3 experts, random sparse B, codes from built-in task prompts), exported once."""

from __future__ import annotations

import pytest

from edgedfl.data.tasks import load_task

TASKS = ("topic", "arith", "strtf")


@pytest.fixture(scope="session")
def routed_tok():
    from routing.routing_helpers import tiny_routed  # tests/routing (tests/ is on sys.path: its conftest.py)

    calibration = [[e.prompt for e in load_task(t, "train", n=48)] for t in TASKS]
    routed, tok = tiny_routed(len(TASKS), rank=4, seed=0, calibration=calibration)
    routed.names = list(TASKS)
    return routed, tok


@pytest.fixture(scope="session")
def mixed_prompts():
    """Held-out prompts of every task, interleaved, and their true expert."""
    per = [[e.prompt for e in load_task(t, "test", n=4)] for t in TASKS]
    prompts = [per[k][i] for i in range(4) for k in range(len(TASKS))]
    return prompts, [k for _ in range(4) for k in range(len(TASKS))]


@pytest.fixture(scope="session")
def exported(routed_tok, tmp_path_factory):
    from edgedfl.export.onnx import export_onnx

    routed, tok = routed_tok
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(routed, tok, out, extra_meta={"model": "tiny"})
    return out
