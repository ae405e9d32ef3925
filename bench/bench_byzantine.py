"""One Byzantine neighbour in a cluster: final accuracy and loss with the defaults vs a plain mean.

Six devices on one task form one cluster; every device averages with the
other five (degree 5), and ``dev05`` attacks every round: it sends its update
scaled by 100, sign-flipped, or replaced by Gaussian noise (it keeps training
honestly itself; only what it sends is corrupted: ``NodeConfig.attack``).
Each attack runs twice, side by side in this one process: with the defaults
(Metropolis mean, clipping on: ``auto_clip`` 1.5 since bench/results/byzantine-clip1.md; the rows of
byzantine.md and byzantine-eval33.md were measured with 3) and with the plain mean and no
clipping; and a clean run of each. The honest devices' final accuracy and loss
are what is compared (the attacker is left out).

    python bench/bench_byzantine.py --model smollm2 --tasks topic --rounds 3 --local-steps 6 \\
        --out bench/results/byzantine
    python bench/bench_byzantine.py --model tiny --rounds 3 --out bench/results/byzantine-tiny   # minutes

Partial results are written after every run (``<out>.json``/``.md``); a run
whose report is already in ``--work`` is reused, so an interrupted bench resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from edgedfl import Fleet, FleetConfig, SwarmConfig
from edgedfl.aggregation.config import AggregationConfig

ATTACKS = {"clean": "", "scaled x100": "scale:100", "sign-flipped": "flip", "noise": "noise:1.0"}
DEFENCES = {"defaults (clipping on)": AggregationConfig(),
            "plain mean, no clipping": AggregationConfig(robust="mean", clip_norm=None, auto_clip=0.0)}
ATTACKER = "dev05"


def _swarm(args: argparse.Namespace, name: str, aggregation: AggregationConfig, seed: int) -> SwarmConfig:
    base = SwarmConfig()
    # max_slots 4: as when the committed rows were measured (the default is now a slot per task)
    return SwarmConfig(name=name, model=args.model, rounds=args.rounds, local_steps=args.local_steps, degree=5,
                       max_slots=4,
                       n_train=args.n_train, n_eval=args.n_eval, round_deadline_s=args.deadline, seed=seed,
                       train=dataclasses.replace(base.train, lr=args.lr), aggregation=aggregation)


def _honest(run: Path) -> dict[str, Any]:
    acc, loss, hits = [], [], {}
    for d in sorted(run.glob("dev*")):
        if d.name == ATTACKER:
            continue
        rows = [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]
        last = max(rows, key=lambda r: r["round"])
        acc.append(float(last["accuracy"]))
        loss.append(float(last["loss"]))
        if last.get("hits"):
            hits[d.name] = last["hits"]
    return {"accuracy": statistics.fmean(acc), "loss": statistics.fmean(loss), "devices": len(acc), "hits": hits}


def _paired(a: dict[str, str], b: dict[str, str]) -> list[int]:
    """Per prompt, attacked minus clean (-1, 0, +1): each honest device answered the same prompts in both runs."""
    return [int(x) - int(y) for dev in sorted(set(a) & set(b)) for x, y in zip(a[dev], b[dev], strict=True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--tasks", default="arith", help="one task: the six devices form one cluster")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.0, help="0: the method's tuned default")
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--n-eval", type=int, default=24)
    p.add_argument("--deadline", type=float, default=300.0)
    p.add_argument("--seeds", default="0", help="comma-separated seeds; the paired rows pool them")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help="comma-separated attacks to run (clean is always run: it is the reference)")
    p.add_argument("--work", default="runs/byzantine-work")
    p.add_argument("--out", default="bench/results/byzantine")
    p.add_argument("--defences", default="all", help="'all', or 'defaults' for the defaults' rows alone")
    p.add_argument("--auto-clip", type=float, default=None,
                   help="the clipping factor of the defaults' rows (default: AggregationConfig's)")
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    seeds = [int(x) for x in args.seeds.split(",")]
    wanted = {"clean", *(a.strip() for a in args.attacks.split(","))}
    if unknown := wanted - set(ATTACKS):
        p.error(f"unknown attack(s) {sorted(unknown)}: choose from {list(ATTACKS)}")
    if args.auto_clip is not None:  # the defaults with another clipping factor, under its own name
        DEFENCES.pop("defaults (clipping on)")
        DEFENCES[f"auto_clip {args.auto_clip:g}"] = AggregationConfig(auto_clip=args.auto_clip)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    t_all = time.monotonic()
    for seed in seeds:
        for attack_name, attack in ATTACKS.items():
            if attack_name not in wanted:
                continue
            for defence_name, aggregation in DEFENCES.items():
                if args.defences == "defaults" and aggregation.robust == "mean" and not aggregation.auto_clip:
                    continue
                key = f"{attack_name} | {defence_name} | {seed}"
                run = work / f"s{seed}-{list(ATTACKS).index(attack_name)}-{list(DEFENCES).index(defence_name)}"
                if not (run / "report.json").is_file():
                    overrides = {ATTACKER: {"attack": attack}} if attack else {}
                    cfg = FleetConfig(devices=6, tasks=[args.tasks], node_overrides=overrides, timeout_s=7200,
                                      swarm=_swarm(args, f"byz-{run.name}", aggregation, seed))
                    from edgedfl.emulation.fleet import clear_run_dir

                    clear_run_dir(run)
                    report = Fleet(cfg, run).run()
                    (run / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
                rows[key] = {"attack": attack_name, "defence": defence_name, "seed": seed, **_honest(run)}
                _write(out, args, rows, time.monotonic() - t_all)
    _write(out, args, rows, time.monotonic() - t_all, complete=True)


def _write(out: Path, args: argparse.Namespace, rows: dict[str, dict[str, Any]], wall_s: float,
           complete: bool = False) -> None:
    clean = {(r["defence"], r["seed"]): r for r in rows.values() if r["attack"] == "clean"}
    command = (f"python bench/bench_byzantine.py --model {args.model} --tasks {args.tasks} --rounds {args.rounds} "
               f"--local-steps {args.local_steps} --n-train {args.n_train} --n-eval {args.n_eval} --out {args.out}"
               + (f" --defences {args.defences} --work {args.work}" if args.defences != "all" else "")
               + (f" --auto-clip {args.auto_clip:g}" if args.auto_clip is not None else "")
               + (f" --seeds {args.seeds}" if args.seeds != "0" else "")
               + (f" --attacks '{args.attacks}'" if args.attacks != ",".join(ATTACKS) else ""))
    about = ("Six devices, one task, one cluster, degree 5; `dev05` corrupts what it sends every round. Honest "
             "devices' final-round accuracy and loss (mean over the five). Points vs the clean run of the same "
             "aggregation and seed.")
    lines = ["# One Byzantine neighbour of five in a cluster", "", f"Command: `{command}`", "", about, "",
             "| attack | aggregation | seed | accuracy | vs clean (points) | loss | vs clean |",
             "|---|---|---|---|---|---|---|"]
    pooled: dict[tuple[str, str], list[int]] = {}
    for r in rows.values():
        ref = clean.get((r["defence"], r["seed"]))
        diff = f"{(r['accuracy'] - ref['accuracy']) * 100:+.1f}" if ref else "-"
        ldiff = f"{r['loss'] - ref['loss']:+.3f}" if ref else "-"
        lines.append(f"| {r['attack']} | {r['defence']} | {r['seed']} | {r['accuracy']:.3f} | {diff} | "
                     f"{r['loss']:.3f} | {ldiff} |")
        if ref and r["attack"] != "clean" and r.get("hits") and ref.get("hits"):
            pooled.setdefault((r["attack"], r["defence"]), []).extend(_paired(r["hits"], ref["hits"]))
    if pooled:
        lines += ["", ("Paired, prompt by prompt: every honest device answers the same test prompts in the attacked "
                  "and the clean run of a seed; per prompt the difference is -1, 0 or +1. Mean over all prompts of "
                  "all seeds, in points, with its standard error and a 95% interval (mean +- 1.96 SE)."), "",
                  "| attack | aggregation | seeds | prompts | changed | vs clean (points) | 95% interval |",
                  "|---|---|---|---|---|---|---|"]
        for (attack, defence), d in pooled.items():
            n = len(d)
            mean = statistics.fmean(d)
            se = statistics.stdev(d) / math.sqrt(n) if n > 1 else float("nan")
            n_seeds = len({r["seed"] for r in rows.values() if r["attack"] == attack and r["defence"] == defence})
            lines.append(f"| {attack} | {defence} | {n_seeds} | {n} | {sum(1 for x in d if x)} | "
                         f"{mean * 100:+.1f} ± {se * 100:.1f} | "
                         f"[{(mean - 1.96 * se) * 100:+.1f}, {(mean + 1.96 * se) * 100:+.1f}] |")
    if not complete:
        lines += ["", "**Partial results: the bench was still running when these were written.**"]
    lines += ["", f"Wall time so far: {wall_s / 60:.1f} min."]
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    out.with_name(out.name + ".json").write_text(json.dumps({"settings": vars(args), "rows": rows,
                                                             "complete": complete}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
