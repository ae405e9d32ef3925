"""Deterministic clustering: exact task groups, order independence, ties by id, canonical and stable slots."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from topo_helpers import swarm_signatures

from edgedfl.errors import ConfigError, TopologyError
from edgedfl.topology import ClusterConfig, Clustering, cluster, distance_matrix, relabel
from edgedfl.topology.clustering import _best_split

METHODS = [ClusterConfig(), ClusterConfig(method="kmeans", seed=3)]


def groups_by_task(tasks_of: dict[str, int]) -> set[frozenset[str]]:
    out: dict[int, set[str]] = {}
    for node, task in tasks_of.items():
        out.setdefault(task, set()).add(node)
    return {frozenset(g) for g in out.values()}


def found_groups(c: Clustering) -> set[frozenset[str]]:
    return {frozenset(m) for _, m in c.groups}


@pytest.mark.parametrize("config", METHODS, ids=["agglomerative", "kmeans"])
def test_four_nodes_two_tasks_give_the_task_grouping(config: ClusterConfig) -> None:
    tasks_of = {"a": 0, "b": 1, "c": 0, "d": 1}
    c = cluster(swarm_signatures(tasks_of), config)
    assert found_groups(c) == groups_by_task(tasks_of)
    assert c.slots == {0: ("a", "c"), 1: ("b", "d")}  # slot 0 holds the smallest id


@pytest.mark.parametrize("config", METHODS, ids=["agglomerative", "kmeans"])
@pytest.mark.parametrize("noise", [0.5, 1.5])
def test_eight_nodes_four_tasks_with_noisy_signatures(config: ClusterConfig, noise: float) -> None:
    tasks_of = {f"dev-{i}": (i * 3) % 4 for i in range(8)}
    sigs = swarm_signatures(tasks_of, noise=noise, n_prompts=8)
    c = cluster(sigs, config)
    assert found_groups(c) == groups_by_task(tasks_of)
    assert c.silhouette is not None and c.silhouette > config.min_silhouette


def test_unbalanced_tasks_and_a_singleton_task() -> None:
    tasks_of = {f"n{i}": 0 for i in range(6)} | {"n6": 1}
    c = cluster(swarm_signatures(tasks_of))
    assert found_groups(c) == groups_by_task(tasks_of)


def test_one_task_stays_one_cluster() -> None:
    c = cluster(swarm_signatures({f"n{i}": 0 for i in range(6)}))
    assert c.num_clusters == 1 and c.silhouette is None


def test_max_clusters_caps_k() -> None:
    tasks_of = {f"n{i}": i % 4 for i in range(8)}
    c = cluster(swarm_signatures(tasks_of), ClusterConfig(max_clusters=2))
    assert c.num_clusters <= 2
    assert cluster(swarm_signatures(tasks_of), ClusterConfig(max_clusters=1)).num_clusters == 1


def test_two_nodes_split_only_beyond_the_floor() -> None:
    far = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    near = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 1e-3])}
    assert cluster(far).num_clusters == 2
    assert cluster(near).num_clusters == 1
    assert cluster({"solo": np.ones(4)}).slots == {0: ("solo",)}


def test_fixed_distance_threshold() -> None:
    sigs = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.99, 0.1, 0.0]), "c": np.array([0.0, 0.0, 1.0])}
    assert found_groups(cluster(sigs, ClusterConfig(distance_threshold=0.5))) == {
        frozenset({"a", "b"}), frozenset({"c"})}
    assert cluster(sigs, ClusterConfig(distance_threshold=1.5)).num_clusters == 1
    assert cluster(sigs, ClusterConfig(distance_threshold=0.0)).num_clusters == 3


@pytest.mark.parametrize("config", METHODS, ids=["agglomerative", "kmeans"])
def test_independent_of_input_order(config: ClusterConfig) -> None:
    tasks_of = {f"dev-{i}": i % 3 for i in range(9)}
    sigs = swarm_signatures(tasks_of, noise=1.0)
    reference = cluster(sigs, config)
    items = list(sigs.items())
    for trial in range(5):
        random.Random(trial).shuffle(items)
        assert cluster(dict(items), config) == reference


def test_ties_are_broken_by_node_id() -> None:
    # four points on a square: every neighbouring pair is at the same distance
    square = {"d": np.array([0.0, -1.0]), "b": np.array([0.0, 1.0]), "a": np.array([1.0, 0.0]),
              "c": np.array([-1.0, 0.0])}
    cfg = ClusterConfig(distance_threshold=1.0)
    first = cluster(square, cfg)
    # a-b, a-d, b-c, c-d are all at distance 1: the tie goes to the smallest ids, (a, b)
    assert first.slots == {0: ("a", "b"), 1: ("c", "d")}
    renamed = {"z" + k: v for k, v in square.items()}
    assert cluster(renamed, cfg).slots == {0: ("za", "zb"), 1: ("zc", "zd")}


def test_same_result_in_another_process(tmp_path: Path) -> None:
    tasks_of = {f"dev-{i}": i % 4 for i in range(8)}
    sigs = swarm_signatures(tasks_of, noise=1.5)
    for config in METHODS:
        here = cluster(sigs, config).to_dict()
        inputs = tmp_path / "sigs.json"
        inputs.write_text(json.dumps({k: v.tolist() for k, v in reversed(list(sigs.items()))}))
        code = (
            "import json, sys, numpy as np\n"
            "from edgedfl.topology import ClusterConfig, cluster\n"
            f"sigs = {{k: np.array(v) for k, v in json.load(open({str(inputs)!r})).items()}}\n"
            f"print(json.dumps(cluster(sigs, ClusterConfig.from_dict({config.to_dict()!r})).to_dict()))\n"
        )
        env = dict(os.environ, PYTHONHASHSEED="12345")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=120, check=True)
        assert json.loads(proc.stdout) == json.loads(json.dumps(here))


def test_bad_signatures_are_typed_errors() -> None:
    with pytest.raises(TopologyError):
        cluster({})
    with pytest.raises(TopologyError):
        cluster({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(TopologyError):
        cluster({"a": np.ones(3), "b": np.array([np.nan, 1, 1])})
    with pytest.raises(TopologyError):
        cluster({"a": np.ones(3), "b": np.zeros(3)})


@pytest.mark.parametrize("bad", [{"max_clusters": 0}, {"method": "spectral"}, {"distance_threshold": 3.0},
                                 {"method": "kmeans", "distance_threshold": 0.1}, {"min_silhouette": 2.0}])
def test_config_checks_name_the_field(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ClusterConfig(**bad)  # type: ignore[arg-type]


def test_config_round_trips_json(tmp_path: Path) -> None:
    cfg = ClusterConfig(max_clusters=3, method="kmeans", seed=9)
    assert ClusterConfig.load(cfg.save(tmp_path / "c.json")) == cfg


# -- Clustering value object -----------------------------------------------------------


def test_clustering_queries_and_round_trip() -> None:
    c = Clustering.from_clusters([["d", "b"], ["c", "a"]])
    assert c.slots == {0: ("a", "c"), 1: ("b", "d")}
    assert c.assignment == {"a": 0, "b": 1, "c": 0, "d": 1}
    assert c.slot_of("d") == 1 and c.members(0) == ("a", "c") and c.peers("a") == ("c",)
    assert c.nodes == ("a", "b", "c", "d")
    assert Clustering.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert Clustering.from_assignment(c.assignment) == c
    assert c.without(["a", "c"]).slots == {1: ("b", "d")}
    with pytest.raises(TopologyError):
        c.slot_of("zz")
    with pytest.raises(TopologyError):
        Clustering(((0, ("a",)), (1, ("a", "b"))))


# -- relabel -----------------------------------------------------------------------


def test_relabel_keeps_slots_when_a_node_leaves() -> None:
    tasks_of = {"a": 0, "b": 1, "c": 0, "d": 1, "e": 2, "f": 2}
    before = cluster(swarm_signatures(tasks_of))
    assert before.slots == {0: ("a", "c"), 1: ("b", "d"), 2: ("e", "f")}
    # "a" leaves: canonical numbering would now put (b, d) in slot 0
    after = cluster(swarm_signatures({k: v for k, v in tasks_of.items() if k != "a"}))
    assert after.slots[0] == ("b", "d")
    stable = relabel(before, after)
    assert stable.slots == {0: ("c",), 1: ("b", "d"), 2: ("e", "f")}


def test_relabel_gives_a_new_task_a_fresh_slot() -> None:
    before = Clustering.from_clusters([["b", "d"], ["c", "e"]])  # slots 0, 1
    after = Clustering.from_clusters([["a"], ["b", "d"], ["c", "e"]])  # "a" brings a new task
    stable = relabel(before, after)
    assert stable.slots == {0: ("b", "d"), 1: ("c", "e"), 2: ("a",)}
    # a joiner of an existing task lands in that task's slot
    assert relabel(before, Clustering.from_clusters([["a", "b", "d"], ["c", "e"]])).slots == {
        0: ("a", "b", "d"), 1: ("c", "e")}


def test_relabel_does_not_reuse_a_vanished_slot_unless_forced() -> None:
    before = Clustering.from_clusters([["a"], ["b"], ["c"]])
    after = Clustering.from_clusters([["a"], ["c"], ["x"]])  # b's cluster left, x is new
    assert relabel(before, after).slots == {0: ("a",), 2: ("c",), 3: ("x",)}
    assert relabel(before, after, max_slots=3).slots == {0: ("a",), 1: ("x",), 2: ("c",)}
    with pytest.raises(TopologyError):
        relabel(before, after, max_slots=3, reserved=[1])
    assert relabel(before, after, reserved=[3]).slots == {0: ("a",), 2: ("c",), 4: ("x",)}


def test_relabel_split_and_merge_follow_the_largest_overlap() -> None:
    before = Clustering.from_clusters([["a", "b", "c"], ["d", "e"]])
    split = relabel(before, Clustering.from_clusters([["a"], ["b", "c"], ["d", "e"]]))
    assert split.slots == {0: ("b", "c"), 1: ("d", "e"), 2: ("a",)}
    merged = relabel(before, Clustering.from_clusters([["a", "b", "c", "d", "e"]]))
    assert merged.slots == {0: ("a", "b", "c", "d", "e")}


def test_relabel_is_deterministic_and_identity_on_same_clustering() -> None:
    c = Clustering.from_clusters([["a", "b"], ["c"], ["d", "e"]])
    assert relabel(c, c) == c
    tie = relabel(Clustering.from_clusters([["a", "b"]]), Clustering.from_clusters([["a"], ["b"]]))
    assert tie.slots == {0: ("a",), 1: ("b",)}  # equal overlap: the smaller smallest id keeps the slot


def test_two_lone_devices_with_different_tasks_stay_apart() -> None:
    # silhouette's usual "singletons score 0" would merge d and f; see clustering.silhouette
    tasks_of = {"a": 0, "c": 0, "e": 0, "d": 1, "f": 2}
    assert found_groups(cluster(swarm_signatures(tasks_of))) == groups_by_task(tasks_of)


@pytest.mark.parametrize("n", [3, 4, 6, 8, 12])
def test_pure_noise_is_one_cluster_even_without_the_distance_floor(n: int) -> None:
    cfg = ClusterConfig(min_split_distance=0.0)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        sigs = {f"n{i}": 5.0 + rng.standard_normal(64) for i in range(n)}
        assert cluster(sigs, cfg).num_clusters == 1, seed


#: cosine distances measured between task signatures of SmolLM2-135M (last layer, mean over tokens,
#: 32 prompts per device, two devices per built-in task): topic and yesno (both BBC articles) are
#: close to each other and far from arith and strtf
MEASURED_IDS = ["arith-0", "arith-1", "strtf-0", "strtf-1", "topic-0", "topic-1", "yesno-0", "yesno-1"]
MEASURED = np.array([
    [0.0, 0.0016, 0.2681, 0.2596, 0.1475, 0.1571, 0.1239, 0.1323],
    [0.0016, 0.0, 0.2782, 0.2700, 0.1471, 0.1579, 0.1276, 0.1371],
    [0.2681, 0.2782, 0.0, 0.0004, 0.3007, 0.2778, 0.2620, 0.2401],
    [0.2596, 0.2700, 0.0004, 0.0, 0.2965, 0.2740, 0.2569, 0.2357],
    [0.1475, 0.1471, 0.3007, 0.2965, 0.0, 0.0058, 0.0235, 0.0307],
    [0.1571, 0.1579, 0.2778, 0.2740, 0.0058, 0.0, 0.0222, 0.0210],
    [0.1239, 0.1276, 0.2620, 0.2569, 0.0235, 0.0222, 0.0, 0.0040],
    [0.1323, 0.1371, 0.2401, 0.2357, 0.0307, 0.0210, 0.0040, 0.0],
])


def measured_signatures() -> dict[str, np.ndarray]:
    # unit vectors with exactly these cosine distances: Gram matrix 1 - D, factorised
    w, v = np.linalg.eigh(1.0 - MEASURED)
    x = v * np.sqrt(np.clip(w, 0.0, None))  # (8, 8)
    return {node: x[i] for i, node in enumerate(MEASURED_IDS)}


@pytest.mark.parametrize("config", METHODS, ids=["agglomerative", "kmeans"])
def test_real_model_signatures_give_the_task_grouping(config: ClusterConfig) -> None:
    sigs = measured_signatures()
    tasks_of = {n: MEASURED_IDS.index(n) // 2 for n in MEASURED_IDS}
    assert found_groups(cluster(sigs, config)) == groups_by_task(tasks_of)
    # the 2-task demo (the suite's first two tasks: topic, yesno) and a far pair
    for pair in (("topic", "yesno"), ("arith", "topic")):
        sub = {n: s for n, s in sigs.items() if n.split("-")[0] in pair}
        assert found_groups(cluster(sub, config)) == {frozenset(n for n in sub if n.startswith(t)) for t in pair}
    # one device per task also splits (two nodes: the distance floor decides), two of one task do not
    assert cluster({n: sigs[n] for n in ("topic-0", "yesno-0")}, config).num_clusters == 2
    assert cluster({n: sigs[n] for n in ("topic-0", "topic-1")}, config).num_clusters == 1


def test_close_pair_of_tasks_is_split_inside_its_group() -> None:
    # top-level silhouette prefers {0, 1} vs {2} vs {3}; the refinement inside {0, 1} separates them
    rng = np.random.default_rng(5)
    centres = [rng.standard_normal(64) for _ in range(3)]
    near = centres[0] + 0.15 * rng.standard_normal(64)
    task_centres = [centres[0], near, centres[1], centres[2]]
    sigs = {f"n{i}": task_centres[i % 4] + 0.02 * rng.standard_normal(64) for i in range(12)}
    tasks_of = {f"n{i}": i % 4 for i in range(12)}
    s = np.stack([sigs[k] for k in sorted(sigs)])  # (12, 64)
    top = _best_split(np.round(distance_matrix(s), 9), s / np.linalg.norm(s, axis=1, keepdims=True),
                      ClusterConfig(), 8, ClusterConfig().min_split_distance)
    assert top is not None and len(top[1]) == 3  # the top level alone would merge tasks 0 and 1
    assert found_groups(cluster(sigs)) == groups_by_task(tasks_of)
    assert cluster(sigs, ClusterConfig(max_clusters=3)).num_clusters == 3
