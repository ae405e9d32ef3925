"""When clusters share finished experts, and when the swarm re-clusters.

Rounds are numbered from 0 to ``rounds - 1``. Inside a cluster devices average
every round; across clusters they only publish finished experts (slot, sparse
B, task latent code) on a slower clock: after every ``expert_every`` rounds
and always after the last round, so every device ends up holding every
expert.

Re-clustering decision (:func:`membership_change`):

* a node **joined** (a hello from a node not in the current clustering):
  re-cluster everyone on the new set of signatures, then :func:`relabel` so
  existing clusters keep their slots: the newcomer may start a new task;
* nodes only **left** (presence went offline): no re-clustering; the node is
  dropped from its cluster (:meth:`Clustering.without`) and the others keep
  their slots and graph; a returning node counts as joining. Dropping instead
  of re-clustering means a flaky phone cannot reshuffle the swarm every time it
  loses Wi-Fi;
* nothing changed: keep.

Every node applies the decision at the same round boundary (the node layer
decides when), so all of them re-cluster on the same set of hellos.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np

from edgedfl.config import ConfigBase, check, option
from edgedfl.errors import TopologyError
from edgedfl.topology.clustering import ClusterConfig, Clustering, cluster, relabel


@dataclasses.dataclass
class ExpertSchedule(ConfigBase):
    """Clock of cross-cluster expert sharing (shared by the whole swarm)."""

    rounds: int = option(10, help="total number of training rounds (0 .. rounds-1)")
    expert_every: int = option(
        5, help="clusters publish their finished experts after every this many rounds (and after the last)"
    )

    def __post_init__(self) -> None:
        name = type(self).__name__
        check(self.rounds >= 1, name, "rounds", self.rounds, "must be >= 1")
        check(self.expert_every >= 1, name, "expert_every", self.expert_every, "must be >= 1")

    def share_experts(self, round_: int) -> bool:
        """True when, at the end of round ``round_`` (0-based), every cluster publishes its expert."""
        if not 0 <= round_ < self.rounds:
            return False
        return (round_ + 1) % self.expert_every == 0 or round_ == self.rounds - 1

    def expert_rounds(self) -> list[int]:
        """Every round after which experts are shared, ascending; always ends with ``rounds - 1``."""
        return [r for r in range(self.rounds) if self.share_experts(r)]


@dataclasses.dataclass(frozen=True)
class MembershipChange:
    """How the set of live nodes differs from the current clustering, and what to do about it."""

    joined: tuple[str, ...]
    left: tuple[str, ...]

    @property
    def action(self) -> str:
        """'recluster' (someone joined), 'drop' (someone only left) or 'keep'."""
        if self.joined:
            return "recluster"
        return "drop" if self.left else "keep"

    @property
    def needs_reclustering(self) -> bool:
        return bool(self.joined)


def membership_change(current: Clustering, live: Iterable[str]) -> MembershipChange:
    """Compare the nodes of ``current`` with the ``live`` ones (presence online and a hello seen)."""
    live_set, known = set(live), set(current.nodes)
    return MembershipChange(tuple(sorted(live_set - known)), tuple(sorted(known - live_set)))


def needs_reclustering(current: Clustering, live: Iterable[str]) -> bool:
    """True when a node joined (or came back); leaving alone only drops nodes (see the module doc)."""
    return membership_change(current, live).needs_reclustering


def update_clustering(
    current: Clustering,
    signatures: Mapping[str, np.ndarray],
    config: ClusterConfig | None = None,
    *,
    live: Iterable[str] | None = None,
    reserved: Iterable[int] = (),
    max_slots: int | None = None,
) -> Clustering:
    """Apply :func:`membership_change`: re-cluster + relabel on a join, drop on a leave, else keep.

    ``signatures`` holds the hellos seen (node -> signature); ``live`` (default:
    the nodes of ``signatures``) the nodes currently online. Re-clustering uses
    the signatures of the live nodes only.
    """
    live_set = set(signatures) if live is None else set(live)
    change = membership_change(current, live_set)
    if change.action == "keep":
        return current
    if change.action == "drop":
        return current.without(change.left)
    missing = sorted(live_set - set(signatures))
    if missing:
        raise TopologyError(f"no signature (hello) for live node(s) {missing}")
    fresh = cluster({n: signatures[n] for n in live_set}, config)
    return relabel(current, fresh, reserved=reserved, max_slots=max_slots)
