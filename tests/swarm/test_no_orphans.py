"""An emulator killed mid-run leaves no device process training on alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedfl.brokers import MosquittoBroker, mosquitto_available

pytestmark = pytest.mark.integration


def _children_of_run(run: Path) -> list[int]:
    """Pids of the live processes whose command line names ``run`` (its device processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if str(run) in cmd and "edgedfl.node" in cmd and "Z" not in state.split()[1]:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_an_emulator_killed_mid_run_leaves_no_device_running(tmp_path: Path, sig: int) -> None:
    # Prepare: a tiny swarm with more rounds than the test waits for, on a Mosquitto that outlives the
    # emulator (with the emulator's embedded broker gone, a device would also stop at its next publish)
    if not mosquitto_available():
        pytest.skip("needs mosquitto (scripts/setup.sh installs it)")
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto").start()
    run = tmp_path / "run"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "edgedfl.cli", "emulate", "--model", "tiny", "--devices", "2", "--tasks", "arith",
         "--rounds", "50", "--quiet", "--broker", broker.url, "--out", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        deadline = time.monotonic() + 120
        while len(_children_of_run(run)) < 2:
            assert emulator.poll() is None, "the emulator ended before its devices started"
            assert time.monotonic() < deadline, "the devices never started"
            time.sleep(0.5)

        # Execute: kill the emulator (SIGKILL: no handler of it runs; SIGTERM: it stops its devices itself)
        os.kill(emulator.pid, sig)
        emulator.wait(timeout=60)

        # Assert: every device process ends on its own within seconds
        deadline = time.monotonic() + 30
        while _children_of_run(run) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _children_of_run(run) == []
        assert broker.running  # the devices ended on their own, not for want of a broker
    finally:
        broker.stop()
        if emulator.poll() is None:
            emulator.kill()
        for pid in _children_of_run(run):
            os.kill(pid, signal.SIGKILL)
