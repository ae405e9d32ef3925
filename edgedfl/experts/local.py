"""Experts trained on this machine, one slot per task: the stand-in for a swarm's output.

:func:`train_task_experts` loads one base, attaches ``len(tasks)`` slots,
and for each task calibrates the slot's masks, trains it for ``steps`` steps on
the task's training split and computes its latent code from ``n_calibration``
training prompts (never test prompts). The result is a
:class:`~edgedfl.routing.router.RoutedModel` that
:func:`~edgedfl.routing.bundle.save_bundle` writes like a swarm would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from edgedfl.routing.calibrate import compute_code
from edgedfl.routing.config import RouterConfig

log = logging.getLogger("edgedfl.experts")


def train_task_experts(
    model: str,
    tasks: Sequence[str],
    *,
    steps: int = 40,
    rank: int = 8,
    density: float = 0.25,
    seed: int = 0,
    n_train: int = 1000,
    n_calibration: int = 64,
    batch_size: int = 8,
    lr: float = 2e-3,
    max_length: int = 128,
    router: RouterConfig | None = None,
    progress: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """(RoutedModel, tokenizer, info) with one trained expert per task of the built-in suite."""
    from edgedfl.adapters import AdapterConfig
    from edgedfl.data.tasks import load_task
    from edgedfl.routing.router import RoutedModel
    from edgedfl.train.local import LocalRunConfig, build_model, calibrate
    from edgedfl.train.trainer import TrainConfig, Trainer

    router = router or RouterConfig()
    cfg = LocalRunConfig(
        model=model, quant="none",
        adapter=AdapterConfig(num_slots=len(tasks), rank=rank, density=density, seed=seed),
        train=TrainConfig(max_steps=max(steps, 1), batch_size=batch_size, lr=lr, max_length=max_length,
                          progress=progress, seed=seed),
    )
    adapted, tok, _ = build_model(cfg)
    codes = []
    info: dict[str, Any] = {"model": model, "tasks": list(tasks), "steps": steps, "experts": []}
    for slot, task in enumerate(tasks):
        t0 = time.monotonic()
        adapted.activate(slot)
        train = load_task(task, "train", n=n_train, seed=seed)
        prompts = [e.prompt for e in train[:n_calibration]]
        if adapted.spec.sparse:
            calibrate(adapted, tok, prompts, slot, max_length)
        metrics = Trainer(adapted, tok, train, cfg.train).train(resume=False) if steps else {"train_loss": None}
        codes.append(compute_code(adapted, tok, prompts, router, slot, max_length=max_length))
        info["experts"].append({"slot": slot, "task": task, "train_loss": metrics["train_loss"],
                                "seconds": time.monotonic() - t0})
        log.info("expert %d (%s): loss %s in %.0f s", slot, task, metrics["train_loss"], time.monotonic() - t0)
    return RoutedModel(adapted, codes, router, list(tasks)), tok, info
