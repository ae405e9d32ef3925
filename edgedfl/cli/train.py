"""``edgedfl train``: fine-tune one device's expert on local data (resumes if interrupted)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgedfl.cli._local import add_local_arguments, config_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_local_arguments(p)
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, exported adapter)")


def run(args: argparse.Namespace) -> int:
    from edgedfl.train.local import run_local

    cfg = config_from_args(args)
    metrics = run_local(cfg, args.out)
    summary: dict[str, Any] = {k: metrics[k] for k in ("model", "quant", "device", "dtype", "method", "steps", "train_loss",
                                                       "wall_s") if k in metrics}
    if "eval" in metrics:
        summary["eval"] = metrics["eval"]
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
