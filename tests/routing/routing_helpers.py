"""A tiny deterministic routed model for the routing and export tests (no training, no files).

Experts have random sparse B (seeded) and latent codes from prompts the caller
gives per expert; with the tiny byte-level tokenizer, prompts drawn from
disjoint character sets are well separated at the routing layer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from edgedfl.routing.config import RouterConfig

#: disjoint alphabets: prompts of expert k use only ALPHABETS[k]
ALPHABETS = ("abcdefgh", "0123456789", "QRSTUVWXYZ", "!#$%&*+-=?")


def synthetic_prompts(expert: int, n: int, seed: int = 0, length: tuple[int, int] = (8, 24)) -> list[str]:
    """``n`` random strings over expert ``expert``'s alphabet (different lengths: padding is exercised)."""
    rng = random.Random(f"synthetic|{expert}|{seed}")
    chars = ALPHABETS[expert]
    return ["".join(rng.choice(chars) for _ in range(rng.randint(*length))) for _ in range(n)]


def tiny_routed(
    num_experts: int = 3,
    *,
    rank: int = 4,
    seed: int = 0,
    b_scale: float = 0.3,
    router: RouterConfig | None = None,
    calibration: Sequence[Sequence[str]] | None = None,
) -> tuple[Any, Any]:
    """(RoutedModel, tokenizer) on the tiny model: random B per slot, codes from ``calibration``
    (default: 48 synthetic prompts per expert)."""
    import torch

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.model.loading import load_model
    from edgedfl.routing.calibrate import compute_code
    from edgedfl.routing.router import RoutedModel

    # layer 0 unless told: the tiny model is random, so past its embeddings its states keep the synthetic
    # tasks apart by chance only; these helpers serve tests of the router's mechanics, not of its layer
    router = router or RouterConfig(layer=0)
    base, tok = load_model("tiny", seed=seed)
    adapted = attach_adapter(base, AdapterConfig(num_slots=num_experts, rank=rank, seed=seed))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in adapted.layers:
            for k in range(num_experts):
                B = adapted.B(k, name)
                B.copy_(b_scale * torch.randn(B.shape, generator=gen))
    adapted.apply_masks()
    prompts = calibration or [synthetic_prompts(k, 48, seed=seed) for k in range(num_experts)]
    codes = [compute_code(adapted, tok, list(prompts[k]), router, k) for k in range(num_experts)]
    return RoutedModel(adapted, codes, router, [f"expert{k}" for k in range(num_experts)]), tok
