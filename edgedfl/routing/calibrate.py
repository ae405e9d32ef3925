"""Latent codes from calibration prompts: each expert's code from prompts of its own task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgedfl.errors import DataError
from edgedfl.model.batching import collate_prompts
from edgedfl.model.placement import to_numpy
from edgedfl.routing.codes import LatentCode
from edgedfl.routing.config import RouterConfig
from edgedfl.routing.router import pooled_state, project, routing_module_names


def routing_features(
    adapted: Any, tokenizer: Any, prompts: Sequence[str], config: RouterConfig, slot: int | None, *,
    max_length: int = 256, batch_size: int = 16,
) -> np.ndarray:
    """Routing features (N, D) of ``prompts`` in ``slot``'s subspace (frozen base, adapters off), on the host;
    with ``slot`` None, in every slot's at once (N, K, D): one forward for all of them."""
    modules = routing_module_names(adapted, config)
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = collate_prompts(tokenizer, prompts[i : i + batch_size], max_length)
        pooled = pooled_state(adapted, config, modules, batch["input_ids"], batch["attention_mask"])  # (B, d)
        z = project(adapted, modules, pooled)  # (B, K, D)
        out.append(to_numpy((z if slot is None else z[:, slot]).double()))  # (B, K, D) or (B, D)
    return np.concatenate(out, axis=0)  # (N, K, D) or (N, D)


def compute_code(
    adapted: Any, tokenizer: Any, prompts: Sequence[str], config: RouterConfig, slot: int, *,
    max_length: int = 256, batch_size: int = 16,
) -> LatentCode:
    """The latent code of ``slot`` from prompts of its task (at least two)."""
    if len(prompts) < 2:
        raise DataError(f"a latent code needs at least 2 calibration prompts, got {len(prompts)}")
    feats = routing_features(adapted, tokenizer, prompts, config, slot, max_length=max_length, batch_size=batch_size)
    return LatentCode.from_features(feats)


def compute_codes(
    adapted: Any, tokenizer: Any, prompts_by_slot: Mapping[int, Sequence[str]], config: RouterConfig, *,
    max_length: int = 256, batch_size: int = 16,
) -> dict[int, LatentCode]:
    """slot -> code, each from its own prompts."""
    return {
        slot: compute_code(adapted, tokenizer, prompts, config, slot, max_length=max_length, batch_size=batch_size)
        for slot, prompts in sorted(prompts_by_slot.items())
    }
