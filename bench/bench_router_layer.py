"""Which layer should the implicit router read? Routing accuracy per layer, on real models, two suites.

The router's choice depends on the frozen base and each expert's A only (its
latent code is the statistics of its calibration prompts projected through its
own A; B plays no part), so no training is needed: every task gets a slot of
a solora adapter, its code from ``--n-calibration`` training prompts (a
cluster of two devices pools 2 x SwarmConfig.n_calibration = 32), and
``--n-test`` held-out test prompts per task are routed among all the slots,
exactly as :class:`~edgedfl.routing.router.RoutedModel` routes them.

    python bench/bench_router_layer.py --out bench/results/router-layer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

SUITES = {"built-in": ["topic", "yesno", "arith", "strtf"],
          "long": ["yesno", "parity", "first", "last", "isodate", "textdate"]}


def _accuracy(model: str, tasks: list[str], depths: list[float], n_cal: int, n_test: int,
              max_length: int) -> dict[str, Any]:
    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.data.sources import load_examples
    from edgedfl.model.loading import load_model, num_layers
    from edgedfl.routing.calibrate import routing_features
    from edgedfl.routing.codes import LatentCode, distances, stack_codes
    from edgedfl.routing.config import RouterConfig

    base, tok = load_model(model, seed=0)
    adapted = attach_adapter(base, AdapterConfig(num_slots=len(tasks), seed=0))
    total = num_layers(base)
    cal = [[e.prompt for e in load_examples(t, "train", n=n_cal, seed=0)] for t in tasks]
    test = [(k, e.prompt) for k, t in enumerate(tasks) for e in load_examples(t, "test", n=n_test, seed=0)]
    truth = np.array([k for k, _ in test])
    out: dict[str, Any] = {"layers": total, "rows": []}
    for depth in depths:
        layer = min(total - 1, round(depth * total))
        cfg = RouterConfig(layer=layer)
        t0 = time.monotonic()
        codes = [LatentCode.from_features(routing_features(adapted, tok, cal[k], cfg, k, max_length=max_length))
                 for k in range(len(tasks))]
        means, factors = stack_codes(codes, cfg.ridge)
        z = routing_features(adapted, tok, [p for _, p in test], cfg, None, max_length=max_length)  # (N, K, D)
        pick = distances(z, means, factors).argmin(axis=1)  # (N,)
        out["rows"].append({"depth": depth, "layer": layer, "accuracy": float((pick == truth).mean()),
                            "per_task": {t: float((pick[truth == k] == k).mean()) for k, t in enumerate(tasks)},
                            "seconds": time.monotonic() - t0})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,gemma3-270m")
    p.add_argument("--depths", default="0,0.15,0.3,0.4,0.6", help="router layers as fractions of the depth")
    p.add_argument("--n-calibration", type=int, default=32, help="prompts per latent code")
    p.add_argument("--n-test", type=int, default=64, help="held-out prompts per task")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", default="bench/results/router-layer")
    args = p.parse_args()
    depths = [float(d) for d in args.depths.split(",")]
    results: dict[str, Any] = {"settings": vars(args), "models": {}}
    lines = ["# Which layer the implicit router reads", "",
             (f"Command: `python bench/bench_router_layer.py --models {args.models} --depths {args.depths} "
              f"--n-calibration {args.n_calibration} --n-test {args.n_test} --out {args.out}`"), "",
             (f"Untrained experts (routing depends on the base and each slot's A only), one slot per task, codes from "
              f"{args.n_calibration} training prompts per task, {args.n_test} held-out test prompts per task routed "
              "among all slots (top-1, mean pooling, q/k/v, ridge 1.0). Accuracy = the prompt's own task's slot "
              "chosen."), ""]
    for model in args.models.split(","):
        results["models"][model] = {}
        for suite, tasks in SUITES.items():
            r = _accuracy(model, tasks, depths, args.n_calibration, args.n_test, args.max_length)
            results["models"][model][suite] = r
            lines += [f"## {model}, {suite} suite ({r['layers']} layers)", "",
                      "| depth | layer | routed right | " + " | ".join(tasks) + " |",
                      "|---|---|---|" + "---|" * len(tasks)]
            for row in r["rows"]:
                lines.append(f"| {row['depth']:g} | {row['layer']} | {row['accuracy']:.3f} | "
                             + " | ".join(f"{row['per_task'][t]:.2f}" for t in tasks) + " |")
            lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    out.with_name(out.name + ".json").write_text(json.dumps(results, indent=2, sort_keys=True))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
