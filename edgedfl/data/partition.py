"""Give each device of a swarm its own, disjoint share of the training data.

Two modes:

``task`` (the default)
    every device holds one task. Tasks go round-robin over devices in the
    pool's order (device ``d`` gets task ``d mod T``), so each task has
    ``floor(N/T)`` or ``ceil(N/T)`` devices; the devices of one task split a
    seeded shuffle of that task's examples into near-equal disjoint shards that
    together cover it. With fewer devices than tasks the last tasks go unused.

``dirichlet``
    device ``d`` draws a task mixture ``p_d ~ Dirichlet(alpha * 1_T)`` and asks
    for ``round(p_d[t] * m)`` examples of task ``t``, ``m`` being an equal share
    of the pool (or ``max_per_device``). Where the devices together ask for more
    of a task than exists, that task's requests are scaled down in proportion:
    a device then holds fewer examples rather than a mixture other than the one
    it drew. Small ``alpha`` (0.1) gives nearly one-task devices, large
    ``alpha`` (100) nearly uniform mixtures.

Both are deterministic in ``seed`` (SHA-256-derived streams, see ``_rng``) and
never give one example to two devices. Each device's ``task`` is its majority
task, what oracle routing and per-task evaluation use.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from edgedfl.data._rng import np_rng_for, rng_for
from edgedfl.data.examples import Example
from edgedfl.errors import DataError

log = logging.getLogger("edgedfl.data.partition")

MODES: tuple[str, ...] = ("task", "dirichlet")


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """The training examples of one device."""

    device: int
    #: the majority task (the only one in ``task`` mode)
    task: str
    examples: list[Example] = dataclasses.field(repr=False)
    #: task -> number of examples, for every task of the pool (zeros included)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)


Pool = Mapping[str, Sequence[Example]] | Sequence[Example]


def _by_task(pool: Pool) -> dict[str, list[Example]]:
    """Task -> examples; a flat list is grouped by ``Example.task`` in order of first appearance."""
    if isinstance(pool, Mapping):
        grouped = {str(name): list(examples) for name, examples in pool.items()}
    else:
        grouped = {}
        for ex in pool:
            grouped.setdefault(ex.task, []).append(ex)
    grouped = {name: examples for name, examples in grouped.items() if examples}
    if not grouped:
        raise DataError("cannot partition an empty pool of examples")
    return grouped


def partition(
    pool: Pool,
    n_devices: int,
    mode: str = "task",
    *,
    alpha: float = 0.5,
    seed: int = 0,
    max_per_device: int | None = None,
) -> list[DeviceData]:
    """Split ``pool`` (task -> examples, or a flat list of examples) over ``n_devices``.

    ``max_per_device`` caps each device's examples (handy on slow devices);
    ``alpha`` is used by the ``dirichlet`` mode only.
    """
    if n_devices < 1:
        raise DataError(f"n_devices must be >= 1, got {n_devices}")
    if max_per_device is not None and max_per_device < 1:
        raise DataError(f"max_per_device must be >= 1, got {max_per_device}")
    grouped = _by_task(pool)
    names = list(grouped)
    shuffled = {}
    for name in names:
        examples = list(grouped[name])
        rng_for("partition-shuffle", name, seed).shuffle(examples)
        shuffled[name] = examples
    if mode == "task":
        counts = _task_counts(names, [len(shuffled[n]) for n in names], n_devices, max_per_device)
    elif mode == "dirichlet":
        if not alpha > 0:
            raise DataError(f"alpha must be > 0, got {alpha}")
        counts = _dirichlet_counts([len(shuffled[n]) for n in names], n_devices, alpha, seed, max_per_device)
    else:
        raise DataError(f"partition mode must be one of {MODES}, got {mode!r}")
    return _deal(shuffled, names, counts, seed)


def _task_counts(
    names: list[str], sizes: list[int], n_devices: int, max_per_device: int | None
) -> np.ndarray:
    n_tasks = len(names)
    if n_devices < n_tasks:
        log.warning("%d devices for %d tasks: tasks %s get no device", n_devices, n_tasks, names[n_devices:])
    counts = np.zeros((n_devices, n_tasks), dtype=np.int64)
    for t, size in enumerate(sizes):
        devices = list(range(t, n_devices, n_tasks))
        if not devices:
            continue
        if size < len(devices):
            raise DataError(f"task {names[t]!r} has {size} examples for {len(devices)} devices")
        # near-equal shards, the first ``size % k`` one larger (numpy.array_split's rule)
        base, extra = divmod(size, len(devices))
        for i, d in enumerate(devices):
            counts[d, t] = base + (i < extra)
    if max_per_device is not None:
        counts = np.minimum(counts, max_per_device)
    return counts


def _dirichlet_counts(
    sizes: list[int], n_devices: int, alpha: float, seed: int, max_per_device: int | None
) -> np.ndarray:
    supply = np.asarray(sizes, dtype=np.int64)  # (T,)
    total = int(supply.sum())
    if total < n_devices:
        raise DataError(f"{total} examples cannot give each of {n_devices} devices one")
    share = total // n_devices if max_per_device is None else min(max_per_device, total // n_devices)
    mix = np_rng_for("partition-dirichlet", seed).dirichlet(
        np.full(len(sizes), alpha), size=n_devices
    )  # (N, T)
    counts = np.stack([_round_to_total(row * share, share) for row in mix])  # (N, T)
    demand = counts.sum(axis=0)  # (T,)
    for t in np.flatnonzero(demand > supply):
        counts[:, t] = _round_to_total(counts[:, t] * (supply[t] / demand[t]), int(supply[t]))
    # A device whose mixture was all on oversubscribed tasks may be left empty;
    # give it one example of its favourite task that still has some left.
    left = supply - counts.sum(axis=0)
    for d in np.flatnonzero(counts.sum(axis=1) == 0):
        for t in np.argsort(-mix[d], kind="stable"):
            if left[t] > 0:
                counts[d, t] += 1
                left[t] -= 1
                break
        else:  # nothing left anywhere: take one from the largest device
            donor = int(np.argmax(counts.sum(axis=1)))
            biggest = int(np.argmax(counts[donor]))
            counts[donor, biggest] -= 1
            counts[d, biggest] += 1
    return counts


def _round_to_total(values: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total`` closest to ``values`` (largest remainder, ties by index)."""
    floors = np.floor(values).astype(np.int64)
    short = total - int(floors.sum())
    if short > 0:
        order = np.argsort(-(values - floors), kind="stable")
        floors[order[:short]] += 1
    return floors


