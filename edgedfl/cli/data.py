"""``edgedfl data``: inspect or write the built-in offline multi-task suite.

::

    edgedfl data list                                  # tasks and split sizes
    edgedfl data show topic --n 3                      # a few examples
    edgedfl data write topic --split train --out topic.jsonl
    edgedfl data write all --split test --out suite-test.jsonl
    edgedfl data partition --devices 8 --mode dirichlet --alpha 0.3
    edgedfl data check mine.jsonl                      # splits, answers, majority-class rate of any source
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="list the tasks and their split sizes")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("show", help="print a few examples of a task")
    p.add_argument("task", help="task name (see 'edgedfl data list')")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--n", type=int, default=3, help="how many examples (default 3)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("write", help="write a task's split as JSONL (prompt, completion, task)")
    p.add_argument("task", help="task name, or 'all' for every task in one file")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--n", type=int, default=None, help="examples per task (default: the split's size)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("check", help="validate a task source (JSONL file, TRAIN.jsonl:TEST.jsonl, hf:, built-in): "
                                     "split sizes, answers, majority-class rate")
    p.add_argument("source", help="what --tasks / --data would take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("partition", help="show how the suite's train data splits over devices")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--mode", choices=("task", "dirichlet"), default="task")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (dirichlet mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-per-device", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    # imported here so that building the parser stays cheap
    from edgedfl import data

    action = args.data_command
    if action == "list":
        rows = [
            {
                "task": task.name,
                "family": task.family,
                "train": task.size("train", args.seed),
                "test": task.size("test", args.seed),
                "description": task.description,
            }
            for task in data.TASKS.values()
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'task':<7} {'family':<15} {'train':>6} {'test':>5}  description")
            for r in rows:
                print(f"{r['task']:<7} {r['family']:<15} {r['train']:>6} {r['test']:>5}  {r['description']}")
        return 0
    if action == "show":
        for i, ex in enumerate(data.load_task(args.task, args.split, args.n, args.seed)):
            print(f"--- {ex.task} {args.split} #{i}")
            print(ex.prompt + ex.completion)
        return 0
    if action == "write":
        names = list(data.TASKS) if args.task == "all" else [args.task]
        examples = [ex for name in names for ex in data.load_task(name, args.split, args.n, args.seed)]
        path = data.save_jsonl(examples, args.out)
        print(f"wrote {len(examples)} examples to {path}", file=sys.stderr)
        return 0
    if action == "check":
        from edgedfl.data.check import source_stats
        from edgedfl.errors import DataError

        try:
            stats = source_stats(args.source, seed=args.seed)
        except DataError as exc:
            print(f"edgedfl data check: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(stats, indent=2, sort_keys=True))
            return 0
        print(f"{stats['source']}: {stats['train']} train, {stats['test']} test examples "
              f"(shared: {stats['shared']}); tasks {', '.join(stats['tasks'])}")
        print(f"distinct answers: {stats['distinct_answers']}; majority answer {stats['majority_answer']!r} "
              f"is {stats['majority_rate']:.1%} of test (a constant answer's accuracy)")
        for split in ("train", "test"):
            common = ", ".join(f"{a!r} {n}" for a, n in stats["answers"][split].items())
            print(f"  {split:<5} {common}")
        for w in stats["warnings"]:
            print(f"warning: {w}")
        return 0
    if action == "partition":
        devices = data.partition_suite(
            args.devices, mode=args.mode, alpha=args.alpha, seed=args.seed, max_per_device=args.max_per_device
        )
        names = list(data.DEFAULT_SUITE)
        print(f"{'device':>6} {'task':<7} {'total':>6} " + " ".join(f"{n:>6}" for n in names))
        for dev in devices:
            counts = " ".join(f"{dev.counts.get(n, 0):>6}" for n in names)
            print(f"{dev.device:>6} {dev.task:<7} {len(dev):>6} {counts}")
        return 0
    raise AssertionError(f"unhandled data action {action!r}")  # argparse restricts the choices
