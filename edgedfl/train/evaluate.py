"""Evaluation: completion loss and exact-match accuracy of greedy generations, per task."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from edgedfl.data.examples import Example, normalise_answer
from edgedfl.model.placement import model_device, to_device
from edgedfl.train.batching import collate_prompts, collate_train


def completion_loss(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, max_length: int) -> float:
    """Mean per-token cross-entropy on the completion tokens."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = to_device(collate_train(tokenizer, examples[i : i + batch_size], max_length), model_device(model))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].float()  # (B, T-1, V)
            shift_labels = batch["labels"][:, 1:]  # (B, T-1)
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum",
            )
            total += float(loss)
            count += int((shift_labels != -100).sum())
    return total / max(count, 1)


def generate_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int, max_length: int, max_new_tokens: int
) -> list[str]:
    """Greedy generations (decoded new tokens only) for ``prompts``."""
    import torch

    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            batch = to_device(collate_prompts(tokenizer, prompts[i : i + batch_size], max_length), model_device(model))
            gen = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, batch["input_ids"].shape[1] :]  # (B, new)
            out.extend(tokenizer.batch_decode(new.cpu(), skip_special_tokens=True))
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    max_length: int = 256,
    max_new_tokens: int = 8,
    with_loss: bool = True,
) -> dict[str, Any]:
    """Plain-dict metrics: ``loss``, ``exact_match``, ``per_task`` {task: accuracy}, ``n``, and ``hits``.

    ``hits`` is one character per example, in order: ``1`` for an exact match,
    ``0`` otherwise (two runs scored on the same prompts compare prompt by prompt).
    """
    answers = generate_answers(
        model, tokenizer, [e.prompt for e in examples],
        batch_size=batch_size, max_length=max_length, max_new_tokens=max_new_tokens,
    )
    hits: dict[str, list[int]] = defaultdict(list)
    each: list[int] = []
    for ex, ans in zip(examples, answers):
        each.append(int(normalise_answer(ans) == normalise_answer(ex.completion)))
        hits[ex.task].append(each[-1])
    all_hits = [h for v in hits.values() for h in v]
    metrics: dict[str, Any] = {
        "n": len(examples),
        "exact_match": sum(all_hits) / max(len(all_hits), 1),
        "per_task": {t: sum(v) / len(v) for t, v in sorted(hits.items())},
        "hits": "".join(map(str, each)),
    }
    if with_loss:
        loss = completion_loss(model, tokenizer, examples, batch_size, max_length)
        metrics["loss"] = loss if math.isfinite(loss) else float("nan")
    return metrics
