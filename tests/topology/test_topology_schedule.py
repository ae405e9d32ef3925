"""Expert-sharing clock and re-clustering on membership changes."""

from __future__ import annotations

import pytest
from topo_helpers import swarm_signatures

from edgedfl.errors import ConfigError, TopologyError
from edgedfl.topology import (
    Clustering,
    ExpertSchedule,
    membership_change,
    needs_reclustering,
    update_clustering,
)


@pytest.mark.parametrize(
    ("rounds", "every", "expected"),
    [(10, 5, [4, 9]), (10, 3, [2, 5, 8, 9]), (4, 10, [3]), (3, 1, [0, 1, 2]), (1, 2, [0])],
)
def test_experts_are_shared_every_n_rounds_and_at_the_end(rounds: int, every: int, expected: list[int]) -> None:
    sched = ExpertSchedule(rounds=rounds, expert_every=every)
    assert sched.expert_rounds() == expected
    assert [r for r in range(-2, rounds + 3) if sched.share_experts(r)] == expected


def test_schedule_config_checks() -> None:
    with pytest.raises(ConfigError, match="expert_every"):
        ExpertSchedule(rounds=3, expert_every=0)
    with pytest.raises(ConfigError, match="rounds"):
        ExpertSchedule(rounds=0)


def test_membership_change_decides_what_to_do() -> None:
    current = Clustering.from_clusters([["a", "c"], ["b", "d"]])
    assert membership_change(current, ["a", "b", "c", "d"]).action == "keep"
    left = membership_change(current, ["a", "b", "d"])
    assert (left.action, left.left, left.joined) == ("drop", ("c",), ())
    joined = membership_change(current, ["a", "b", "c", "d", "e"])
    assert (joined.action, joined.joined) == ("recluster", ("e",))
    assert needs_reclustering(current, ["e", "a"]) and not needs_reclustering(current, ["a"])


def test_update_clustering_drops_leavers_and_reclusters_joiners_with_stable_slots() -> None:
    tasks_of = {"b": 0, "c": 1, "d": 0, "e": 1}
    sigs = swarm_signatures(tasks_of | {"a": 1, "f": 2})
    current = update_clustering(Clustering(()), {k: sigs[k] for k in tasks_of})
    assert current.slots == {0: ("b", "d"), 1: ("c", "e")}
    # "b" leaves: dropped, no re-clustering
    dropped = update_clustering(current, sigs, live=["c", "d", "e"])
    assert dropped.slots == {0: ("d",), 1: ("c", "e")}
    # "a" joins with task 1 (canonically it would become slot 0) and keeps task 1's slot
    joined = update_clustering(dropped, sigs, live=["a", "c", "d", "e"])
    assert joined.slots == {0: ("d",), 1: ("a", "c", "e")}
    # "f" brings a third task: a fresh slot
    third = update_clustering(joined, sigs, live=["a", "c", "d", "e", "f"])
    assert third.slots == {0: ("d",), 1: ("a", "c", "e"), 2: ("f",)}
    assert update_clustering(third, sigs, live=third.nodes) is third
    with pytest.raises(TopologyError):
        update_clustering(third, {}, live=["zz"])
