"""One local training step, side by side: edgedfl's methods and quantization backends vs plain peft LoRA on fp32.

Every variant trains the same fixed batch (``--batch`` examples of the topic
task cut to ``--tokens`` tokens, so every row is full) with AdamW. Step times
are measured in one process, the variants alternated step by step (the order
rotates every step) after warm-up steps, and reported as medians and as ratios
to plain peft LoRA fp32 (q/k/v/o, the same rank): on a shared, noisy machine
only the ratio means something. Memory is measured in a fresh process per
variant: its resident set after three steps (the model, adapter, optimizer and
what a step keeps) minus its resident set before the model was loaded, as a
ratio too. (Linux keeps a process's peak resident set across exec, so a child's
``ru_maxrss`` would report this parent's: the peak is not measured here.)

Variants: ``peft-lora fp32`` (the reference: ``get_peft_model`` and
``model(**batch).loss``); ``edgedfl <method> <quant>`` (the Trainer's own
step: an AdaptedModel on a base quantized by that backend, CPU, the LM head
applied only at positions that carry a label, ``TrainConfig.loss_logits``
'labelled', the default); and ``edgedfl solora none, full logits`` (the same
model with the model's own loss over every position's logits, 'all').

    python bench/bench_train.py --out bench/results/train
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ["peft-lora fp32", "edgedfl solora none", "edgedfl solora none, full logits", "edgedfl lora none",
            "edgedfl solora torchao-int8", "edgedfl solora torchao-int4", "edgedfl solora bnb-nf4"]


def _batch(tok: Any, n: int, tokens: int) -> dict[str, Any]:
    from edgedfl.data.sources import load_examples
    from edgedfl.train.batching import collate_train

    return collate_train(tok, load_examples("topic", "train", n=n), tokens)


def _build(variant: str, model: str, rank: int, lr: float) -> tuple[Any, Any]:
    """(step function returning the loss, tokenizer) of one variant, on a freshly loaded base."""
    import torch

    from edgedfl.model.loading import load_model

    base, tok = load_model(model)
    if variant == "peft-lora fp32":
        from peft import LoraConfig, get_peft_model

        for p in base.parameters():
            p.requires_grad_(False)
        peft_model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr)

        def plain_step(batch: dict[str, Any]) -> float:
            peft_model.train()
            loss = peft_model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        return plain_step, tok
    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.data.sources import load_examples
    from edgedfl.model.quantize import quantize_model
    from edgedfl.train.config import TrainConfig
    from edgedfl.train.loss import labelled_loss
    from edgedfl.train.trainer import Trainer

    _, method, quant = variant.split(",")[0].split()
    base, _ = quantize_model(base, quant, device="cpu")
    adapted = attach_adapter(base, AdapterConfig(method=method, rank=rank))
    trainer = Trainer(adapted, tok, load_examples("topic", "train", n=8), TrainConfig(lr=lr, max_length=64))
    model_ = adapted.peft_model
    full = "full logits" in variant

    def edgedfl_step(batch: dict[str, Any]) -> float:  # Trainer.train_step on a fixed batch
        model_.train()
        loss = None if full else labelled_loss(model_, batch)
        if loss is None:
            loss = model_(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapted.trainable_parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if adapted.spec.sparse:
            adapted.apply_masks(adapted.active_slot)
        return float(loss.detach())

    return edgedfl_step, tok


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _memory_child(variant: str, args: argparse.Namespace) -> None:
    """In a fresh process: added resident memory (kB) of loading, quantizing and three steps of ``variant``."""
    import torch  # noqa: F401  (imported before the baseline: the library is not the variant's cost)
    import transformers  # noqa: F401

    before = _rss_kb()
    step, tok = _build(variant, args.model, args.rank, args.lr)
    batch = _batch(tok, args.batch, args.tokens)
    for _ in range(3):
        step(batch)
    gc.collect()
    print(json.dumps({"added_kb": _rss_kb() - before}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS).replace(", ", "; "),
                   help="comma-separated (a ', ' inside a name is written '; ')")
    p.add_argument("--out", default="bench/results/train")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args)
        return
    import torch

    variants = [v.replace("; ", ", ") for v in args.variants.split(",")]
    t0 = time.monotonic()
    steps, losses = {}, {}
    tok = None
    for v in variants:
        steps[v], tok = _build(v, args.model, args.rank, args.lr)
        losses[v] = []
    assert tok is not None
    batch = _batch(tok, args.batch, args.tokens)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.warmup + args.steps):
        order = variants[i % len(variants):] + variants[: i % len(variants)]  # rotate: no variant always first
        for v in order:
            t = time.perf_counter()
            loss = steps[v](batch)
            dt = time.perf_counter() - t
            if i >= args.warmup:
                times[v].append(dt)
                losses[v].append(loss)
    memory: dict[str, int | None] = {}
    for v in variants:
        got = subprocess.run([sys.executable, __file__, "--memory-child", v, "--model", args.model,
                              "--batch", str(args.batch), "--tokens", str(args.tokens), "--rank", str(args.rank)],
                             capture_output=True, text=True, check=False)
        line = next((x for x in got.stdout.splitlines() if x.startswith("{")), None)
        memory[v] = json.loads(line)["added_kb"] if line else None
    ref = statistics.median(times[variants[0]])
    ref_mem = memory[variants[0]]
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        mem = memory[v]
        rows.append({"variant": v, "step_s_median": med, "step_ratio": med / ref, "added_mb": mem / 1024 if mem else None,
                     "memory_ratio": (mem / ref_mem) if mem and ref_mem else None,
                     "loss_first": losses[v][0], "loss_last": losses[v][-1]})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = (f"python bench/bench_train.py --model {args.model} --batch {args.batch} --tokens {args.tokens} "
               f"--rank {args.rank} --steps {args.steps} --out {args.out}")
    about = (f"{args.model}, batch {args.batch} x {args.tokens} tokens (every row full), rank {args.rank}, AdamW; "
             f"{args.steps} timed steps per variant after {args.warmup} warm-up, variants alternated step by step "
             f"in one process, torch {torch.__version__}, {torch.get_num_threads()} threads. Memory: resident set "
             "of a fresh process after loading, quantizing and 3 steps, minus its resident set before loading.")
    header = ("| variant | step (median s) | step vs peft fp32 | added memory (MB) | memory vs peft fp32 | "
              "loss, first -> last timed step |")
    lines = ["# One local training step: edgedfl vs plain peft LoRA fp32", "", f"Command: `{command}`", "",
             about, "", header, "|---|---|---|---|---|---|"]
    for r in rows:
        mem = f"{r['added_mb']:.0f}" if r["added_mb"] else "-"
        mratio = f"{r['memory_ratio']:.2f}x" if r["memory_ratio"] else "-"
        lines.append(f"| {r['variant']} | {r['step_s_median']:.2f} | {r['step_ratio']:.2f}x | {mem} | {mratio} | "
                     f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    lines += ["", f"Wall time: {(time.monotonic() - t0) / 60:.1f} min."]
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    out.with_name(out.name + ".json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
