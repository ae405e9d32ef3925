"""ONNX Runtime against torch eager on the real model: forward latency, routing overhead, generation speed.

Side by side in one process, one thread budget, rounds interleaved so that
load from other processes hits every contender alike:

* torch eager, routed (the peft RoutedModel: partial forward for the route + hooked experts)
* torch eager, base forward (what a single adapter merged into the weights costs in torch)
* ONNX Runtime, routed fp32 (the exported model: base + every expert + router)
* ONNX Runtime, single merged adapter fp32 (same graph builder, expert 0 merged, no router)
* ONNX Runtime, routed int8 (dynamic quantization of the routed model)

on one 64-token prompt (batch 1; median and min of ``--rounds``, order shuffled
every round: the min is the cost without interference), and greedy generation
speed (tokens/s) of ONNX Runtime (OnnxLM) and torch (RoutedModel.generate).

Usage::

    python bench/bench_onnx.py --experts runs/bench-experts --onnx-dir runs/bench-onnx --out bench/results/onnx

It also times one decode step (a token after the prompt's cache, the prompt's route given) of the
routed model with its router-free decode branch, of the same model as one graph (the router's
pre-pass in every call), and of the merged adapter. ``--random-experts topic,yesno`` writes a bundle
of random experts first where ``--experts`` has none (cost depends on shapes, not values).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", default="runs/bench-experts", help="expert bundle directory")
    p.add_argument("--onnx-dir", default="runs/bench-onnx", help="model.onnx here (exported if missing)")
    p.add_argument("--tokens", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/onnx", help="writes <out>.json")
    p.add_argument("--random-experts", default="",
                   help="comma-separated built-in tasks: when --experts is missing, write it there first with "
                        "one random expert per task on --model (codes from the tasks' prompts); what a "
                        "graph costs depends on the experts' shapes, not on their values")
    p.add_argument("--model", default="smollm2", help="the base of --random-experts")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.random_experts and not Path(args.experts).is_dir():
        _random_experts(Path(args.experts), args.model, args.random_experts.split(","))

    from edgedfl import OnnxLM
    from edgedfl.data.tasks import load_task
    from edgedfl.export.onnx import export_onnx, quantize_int8
    from edgedfl.routing.bundle import load_bundle

    t_start = time.monotonic()
    routed, tok, meta = load_bundle(args.experts)
    d = Path(args.onnx_dir)
    files = {"routed": d / "model.onnx", "merged": d / "merged.onnx", "int8": d / "model-int8.onnx",
             "one_graph": d / "one-graph.onnx"}
    export_s: dict[str, float] = {}
    for name, path in files.items():
        if path.is_file():
            continue
        t0 = time.monotonic()
        if name == "int8":
            quantize_int8(files["routed"], path)
        else:  # one_graph: the routed model without its router-free decode branch
            export_onnx(routed, tok, path, merge_slot=0 if name == "merged" else None,
                        extra_meta={"model": meta["model"]}, decode_branch=name != "one_graph")
        export_s[name] = time.monotonic() - t0
        print(f"exported {name} in {export_s[name]:.0f} s", flush=True)
    lms = {name: OnnxLM(path, threads=args.threads) for name, path in files.items()}

    # one prompt of exactly --tokens tokens (a topic prompt, cut from the left)
    text = " ".join(e.prompt for e in load_task("topic", "test", n=4))
    ids = tok(text, add_special_tokens=True)["input_ids"][-args.tokens:]
    t_ids = torch.tensor([ids])  # (1, T)
    t_mask = torch.ones_like(t_ids)  # (1, T)
    n_ids, n_mask = t_ids.numpy(), t_mask.numpy()

    def torch_routed() -> None:
        routed.logits(t_ids, t_mask)

    def torch_base() -> None:
        with torch.no_grad(), routed.peft_model.disable_adapter():
            routed.peft_model(input_ids=t_ids, attention_mask=t_mask)

    def ort(name: str) -> Callable[[], object]:
        return lambda: lms[name].forward(n_ids, n_mask)

    contenders = {"torch_routed": torch_routed, "torch_base": torch_base, "ort_routed": ort("routed"),
                  "ort_merged": ort("merged"), "ort_int8": ort("int8")}
    for fn in contenders.values():  # warm-up
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    order = list(contenders)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)  # no contender always runs right after a given other one
        for name in order:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = {k: min(v) * 1e3 for k, v in times.items()}
    for k in contenders:
        print(f"{k:<13} median {med[k]:8.1f} ms   min {best[k]:8.1f} ms", flush=True)

    # one decode step: a token after the prompt's cache, the prompt's route given
    steps: dict[str, dict[str, Any]] = {}
    for name in files:
        first = lms[name].forward(n_ids, n_mask)
        nxt = first["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]  # (1, 1)
        steps[name] = {"ids": nxt, "route": first["route_weights"], "cache": lms[name].next_cache(first)}

    def step(name: str) -> Callable[[], object]:
        st = steps[name]
        return lambda: lms[name].forward(st["ids"], np.ones_like(st["ids"]), st["route"], st["cache"])

    step_times: dict[str, list[float]] = {k: [] for k in files}
    for fn in files:
        for _ in range(3):
            step(fn)()
    order = list(files)
    for _ in range(args.rounds * 3):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            step(name)()
            step_times[name].append(time.perf_counter() - t0)
    step_med = {k: statistics.median(v) * 1e3 for k, v in step_times.items()}
    step_min = {k: min(v) * 1e3 for k, v in step_times.items()}
    for k in files:
        print(f"decode step {k:<10} median {step_med[k]:7.2f} ms   min {step_min[k]:7.2f} ms", flush=True)
    step_logit_diff = float(np.abs(step("routed")()["logits"] - step("one_graph")()["logits"]).max())

    # agreement on this prompt
    ref, route = routed.logits(t_ids, t_mask)
    out = lms["routed"].forward(n_ids, n_mask)
    max_diff = float(np.abs(out["logits"] - ref.numpy()).max())

    # generation speed (EOS ignored so every run makes --new-tokens tokens)
    gen: dict[str, dict[str, float]] = {}
    runs: dict[str, list[Any]] = {"routed": [], "int8": [], "merged": [], "one_graph": []}
    for lm in lms.values():
        lm.eos = None
    names = list(runs)
    for _ in range(5):  # interleaved, shuffled, best of 5
        rng.shuffle(names)
        for name in names:
            runs[name].append(lms[name].generate(text, max_new_tokens=args.new_tokens, max_length=args.tokens)[0])
    for name, made in runs.items():
        g = min(made, key=lambda g: g.prefill_s + g.decode_s)
        gen[f"ort_{name}"] = {"tokens": g.new_tokens, "prefill_ms": g.prefill_s * 1e3,
                              "decode_tokens_per_s": g.tokens_per_s,
                              "overall_tokens_per_s": g.new_tokens / (g.prefill_s + g.decode_s)}
    t_runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        new, _ = routed.generate(t_ids, t_mask, max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=len(tok) - 1)  # a token greedy never picks: no early stop
        t_runs.append((time.perf_counter() - t0, int(new.shape[1])))
    secs, n_new = min(t_runs)
    gen["torch_routed"] = {"tokens": n_new, "overall_tokens_per_s": n_new / secs}
    for k, v in gen.items():
        print(k, {a: round(b, 1) for a, b in v.items()}, flush=True)

    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "model": meta["model"], "experts": list(routed.names), "prompt_tokens": len(ids),
        "threads": args.threads, "rounds": args.rounds, "median_ms": med, "min_ms": best,
        "ratios_median": _ratios(med), "ratios_min": _ratios(best),
        "load_average_after": os.getloadavg(),
        "ort_vs_torch_max_abs_logit_diff": max_diff, "expert_chosen": {
            "torch": int(route.experts[0]), "ort": int(out["expert"][0])},
        "generation": gen,
        "decode_step_median_ms": step_med, "decode_step_min_ms": step_min,
        "decode_step_ratios": {
            "median routed / merged": step_med["routed"] / step_med["merged"],
            "min routed / merged": step_min["routed"] / step_min["merged"],
            "median one_graph / merged": step_med["one_graph"] / step_med["merged"],
            "min one_graph / merged": step_min["one_graph"] / step_min["merged"],
            "median routed / one_graph": step_med["routed"] / step_med["one_graph"],
        },
        "decode_step_routed_vs_one_graph_max_abs_logit_diff": step_logit_diff,
        "routing_layer": int(routed.config.layer), "decode_branch": bool(lms["routed"].meta.get("decode_branch")),
        "file_mb": {k: v.stat().st_size / 1e6 for k, v in files.items()},
        "export_seconds": export_s,
        "seconds": time.monotonic() - t_start,
    }
    out_path = Path(args.out).with_suffix(".json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"median": result["ratios_median"], "min": result["ratios_min"],
                      "decode step": result["decode_step_ratios"]}, indent=1))
    return 0


def _random_experts(out: Path, model: str, tasks: list[str]) -> None:
    """A bundle of one random expert per task on ``model`` (seeded B, the router's default layer), its
    codes from 48 training prompts of each task."""
    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.data.tasks import load_task
    from edgedfl.model.loading import load_model
    from edgedfl.routing.bundle import save_bundle
    from edgedfl.routing.calibrate import compute_code
    from edgedfl.routing.router import RoutedModel, RouterConfig

    base, tok = load_model(model)
    adapted = attach_adapter(base, AdapterConfig(num_slots=len(tasks)))
    router = RouterConfig()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in adapted.layers:
            for k in range(len(tasks)):
                b = adapted.B(k, name)
                b.copy_(0.01 * torch.randn(b.shape, generator=gen))
    adapted.apply_masks()
    codes = [compute_code(adapted, tok, [e.prompt for e in load_task(t, "train", n=48)], router, k)
             for k, t in enumerate(tasks)]
    save_bundle(out, RoutedModel(adapted, codes, router, tasks), model)
    print(f"wrote random experts {tasks} on {model} to {out}", flush=True)


def _ratios(ms: dict[str, float]) -> dict[str, float]:
    return {
        "ort_routed / torch_routed": ms["ort_routed"] / ms["torch_routed"],
        "ort_routed / torch_base": ms["ort_routed"] / ms["torch_base"],
        "ort_routed / ort_merged": ms["ort_routed"] / ms["ort_merged"],
        "ort_int8 / torch_routed": ms["ort_int8"] / ms["torch_routed"],
        "torch_routed / torch_base": ms["torch_routed"] / ms["torch_base"],
    }


if __name__ == "__main__":
    sys.exit(main())
