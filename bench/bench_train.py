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
model with the model's own loss over every position's logits, 'all'). A
trailing ``bf16`` loads the base in bfloat16 (``DeviceConfig.dtype``; the
adapter and optimizer stay float32, attention runs eager on the CPU; ``, sdpa
attention`` keeps torch's fused attention instead, to show what eager buys).

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
            "edgedfl solora torchao-int8", "edgedfl solora torchao-int4", "edgedfl solora bnb-nf4",
            "edgedfl solora none bf16", "edgedfl lora none bf16", "edgedfl solora torchao-int8 bf16",
            "edgedfl solora torchao-int8 bf16, sdpa attention", "edgedfl solora torchao-int4 bf16"]


def _parse(variant: str) -> tuple[str, str, str]:
    """(method, quantization backend, base dtype) of an ``edgedfl <method> <quant> [bf16][, ...]`` variant
    (the ``peft-lora fp32`` reference: lora on an unquantized float32 base)."""
    if variant.startswith("peft"):
        return "lora", "none", "float32"
    words = variant.split(",")[0].split()
    return words[1], words[2], "bfloat16" if "bf16" in words[3:] else "float32"


def _batch(tok: Any, n: int, tokens: int) -> dict[str, Any]:
    from edgedfl.data.sources import load_examples
    from edgedfl.train.batching import collate_train

    return collate_train(tok, load_examples("topic", "train", n=n), tokens)


def _build(variant: str, model: str, rank: int, lr: float) -> tuple[Any, Any]:
    """(step function returning the loss, tokenizer) of one variant, on a freshly loaded base."""
    import torch

    from edgedfl.model.loading import load_model

    base, tok = load_model(model, dtype=_parse(variant)[2])
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

    method, quant, _ = _parse(variant)
    base, _ = quantize_model(base, quant, device="cpu")
    if "sdpa attention" in variant:  # undo the eager attention a half-precision CPU base gets
        base.set_attn_implementation("sdpa")
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


RUN_VARIANTS = ["peft-lora fp32", "edgedfl lora torchao-int8", "edgedfl lora torchao-int8 bf16",
                "edgedfl solora torchao-int8 bf16"]


def _run_batches(examples: list[Any], batch: int, seed: int, steps: int) -> list[list[Any]]:
    """The Trainer's data order (edgedfl.train.trainer.Trainer._next_batch): a permutation per (seed, epoch)."""
    import numpy as np

    out, epoch, pos = [], 0, 0
    perm = np.random.default_rng([seed, epoch]).permutation(len(examples))
    for _ in range(steps):
        b = []
        while len(b) < batch:
            if pos >= len(perm):
                epoch, pos = epoch + 1, 0
                perm = np.random.default_rng([seed, epoch]).permutation(len(examples))
            b.append(examples[int(perm[pos])])
            pos += 1
        out.append(b)
    return out


