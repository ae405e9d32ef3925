"""Local training of one device's adapter: AdamW, gradient accumulation, budgets, checkpoints.

The trainer fine-tunes the active slot of an :class:`AdaptedModel` on
prompt/completion pairs (loss on the completion only), evaluates by loss and
exact match, and checkpoints atomically so that a killed process resumes from
its newest complete checkpoint and continues exactly as an uninterrupted run
would: the data order is a function of (seed, epoch), and the optimizer state,
the position in the data and the torch RNG state are all in the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgedfl.data.examples import Example
from edgedfl.errors import AdapterError, CheckpointError, DataError
from edgedfl.model.placement import model_device, to_device
from edgedfl.train.batching import collate_train
from edgedfl.train.checkpoint import CheckpointManager
from edgedfl.train.config import TrainConfig
from edgedfl.train.evaluate import evaluate
from edgedfl.train.loss import labelled_loss

log = logging.getLogger("edgedfl.train")


class Trainer:
    """Trains the active slot of ``adapted`` on ``train_examples``."""

    def __init__(
        self,
        adapted: Any,
        tokenizer: Any,
        train_examples: Sequence[Example],
        config: TrainConfig | None = None,
        *,
        eval_examples: Sequence[Example] | None = None,
        checkpoint_dir: str | None = None,
        after_checkpoint_file: Callable[[str], None] | None = None,
    ) -> None:
        import torch

        if not train_examples:
            raise DataError("no training examples")
        self.adapted = adapted
        self.model = adapted.peft_model
        self.tokenizer = tokenizer
        self.examples = list(train_examples)
        self.eval_examples = list(eval_examples or [])
        self.config = config or TrainConfig()
        self.step = 0
        self.epoch = 0
        self.position = 0  # index into the current epoch's permutation
        self.history: list[dict[str, float]] = []
        #: JSON-able state of the caller (e.g. the node's round), saved and restored with the checkpoint
        self.extra: dict[str, Any] = {}
        params = adapted.trainable_parameters()
        if not params:
            raise DataError("the adapter has no trainable parameters")
        lr = self.config.lr or self.adapted.spec.default_lr  # 0: the method's tuned default
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=self.config.betas, weight_decay=self.config.weight_decay)
        self.checkpoints = (
            CheckpointManager(checkpoint_dir, keep=self.config.keep_checkpoints, after_file=after_checkpoint_file)
            if checkpoint_dir
            else None
        )

    # -- data order -------------------------------------------------------------

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.config.seed, epoch]).permutation(len(self.examples))

    def _next_batch(self) -> list[Example]:
        out: list[Example] = []
        perm = self._permutation(self.epoch)
        while len(out) < self.config.batch_size:
            if self.position >= len(perm):
                self.epoch += 1
                self.position = 0
                perm = self._permutation(self.epoch)
            out.append(self.examples[int(perm[self.position])])
            self.position += 1
        return out

    # -- one step -----------------------------------------------------------------

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        import torch

        self.model.train()
        total = 0.0
        for _ in range(self.config.grad_accum):
            batch = collate_train(self.tokenizer, self._next_batch(), self.config.max_length)
            batch = to_device(batch, model_device(self.model))
            loss = labelled_loss(self.model, batch) if self.config.loss_logits == "labelled" else None
            if loss is None:
                loss = self.model(**batch).loss
            loss = loss / self.config.grad_accum
            loss.backward()
            total += float(loss.detach())
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.adapted.trainable_parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.adapted.spec.sparse:
            self.adapted.apply_masks(self.adapted.active_slot)
        self.step += 1
        return total

    # -- the loop -------------------------------------------------------------------

    def train(
        self, max_steps: int | None = None, *, resume: bool = True, save_at_end: bool = True
    ) -> dict[str, Any]:
        """Train until the step or time budget; returns plain-dict metrics."""
        from tqdm.auto import tqdm

        resumed_from = self.resume() if (resume and self.checkpoints) else None
        optimized = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if optimized != {id(p) for p in self.adapted.trainable_parameters()}:
            raise AdapterError(
                "the trainable parameters changed after this Trainer was built (another slot was "
                "activated?): build one Trainer per active slot"
            )
        target = self.config.max_steps if max_steps is None else max_steps
        start_time = time.monotonic()
        bar = tqdm(total=target or None, initial=self.step, disable=not self.config.progress, desc="train",
                   unit="step", leave=False)
        losses: list[float] = []
        try:
            while (target == 0 or self.step < target) and not self._out_of_time(start_time):
                loss = self.train_step()
                losses.append(loss)
                self.history.append({"step": self.step, "loss": loss})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                every = self.config.checkpoint_every
                if self.checkpoints and every and self.step % every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        every = self.config.checkpoint_every
        if self.checkpoints and save_at_end and (not every or self.step % every):
            self.save_checkpoint()
        metrics: dict[str, Any] = {
            "steps": self.step,
            "resumed_from": resumed_from,
            "train_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
            "losses": losses,
            "wall_s": time.monotonic() - start_time,
        }
        if self.eval_examples:
            metrics["eval"] = self.evaluate()
        return metrics

    def _out_of_time(self, start: float) -> bool:
        return self.config.time_budget_s > 0 and time.monotonic() - start >= self.config.time_budget_s

    def evaluate(self, examples: Sequence[Example] | None = None) -> dict[str, Any]:
        return evaluate(
            self.model, self.tokenizer, examples if examples is not None else self.eval_examples,
            batch_size=self.config.eval_batch_size, max_length=self.config.max_length,
            max_new_tokens=self.config.max_new_tokens,
        )

    # -- checkpoints -------------------------------------------------------------------

    def _state_files(self) -> dict[str, bytes]:
        import torch
        from safetensors.torch import save

        opt = self.optimizer.state_dict()
        opt_tensors: dict[str, Any] = {}
        opt_scalars: dict[str, dict[str, Any]] = {}
        for idx, state in opt["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    opt_tensors[f"{idx}.{key}"] = value.detach().contiguous().clone()
                else:
                    opt_scalars.setdefault(str(idx), {})[key] = value
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "n_examples": len(self.examples),
            "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
            "history": self.history,
            "config": self.config.to_dict(),
            "slot": self.adapted.active_slot,
            "method": self.adapted.method,
            "extra": self.extra,
        }
        adapter = {k: v.contiguous() for k, v in self.adapted.state_tensors().items()}
        rng = {"torch_cpu": torch.get_rng_state()}
        return {
            "adapter.safetensors": save(adapter),
            "optimizer.safetensors": save(opt_tensors) if opt_tensors else save({"_empty": torch.zeros(1)}),
            "rng.safetensors": save(rng),
            "state.json": json.dumps(state, sort_keys=True).encode(),
        }

    def save_checkpoint(self) -> str:
        assert self.checkpoints is not None
        path = self.checkpoints.save(self.step, self._state_files())
        log.info("checkpoint %s", path)
        return str(path)

    def resume(self) -> int | None:
        """Load the newest complete checkpoint, if any; returns its step."""
        import torch
        from safetensors.torch import load

        assert self.checkpoints is not None
        path = self.checkpoints.latest()
        if path is None:
            return None
        files = self.checkpoints.load(path)
        try:
            state = json.loads(files["state.json"])
            if state["n_examples"] != len(self.examples) or state["method"] != self.adapted.method:
                raise CheckpointError(
                    f"{path} was written for {state['n_examples']} examples / method {state['method']!r}; "
                    f"this run has {len(self.examples)} / {self.adapted.method!r}"
                )
            self.adapted.load_state_tensors(load(files["adapter.safetensors"]))
            self.adapted.activate(int(state["slot"]))
            opt_tensors = load(files["optimizer.safetensors"])
            opt_state: dict[int, dict[str, Any]] = {}
            for key, value in opt_tensors.items():
                if key == "_empty":
                    continue
                idx, name = key.split(".", 1)
                opt_state.setdefault(int(idx), {})[name] = value
            for idx, scalars in state["optimizer"]["scalars"].items():
                opt_state.setdefault(int(idx), {}).update(scalars)
            self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
            torch.set_rng_state(load(files["rng.safetensors"])["torch_cpu"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        self.history = list(state["history"])
        self.extra = dict(state.get("extra", {}))
        log.info("resumed from %s (step %d)", path, self.step)
        return self.step


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


