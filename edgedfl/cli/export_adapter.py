"""``edgedfl export-adapter``: one expert of a run as a standard peft LoRA adapter directory."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a run directory written by `edgedfl train`")
    p.add_argument("--slot", type=int, default=None, help="the expert slot (default: the run's own)")
    p.add_argument("--out", required=True, help="directory for adapter_config.json + adapter_model.safetensors")


def run(args: argparse.Namespace) -> int:
    from edgedfl.train.local import load_run

    cfg, adapted, _, _, _ = load_run(args.run)
    path = adapted.export_peft(args.out, cfg.slot if args.slot is None else args.slot)
    print(path)
    return 0
