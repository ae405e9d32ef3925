"""``edgedfl export onnx``: every expert, the router and the base as one ONNX model.

The experts come from an expert bundle (``--experts DIR``: the layout of
:mod:`edgedfl.routing.bundle`, what a swarm node writes), from ``edgedfl
train`` run directories that trained different slots (``--run DIR`` repeated),
or are trained here, one slot per built-in task (``--from-tasks``).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["onnx"], help="export format")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experts", help="an expert bundle directory (experts.json, experts.safetensors, latent...)")
    src.add_argument("--run", action="append", help="an `edgedfl train` run directory (repeat: one per slot)")
    src.add_argument("--from-tasks", help="train one expert per built-in task here, e.g. topic,arith")
    p.add_argument("--out", required=True, help="the .onnx file to write (tokenizer.json goes next to it)")
    p.add_argument("--int8", action="store_true", help="int8 weights (onnxruntime dynamic quantization)")
    p.add_argument("--model", default=None, help="base model (--from-tasks; default tiny) or override of a bundle's")
    p.add_argument("--steps", type=int, default=40, help="--from-tasks: optimizer steps per expert")
    p.add_argument("--rank", type=int, default=8, help="--from-tasks: LoRA rank")
    p.add_argument("--seed", type=int, default=0, help="--from-tasks: swarm seed")
    p.add_argument("--n-calibration", type=int, default=64, help="prompts per latent code")
    p.add_argument("--top-k", type=int, default=None, help="experts applied per prompt (default: the bundle's, 1)")
    p.add_argument("--save-experts", default=None, help="also write the experts as a bundle directory")


def run(args: argparse.Namespace) -> int:
    from edgedfl import export_onnx
    from edgedfl.routing.bundle import load_bundle, save_bundle
    from edgedfl.routing.config import RouterConfig

    router = RouterConfig(top_k=args.top_k) if args.top_k else None
    if args.experts:
        routed, tok, meta = load_bundle(args.experts, model=args.model, top_k=args.top_k)
        spec = args.model or meta["model"]
    elif args.run:
        from edgedfl.experts.runs import routed_from_runs

        routed, tok, spec = routed_from_runs(args.run, router, n_calibration=args.n_calibration)
    else:
        from edgedfl.experts.local import train_task_experts

        tasks = [t.strip() for t in args.from_tasks.split(",") if t.strip()]
        spec = args.model or "tiny"
        routed, tok, _ = train_task_experts(spec, tasks, steps=args.steps, rank=args.rank, seed=args.seed,
                                            n_calibration=args.n_calibration, router=router)
    if args.save_experts:
        save_bundle(args.save_experts, routed, spec)
    info = export_onnx(routed, tok, args.out, int8=args.int8, extra_meta={"model": spec})
    print(json.dumps({"onnx": str(info.path), "tokenizer": str(info.tokenizer_path), "bytes": info.bytes,
                      "int8": info.int8, "experts": info.meta["experts"], "seconds": round(info.seconds, 1)}))
    return 0
