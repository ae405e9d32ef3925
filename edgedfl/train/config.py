"""TrainConfig: how one device trains its adapter (optimizer, batches, budgets, checkpoints).

Its own module (numpy- and torch-free) so that a swarm's config can hold it
without loading the trainer: a phone stand-in reads the same SwarmConfig.
"""

from __future__ import annotations

import dataclasses

from edgedfl.config import ConfigBase, check, option

__all__ = ["TrainConfig"]


@dataclasses.dataclass
class TrainConfig(ConfigBase):
    lr: float = option(2e-3, help="AdamW learning rate (0 = the adapter method's tuned default_lr)")
    weight_decay: float = option(0.0, help="AdamW decoupled weight decay")
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas")
    batch_size: int = option(8, help="examples per micro-batch")
    grad_accum: int = option(1, help="micro-batches per optimizer step")
    max_steps: int = option(100, help="optimizer steps to run (a budget; 0 = only the time budget)")
    time_budget_s: float = option(0.0, help="stop after this many seconds of training (0 = no limit)")
    max_length: int = option(256, help="tokens per example; prompts are cut from the left to fit")
    max_grad_norm: float = option(1.0, help="gradient clipping (0 = off)")
    checkpoint_every: int = option(0, help="checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = option(2, help="complete checkpoints kept on disk")
    eval_batch_size: int = option(16, help="examples per evaluation batch")
    max_new_tokens: int = option(8, help="greedy tokens generated for exact-match evaluation")
    loss_logits: str = option(
        "labelled", help="'labelled': the LM head only at positions that carry a label (the same loss, a faster "
        "step: bench/results/train.md); 'all': the model's own loss over full logits",
    )
    seed: int = option(0, help="data order and RNG seed")
    progress: bool = option(True, help="show a progress bar")

    def __post_init__(self) -> None:
        n = type(self).__name__
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check(self.lr >= 0, n, "lr", self.lr, "must be > 0, or 0 for the adapter method's tuned default")
        check(self.weight_decay >= 0, n, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.batch_size >= 1, n, "batch_size", self.batch_size, "must be >= 1")
        check(self.grad_accum >= 1, n, "grad_accum", self.grad_accum, "must be >= 1")
        check(self.max_steps >= 0, n, "max_steps", self.max_steps, "must be >= 0")
        check(self.time_budget_s >= 0, n, "time_budget_s", self.time_budget_s, "must be >= 0")
        check(self.max_steps > 0 or self.time_budget_s > 0, n, "max_steps", self.max_steps,
              "give a step or a time budget")
        check(self.max_length >= 8, n, "max_length", self.max_length, "must be >= 8")
        check(self.loss_logits in ("labelled", "all"), n, "loss_logits", self.loss_logits, "'labelled' or 'all'")
        check(self.checkpoint_every >= 0, n, "checkpoint_every", self.checkpoint_every, "must be >= 0")