def _deal(
    shuffled: dict[str, list[Example]], names: list[str], counts: np.ndarray, seed: int
) -> list[DeviceData]:
    """Hand out consecutive slices of each task's shuffled examples, device by device."""
    offsets = dict.fromkeys(names, 0)
    devices: list[DeviceData] = []
    for d in range(counts.shape[0]):
        examples: list[Example] = []
        per_task: dict[str, int] = {}
        for t, name in enumerate(names):
            k = int(counts[d, t])
            examples.extend(shuffled[name][offsets[name] : offsets[name] + k])
            offsets[name] += k
            per_task[name] = k
        # majority task; ties go to the earlier task of the pool
        major = max(names, key=lambda n: (per_task[n], -names.index(n)))
        if len(names) > 1 and len(examples) > 1:
            # interleave tasks so a device that trains on a prefix sees its whole mixture
            rng_for("partition-order", seed, d).shuffle(examples)
        devices.append(DeviceData(d, major, examples, per_task))
    return devices


def partition_suite(
    n_devices: int,
    tasks: Sequence[str] | int | None = None,
    mode: str = "task",
    *,
    alpha: float = 0.5,
    seed: int = 0,
    n_train: int | None = None,
    max_per_device: int | None = None,
) -> list[DeviceData]:
    """Load the built-in suite's train splits and :func:`partition` them."""
    from edgedfl.data.tasks import suite

    return partition(
        suite(tasks, "train", n_train, seed),
        n_devices,
        mode,
        alpha=alpha,
        seed=seed,
        max_per_device=max_per_device,
    )
