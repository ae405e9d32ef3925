"""``edgedfl bench paper``: the paper's claims and the baselines on one emulated swarm."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgedfl.bench.paper import PaperSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=["paper"], help="the benchmark to run")
    p.add_argument("--quick", action="store_true", help="tiny model, 4 devices, 2 tasks, 2 rounds (minutes)")
    p.add_argument("--suite", choices=["short", "long"], default="short",
                   help="short: 4 tasks that never collide, a few rounds; long: 6 tasks that collide in pairs, "
                        "12 devices, 300 steps each, 3 seeds for the headline rows (hours; resumable, results "
                        "kept in --results, default bench/results/paper-long)")
    p.add_argument("--results", default=None,
                   help="keep every finished variant and tuning score here and take those already there "
                        "(commit the folder: a run on another machine continues from it)")
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma-separated built-in tasks")
    p.add_argument("--model", default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--local-steps", type=int, default=None)
    p.add_argument("--n-eval", type=int, default=None)
    p.add_argument("--lrs", default=None,
                   help="comma-separated learning rates: every method is tuned over them the same way "
                        "(held-out training examples); one rate = no tuning; 'default' = each method's "
                        "tuned default rate (its default_lr)")
    p.add_argument("--tuning", default=None,
                   help="reuse the tuning.json of an earlier run with the same settings (skips the tuning)")
    p.add_argument("--n-tune", type=int, default=None, help="held-out training examples per task that score a rate")
    p.add_argument("--variants", default=None, help="comma-separated subset of the training variants")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--extra-seeds", default=None, metavar="K[,K...]",
                   help="more seeds for the headline rows (standard LoRA and edgedfl), each a whole run of both; "
                        "'none' for none (default: the preset's, 1,2 for --suite long). Rows already kept in "
                        "--results are not run again, so adding a seed runs only that seed")
    p.add_argument("--round-deadline-s", type=float, default=None,
                   help="a round closes at this deadline if the quorum reported (raise it for many devices on few cores)")
    p.add_argument("--out", default=None, help="where paper.md / .json / .png go (default bench/results, "
                   "with --suite long the results folder)")
    p.add_argument("--work", default=None, help="where the runs go (default runs/bench-paper[-long])")


def settings(args: argparse.Namespace) -> PaperSettings:
    """The benchmark's settings: the preset (``--quick``, ``--suite``) with the options given over it."""
    import dataclasses

    from edgedfl.bench.paper import PaperSettings
    from edgedfl.errors import ConfigError

    if args.quick:
        s = PaperSettings.quick()
    elif args.suite == "long":
        s = PaperSettings.long()
    else:
        s = PaperSettings()
    over: dict[str, object] = {}
    for key in ("devices", "model", "rounds", "local_steps", "n_eval", "n_tune", "seed", "round_deadline_s"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.tasks:
        over["tasks"] = tuple(t for t in args.tasks.split(",") if t)
    if args.lrs == "default":
        over["lrs"] = ()
    elif args.lrs:
        over["lrs"] = tuple(float(x) for x in args.lrs.split(","))
    if args.variants:
        over["variants"] = tuple(v for v in args.variants.split(",") if v)
    if args.extra_seeds is not None:
        raw = [k.strip() for k in args.extra_seeds.split(",") if k.strip() and k.strip() != "none"]
        try:
            over["extra_seeds"] = tuple(dict.fromkeys(int(k) for k in raw))
        except ValueError:
            raise ConfigError(f"--extra-seeds: expected seeds as integers, comma-separated, or 'none'; "
                              f"got {args.extra_seeds!r}") from None
    return dataclasses.replace(s, **over)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    from edgedfl.bench.paper import run_paper, write_results

    s = settings(args)
    results = args.results or ("bench/results/paper-long" if args.suite == "long" and not args.quick else None)
    out = args.out or results or "bench/results"
    work = args.work or ("runs/bench-paper-long" if args.suite == "long" else "runs/bench-paper")
    command = "edgedfl " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "edgedfl bench paper"
    summary = run_paper(s, work, tuning_file=args.tuning, results_dir=results,
                        on_variant=lambda partial: write_results(partial, out, command))
    paths = write_results(summary, out, command)
    print(paths[0].read_text())
    return 0
