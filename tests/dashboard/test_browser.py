"""The dashboard in a real browser: headless Chromium follows a live tiny swarm started by ``edgedfl emulate --dashboard``.

Skips only where no chromium is installed (scripts/setup.sh installs Debian's ``chromium``, so CI runs it).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdp import Chromium, chromium_binary

from edgedfl.node.config import SwarmConfig
from edgedfl.train.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(chromium_binary() is None, reason="chromium not installed (scripts/setup.sh installs it)")]

ROOT = Path(__file__).resolve().parents[2]

#: what the page shows, read from its DOM in one go
SAMPLE = """(() => {
  const rows = [...document.querySelectorAll('#devices tbody tr')];
  return {
    nodes: rows.map(r => r.dataset.node),
    round: Number(document.getElementById('round').dataset.value),
    bytes: Number(document.getElementById('bytes-total').dataset.value),
    refused: Number(document.getElementById('refused').dataset.value),
    clusters: [...document.querySelectorAll('#clusters li')].map(li => li.dataset.members),
    graph: window.edgedfl.cy ? window.edgedfl.cy.nodes().filter(n => !n.isParent())
      .map(n => [n.id(), n.parent().length ? n.parent().id() : null]) : [],
    routing: [...document.querySelectorAll('#routing-matrix tbody tr')].map(r => r.dataset.task),
    charts: document.querySelectorAll('.uplot').length,
  };
})()"""


def _swarm_file(path: Path) -> Path:
    SwarmConfig(name="browser", model="tiny", rounds=3, local_steps=2, n_train=16, n_eval=4, n_signature=4,
                n_calibration=4, round_deadline_s=20.0, join_timeout_s=60.0, seed=5,
                train=TrainConfig(lr=1e-2, batch_size=4, max_length=48, progress=False)).save(path)
    return path


def test_the_page_follows_a_live_swarm(tmp_path: Path) -> None:
    # Prepare: `edgedfl emulate --dashboard` on a tiny 4-device, 2-task swarm (its own embedded broker)
    cmd = [sys.executable, "-m", "edgedfl.cli", "emulate", "--swarm-config", str(_swarm_file(tmp_path / "swarm.json")),
           "--devices", "4", "--tasks", "arith,strtf", "--out", str(tmp_path / "run"), "--quiet", "--dashboard",
           "--dashboard-hold", "120"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    out: list[str] = []
    samples: list[dict] = []
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            out.append(line)
            if line.startswith("dashboard: http://"):
                url = line.split()[1]
        assert url and url.startswith("http://127.0.0.1:"), "".join(out)

        # Execute: load the page while the swarm runs, and read its DOM until the run is over
        with Chromium() as browser:
            browser.navigate(url)
            browser.wait_until("window.edgedfl && window.edgedfl.renders > 0")
            finished = False
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                samples.append(browser.evaluate(SAMPLE))
                while not lines.empty():
                    out.append(lines.get())
                if any("shows the finished run" in line for line in out):
                    if finished:  # one more sample after the page switched to the run directory
                        break
                    finished = True
                assert proc.poll() is None, "".join(out)
                time.sleep(0.3)
            browser.wait_until("document.querySelectorAll('#routing-matrix tbody tr').length === 2", timeout=20)
            samples.append(browser.evaluate(SAMPLE))
            browser.screenshot(tmp_path / "dashboard.png")
            errors = list(browser.errors)
    finally:
        proc.terminate()  # SIGTERM inside the dashboard hold
        rc = proc.wait(timeout=30)
    assert rc == 0, f"SIGTERM during the hold must end it like Ctrl-C (exit 0), got {rc}"
    report = json.loads((tmp_path / "run" / "report.json").read_text())

    # Assert: every device appears; the round counter advances; the byte counter grows; the right clusters
    last = samples[-1]
    assert sorted(last["nodes"]) == ["dev00", "dev01", "dev02", "dev03"]
    rounds = [s["round"] for s in samples]
    assert len(set(rounds)) >= 2 and rounds == sorted(rounds) and rounds[-1] == 3, rounds
    sizes = [s["bytes"] for s in samples]
    assert len(set(sizes)) >= 3 and sizes == sorted(sizes) and sizes[-1] > 0, sizes
    seen_live = [s for s in samples if 0 < s["bytes"] < sizes[-1]]
    assert seen_live, "the page never showed the swarm while it ran"
    expected = {}
    for node, slot in report["final"]["clusters"].items():
        expected.setdefault(slot, []).append(node)
    want = sorted(" ".join(sorted(m)) for m in expected.values())
    assert sorted(last["clusters"]) == want == ["dev00 dev02", "dev01 dev03"]
    parents = {node: parent for node, parent in last["graph"]}
    assert parents == {n: f"cluster-{s}" for n, s in report["final"]["clusters"].items()}
    assert sorted(last["routing"]) == ["arith", "strtf"] and last["charts"] == 3
    assert last["refused"] == 0 and not errors, errors
