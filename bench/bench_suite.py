"""Design measurements of the long-horizon task suite: each task's ceiling, and the multi-task vs per-task gap.

For every candidate task, one adapter trains on that task alone for ``--steps``
optimizer steps (``--batch`` examples a step, the per-device budget of the long
benchmark) and answers ``--n-eval`` examples of the task's test split by greedy
exact match: the single-task ceiling (the *oracle*: the expert of the prompt's
own task). Beside it stands the majority answer's rate on the same test
examples (what a constant answer scores): a task whose ceiling stays near it is
not learnable in the budget and leaves the suite.

Then one adapter trains on the mixture of the suite's tasks (``--suite``) for
``--steps`` x (number of tasks) steps, so that every task contributes as many
examples as its own adapter saw: the *multi-task* adapter, what averaging
every device's update (FedAvg) aims at. Oracle minus multi-task bounds what
per-task experts (clusters and routing) can win over one shared adapter; it is
reported first.

Every run uses the same model, quantization (the device default), rank,
adapter method (standard LoRA at its default rate), seed and example pools
(``--n-train`` per task, the examples two devices of that task would hold).
Finished runs are kept in the results JSON and skipped when the script runs
again with the same settings (it resumes).

    python bench/bench_suite.py --out bench/results/suite
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path
from typing import Any

CANDIDATES = ["topic", "yesno", "arith", "strtf", "parity", "first", "last", "isodate", "textdate"]


def _train_and_score(args: argparse.Namespace, train_tasks: list[str], steps: int) -> dict[str, Any]:
    import torch

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.data import load_examples
    from edgedfl.model.loading import load_model
    from edgedfl.model.quantize import quantize_model
    from edgedfl.train.config import TrainConfig
    from edgedfl.train.evaluate import evaluate
    from edgedfl.train.trainer import Trainer

    torch.manual_seed(args.seed)
    base, tok = load_model(args.model, seed=args.seed)
    base, quant = quantize_model(base, args.quant)
    adapted = attach_adapter(base, AdapterConfig(method=args.method, rank=args.rank))
    adapted.activate(0)
    train = [e for t in train_tasks for e in load_examples(t, "train", n=args.n_train, seed=args.seed)]
    cfg = TrainConfig(lr=args.lr, batch_size=args.batch, max_length=args.max_length, max_steps=steps,
                      progress=False, seed=args.seed)
    t0 = time.monotonic()
    metrics = Trainer(adapted, tok, train, cfg).train(save_at_end=False)
    train_s = time.monotonic() - t0
    scores = {}
    for t in train_tasks:
        test = load_examples(t, "test", n=args.n_eval, seed=args.seed)
        scores[t] = float(evaluate(adapted.peft_model, tok, test, batch_size=16, max_length=args.max_length,
                                   max_new_tokens=args.max_new_tokens)["exact_match"])
    losses = metrics["losses"]
    return {"tasks": train_tasks, "steps": steps, "exact_match": scores, "quant": quant, "train_s": train_s,
            "max_new_tokens": args.max_new_tokens,
            "step_s": train_s / max(steps, 1), "loss_first10": sum(losses[:10]) / max(len(losses[:10]), 1),
            "loss_last10": sum(losses[-10:]) / max(len(losses[-10:]), 1)}


def _needed_tokens(task: str, args: argparse.Namespace) -> int:
    """Generated tokens that an exact answer to every scored example of ``task`` needs (its longest, plus the end)."""
    from edgedfl.data import load_examples
    from edgedfl.model.loading import load_tokenizer

    tok = load_tokenizer(args.model)
    longest = max(len(tok(e.completion, add_special_tokens=False)["input_ids"])
                  for e in load_examples(task, "test", n=args.n_eval, seed=args.seed))
    return longest + 1


def majority_rate(task: str, n: int, seed: int) -> tuple[str, float]:
    from edgedfl.data import load_examples

    answers = collections.Counter(e.completion for e in load_examples(task, "test", n=n, seed=seed))
    answer, count = answers.most_common(1)[0]
    return answer, count / sum(answers.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--suite", default="", help="the tasks of the multi-task run (default: every candidate whose "
                   "ceiling is at least --min-gain points above its majority rate)")
    p.add_argument("--min-gain", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-eval", type=int, default=100)
    p.add_argument("--method", default="lora")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--quant", default="auto")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=16,
                   help="greedy tokens generated per answer (a run that generated fewer than a task's longest "
                        "answer needs is run again)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/suite")
    args = p.parse_args()
    out = Path(args.out)
    js = out.with_name(out.name + ".json")
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "candidates", "suite", "min_gain", "max_new_tokens")}
    saved: dict[str, Any] = json.loads(js.read_text()) if js.exists() else {}
    if saved.get("settings") != settings:
        saved = {"settings": settings, "single": {}, "multi": {}}
    t0 = time.monotonic()

    def save() -> None:
        js.parent.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps(saved, indent=2, sort_keys=True))
        write_md(saved, out, args)

    for task in args.candidates.split(","):
        done = saved["single"].get(task)
        if done is None or done.get("max_new_tokens", 0) < _needed_tokens(task, args):
            print(f"single-task run: {task}", flush=True)
            run = _train_and_score(args, [task], args.steps)
            run["majority_answer"], run["majority_rate"] = majority_rate(task, args.n_eval, args.seed)
            saved["single"][task] = run
            save()
    suite = args.suite.split(",") if args.suite else [
        t for t in args.candidates.split(",")
        if (saved["single"][t]["exact_match"][t] - saved["single"][t]["majority_rate"]) * 100 >= args.min_gain]
    key = ",".join(suite)
    if key not in saved["multi"] or saved["multi"][key].get("max_new_tokens", 0) < max(
            _needed_tokens(t, args) for t in suite):
        print(f"multi-task run: {key}", flush=True)
        saved["multi"][key] = _train_and_score(args, suite, args.steps * len(suite))
        save()
    saved["wall_s_this_run"] = time.monotonic() - t0
    save()
    print(out.with_name(out.name + ".md").read_text())


def write_md(saved: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    s = saved["settings"]
    command = (f"python bench/bench_suite.py --model {s['model']} --candidates {args.candidates} --steps {s['steps']} --batch {s['batch']} "
               f"--n-train {s['n_train']} --n-eval {s['n_eval']} --out {args.out}"
               + (f" --suite {args.suite}" if args.suite else ""))
    lines = ["# The long-horizon suite: single-task ceilings and the multi-task gap", "", f"Command: `{command}`", "",
             (f"{s['model']}, standard LoRA (r={s['rank']}, lr {s['lr']:g}), quantization "
             f"{next(iter(saved['single'].values()), {}).get('quant', '?')}, {s['steps']} steps x {s['batch']} "
             f"examples per task from {s['n_train']} training examples of the task, exact match on {s['n_eval']} "
             f"test examples, greedy, seed {s['seed']}."), ""]
    for key, multi in saved["multi"].items():
        tasks = key.split(",")
        lines += ["## Oracle (one adapter per task) against multi-task (one adapter for all)", "",
                  (f"Multi-task: one adapter, {multi['steps']} steps on the mixture of {len(tasks)} tasks "
                  f"(every task contributes as many examples as its own adapter saw)."), "",
                  "| task | oracle | multi-task | oracle - multi-task (points) |", "|---|---|---|---|"]
        gaps = []
        for t in tasks:
            o, m = saved["single"][t]["exact_match"][t], multi["exact_match"][t]
            gaps.append(o - m)
            lines.append(f"| {t} | {o:.3f} | {m:.3f} | {100 * (o - m):+.1f} |")
        o_avg = sum(saved["single"][t]["exact_match"][t] for t in tasks) / len(tasks)
        m_avg = sum(multi["exact_match"][t] for t in tasks) / len(tasks)
        lines += [f"| **average** | **{o_avg:.3f}** | **{m_avg:.3f}** | **{100 * (o_avg - m_avg):+.1f}** |", ""]
    lines += ["## Single-task ceilings", "",
              ("| task | majority answer | majority rate | ceiling (exact match) | ceiling - majority (points) | "
              "loss, first 10 -> last 10 steps | s / step |"), "|---|---|---|---|---|---|---|"]
    for t, r in saved["single"].items():
        em = r["exact_match"][t]
        lines.append(f"| {t} | {r['majority_answer']!r} | {r['majority_rate']:.3f} | {em:.3f} | "
                     f"{100 * (em - r['majority_rate']):+.1f} | {r['loss_first10']:.3f} -> {r['loss_last10']:.3f} | "
                     f"{r['step_s']:.2f} |")
    if "wall_s_this_run" in saved:
        lines += ["", (f"Wall time of the last invocation: {saved['wall_s_this_run'] / 60:.1f} min (finished runs "
                  "of earlier invocations are reused).")]
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
