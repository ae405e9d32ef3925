"""``edgedfl eval``: loss and exact-match accuracy of a run's newest checkpoint."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a run directory written by `edgedfl train`")
    p.add_argument("--data", default=None, help="evaluate on this source instead (task name, JSONL, hf:<dataset>)")
    p.add_argument("--n", type=int, default=None, help="examples")


def run(args: argparse.Namespace) -> int:
    from edgedfl import load_examples
    from edgedfl.train.evaluate import evaluate
    from edgedfl.train.local import load_run

    cfg, adapted, tok, _, test = load_run(args.run)
    if args.data:
        test = load_examples(args.data, "test", n=args.n, seed=cfg.adapter.seed)
    elif args.n:
        test = test[: args.n]
    metrics = evaluate(adapted.peft_model, tok, test, batch_size=cfg.train.eval_batch_size,
                       max_length=cfg.train.max_length, max_new_tokens=cfg.train.max_new_tokens)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