def run_mode(args: argparse.Namespace) -> None:
    """A whole single-task run per variant, alternated step by step: step time and the loss each reaches.

    The reference is what a plain peft script does: ``get_peft_model`` on the fp32
    base, batches padded to their longest row (transformers' default collator
    does the same), ``model(**batch).loss`` over every position's logits. The
    edgedfl variants run ``Trainer.train_step`` itself (the LM head only where a
    label is; a sparse method's masks calibrated on its own prompts first). Every
    variant sees the same batches in the same order, at its method's default rate.
    """
    import torch

    from edgedfl.adapters import AdapterConfig, attach_adapter, get_method
    from edgedfl.data.sources import load_examples
    from edgedfl.model.loading import load_model
    from edgedfl.model.quantize import quantize_model
    from edgedfl.train.batching import collate_train
    from edgedfl.train.config import TrainConfig
    from edgedfl.train.evaluate import completion_loss
    from edgedfl.train.local import calibrate
    from edgedfl.train.trainer import Trainer

    t0 = time.monotonic()
    variants = [v.replace("; ", ", ") for v in args.variants.split(",")] if args.variants else RUN_VARIANTS
    train = load_examples(args.task, "train", n=args.n_train)
    held_out = load_examples(args.task, "test", n=args.n_eval)
    order = _run_batches(train, args.batch, 0, args.run_steps)
    steps: dict[str, Any] = {}
    models: dict[str, Any] = {}
    lrs: dict[str, float] = {}
    tok = None
    for v in variants:
        torch.manual_seed(0)
        base, tok = load_model(args.model, dtype=_parse(v)[2])
        if v == "peft-lora fp32":
            from peft import LoraConfig, get_peft_model

            for prm in base.parameters():
                prm.requires_grad_(False)
            pm = get_peft_model(base, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            params = [prm for prm in pm.parameters() if prm.requires_grad]
            lrs[v] = get_method("lora").default_lr
            opt = torch.optim.AdamW(params, lr=lrs[v])

            def plain(exs: list[Any], pm: Any = pm, params: Any = params, opt: Any = opt, tok: Any = tok) -> float:
                pm.train()
                loss = pm(**collate_train(tok, exs, args.max_length)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return float(loss.detach())

            steps[v], models[v] = plain, pm
            continue
        method, quant, _ = _parse(v)
        base, _ = quantize_model(base, quant, device="cpu")
        adapted = attach_adapter(base, AdapterConfig(method=method, rank=args.rank))
        adapted.activate(0)
        if adapted.spec.sparse:
            calibrate(adapted, tok, [e.prompt for e in train[:32]], 0, args.max_length)
        lrs[v] = adapted.spec.default_lr
        trainer = Trainer(adapted, tok, train, TrainConfig(lr=lrs[v], batch_size=args.batch, seed=0,
                                                          max_length=args.max_length, progress=False))
        steps[v], models[v] = (lambda exs, trainer=trainer: trainer.train_step()), adapted.peft_model
    times: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    for i, exs in enumerate(order):
        for v in variants[i % len(variants):] + variants[: i % len(variants)]:
            t = time.perf_counter()
            losses[v].append(steps[v](exs))  # edgedfl's Trainer draws the same batch itself
            times[v].append(time.perf_counter() - t)
    assert tok is not None
    rows = []
    ref = statistics.median(times[variants[0]][args.warmup:])
    ref_total = sum(times[variants[0]])
    for v in variants:
        med = statistics.median(times[v][args.warmup:])
        tail = losses[v][-20:]
        rows.append({"variant": v, "lr": lrs[v], "step_s_median": med, "step_ratio": med / ref,
                     "total_s": sum(times[v]), "total_ratio": sum(times[v]) / ref_total,
                     "train_loss_first": losses[v][0], "train_loss_last20": sum(tail) / len(tail),
                     "held_out_loss": completion_loss(models[v], tok, held_out, 16, args.max_length)})
    out = Path(args.out)
    command = (f"python bench/bench_train.py --run-steps {args.run_steps} --task {args.task} --model {args.model} "
               f"--batch {args.batch} --rank {args.rank} --out {args.out}")
    lines = [f"# A {args.run_steps}-step single-task run: edgedfl vs plain peft LoRA fp32", "", f"Command: `{command}`",
             "", (f"{args.model}, task {args.task} ({args.n_train} training examples, batches of {args.batch} padded "
             f"to their longest row), rank {args.rank}, AdamW at each method's default rate, the same batches in the "
             f"same order for every variant, variants alternated step by step in one process; held-out loss: mean "
             f"completion loss on {args.n_eval} test examples after the run. torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads."), "",
             ("| variant | lr | step (median s) | step vs peft fp32 | whole run vs peft fp32 | train loss, last 20 steps "
             "| held-out loss |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['lr']:g} | {r['step_s_median']:.3f} | {r['step_ratio']:.2f}x | "
                     f"{r['total_ratio']:.2f}x | {r['train_loss_last20']:.3f} | {r['held_out_loss']:.3f} |")
    lines += ["", f"Wall time: {(time.monotonic() - t0) / 60:.1f} min."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    out.with_name(out.name + ".json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print("\n".join(lines))


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _memory_child(variant: str, args: argparse.Namespace) -> None:
    """In a fresh process: added resident memory (kB) of loading, quantizing and three steps of ``variant``."""
    # every library imported before the baseline: code is not the variant's cost
    import peft  # noqa: F401
    import torch
    import torchao.quantization  # noqa: F401
    import transformers  # noqa: F401

    from edgedfl.adapters import attach_adapter  # noqa: F401
    from edgedfl.model.loading import load_model
    from edgedfl.model.quantize import quantize_model
    from edgedfl.train.trainer import Trainer  # noqa: F401

    before = _rss_kb()
    if args.base_only:  # the base model alone, quantized, after one forward pass (every weight read once)
        _, quant, dtype = _parse(variant)
        base, tok = load_model(args.model, dtype=dtype)
        base, _ = quantize_model(base, quant, device="cpu")
        with torch.no_grad():
            base(**{k: v for k, v in _batch(tok, args.batch, args.tokens).items() if k != "labels"})
        gc.collect()
        print(json.dumps({"added_kb": _rss_kb() - before}))
        return
    step, tok = _build(variant, args.model, args.rank, args.lr)
    batch = _batch(tok, args.batch, args.tokens)
    for _ in range(3):
        step(batch)
    gc.collect()
    print(json.dumps({"added_kb": _rss_kb() - before}))


def _memory(variant: str, args: argparse.Namespace, *, base_only: bool = False) -> int | None:
    """Added resident memory (kB) of ``variant`` measured in a fresh process (see ``_memory_child``)."""
    got = subprocess.run([sys.executable, __file__, "--memory-child", variant, "--model", args.model,
                          "--batch", str(args.batch), "--tokens", str(args.tokens), "--rank", str(args.rank),
                          *(["--base-only"] if base_only else [])],
                         capture_output=True, text=True, check=False)
    line = next((x for x in got.stdout.splitlines() if x.startswith("{")), None)
    return int(json.loads(line)["added_kb"]) if line else None


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
    p.add_argument("--base-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-steps", type=int, default=0,
                   help="instead: a whole single-task run of this many steps per variant (run_mode)")
    p.add_argument("--task", default="topic", help="--run-steps: the task")
    p.add_argument("--n-train", type=int, default=800, help="--run-steps: training examples")
    p.add_argument("--n-eval", type=int, default=64, help="--run-steps: held-out examples scored by loss")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--quick", action="store_true",
                   help="the tiny model, 2 timed steps, four variants unless --variants (the test suite's)")
    args = p.parse_args()
    if args.quick:  # four variants: the reference, edgedfl's step on float32 and bfloat16, a quantized base
        args.model, args.steps, args.warmup = "tiny", 2, 1
        if args.variants == p.get_default("variants"):
            args.variants = "peft-lora fp32,edgedfl solora none,edgedfl solora none bf16,edgedfl solora torchao-int8 bf16"
    if args.run_steps:
        if args.variants == p.get_default("variants"):
            args.variants = ""
        run_mode(args)
        return
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
    memory = {v: _memory(v, args) for v in variants}
    base_memory = {v: _memory(v, args, base_only=True) for v in variants}
    ref = statistics.median(times[variants[0]])
    ref_mem, ref_base = memory[variants[0]], base_memory[variants[0]]
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        mem, bmem = memory[v], base_memory[v]
        rows.append({"variant": v, "step_s_median": med, "step_ratio": med / ref, "added_mb": mem / 1024 if mem else None,
                     "memory_ratio": (mem / ref_mem) if mem and ref_mem else None,
                     "base_mb": bmem / 1024 if bmem else None,
                     "base_ratio": (bmem / ref_base) if bmem and ref_base else None,
                     "loss_first": losses[v][0], "loss_last": losses[v][-1]})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = (f"python bench/bench_train.py --model {args.model} --batch {args.batch} --tokens {args.tokens} "
               f"--rank {args.rank} --steps {args.steps} --out {args.out}")
    about = (f"{args.model}, batch {args.batch} x {args.tokens} tokens (every row full), rank {args.rank}, AdamW; "
             f"{args.steps} timed steps per variant after {args.warmup} warm-up, variants alternated step by step "
             f"in one process, torch {torch.__version__}, {torch.get_num_threads()} threads. Memory, each in a "
             "fresh process, minus its resident set once every library is imported: the base alone (loaded, "
             "quantized, one forward pass so every weight was read), and the whole variant after loading, "
             "quantizing and 3 steps (adapter, optimizer, what a step keeps). Every variant trains at lr "
             f"{args.lr:g}: the losses show the step runs, not how well a method learns.")
    header = ("| variant | step (median s) | step vs peft fp32 | base memory (MB) | base vs fp32 | "
              "added memory, 3 steps (MB) | vs peft fp32 | loss, first -> last timed step |")
    lines = ["# One local training step: edgedfl vs plain peft LoRA fp32", "", f"Command: `{command}`", "",
             about, "", header, "|---|---|---|---|---|---|---|---|"]

    def cell(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in rows:
        lines.append(f"| {r['variant']} | {r['step_s_median']:.2f} | {r['step_ratio']:.2f}x | "
                     f"{cell(r['base_mb'], '.0f')} | {cell(r['base_ratio'], '.2f')}x | {cell(r['added_mb'], '.0f')} | "
                     f"{cell(r['memory_ratio'], '.2f')}x | {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    lines += ["", f"Wall time: {(time.monotonic() - t0) / 60:.1f} min."]
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    out.with_name(out.name + ".json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
