"""Topology at swarm scale: cluster(), neighbour_graph() and metropolis_weights(), textbook vs fast.

"old" is the frozen textbook reference kept in ``tests/topology/_reference.py``
(pure Python, O(n^3)); "new" is ``edgedfl.topology`` as shipped. Both return
exactly the same results (``tests/topology/test_scaling_equivalence.py``);
where old was run, this script checks that too.

Inputs, for each n:

* ``cluster``: n signatures of 64 floats, pooled-LLM-like (a large common
  direction, ``k`` task directions, per-device noise), each device's spread set
  to its task's measured within-task distance (x 0.8-1.2), default config.
  New is timed with the process memo cleared; ``memo`` is a repeated call.
* ``graph``: one cluster of n members whose link quality is, as a node builds
  it, the slower of the two ends' rates (1, 10 or 100 Mbit/s: many ties),
  degree 3; ``weights``: Metropolis weights of that graph.

Old runs once per size; when the smaller size's time predicts (cubic scaling)
more than ``--old-budget`` seconds, old is not run and the prediction is
printed with a ``~``. New is the median of ``--reps`` runs.

Run:  python bench/bench_topology.py [--sizes 32,128,1000] [--old-budget 60] [--reps 3]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.topology import ClusterConfig, cluster, distance_matrix, metropolis_weights, neighbour_graph
from edgedfl.topology import clustering as fast

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "topology" / "_reference.py"


def load_reference() -> Any:
    spec = importlib.util.spec_from_file_location("topology_reference", REFERENCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def swarm(n: int, k: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """n signatures (64,) of k tasks and each device's spread."""
    rng = np.random.default_rng([seed, n, k])
    common = 4.0 * rng.standard_normal(64)  # (64,)
    tasks = common + rng.standard_normal((k, 64))  # (k, 64)
    labels = np.arange(n) % k  # (n,)
    x = tasks[labels] + 0.05 * rng.standard_normal((n, 64))  # (n, 64)
    d = distance_matrix(x)  # (n, n)
    within = []  # each task's mean distance between two of its devices
    for t in range(k):
        idx = np.flatnonzero(labels == t)
        within.append(float(d[np.ix_(idx, idx)].sum()) / max(len(idx) * (len(idx) - 1), 1))
    ids = [f"dev-{i:04d}" for i in rng.permutation(n)]
    return ({i: x[j] for j, i in enumerate(ids)},
            {i: within[labels[j]] * float(rng.uniform(0.8, 1.2)) for j, i in enumerate(ids)})


def link_quality(n: int, seed: int = 0) -> tuple[list[str], dict[tuple[str, str], float]]:
    rng = np.random.default_rng([seed, n])
    members = [f"dev-{i:04d}" for i in range(n)]
    rates = {m: float(rng.choice([1e6, 1e7, 1e8])) for m in members}
    return members, {(a, b): min(rates[a], rates[b]) for a in members for b in members if a != b}


def once(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(fn: Callable[[], object], reps: int, before: Callable[[], None] = lambda: None) -> float:
    times = []
    for _ in range(reps):
        before()
        times.append(once(fn)[0])
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="32,128,1000", help="comma-separated swarm sizes")
    parser.add_argument("--tasks", default="2,8", help="comma-separated numbers of true clusters")
    parser.add_argument("--old-budget", type=float, default=60.0,
                        help="run old only when predicted to take at most this many seconds")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    ref = load_reference()
    sizes = [int(s) for s in args.sizes.split(",")]
    config = ClusterConfig()
    rows: list[tuple[str, int, str, str, str]] = []
    last_old: dict[str, tuple[int, float]] = {}  # what -> (n, seconds) of the last old run

    def compare(what: str, n: int, old: Callable[..., object], new: Callable[..., object], *inputs: object,
                fresh: Callable[[], None] = lambda: None) -> None:
        """Time new (median, ``fresh()`` before each run) and old (once, unless predicted too slow)."""
        new_time = median(lambda: new(*inputs), args.reps, fresh)
        prev = last_old.get(what)
        predicted = prev[1] * (n / prev[0]) ** 3 if prev else 0.0
        if predicted <= args.old_budget:
            old_time, old_out = once(lambda: old(*inputs))
            if old_out != new(*inputs):
                raise SystemExit(f"{what} n={n}: old and new results differ")
            last_old[what] = (n, old_time)
            rows.append((what, n, f"{old_time:.4f}", f"{new_time:.4f}", f"{old_time / new_time:.0f}x"))
        else:
            rows.append((what, n, f"~{predicted:.0f}", f"{new_time:.4f}", f"~{predicted / new_time:.0f}x"))
        print(f"  {' | '.join(str(c) for c in rows[-1])}", file=sys.stderr, flush=True)

    for n in sizes:
        for k in (int(t) for t in args.tasks.split(",")):
            sigs, spreads = swarm(n, k)
            compare(f"cluster k={k}", n, ref.cluster, cluster, sigs, config, spreads,
                    fresh=fast._CLUSTER_MEMO.clear)
            memo = median(functools.partial(cluster, sigs, config, spreads), args.reps)
            rows.append((f"cluster k={k}, memo hit", n, "", f"{memo:.4f}", ""))
        members, quality = link_quality(n)
        compare("neighbour_graph deg=3", n, ref.neighbour_graph, neighbour_graph, members, quality, 3)
        graph = neighbour_graph(members, quality, 3)
        compare("metropolis_weights", n, ref.metropolis_weights, metropolis_weights, graph)

    print("| what | n | old s | new s | old / new |")
    print("|---|---:|---:|---:|---:|")
    for what, n, old_s, new_s, ratio in sorted(rows, key=lambda r: (r[0], r[1])):
        print(f"| {what} | {n} | {old_s} | {new_s} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
