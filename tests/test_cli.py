"""The edgedfl command: subcommands listed, a tiny train run that resumes, export, eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from peft import PeftModel

from edgedfl.cli import COMMANDS
from edgedfl.model.tiny import tiny_model


def _edgedfl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "edgedfl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_help_lists_every_subcommand():
    out = _edgedfl("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_help_does_not_import_torch():
    code = "import sys; from edgedfl.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_train_resume_export_and_eval_on_tiny(tmp_path):
    run = tmp_path / "run"
    common = ["--model", "tiny", "--data", "arith", "--n-train", "64", "--n-eval", "8", "--rank", "4",
              "--batch-size", "4", "--no-progress", "--checkpoint-every", "5"]
    first = _edgedfl("train", *common, "--steps", "5", "--out", str(run))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["steps"] == 5
    # same settings, a bigger budget: resumes at step 5 rather than starting over
    cfg = json.loads((run / "run_config.json").read_text())
    cfg["train"]["max_steps"] = 10
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (run / "run_config.json").write_text(json.dumps(cfg))
    second = _edgedfl("train", "--config", str(tmp_path / "cfg.json"), "--out", str(run))
    assert second.returncode == 0, second.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from"] == 5 and metrics["steps"] == 10

    exported = _edgedfl("export-adapter", "--run", str(run), "--out", str(tmp_path / "adapter"))
    assert exported.returncode == 0, exported.stderr
    peft_model = PeftModel.from_pretrained(tiny_model(seed=0), str(tmp_path / "adapter"))
    assert any(float(p.abs().sum()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)

    ev = _edgedfl("eval", "--run", str(run))
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["n"] == 8 and 0.0 <= result["exact_match"] <= 1.0 and result["loss"] > 0


def test_bad_flag_value_is_a_clear_error(tmp_path):
    out = _edgedfl("train", "--model", "tiny", "--density", "2", "--out", str(tmp_path / "r"))
    assert out.returncode == 1
    assert "ConfigError" in out.stderr and "density=2.0" in out.stderr


def test_a_quiet_start_shows_edgedfl_lines_and_sends_library_noise_to_the_log_file(tmp_path):
    # Prepare: a library logger's warning, a Python warning, a torch-style warning, and edgedfl's own line
    code = ("import logging, warnings; from edgedfl.cli import setup_logging; setup_logging({v}); "
            "import torch; "  # torch gives its loggers stderr handlers of their own at import
            "logging.getLogger('torch.utils._pytree').warning('pytree noise'); "
            "warnings.warn('a library deprecation', FutureWarning); "
            "logging.getLogger('edgedfl.node').warning('own line'); "
            "logging.getLogger('edgedfl.node').info('own info')")
    env = dict(os.environ, EDGEDFL_LOG=str(tmp_path / "edgedfl.log"))

    # Execute: quiet, then -v
    quiet = subprocess.run([sys.executable, "-c", code.format(v=0)], env=env, check=True, capture_output=True,
                           text=True)
    loud = subprocess.run([sys.executable, "-c", code.format(v=1)], env=env, check=True, capture_output=True,
                          text=True)

    # Assert: the terminal shows edgedfl's line alone; the file keeps everything; -v shows everything
    assert "own line" in quiet.stderr and "pytree noise" not in quiet.stderr
    assert "deprecation" not in quiet.stderr and "own info" not in quiet.stderr
    log = (tmp_path / "edgedfl.log").read_text()
    assert "pytree noise" in log and "a library deprecation" in log and "own info" in log
    assert "pytree noise" in loud.stderr and "a library deprecation" in loud.stderr and "own info" in loud.stderr
