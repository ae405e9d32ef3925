"""``edgedfl infer``: a prompt in; the chosen expert, the generated text and timing out, on one line.

Runs the ONNX model written by ``edgedfl export onnx`` with onnxruntime and
the ``tokenizers`` package only: this command never imports torch.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="+", help="prompt text (several prompts run as one batch)")
    p.add_argument("--model", required=True, help="the .onnx file (tokenizer.json next to it)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens to generate at most")
    route = p.add_mutually_exclusive_group()
    route.add_argument("--expert", default=None, help="force one expert (index or name) instead of routing")
    route.add_argument("--merge", action="store_true", help="apply the sum of all experts (merge-all)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from edgedfl import OnnxLM

    lm = OnnxLM(args.model, threads=args.threads)
    expert: int | str | None = args.expert
    if isinstance(expert, str) and expert.isdigit():
        expert = int(expert)
    for gen in lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, expert=expert, merge=args.merge):
        line = gen.summary()
        print(line.replace(f"expert {gen.expert} ({gen.expert_name})", "merge-all", 1) if args.merge else line)
    return 0
