"""``edgedfl demo``: the main job until the swarm lands — fine-tune the real model on one device.

Loads SmolLM2-135M (from the bundled GGUF), quantizes it for this device,
trains one sparse-orthogonal LoRA expert per built-in task (one slot each, on
one model), and prints a table of exact-match accuracy before and after, with
the size of what each expert would put on the wire.
"""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="tiny, smollm2, a hub id, a directory or a .gguf")
    p.add_argument("--tasks", default="topic,arith", help="comma-separated built-in tasks, one expert each")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per expert")
    p.add_argument("--n-eval", type=int, default=40, help="test examples per task")
    p.add_argument("--quant", default="auto", help="quantization backend (auto = the device profile's)")
    p.add_argument("--out", default="runs/demo", help="where runs are written")


def run(args: argparse.Namespace) -> int:
    from edgedfl.adapters import AdapterConfig
    from edgedfl.data.tasks import load_task
    from edgedfl.train.local import LocalRunConfig, build_model, calibrate
    from edgedfl.train.trainer import TrainConfig, Trainer

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    cfg = LocalRunConfig(
        model=args.model, quant=args.quant,
        adapter=AdapterConfig(num_slots=len(tasks), rank=8, density=0.25),
        train=TrainConfig(max_steps=args.steps, batch_size=8, lr=2e-3, max_length=128, progress=True),
    )
    t0 = time.monotonic()
    adapted, tok, backend = build_model(cfg)
    print(f"model {args.model} quantized with {backend}; {len(adapted.layers)} adapted layers, "
          f"{len(tasks)} expert slots (load {time.monotonic() - t0:.1f} s)", flush=True)
    rows = []
    for slot, task in enumerate(tasks):
        adapted.activate(slot)
        train = load_task(task, "train", n=1000)
        test = load_task(task, "test", n=args.n_eval)
        calibrate(adapted, tok, [e.prompt for e in train[:32]], slot, cfg.train.max_length)
        trainer = Trainer(adapted, tok, train, cfg.train, eval_examples=test)
        before = trainer.evaluate()["exact_match"]
        t1 = time.monotonic()
        metrics = trainer.train()
        masks = adapted.get_masks(slot)
        kept = sum(int(m.sum()) for m in masks.values())
        dense = sum(m.size for m in masks.values())
        rows.append((task, slot, before, metrics["eval"]["exact_match"], kept * 2, dense * 2 * 2,
                     time.monotonic() - t1))
        print(f"  expert {slot} ({task}): {metrics['steps']} steps, loss {metrics['train_loss']:.3f}", flush=True)
    print()
    print(f"{'task':<8} {'slot':>4} {'acc before':>10} {'acc after':>10} {'B bytes (fp16)':>15} "
          f"{'LoRA A+B bytes':>15} {'train s':>8}")
    for task, slot, before, after, sparse_b, dense_ab, secs in rows:
        print(f"{task:<8} {slot:>4} {before:>10.2f} {after:>10.2f} {sparse_b:>15,} {dense_ab:>15,} {secs:>8.1f}")
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 0
