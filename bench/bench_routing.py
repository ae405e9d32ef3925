"""Implicit-MoE routing on the real model: routing accuracy and task accuracy per routing mode.

Loads an expert bundle (default ``runs/bench-experts``, written by
``edgedfl export onnx --from-tasks ... --save-experts``: until the swarm
exists the experts are trained locally, one slot per built-in task), takes
held-out test prompts of every task, interleaves them into mixed batches and
measures, side by side in one run:

* routing accuracy of the implicit router (the expert chosen == the prompt's task's slot);
* exact-match task accuracy with implicit routing, oracle routing, merge-all and the frozen base;
* the router's cost: the partial forward (frozen base up to the routing layer) against a full forward;
* an ablation of the routing layer and ridge (codes recomputed from the same calibration prompts).

Usage::

    python bench/bench_routing.py --experts runs/bench-experts --n-test 50 --out bench/results/routing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", default="runs/bench-experts", help="expert bundle directory")
    p.add_argument("--n-test", type=int, default=50, help="held-out prompts per task")
    p.add_argument("--n-calibration", type=int, default=64, help="prompts per code in the ablation")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--out", default="bench/results/routing", help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from edgedfl.data.tasks import load_task
    from edgedfl.routing.bundle import load_bundle
    from edgedfl.routing.calibrate import compute_code
    from edgedfl.routing.config import RouterConfig
    from edgedfl.routing.router import RoutedModel
    from edgedfl.train.batching import collate_prompts
    from edgedfl.train.evaluate import normalise_answer

    t_start = time.monotonic()
    routed, tok, meta = load_bundle(args.experts)
    tasks = list(routed.names)
    per = {t: load_task(t, "test", n=args.n_test) for t in tasks}
    examples = [per[t][i] for i in range(args.n_test) for t in tasks]  # interleaved: mixed batches
    truth = [tasks.index(e.task) for e in examples]
    batches = [examples[i : i + args.batch_size] for i in range(0, len(examples), args.batch_size)]
    enc = [collate_prompts(tok, [e.prompt for e in b], 256) for b in batches]

    def routing_accuracy(model: RoutedModel) -> tuple[float, dict[str, float], float]:
        chosen, secs = [], 0.0
        for b in enc:
            t0 = time.perf_counter()
            chosen += model.route(b["input_ids"], b["attention_mask"]).experts.tolist()
            secs += time.perf_counter() - t0
        hits = [int(c == y) for c, y in zip(chosen, truth)]
        per_task = {t: sum(h for h, y in zip(hits, truth) if y == k) / args.n_test for k, t in enumerate(tasks)}
        return sum(hits) / len(hits), per_task, secs

    acc, acc_per_task, route_s = routing_accuracy(routed)
    print(f"routing accuracy {acc:.3f} {acc_per_task}", flush=True)

    # cost of the router: partial forward vs a full forward of the same batches
    full_s = 0.0
    with torch.no_grad(), routed.peft_model.disable_adapter():
        for b in enc:
            t0 = time.perf_counter()
            routed.peft_model(**b)
            full_s += time.perf_counter() - t0

    modes: dict[str, dict[str, object]] = {}
    for mode in ("implicit", "oracle", "merge", "none"):
        t0 = time.monotonic()
        hits: dict[str, list[int]] = {t: [] for t in tasks}
        for b, e in zip(enc, batches):
            slots = [tasks.index(x.task) for x in e] if mode == "oracle" else None
            new, _ = routed.generate(b["input_ids"], b["attention_mask"], mode, slots,
                                     max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id)
            for x, text in zip(e, tok.batch_decode(new, skip_special_tokens=True)):
                hits[x.task].append(int(normalise_answer(text) == normalise_answer(x.completion)))
        per_task = {t: sum(v) / len(v) for t, v in hits.items()}
        modes[mode] = {"avg": sum(per_task.values()) / len(per_task), "per_task": per_task,
                       "seconds": time.monotonic() - t0}
        print(f"{mode:<9} avg {modes[mode]['avg']:.3f} {per_task}", flush=True)

    ablation = []
    if not args.no_ablation:
        calib = {t: [e.prompt for e in load_task(t, "train", n=args.n_calibration)] for t in tasks}
        for layer in (0, 2, 6):
            for ridge in (0.01, 0.1, 1.0):
                cfg = RouterConfig(layer=layer, ridge=ridge)
                codes = [compute_code(routed.adapted, tok, calib[t], cfg, k, max_length=128)
                         for k, t in enumerate(tasks)]
                a, _, s = routing_accuracy(RoutedModel(routed.adapted, codes, cfg, tasks))
                ablation.append({"layer": layer, "ridge": ridge, "accuracy": a, "route_s": s})
                print(f"ablation layer {layer} ridge {ridge}: {a:.3f} ({s:.2f} s)", flush=True)

    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "model": meta["model"], "experts": tasks, "bundle": str(args.experts),
        "adapter": meta["adapter"], "router": routed.config.to_dict(),
        "n_test_per_task": args.n_test, "threads": args.threads,
        "routing_accuracy": acc, "routing_accuracy_per_task": acc_per_task,
        "router_seconds": route_s, "full_forward_seconds": full_s,
        "modes": modes, "ablation": ablation,
        "seconds": time.monotonic() - t_start,
        "cpu": os.cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("routing_accuracy", "router_seconds", "full_forward_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
