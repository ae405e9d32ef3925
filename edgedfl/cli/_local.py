"""Flags shared by the one-device commands (train, demo), mapped onto LocalRunConfig."""

from __future__ import annotations

import argparse
from typing import Any

from edgedfl.adapters.methods import method_names


def add_local_arguments(p: argparse.ArgumentParser, *, model: str = "smollm2", steps: int = 100) -> None:
    p.add_argument("--config", help="a LocalRunConfig JSON file; flags given override it")
    p.add_argument("--model", default=None, help=f"tiny, smollm2, gemma3-270m, a hub id, a directory or a .gguf (default {model})")
    p.add_argument("--quant", default=None, help="auto, none, torchao-int8, torchao-int4, bnb-nf4, bnb-int8")
    p.add_argument("--profile", default=None, help="device profile: phone, jetson, laptop (default: detect)")
    p.add_argument("--device", default=None,
                   help="where the model runs: auto (default: CUDA when torch sees a GPU and the base is bnb-* "
                        "or unquantized on the jetson profile), cpu (even bnb-* with a GPU visible), cuda, cuda:N")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "auto"],
                   help="the base's compute dtype: float32 (default), bfloat16, or auto (bfloat16 where the CPU has AVX512-BF16/AMX or the GPU supports it)")
    p.add_argument("--data", default=None, help="built-in task (topic, yesno, arith, strtf), a JSONL file or hf:<dataset>")
    p.add_argument("--eval-data", default=None, help="evaluation source (default: the task's test split)")
    p.add_argument("--n-train", type=int, default=None, help="training examples (0 = all)")
    p.add_argument("--n-eval", type=int, default=None, help="evaluation examples")
    p.add_argument("--method", default=None, metavar="METHOD",
                   help=f"adapter method: one of {', '.join(method_names())}, or a 'module:OBJECT' AdapterMethod")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank")
    p.add_argument("--density", type=float, default=None, help="solora: global fraction of B entries kept")
    p.add_argument("--slots", type=int, default=None, help="expert slots on the model")
    p.add_argument("--slot", type=int, default=None, help="the slot this device trains")
    p.add_argument("--seed", type=int, default=None, help="swarm seed (A, masks, data order)")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {steps})")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training at most")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(_default_model=model, _default_steps=steps)


def config_from_args(args: argparse.Namespace) -> Any:
    from edgedfl import LocalRunConfig

    cfg = LocalRunConfig.load(args.config) if args.config else LocalRunConfig(
        model=args._default_model,
    )
    if not args.config:
        cfg.train.max_steps = args._default_steps
    d = cfg.to_dict()
    top = {"model": args.model, "quant": args.quant, "profile": args.profile, "device": args.device,
           "dtype": args.dtype, "data": args.data,
           "eval_data": args.eval_data, "n_train": args.n_train, "n_eval": args.n_eval, "slot": args.slot}
    adapter = {"method": args.method, "rank": args.rank, "density": args.density, "num_slots": args.slots,
               "seed": args.seed}
    train = {"max_steps": args.steps, "time_budget_s": args.time_budget, "batch_size": args.batch_size,
             "grad_accum": args.grad_accum, "lr": args.lr, "checkpoint_every": args.checkpoint_every,
             "seed": args.seed}
    d.update({k: v for k, v in top.items() if v is not None})
    d["adapter"].update({k: v for k, v in adapter.items() if v is not None})
    d["train"].update({k: v for k, v in train.items() if v is not None})
    if args.no_progress:
        d["train"]["progress"] = False
    return LocalRunConfig.from_dict(d)
