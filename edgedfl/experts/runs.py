"""Experts from several ``edgedfl train`` run directories, one slot each, on one model.

Each run trained one slot of the same adapter config (same model, seed,
num_slots); together they cover slots 0..K-1. Each expert's latent code comes
from the first ``n_calibration`` training prompts of its own run.

The base is always rebuilt unquantized (``quant="none"``), whatever the runs
trained on: exporters need plain float weights, and an ONNX model is
quantized by ONNX Runtime's own tools afterwards (``--int8``). The device
setting is this machine's (``auto``), not the training machine's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgedfl.errors import ConfigError
from edgedfl.routing.calibrate import compute_code
from edgedfl.routing.config import RouterConfig


def routed_from_runs(
    run_dirs: Sequence[str | os.PathLike[str]], router: RouterConfig | None = None, *, n_calibration: int = 64
) -> tuple[Any, Any, str]:
    """(RoutedModel, tokenizer, model spec) from run directories that trained different slots."""
    from edgedfl.routing.router import RoutedModel

    router = router or RouterConfig()
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    loaded = [load_run(run_dirs[0])]
    first_cfg, adapted, tok = loaded[0][0], loaded[0][1], loaded[0][2]
    by_slot: dict[int, tuple[str, list[str]]] = {}
    for i, run in enumerate(run_dirs):
        cfg, other, _, train, _ = loaded[0] if i == 0 else load_run(run)
        if cfg.model != first_cfg.model or _shared(cfg.adapter.to_dict()) != _shared(first_cfg.adapter.to_dict()):
            raise ConfigError(f"{run}: model or adapter settings differ from {run_dirs[0]}")
        if cfg.slot in by_slot:
            raise ConfigError(f"{run}: slot {cfg.slot} already comes from another run")
        if other is not adapted:
            tensors = {k: v for k, v in other.state_tensors().items() if k.startswith(f"slot{cfg.slot}/")}
            adapted.load_state_tensors(tensors)
        by_slot[cfg.slot] = (Path(str(cfg.data)).stem, [e.prompt for e in train[:n_calibration]])
    missing = sorted(set(range(adapted.num_slots)) - set(by_slot))
    if missing:
        raise ConfigError(f"no run trained slot(s) {missing} of {adapted.num_slots}")
    codes = [compute_code(adapted, tok, by_slot[k][1], router, k, max_length=first_cfg.train.max_length)
             for k in range(adapted.num_slots)]
    return RoutedModel(adapted, codes, router, [by_slot[k][0] for k in range(adapted.num_slots)]), tok, first_cfg.model


def load_run(run_dir: str | os.PathLike[str]) -> tuple[Any, Any, Any, list[Any], None]:
    """(cfg, adapted, tok, train examples, None) of a run's newest checkpoint, on an unquantized base."""
    from edgedfl.train.local import LocalRunConfig, build_model, load_data
    from edgedfl.train.trainer import Trainer

    run = Path(run_dir)
    cfg = LocalRunConfig.load(run / "run_config.json")
    cfg.quant = "none"
    cfg.device = "auto"  # the training machine's device setting; this machine picks its own (export runs on the host)
    adapted, tok, _ = build_model(cfg)
    train, _ = load_data(cfg)
    trainer = Trainer(adapted, tok, train, cfg.train, checkpoint_dir=str(run / "ckpt"))
    if trainer.resume() is None:
        raise ConfigError(f"{run} has no complete checkpoint yet")
    return cfg, adapted, tok, train, None


def _shared(adapter: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in adapter.items() if k != "dropout"}
