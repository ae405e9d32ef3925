"""Task signatures on real models: how far apart one task's devices are, how far apart tasks are,
and which split floor tells them apart on every model.

For each model, every task is held by ``--devices`` devices; each device
computes its signature exactly as a node does (its training shard's first
``n_signature`` prompts, the frozen base's last hidden state mean-pooled, the
swarm's seeded projection) and its *spread*: the distance two devices of its
task are expected to be apart, measured from its own prompts alone
(:func:`edgedfl.topology.signatures.signature_spread`). Tasks: the four built-in
ones and two generated here as a user's JSONL files (``caps``: a word in capital
letters; ``vowels``: how many vowels a word has).

Then :func:`edgedfl.topology.cluster` runs on every subset of 2..6 tasks with
1..``--devices`` devices per task under each rule: the fixed floor (0.01 on the
cosine distance) without spreads (a lone device then borrows the other groups'
within-cluster distance), the same floor with spreads (a lone device's
within-task distance is its spread: the swarm's default), no floor at all, and
floors of F x the median spread of the group being split. A case is right when
the clusters are exactly the tasks.

    python bench/bench_clustering.py --models smollm2,gemma3-270m --out bench/results/clustering
    python bench/bench_clustering.py --rescore --out bench/results/clustering   # the rules again, saved signatures
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.data.sources import load_examples
from edgedfl.node.config import SwarmConfig
from edgedfl.topology import ClusterConfig, cluster
from edgedfl.topology.signatures import signature_distance

BUILT_IN = ["topic", "yesno", "arith", "strtf"]
FACTORS = [2.0, 3.0, 4.0]


def _generated(work: Path) -> list[str]:
    """Two user tasks as JSONL files (deterministic): the kind of file a user brings."""
    rng = random.Random("bench-clustering")
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9))) for _ in range(400)]
    work.mkdir(parents=True, exist_ok=True)
    caps, vowels = work / "caps.jsonl", work / "vowels.jsonl"
    caps.write_text("".join(json.dumps({"task": "caps", "prompt": f"Rewrite in capital letters: {w}\nAnswer:",
                                        "completion": w.upper()}) + "\n" for w in words))
    vowels.write_text("".join(json.dumps({"task": "vowels", "prompt": f"How many vowels does the word '{w}' have?\nAnswer:",
                                          "completion": str(sum(c in "aeiou" for c in w))}) + "\n" for w in words))
    return [str(caps), str(vowels)]


def _signatures(model: str, tasks: list[str], devices: int, n_sig: int, seed: int,
                max_length: int, dtype: str = "float32") -> dict[str, Any]:
    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.model.loading import load_model
    from edgedfl.node.signature import signature_and_spread

    t0 = time.monotonic()
    base, tok = load_model(model, seed=seed, dtype=dtype)
    adapted = attach_adapter(base, AdapterConfig(seed=seed))
    load_s = time.monotonic() - t0
    out: dict[str, Any] = {"signatures": {}, "spreads": {}, "task_of": {}}
    t0 = time.monotonic()
    for t_i, task in enumerate(tasks):
        pool = load_examples(task, "train", n=n_sig * devices, seed=seed) if not task.endswith(".jsonl") else \
            load_examples(task, "train", seed=seed)
        for d in range(devices):
            prompts = [e.prompt for e in pool[d::devices][:n_sig]]  # the node's shard, its first n_signature
            sig, spread = signature_and_spread(adapted, tok, prompts, seed=seed, max_length=max_length)
            node = f"t{t_i}d{d}"
            out["signatures"][node], out["spreads"][node], out["task_of"][node] = sig, spread, t_i
    out["load_s"], out["signature_s"] = load_s, time.monotonic() - t0
    return out


def _distances(sigs: dict[str, Any]) -> dict[str, Any]:
    nodes, task_of = sorted(sigs["signatures"]), sigs["task_of"]
    within, between, ratio_same, ratio_other = [], {}, {}, {}
    for a, b in itertools.combinations(nodes, 2):
        d = signature_distance(sigs["signatures"][a], sigs["signatures"][b])
        # the distance in units of the larger of the two devices' spreads: a rule of the form
        # "split when d > F x spread" needs F above every same-task ratio and below every other-task one
        r = d / max(sigs["spreads"][a], sigs["spreads"][b], 1e-12)
        if task_of[a] == task_of[b]:
            within.append(d)
            ratio_same[task_of[a]] = max(ratio_same.get(task_of[a], 0.0), r)
        else:
            key = tuple(sorted((task_of[a], task_of[b])))
            between[key] = min(between.get(key, 9.0), d)
            ratio_other[key] = min(ratio_other.get(key, 9e9), r)
    return {"within": within, "between_min": between, "ratio_same": ratio_same, "ratio_other": ratio_other,
            "spread_median": statistics.median(sigs["spreads"].values())}


def _cases(sigs: dict[str, Any], n_tasks: int, devices: int) -> list[dict[str, Any]]:
    """Every subset of tasks x devices-per-task: (node -> signature, node -> spread, truth)."""
    cases = []
    for k in range(2, n_tasks + 1):
        for subset in itertools.combinations(range(n_tasks), k):
            for per in range(1, devices + 1):
                nodes = [f"t{t}d{d}" for t in subset for d in range(per)]
                truth = sorted(tuple(f"t{t}d{d}" for d in range(per)) for t in subset)
                cases.append({"nodes": nodes, "truth": truth, "k": k, "per": per})
    return cases


def _score(sigs: dict[str, Any], cases: list[dict[str, Any]], *, floor: float, factor: float,
           use_spreads: bool) -> dict[str, Any]:
    right, wrong = 0, []
    for case in cases:
        s = {n: sigs["signatures"][n] for n in case["nodes"]}
        spreads = {n: sigs["spreads"][n] for n in case["nodes"]} if use_spreads else None
        cfg = ClusterConfig(max_clusters=8, min_split_distance=floor, spread_factor=factor)
        got = sorted(members for _, members in cluster(s, cfg, spreads=spreads).groups)
        if got == case["truth"]:
            right += 1
        else:
            wrong.append(f"k={case['k']} per={case['per']}")
    return {"right": right, "cases": len(cases), "wrong": wrong[:6]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,gemma3-270m")
    p.add_argument("--devices", type=int, default=3, help="devices per task")
    p.add_argument("--n-signature", type=int, default=16, help="prompts per signature (SwarmConfig.n_signature)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per prompt (SwarmConfig train.max_length)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/clustering-work")
    p.add_argument("--out", default="bench/results/clustering")
    p.add_argument("--tasks", default="", help="comma-separated built-in tasks instead of the default six "
                   "(topic, yesno, arith, strtf and two generated JSONL tasks); the tables only, no reading")
    p.add_argument("--dtype", default="float32", help="the base's compute dtype (DeviceConfig.dtype)")
    p.add_argument("--rescore", action="store_true",
                   help="score the rules again on the signatures and spreads a previous run saved (no model)")
    args = p.parse_args()
    chosen = [t for t in args.tasks.split(",") if t]
    tasks = chosen or BUILT_IN + _generated(Path(args.work))
    names = chosen or BUILT_IN + ["caps", "vowels"]
    results: dict[str, Any] = {"settings": vars(args), "tasks": names, "models": {}}
    lines = ["# Task signatures on real models, and the split floor", "",
             (f"Command: `python bench/bench_clustering.py --models {args.models} --devices {args.devices} "
             f"--n-signature {args.n_signature}{' --tasks ' + args.tasks if chosen else ''}"
             f"{' --dtype ' + args.dtype if args.dtype != 'float32' else ''} --out {args.out}`"
             + (" (these rules scored again with `--rescore` on the signatures and spreads it saved)"
                if args.rescore else "")), "",
             (f"Tasks: {', '.join(names)}{'' if chosen else ' (the last two generated as JSONL files)'}; "
             f"{args.devices} devices per task, "
             f"{args.n_signature} prompts per signature. Distances are cosine distances between signatures."), ""]
    out = Path(args.out)
    saved = json.loads(out.with_name(out.name + ".json").read_text()) if args.rescore else None
    for model in args.models.split(","):
        if saved is not None:  # the previous run's signatures and spreads, scored under today's rules
            z = np.load(out.with_name(out.name + f"-{model}.npz"))
            spreads = saved["models"][model]["spreads"]
            sigs = {"signatures": {n: z[n] for n in z.files}, "spreads": spreads,
                    "task_of": {n: int(n[1:].split("d")[0]) for n in z.files},
                    "load_s": saved["models"][model]["load_s"], "signature_s": saved["models"][model]["signature_s"]}
        else:
            sigs = _signatures(model, tasks, args.devices, args.n_signature, args.seed, args.max_length, args.dtype)
        dist = _distances(sigs)
        cases = _cases(sigs, len(tasks), args.devices)
        default = SwarmConfig().cluster_config()
        scores = {
            "floor 0.01, no spreads": _score(sigs, cases, floor=0.01, factor=0.0, use_spreads=False),
            f"floor {default.min_split_distance:g} + spreads (default)": _score(
                sigs, cases, floor=default.min_split_distance, factor=default.spread_factor, use_spreads=True),
            "no floor, spreads": _score(sigs, cases, floor=0.0, factor=0.0, use_spreads=True),
        }
        for f in FACTORS:
            scores[f"floor {f:g} x spread"] = _score(sigs, cases, floor=0.0, factor=f, use_spreads=True)
        closest = min(dist["between_min"].items(), key=lambda kv: kv[1])
        results["models"][model] = {
            "within_max": max(dist["within"]), "within_median": statistics.median(dist["within"]),
            "between_min": {f"{names[a]}-{names[b]}": v for (a, b), v in dist["between_min"].items()},
            "spread_median": dist["spread_median"], "spreads": sigs["spreads"], "scores": scores,
            "ratio_same_max": {names[t]: v for t, v in dist["ratio_same"].items()},
            "ratio_other_min": {f"{names[a]}-{names[b]}": v for (a, b), v in dist["ratio_other"].items()},
            "load_s": sigs["load_s"], "signature_s": sigs["signature_s"],
        }
        sm = dist["spread_median"]
        lines += [f"## {model}", "",
                  (f"- one task's devices: median {statistics.median(dist['within']):.4f}, "
                  f"max {max(dist['within']):.4f} apart ({max(dist['within']) / sm:.1f}x the median spread)"),
                  (f"- closest two tasks: {names[closest[0][0]]} and {names[closest[0][1]]}, {closest[1]:.4f} "
                  f"({closest[1] / sm:.1f}x the median spread)"),
                  f"- median spread (expected same-task distance, from one device's own prompts): {sm:.4f}",
                  (f"- distance over the larger spread of the two devices: same task up to "
                   f"{max(dist['ratio_same'].values()):.1f} ({names[max(dist['ratio_same'], key=dist['ratio_same'].get)]}), "
                   f"two tasks down to {min(dist['ratio_other'].values()):.1f} "
                   f"({'-'.join(names[t] for t in min(dist['ratio_other'], key=dist['ratio_other'].get))}): "
                   + ("no factor of the spreads separates them" if max(dist['ratio_same'].values())
                      >= min(dist['ratio_other'].values()) else "a factor between them separates them")),
                  (f"- signatures: {sigs['signature_s']:.0f} s for {len(sigs['signatures'])} devices "
                  f"(model load {sigs['load_s']:.0f} s)"), "",
                  "| floor | right | cases | first wrong cases |", "|---|---|---|---|"]
        for name, sc in scores.items():
            lines.append(f"| {name} | {sc['right']} | {sc['cases']} | {', '.join(sc['wrong']) or '-'} |")
        per_task = {names[t]: statistics.median(v for n, v in sigs["spreads"].items() if sigs["task_of"][n] == t)
                    for t in range(len(tasks))}
        lines += ["", "Median spread per task: " + ", ".join(f"{k} {v:.4f}" for k, v in per_task.items()), ""]
        out.parent.mkdir(parents=True, exist_ok=True)
        reading = [
            "## Reading", "",
            ("A case is 1..3 devices per task for a subset of 2..6 tasks. Without spreads, a device alone with its "
            "task has no within-task distance and borrows the others' (or, all alone, none): three devices with "
            "three tasks end in one cluster, the commonest error of the old rule on both models. A device's spread "
            "(its expected same-task distance, measured on its own prompts and sent in its hello) gives it one, and "
            "with the 0.01 floor every case is right on both models. A floor relative to the spreads does not "
            "hold: per-task spreads differ about tenfold on one model (see the lines above), so a factor that keeps "
            "one task's devices together merges two close tasks each held by one device, or the reverse. Not "
            "even a floor per pair of groups, scaled by their own spreads, can: the distance between two devices "
            "of one task reaches a larger multiple of their spread (strtf's devices differ by more than "
            "prompt-sampling noise) than the two BBC tasks do of theirs (line 'distance over the larger spread' "
            "above). More prompts per signature would widen that margin (a task gap stays, the spread shrinks as "
            "1/n), at the price of a slower join."), "",
            ("Decision: the swarm keeps the spreads (a lone device's within-task distance) and the 0.01 floor, "
            "both in SwarmConfig (`min_split`, `split_spread`). The floor is a guard, not the separator: one task's "
            "devices lie up to 0.010 (SmolLM2) and 0.017 (Gemma) apart, above it, and stay together through the "
            "silhouette with spreads; the floor stops a split of groups that only prompt-sampling noise of a "
            "small-spread task keeps apart, and the closest two tasks lie 2x (SmolLM2) and 3.5x (Gemma) above it. "
            "Every case is right on both models."), "",
        ]
        out.with_name(out.name + ".md").write_text("\n".join(lines + ([] if chosen else reading)) + "\n")
        out.with_name(out.name + ".json").write_text(json.dumps(results, indent=2, sort_keys=True, default=float))
        np.savez(out.with_name(out.name + f"-{model}.npz"),
                 **{n: np.asarray(v) for n, v in sigs["signatures"].items()})


if __name__ == "__main__":
    main()
