"""``edgedfl doctor``: the report on this machine, the broker probe, and probes that fail without raising."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from edgedfl import doctor
from edgedfl.brokers.launch import free_port
from edgedfl.devices import cpu_has_native_bf16, is_jetson

NO_CUDA_LAPTOP = pytest.mark.skipif(torch.cuda.is_available() or is_jetson(),
                                    reason="this host has CUDA or is a Jetson (tests/model/test_cuda.py covers it)")


def _doctor_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "edgedfl.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=300, env=env, check=False)


@pytest.mark.slow
@NO_CUDA_LAPTOP
def test_doctor_json_here_reports_no_cuda_laptop_working_torchao_and_the_broker(mosquitto):
    out = _doctor_cli("--json", "--broker", mosquitto.url)

    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["cuda"]["available"] is False
    assert report["profile"]["name"] == "laptop"
    assert report["profile"]["quant"] == "torchao-int8"
    assert report["profile"]["dtype_auto"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    int8 = report["quantization"]["torchao-int8"]
    assert int8["installed"] and int8["works"] and int8["device"] == "cpu" and int8["lora_grad_norm"] > 0
    assert report["broker"]["reachable"] is True
    assert report["problems"] == []
    assert report["memory"]["total_mb"] > 0 and report["disk"]["free_mb"] > 0


def test_doctor_cuda_section_matches_torch():
    report = doctor.run_doctor(quant=False)

    assert report["torch"]["installed"] is True
    assert report["cuda"]["available"] is torch.cuda.is_available()
    assert report["platform"]["jetson"] is is_jetson()
    assert report["profile"]["name"] == ("jetson" if is_jetson() else "laptop")


@NO_CUDA_LAPTOP
def test_doctor_table_says_no_cuda_and_laptop():
    out = _doctor_cli("--no-quant")

    assert out.returncode == 0, out.stderr[-3000:]
    assert "cuda" in out.stdout and "no (torch is a CPU-only build)" in out.stdout
    assert "laptop" in out.stdout and "problems: none" in out.stdout


def test_broker_probe_reachable_and_unreachable(mosquitto):
    up = doctor.probe_broker(mosquitto.url, timeout=5.0)
    down = doctor.probe_broker(f"mqtt://127.0.0.1:{free_port()}", timeout=1.0)

    assert up["reachable"] is True and up["protocol"] == 5
    assert down["reachable"] is False
    assert "BrokerUnavailable" in down["reason"]


def test_closed_port_is_a_problem_and_a_nonzero_exit():
    url = f"mqtt://127.0.0.1:{free_port()}"
    report = doctor.run_doctor(url, quant=False, broker_timeout=1.0)
    out = _doctor_cli("--json", "--no-quant", "--broker", url, "--timeout", "1")

    assert report["broker"]["reachable"] is False
    assert any("unreachable" in p for p in report["problems"])
    assert out.returncode == 1
    assert json.loads(out.stdout)["broker"]["reachable"] is False


def test_a_failing_probe_is_reported_not_raised(monkeypatch):
    def broken(name: str, device: str = "cpu") -> dict:
        raise RuntimeError(f"{name} kernel missing\nsecond line")

    monkeypatch.setattr(doctor, "probe_backend", broken)
    monkeypatch.setattr(doctor, "probe_memory", lambda: 1 / 0)

    report = doctor.run_doctor(quant=True)

    q = report["quantization"]["none"]
    assert q["installed"] is True and q["works"] is False
    assert q["error"] == "RuntimeError: none kernel missing"
    assert report["memory"] == {"error": "ZeroDivisionError: division by zero"}
    assert "memory probe failed: ZeroDivisionError: division by zero" in report["problems"]
    assert "FAILS on cpu: RuntimeError: none kernel missing" in doctor.format_report(report)


def test_missing_backend_says_what_to_install(monkeypatch):
    from edgedfl.model import quantize

    missing = quantize.QuantBackend("bnb-nf4", "x", "edgedfl_no_such_package", "pip install 'edgedfl[bnb]'",
                                    lambda m: m)
    monkeypatch.setitem(quantize.BACKENDS, "bnb-nf4", missing)

    entry = doctor.probe_quantization(run=False)["bnb-nf4"]

    assert entry == {"installed": False, "works": False, "install": "pip install 'edgedfl[bnb]'"}


def test_memory_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    4096000 kB\n"
                       "SwapTotal:       2048000 kB\nHugePages_Total:       0\n")

    assert doctor.probe_memory(str(meminfo)) == {"total_mb": 7812, "available_mb": 4000, "swap_total_mb": 2000}
