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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from edgedfl import OnnxLM
    from edgedfl.data.tasks import load_task
    from edgedfl.export.onnx import export_onnx, quantize_int8
    from edgedfl.routing.bundle import load_bundle

    t_start = time.monotonic()
    routed, tok, meta = load_bundle(args.experts)
    d = Path(args.onnx_dir)
    files = {"routed": d / "model.onnx", "merged": d / "merged.onnx", "int8": d / "model-int8.onnx"}
    export_s: dict[str, float] = {}
    for name, path in files.items():
        if path.is_file():
            continue
        t0 = time.monotonic()
        if name == "int8":
            quantize_int8(files["routed"], path)
        else:
            export_onnx(routed, tok, path, merge_slot=0 if name == "merged" else None,
                        extra_meta={"model": meta["model"]})
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

    # agreement on this prompt
    ref, route = routed.logits(t_ids, t_mask)
    out = lms["routed"].forward(n_ids, n_mask)
    max_diff = float(np.abs(out["logits"] - ref.numpy()).max())

    # generation speed (EOS ignored so every run makes --new-tokens tokens)
    gen: dict[str, dict[str, float]] = {}
    runs: dict[str, list[Any]] = {"routed": [], "int8": [], "merged": []}
    for lm in lms.values():
        lm.eos = None
    names = list(runs)
    for _ in range(5):  # interleaved, shuffled, best of 5
        rng.shuffle(names)
        for name in names:
            runs[name].append(lms[name].generate(text, max_new_tokens=args.new_tokens, max_length=args.tokens)[0])
    for name in ("routed", "int8", "merged"):
        g = min(runs[name], key=lambda g: g.prefill_s + g.decode_s)
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
        "file_mb": {k: v.stat().st_size / 1e6 for k, v in files.items()},
        "export_seconds": export_s,
        "seconds": time.monotonic() - t_start,
    }
    out_path = Path(args.out).with_suffix(".json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"median": result["ratios_median"], "min": result["ratios_min"]}, indent=1))
    return 0


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
