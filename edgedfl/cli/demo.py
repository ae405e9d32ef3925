"""``edgedfl demo``: the main job — an emulated swarm of devices fine-tuning the real model.

By default: ``edgedfl emulate`` with SmolLM2-135M (from the bundled GGUF), 4
devices, 2 built-in tasks (topic classification and yes/no questions), 3
rounds, on the embedded broker; it prints per-task accuracy and bytes sent.

``--single-device`` instead fine-tunes one expert slot per task on one model in
this process and prints accuracy before and after with the bytes one round of
each expert would cost.
"""

from __future__ import annotations

import argparse
import time

DEMO_SWARM = ["--model", "smollm2", "--devices", "4", "--tasks", "topic,yesno", "--rounds", "3",
              "--local-steps", "6", "--n-eval", "24"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--single-device", action="store_true", help="one device, one expert per task, no swarm")
    p.add_argument("--model", default="smollm2", help="tiny, smollm2, gemma3-270m, a hub id, a directory or a .gguf")
    p.add_argument("--tasks", default="topic,yesno", help="comma-separated built-in tasks")
    p.add_argument("--steps", type=int, default=40, help="--single-device: optimizer steps per expert")
    p.add_argument("--n-eval", type=int, default=24, help="test examples per task")
    p.add_argument("--quant", default="auto", help="--single-device: quantization backend")
    p.add_argument("--out", default="runs/demo", help="where runs are written")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the live dashboard next to the swarm and print its URL (edgedfl emulate --dashboard)")


def run(args: argparse.Namespace) -> int:
    if not args.single_device:
        from edgedfl.cli import build_parser

        emulate_args = list(DEMO_SWARM)
        emulate_args[emulate_args.index("--model") + 1] = args.model
        emulate_args[emulate_args.index("--tasks") + 1] = args.tasks
        emulate_args[emulate_args.index("--n-eval") + 1] = str(args.n_eval)
        extra = ["--dashboard"] if args.dashboard else []
        parsed = build_parser().parse_args(["emulate", *emulate_args, "--out", args.out, *extra])
        return int(parsed._module.run(parsed))
    return run_single_device(args)


def run_single_device(args: argparse.Namespace) -> int:
    from edgedfl import AdapterConfig, LocalRunConfig
    from edgedfl.data.tasks import load_task
    from edgedfl.train.local import build_model, calibrate
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
