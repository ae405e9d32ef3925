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

Each signature is taken at every depth of ``--depths`` (the fraction of the
decoder's layers, SwarmConfig.signature_depth; 1 = the last layer). Then
:func:`edgedfl.topology.cluster` runs on every subset of 2..6 tasks with
1..``--devices`` devices per task under each rule: the fixed floor (0.01 on the
cosine distance) without spreads (a lone device then borrows the other groups'
within-cluster distance), the same floor with spreads (a lone device's
within-task distance is its spread), no floor at all, and floors of F x the
median spread of the group being split (the swarm's default is one of them). A
case is right when the clusters are exactly the tasks.

    python bench/bench_clustering.py --models smollm2,gemma3-270m --out bench/results/clustering
    python bench/bench_clustering.py --models smollm2,gemma3-270m --tasks yesno,parity,first,last,isodate,textdate \
        --out bench/results/clustering-long     # the long suite: pairs that share inputs or label words
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
READING = [
    "## Reading", "",
    ("Two suites decide the rule: the built-in one (`bench/results/clustering.md`: tasks whose prompts differ "
     "in kind) and the long one (`bench/results/clustering-long.md`: three pairs that share their inputs or their "
     "label words; `first` and `last` show the same word lists and differ in one title word). A rule must be "
     "right on both, on both models."), "",
    ("At the last layer (depth 1) no rule is. The fixed 0.01 floor with spreads was the default and right on the "
     "built-in suite, but it merges `first` with `last` (0.0036 apart on SmolLM2) and the two date tasks, because "
     "the last layer's states are shaped for the next token and the question barely moves their mean. Floors "
     "relative to the spreads fail the built-in suite there: `strtf`'s own devices lie up to 2.4x their spread "
     "apart, `topic`-`yesno` only 2.2x."), "",
    ("At depth 0.6 (SmolLM2 layer 18 of 30, Gemma 3 270M layer 11 of 18) same-task devices lie at most 2.84x "
     "their spread apart and two tasks at least 4.41x, on both suites and both models, so every factor from 3 "
     "to 4 gets every case right. Absolute distances are small there (pooled middle-layer states share a large "
     "common direction), so no fixed floor suits both models; the rule is relative to the spreads alone."), "",
    ("Decision: the swarm's signature pools the layer at 0.6 of the depth (`signature_depth`) and splits only "
     "groups more than 3.5x their median spread apart (`split_spread`), with no fixed floor (`min_split` 0). "
     "3.5 lies between the largest same-task ratio (2.84) and the smallest two-task ratio (4.41), 1.23x from "
     "each. A scan of every layer of both models (a scratch run, not committed) found the same separation "
     "from about half to three quarters of the depth."), "",
]


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
                max_length: int, dtype: str, depth: float) -> dict[str, Any]:
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
            sig, spread = signature_and_spread(adapted, tok, prompts, seed=seed, max_length=max_length,
                                               depth=depth)
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


def _rules(default: Any) -> dict[str, tuple[float, float, bool]]:
    """Rule name -> (fixed floor, spread factor, spreads announced)."""
    rules = {"floor 0.01, no spreads": (0.01, 0.0, False), "floor 0.01 + spreads": (0.01, 0.0, True),
             "no floor, spreads": (0.0, 0.0, True)}
    plain = default.min_split_distance == 0  # the default is one of the "F x spread" rules
    for f in FACTORS:
        if not (plain and f == default.spread_factor):
            rules[f"{f:g} x spread"] = (0.0, f, True)
    name = f"{default.spread_factor:g} x spread" if plain else "the swarm's rule"
    rules[name + " (default)"] = (default.min_split_distance, default.spread_factor, True)
    return rules


def _report(model: str, depth: float, sigs: dict[str, Any], names: list[str], rules: dict[str, Any],
            devices: int) -> tuple[dict[str, Any], list[str]]:
    dist = _distances(sigs)
    cases = _cases(sigs, len(names), devices)
    scores = {name: _score(sigs, cases, floor=fl, factor=fa, use_spreads=sp) for name, (fl, fa, sp) in rules.items()}
    closest = min(dist["between_min"].items(), key=lambda kv: kv[1])
    sm = dist["spread_median"]
    same_max = max(dist["ratio_same"].values())
    other_min = min(dist["ratio_other"].values())
    result = {
        "within_max": max(dist["within"]), "within_median": statistics.median(dist["within"]),
        "between_min": {f"{names[a]}-{names[b]}": v for (a, b), v in dist["between_min"].items()},
        "spread_median": sm, "spreads": sigs["spreads"], "scores": scores,
        "ratio_same_max": {names[t]: v for t, v in dist["ratio_same"].items()},
        "ratio_other_min": {f"{names[a]}-{names[b]}": v for (a, b), v in dist["ratio_other"].items()},
        "load_s": sigs["load_s"], "signature_s": sigs["signature_s"],
    }
    lines = [f"## {model}, signature depth {depth:g}", "",
             (f"- one task's devices: median {statistics.median(dist['within']):.5f}, "
              f"max {max(dist['within']):.5f} apart ({max(dist['within']) / sm:.1f}x the median spread)"),
             (f"- closest two tasks: {names[closest[0][0]]} and {names[closest[0][1]]}, {closest[1]:.5f} "
              f"({closest[1] / sm:.1f}x the median spread)"),
             f"- median spread (expected same-task distance, from one device's own prompts): {sm:.5f}",
             (f"- distance over the larger spread of the two devices: same task up to {same_max:.2f} "
              f"({names[max(dist['ratio_same'], key=dist['ratio_same'].get)]}), two tasks down to {other_min:.2f} "
              f"({'-'.join(names[t] for t in min(dist['ratio_other'], key=dist['ratio_other'].get))}): "
              + ("no factor of the spreads separates them" if same_max >= other_min
                 else "a factor between them separates them")),
             (f"- signatures: {sigs['signature_s']:.0f} s for {len(sigs['signatures'])} devices "
              f"(model load {sigs['load_s']:.0f} s)"), "",
             "| rule | right | cases | first wrong cases |", "|---|---|---|---|"]
    for name, sc in scores.items():
        lines.append(f"| {name} | {sc['right']} | {sc['cases']} | {', '.join(sc['wrong']) or '-'} |")
    per_task = {names[t]: statistics.median(v for n, v in sigs["spreads"].items() if sigs["task_of"][n] == t)
                for t in range(len(names))}
    lines += ["", "Median spread per task: " + ", ".join(f"{k} {v:.5f}" for k, v in per_task.items()), ""]
    return result, lines


def main() -> None:
    swarm = SwarmConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,gemma3-270m")
    p.add_argument("--devices", type=int, default=3, help="devices per task")
    p.add_argument("--n-signature", type=int, default=swarm.n_signature,
                   help="prompts per signature (SwarmConfig.n_signature)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per prompt (SwarmConfig train.max_length)")
    p.add_argument("--depths", default=f"{swarm.signature_depth:g},1",
                   help="comma-separated signature depths (SwarmConfig.signature_depth) compared side by side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/clustering-work")
    p.add_argument("--out", default="bench/results/clustering")
    p.add_argument("--tasks", default="", help="comma-separated built-in tasks instead of the default six "
                   "(topic, yesno, arith, strtf and two generated JSONL tasks)")
    p.add_argument("--dtype", default="float32", help="the base's compute dtype (DeviceConfig.dtype)")
    p.add_argument("--rescore", action="store_true",
                   help="score the rules again on the signatures and spreads a previous run saved (no model)")
    args = p.parse_args()
    chosen = [t for t in args.tasks.split(",") if t]
    tasks = chosen or BUILT_IN + _generated(Path(args.work))
    names = chosen or BUILT_IN + ["caps", "vowels"]
    depths = [float(d) for d in args.depths.split(",") if d]
    default = swarm.cluster_config()
    rules = _rules(default)
    results: dict[str, Any] = {"settings": vars(args), "tasks": names, "models": {}}
    lines = ["# Task signatures on real models, and the split rule", "",
             (f"Command: `python bench/bench_clustering.py --models {args.models} --devices {args.devices} "
              f"--n-signature {args.n_signature} --depths {args.depths}{' --tasks ' + args.tasks if chosen else ''}"
              f"{' --dtype ' + args.dtype if args.dtype != 'float32' else ''} --out {args.out}`"
              + (" (these rules scored again with `--rescore` on the signatures and spreads it saved)"
                 if args.rescore else "")), "",
             (f"Tasks: {', '.join(names)}{'' if chosen else ' (the last two generated as JSONL files)'}; "
              f"{args.devices} devices per task, {args.n_signature} prompts per signature, each the mean-pooled "
              f"hidden state of the decoder layer at the given fraction of the model's depth (1: the last layer, "
              f"after the final norm). Distances are cosine distances between signatures. A case is 1..{args.devices} "
              f"devices per task for a subset of 2..{len(names)} tasks; it is right when the clusters are exactly "
              f"the tasks. The swarm's default: depth {swarm.signature_depth:g}, min_split "
              f"{default.min_split_distance:g}, split_spread {default.spread_factor:g}."), ""]
    out = Path(args.out)
    saved = json.loads(out.with_name(out.name + ".json").read_text()) if args.rescore else None
    for model in args.models.split(","):
        for depth in depths:
            key = f"{model}-d{depth:g}"
            if saved is not None:  # the previous run's signatures and spreads, scored under today's rules
                z = np.load(out.with_name(out.name + f"-{key}.npz"))
                spreads = saved["models"][key]["spreads"]
                sigs = {"signatures": {n: z[n] for n in z.files}, "spreads": spreads,
                        "task_of": {n: int(n[1:].split("d")[0]) for n in z.files},
                        "load_s": saved["models"][key]["load_s"], "signature_s": saved["models"][key]["signature_s"]}
            else:
                sigs = _signatures(model, tasks, args.devices, args.n_signature, args.seed, args.max_length,
                                   args.dtype, depth)
            results["models"][key], more = _report(model, depth, sigs, names, rules, args.devices)
            lines += more
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out.with_name(out.name + f"-{key}.npz"),
                     **{n: np.asarray(v) for n, v in sigs["signatures"].items()})
    out.with_name(out.name + ".md").write_text("\n".join(lines + READING) + "\n")
    out.with_name(out.name + ".json").write_text(json.dumps(results, indent=2, sort_keys=True, default=float))


if __name__ == "__main__":
    main()
