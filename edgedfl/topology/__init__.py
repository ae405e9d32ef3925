"""Topology: task signatures -> clusters (expert slots) -> gossip graphs and mixing weights (layer L1).

numpy + stdlib only (no torch): every device, phones included, computes the
same clusters and weights from the same hellos, without a coordinator.

* :mod:`~edgedfl.topology.signatures`: seeded random projection of pooled hidden states.
* :mod:`~edgedfl.topology.clustering`: deterministic clustering, canonical slots, stable relabelling.
* :mod:`~edgedfl.topology.graph`: link-aware neighbours inside a cluster, Metropolis weights.
* :mod:`~edgedfl.topology.schedule`: expert-sharing clock, re-clustering on join / leave.
"""

from edgedfl.topology.clustering import (
    CLUSTER_METHODS,
    ClusterConfig,
    Clustering,
    cluster,
    relabel,
    silhouette,
)
from edgedfl.topology.graph import (
    LinkQuality,
    NeighbourGraph,
    cluster_graphs,
    flat_clustering,
    link_score,
    metropolis_weights,
    neighbour_graph,
    present_weights,
)
from edgedfl.topology.schedule import (
    ExpertSchedule,
    MembershipChange,
    membership_change,
    needs_reclustering,
    update_clustering,
)
from edgedfl.topology.signatures import (
    DEFAULT_DIM,
    distance_matrix,
    normalise,
    project_signature,
    projection_matrix,
    signature_distance,
)

__all__ = [
    "CLUSTER_METHODS",
    "DEFAULT_DIM",
    "ClusterConfig",
    "Clustering",
    "ExpertSchedule",
    "LinkQuality",
    "MembershipChange",
    "NeighbourGraph",
    "cluster",
    "cluster_graphs",
    "distance_matrix",
    "flat_clustering",
    "link_score",
    "membership_change",
    "metropolis_weights",
    "needs_reclustering",
    "neighbour_graph",
    "normalise",
    "present_weights",
    "project_signature",
    "projection_matrix",
    "relabel",
    "signature_distance",
    "silhouette",
    "update_clustering",
]
