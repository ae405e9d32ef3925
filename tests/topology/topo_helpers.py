"""Synthetic pooled hidden states that look like an LLM's: a large shared direction plus a task direction.

Pooled hidden states of one base model share a big common component whatever
the prompt; tasks differ by a smaller direction; devices of one task differ by
prompt sampling. Signatures built from these exercise the clustering the way a
real swarm does (small absolute distances, clear relative structure).
"""

from __future__ import annotations

import numpy as np

from edgedfl.topology import project_signature

HIDDEN = 96
SEED = 7


def pooled_states(task: int, device: int, *, n_prompts: int = 16, noise: float = 0.5, common: float = 4.0,
                  n_tasks_seed: int = 0) -> np.ndarray:
    """(n_prompts, HIDDEN) pooled states of one device holding ``task``."""
    base = np.random.default_rng(1000 + n_tasks_seed)
    shared = common * base.standard_normal(HIDDEN)  # (HIDDEN,)
    task_dir = np.random.default_rng(2000 + task).standard_normal(HIDDEN)  # (HIDDEN,)
    rng = np.random.default_rng(10_000 * (task + 1) + device)
    return shared + task_dir + noise * rng.standard_normal((n_prompts, HIDDEN))  # (n_prompts, HIDDEN)


def swarm_signatures(tasks_of: dict[str, int], **kwargs: float) -> dict[str, np.ndarray]:
    """node id -> signature for nodes holding the given tasks."""
    return {
        node: project_signature(pooled_states(task, i, **kwargs), SEED)  # type: ignore[arg-type]
        for i, (node, task) in enumerate(sorted(tasks_of.items()))
    }
