"""A user's file becomes a task like a built-in one: a hash split that never leaks, a file per split, a check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgedfl.data import Example, load_examples, save_jsonl
from edgedfl.data.check import source_stats
from edgedfl.data.sources import TEST_FRACTION, check_source, is_test_example
from edgedfl.emulation.fleet import FleetConfig, node_configs, resolve_tasks
from edgedfl.errors import ConfigError, DataError
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.member import device_examples


def _rows(start: int, stop: int, task: str = "parity") -> list[Example]:
    return [Example(f"Is {i} even?\nAnswer:", " yes" if i % 2 == 0 else " no", task) for i in range(start, stop)]


def test_a_single_file_splits_by_example_disjoint_stable_and_old_rows_never_move(tmp_path: Path) -> None:
    # Prepare: a file, then the same file with rows added before and after
    path = save_jsonl(_rows(0, 500), tmp_path / "mine.jsonl")
    train, test = load_examples(path), load_examples(path, "test")
    grown = save_jsonl(_rows(1000, 1200) + _rows(0, 500) + _rows(500, 700), tmp_path / "grown.jsonl")

    # Assert: disjoint, complete, about the documented share, and the same answer for every old row
    assert not set(train) & set(test) and len(train) + len(test) == 500
    assert abs(len(test) / 500 - TEST_FRACTION) < 0.06
    assert set(test) <= set(load_examples(grown, "test")) and set(train) <= set(load_examples(grown))
    assert load_examples(path, "test") == test  # deterministic
    # an example repeated in the file lands in one split with all its copies
    dup = _rows(0, 40) * 3
    both = save_jsonl(dup, tmp_path / "dup.jsonl")
    assert not set(load_examples(both)) & set(load_examples(both, "test"))
    assert all(is_test_example(ex) == is_test_example(Example(ex.prompt, ex.completion, ex.task)) for ex in dup)


def test_a_file_per_split_and_its_overlap_left_out_of_training(tmp_path: Path) -> None:
    train = save_jsonl(_rows(0, 100), tmp_path / "train.jsonl")
    test = save_jsonl(_rows(90, 120), tmp_path / "test.jsonl")
    source = f"{train}:{test}"
    assert load_examples(source, "test") == _rows(90, 120)
    assert load_examples(source) == _rows(0, 90)  # the ten also in test are not trained on
    assert check_source(source) == source
    with pytest.raises(DataError, match="missing"):
        check_source(f"{train}:{tmp_path / 'absent.jsonl'}")
    with pytest.raises(DataError, match="choose from"):
        load_examples(source, "validation")


def test_devices_of_a_file_task_train_on_disjoint_shards_and_are_scored_on_rows_never_trained_on(
        tmp_path: Path) -> None:
    path = save_jsonl(_rows(0, 400), tmp_path / "mine.jsonl")
    swarm = SwarmConfig(n_train=100, n_eval=16)
    devices = [NodeConfig(node_id=f"d{i}", data=str(path), shard=i, shards=3, eval_shard=i, eval_shards=3,
                          swarm=swarm) for i in range(3)]
    got = [device_examples(cfg) for cfg in devices]
    trained = [set(train) for train, _ in got]
    tested = set().union(*(set(test) for _, test in got))
    assert all(len(t) == 100 for t in trained) and not trained[0] & trained[1] and not trained[1] & trained[2]
    assert tested and not tested & set().union(*trained)
    assert tested <= set(load_examples(path, "test"))
    assert len(tested) == 48  # each device its own block of the test split


def test_the_emulator_takes_files_and_gives_every_task_a_slot(tmp_path: Path) -> None:
    path = save_jsonl(_rows(0, 100), tmp_path / "mine.jsonl")
    # the CLI spelling: relative paths become absolute (every device process finds them)
    tasks = resolve_tasks(f"topic,yesno,arith,strtf,{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    assert tasks[-1] == str(path.absolute())
    cfg = FleetConfig(devices=5, tasks=tasks)
    nodes = node_configs(cfg, tmp_path / "run", "mqtt://x:1")
    assert {n.swarm.max_slots for n in nodes} == {5} and nodes[4].data == str(path)
    capped = node_configs(FleetConfig(devices=5, tasks=tasks, swarm=SwarmConfig(max_slots=3)), tmp_path, "mqtt://x:1")
    assert capped[0].swarm.max_slots == 3
    with pytest.raises(ConfigError, match="neither a built-in task"):
        FleetConfig(tasks=["topic", str(tmp_path / "absent.jsonl")])


def test_data_check_prints_splits_answers_and_the_majority_rate(tmp_path: Path) -> None:
    rows = [Example(f"Q{i}", " yes" if i % 10 else " no", "skewed") for i in range(300)]
    path = save_jsonl(rows, tmp_path / "skewed.jsonl")
    stats = source_stats(str(path))
    assert stats["train"] + stats["test"] == 300 and stats["shared"] == 0 and stats["tasks"] == ["skewed"]
    assert stats["majority_answer"] == "yes" and 0.8 < stats["majority_rate"] < 1.0
    test = load_examples(path, "test")
    assert stats["majority_rate"] == sum(ex.completion == " yes" for ex in test) / len(test)
    out = subprocess.run([sys.executable, "-m", "edgedfl.cli", "data", "check", str(path), "--json"],
                         check=True, capture_output=True, text=True).stdout
    assert json.loads(out)["majority_rate"] == stats["majority_rate"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": " c", "task": "t"}\n{"prompt": 3}\n')
    proc = subprocess.run([sys.executable, "-m", "edgedfl.cli", "data", "check", str(bad)],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.jsonl:2" in proc.stderr
