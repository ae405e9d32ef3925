"""A training process for the crash tests: trains the tiny model, logs every step's loss.

usage: python train_proc.py CKPT_DIR LOSS_LOG STEPS [KILL_AT_STEP]

With KILL_AT_STEP, the process SIGKILLs itself in the middle of writing the
checkpoint of that step (after its first file is durable, before the rename).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.data.tasks import load_task
from edgedfl.model.tiny import tiny_model, tiny_tokenizer
from edgedfl.train.trainer import TrainConfig, Trainer


def main() -> None:
    ckpt, log_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    adapted = attach_adapter(tiny_model(), AdapterConfig(rank=4, density=0.5))
    examples = load_task("arith", "train", n=64)
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-2, weight_decay=0.01, checkpoint_every=5,
                      keep_checkpoints=3, progress=False, max_length=96)
    trainer: Trainer

    def after_file(name: str) -> None:
        if kill_at is not None and trainer.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = Trainer(adapted, tiny_tokenizer(), examples, cfg, checkpoint_dir=ckpt, after_checkpoint_file=after_file)
    trainer.resume()
    with open(log_path, "a") as log:
        while trainer.step < steps:
            loss = trainer.train_step()
            log.write(json.dumps({"step": trainer.step, "loss": loss}) + "\n")
            log.flush()
            if trainer.step % cfg.checkpoint_every == 0:
                trainer.save_checkpoint()
    final = {k: v.tolist() for k, v in adapted.get_update(0).items()}
    with open(log_path + ".final.json", "w") as f:
        json.dump(final, f)


if __name__ == "__main__":
    main()
