"""One device, end to end: load and quantize the base, attach the adapter, calibrate, train, evaluate.

A run lives in one directory::

    run/
      run_config.json     the LocalRunConfig (sorted JSON, edgedfl version)
      ckpt/               atomic checkpoints (see edgedfl.train.checkpoint)
      metrics.json        the last metrics
      adapter/            the trained expert as a standard peft LoRA adapter

Running the same command again resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.config import check, option
from edgedfl.data.examples import Example
from edgedfl.data.sources import load_examples
from edgedfl.devices import DeviceConfig
from edgedfl.errors import ConfigError
from edgedfl.model.placement import model_device, model_dtype
from edgedfl.model.quantize import load_device_base
from edgedfl.train.batching import collate_prompts
from edgedfl.train.trainer import TrainConfig, Trainer

log = logging.getLogger("edgedfl.train")


@dataclasses.dataclass
class LocalRunConfig(DeviceConfig):
    """One device training alone: its data, profile and quantization (``DeviceConfig``), the model, adapter
    and training settings."""

    model: str = option("smollm2", help="'tiny', 'smollm2' (the bundled SmolLM2-135M), a hub id, a directory or a .gguf")
    eval_data: str = option("", help="evaluation source; empty = the test split of a built-in task")
    n_train: int = option(0, help="training examples to use (0 = all)")
    n_eval: int = option(50, help="evaluation examples")
    n_calibration: int = option(32, help="training prompts used to calibrate the solora masks (0 = uniform masks)")
    slot: int = option(0, help="the expert slot this device trains")
    adapter: AdapterConfig = option(help="adapter settings", factory=AdapterConfig)
    train: TrainConfig = option(help="training settings", factory=TrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = type(self).__name__
        check(self.n_train >= 0, n, "n_train", self.n_train, "must be >= 0")
        check(self.n_eval >= 0, n, "n_eval", self.n_eval, "must be >= 0")
        check(0 <= self.slot < self.adapter.num_slots, n, "slot", self.slot,
              f"must be in [0, adapter.num_slots={self.adapter.num_slots})")


def build_model(cfg: LocalRunConfig) -> tuple[Any, Any, str]:
    """(adapted model, tokenizer, quantization backend used)."""
    base, tok, backend = load_device_base(cfg.model, cfg.adapter.seed, cfg)
    adapted = attach_adapter(base, cfg.adapter)
    adapted.activate(cfg.slot)
    return adapted, tok, backend


def calibrate(adapted: Any, tok: Any, prompts: list[str], slot: int, max_length: int, batch_size: int = 8) -> None:
    """Spectrum-based masks of ``slot`` from the frozen base's inputs on ``prompts``."""
    batches = (collate_prompts(tok, prompts[i : i + batch_size], max_length) for i in range(0, len(prompts), batch_size))
    stats = adapted.calibrate(batches, slot)
    masks, densities = adapted.masks_from_stats(slot, stats)
    adapted.set_masks(slot, masks, densities)


def load_data(cfg: LocalRunConfig) -> tuple[list[Example], list[Example]]:
    train = load_examples(cfg.data, "train", n=cfg.n_train or None, seed=cfg.adapter.seed)
    if cfg.eval_data:
        test = load_examples(cfg.eval_data, "test", n=cfg.n_eval or None, seed=cfg.adapter.seed)
    elif os.fspath(cfg.data) in _builtin_tasks():
        test = load_examples(cfg.data, "test", n=cfg.n_eval or None, seed=cfg.adapter.seed)
    else:
        test = []
    return train, test[: cfg.n_eval] if cfg.n_eval else []


def _builtin_tasks() -> set[str]:
    from edgedfl.data.tasks import TASKS

    return set(TASKS)


def run_local(cfg: LocalRunConfig, out_dir: str | os.PathLike[str], *, evaluate_before: bool = False) -> dict[str, Any]:
    """Train one device's expert into ``out_dir`` (resuming if it holds a checkpoint)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "run_config.json"
    if saved.exists():
        previous = LocalRunConfig.load(saved)
        if previous.to_dict() != cfg.to_dict():
            raise ConfigError(f"{out} holds a run with different settings; use another --out or the same settings")
    else:
        cfg.save(saved)
    adapted, tok, backend = build_model(cfg)
    train, test = load_data(cfg)
    if adapted.spec.sparse and cfg.n_calibration:
        calibrate(adapted, tok, [e.prompt for e in train[: cfg.n_calibration]], cfg.slot, cfg.train.max_length)
    trainer = Trainer(adapted, tok, train, cfg.train, eval_examples=test, checkpoint_dir=str(out / "ckpt"))
    metrics: dict[str, Any] = {"model": cfg.model, "quant": backend, "device": str(model_device(adapted.peft_model)),
                               "dtype": model_dtype(adapted.peft_model), "method": adapted.method, "slot": cfg.slot}
    if evaluate_before and test and trainer.checkpoints and trainer.checkpoints.latest() is None:
        metrics["eval_before"] = trainer.evaluate()
    metrics.update(trainer.train())
    adapted.export_peft(out / "adapter", cfg.slot)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def load_run(run_dir: str | os.PathLike[str]) -> tuple[LocalRunConfig, Any, Any, list[Example], list[Example]]:
    """Rebuild a run's model from its config and newest checkpoint: (cfg, adapted, tok, train, test)."""
    run = Path(run_dir)
    cfg = LocalRunConfig.load(run / "run_config.json")
    adapted, tok, _ = build_model(cfg)
    train, test = load_data(cfg)
    trainer = Trainer(adapted, tok, train, cfg.train, eval_examples=test, checkpoint_dir=str(run / "ckpt"))
    if trainer.resume() is None:
        raise ConfigError(f"{run} has no complete checkpoint yet")
    return cfg, adapted, tok, train, test
