"""Devices split every task's test split: each answers n_eval prompts of its own block."""

from __future__ import annotations

import pytest

from edgedfl.data.sources import load_examples
from edgedfl.data.tasks import TASKS
from edgedfl.emulation.fleet import FleetConfig, node_configs
from edgedfl.errors import ConfigError
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.member import device_examples, eval_examples


def _cfg(i: int, k: int, n_eval: int, data: str = "arith") -> NodeConfig:
    return NodeConfig(node_id=f"d{i}", data=data, eval_shard=i, eval_shards=k, swarm=SwarmConfig(n_eval=n_eval))


@pytest.mark.parametrize("task", ["arith", "topic"])
def test_slices_are_disjoint_and_cover_n_eval_times_devices(task: str) -> None:
    slices = [eval_examples(_cfg(i, 4, 6), task) for i in range(4)]
    prompts = [e.prompt for s in slices for e in s]
    assert [len(s) for s in slices] == [6] * 4
    assert len(set(prompts)) == 24  # four devices, 24 distinct prompts
    # the same device asks twice: the same prompts (every device of a seeded swarm agrees)
    assert [e.prompt for e in eval_examples(_cfg(2, 4, 6), task)] == [e.prompt for e in slices[2]]


def test_one_shard_is_the_head_of_the_split() -> None:
    head = TASKS["strtf"].generate("test", 5, 0)
    assert [e.prompt for e in eval_examples(_cfg(0, 1, 5), "strtf")] == [e.prompt for e in head]


def test_a_split_too_small_for_every_block_wraps_and_keeps_n_eval_distinct() -> None:
    cap = TASKS["topic"].capacity("test", 0)
    assert cap is not None
    k, n = cap // 10 + 2, 10  # more blocks than the split holds
    last = eval_examples(_cfg(k - 1, k, n, "topic"), "topic")
    assert len(last) == n and len({e.prompt for e in last}) == n


def test_device_examples_use_the_own_block_for_the_own_task() -> None:
    cfg = _cfg(1, 3, 4, "yesno")
    train, test = device_examples(cfg)
    assert len(train) == cfg.swarm.n_train
    assert [e.prompt for e in test] == [e.prompt for e in eval_examples(cfg, "yesno")]
    assert not {e.prompt for e in train} & {e.prompt for e in test}


def test_fleet_gives_every_device_its_own_block(tmp_path) -> None:
    nodes = node_configs(FleetConfig(devices=3, tasks=["arith"]), tmp_path, "mqtt://127.0.0.1:1")
    assert [(n.eval_shard, n.eval_shards) for n in nodes] == [(0, 3), (1, 3), (2, 3)]


def test_bad_eval_shard_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="eval_shard"):
        NodeConfig(eval_shard=3, eval_shards=3)


def test_a_file_task_is_scored_on_its_test_split_one_block_per_device(tmp_path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(f'{{"task": "mine", "prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(200)))
    test = load_examples(str(path), "test")
    blocks = [eval_examples(NodeConfig(eval_shard=i, eval_shards=4, swarm=SwarmConfig(n_eval=3)), str(path))
              for i in range(4)]
    assert [b for blk in blocks for b in blk] == test[:12]  # disjoint blocks of the test split, in order
    assert not set(test) & set(load_examples(str(path), "train"))
