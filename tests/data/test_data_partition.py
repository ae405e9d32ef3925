"""The partitioner: one task per device by default, or Dirichlet mixtures; always disjoint."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from edgedfl.data import DeviceData, Example, partition, partition_suite
from edgedfl.errors import DataError

TASK_NAMES = ["a", "b", "c", "d"]


def make_pool(sizes: dict[str, int]) -> dict[str, list[Example]]:
    return {t: [Example(f"{t}-{i}", f" {i}", t) for i in range(n)] for t, n in sizes.items()}


def all_prompts(devices: list[DeviceData]) -> list[str]:
    return [ex.prompt for dev in devices for ex in dev.examples]


@pytest.mark.parametrize("n_devices", [4, 6, 7, 9])
def test_task_mode_gives_each_device_one_task_round_robin(n_devices: int) -> None:
    pool = make_pool(dict.fromkeys(TASK_NAMES, 100))

    devices = partition(pool, n_devices)

    assert [d.task for d in devices] == [TASK_NAMES[i % 4] for i in range(n_devices)]
    for dev in devices:
        assert {ex.task for ex in dev.examples} == {dev.task}
        assert dev.counts[dev.task] == len(dev)
    # each task has floor or ceil of N/T devices, and its shards differ by at most one example
    per_task = Counter(d.task for d in devices)
    assert set(per_task.values()) <= {n_devices // 4, -(-n_devices // 4)}
    for task in TASK_NAMES:
        sizes = [len(d) for d in devices if d.task == task]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 100


def test_task_mode_shards_are_disjoint_and_cover_the_pool() -> None:
    pool = make_pool({"a": 101, "b": 50, "c": 7})

    prompts = all_prompts(partition(pool, 7, seed=3))

    assert len(prompts) == len(set(prompts))
    assert set(prompts) == {ex.prompt for exs in pool.values() for ex in exs}


def test_task_mode_cap_and_too_few_devices() -> None:
    pool = make_pool(dict.fromkeys(TASK_NAMES, 100))

    capped = partition(pool, 4, max_per_device=10)
    fewer = partition(pool, 2)

    assert [len(d) for d in capped] == [10, 10, 10, 10]
    assert [d.task for d in fewer] == ["a", "b"]


def test_flat_list_is_grouped_by_task() -> None:
    flat = [ex for exs in make_pool({"x": 10, "y": 10}).values() for ex in exs]

    devices = partition(flat, 2)

    assert [d.task for d in devices] == ["x", "y"]


@pytest.mark.parametrize("mode", ["task", "dirichlet"])
def test_partition_is_deterministic_in_the_seed(mode: str) -> None:
    pool = make_pool(dict.fromkeys(TASK_NAMES, 200))

    first = partition(pool, 6, mode, alpha=0.5, seed=1)
    again = partition(pool, 6, mode, alpha=0.5, seed=1)
    other = partition(pool, 6, mode, alpha=0.5, seed=2)

    assert all_prompts(first) == all_prompts(again)
    assert all_prompts(first) != all_prompts(other)


def test_dirichlet_devices_are_disjoint_and_non_empty() -> None:
    pool = make_pool({"a": 500, "b": 300, "c": 200, "d": 100})

    for seed in range(5):
        devices = partition(pool, 10, "dirichlet", alpha=0.1, seed=seed)
        prompts = all_prompts(devices)

        assert len(prompts) == len(set(prompts))
        assert all(len(d) > 0 for d in devices)
        for dev in devices:
            assert (
                dev.counts
                == Counter(ex.task for ex in dev.examples) | dict.fromkeys(TASK_NAMES, 0) | dev.counts
            )
            assert dev.counts[dev.task] == max(dev.counts.values())


def max_share(devices: list[DeviceData]) -> float:
    return float(np.mean([max(d.counts.values()) / len(d) for d in devices]))


def test_dirichlet_proportions_follow_alpha() -> None:
    pool = make_pool(dict.fromkeys(TASK_NAMES, 2000))

    peaked = [max_share(partition(pool, 20, "dirichlet", alpha=0.05, seed=s)) for s in range(3)]
    flat = [max_share(partition(pool, 20, "dirichlet", alpha=100.0, seed=s)) for s in range(3)]

    # alpha -> 0: nearly one task per device; alpha -> inf: the uniform 1/4 mixture
    assert np.mean(peaked) > 0.85
    assert np.mean(flat) < 0.35


def test_dirichlet_uses_an_equal_share_when_supply_allows() -> None:
    pool = make_pool(dict.fromkeys(TASK_NAMES, 1000))

    devices = partition(pool, 8, "dirichlet", alpha=1000.0, seed=0)

    # an equal share each, less at most a few examples where rounding oversubscribed a task
    assert all(495 <= len(d) <= 500 for d in devices)
    assert sum(len(d) for d in devices) > 0.99 * 4000


def test_bad_arguments_raise_data_errors() -> None:
    pool = make_pool({"a": 3})
    with pytest.raises(DataError, match="n_devices"):
        partition(pool, 0)
    with pytest.raises(DataError, match="mode"):
        partition(pool, 1, "iid")
    with pytest.raises(DataError, match="alpha"):
        partition(pool, 1, "dirichlet", alpha=0)
    with pytest.raises(DataError, match="3 examples for 4 devices"):
        partition(pool, 4)
    with pytest.raises(DataError, match="empty"):
        partition({}, 2)


def test_partition_suite_on_the_built_in_tasks() -> None:
    devices = partition_suite(5, n_train=100, seed=0)

    assert [d.task for d in devices] == ["topic", "yesno", "arith", "strtf", "topic"]
    assert [len(d) for d in devices] == [50, 100, 100, 100, 50]
    prompts = all_prompts(devices)
    assert len(prompts) == len(set(prompts))
