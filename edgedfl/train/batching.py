"""Tokenize prompt/completion pairs and batch them; loss on the completion only.

Prompt and completion are tokenized separately and concatenated (plus EOS), so
the label boundary is exact whatever the tokenizer. Training batches pad on the
right (positions start at 0 for every row); generation batches pad on the left
so every row ends where generation starts (:func:`collate_prompts`, which
lives with the model in :mod:`edgedfl.model.batching`: routing uses it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgedfl.data.examples import Example
from edgedfl.errors import DataError
from edgedfl.model.batching import collate_prompts

__all__ = ["IGNORE", "collate_prompts", "collate_train", "encode_pair"]

IGNORE = -100


def encode_pair(tokenizer: Any, ex: Example, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example; prompt tokens are labelled IGNORE.

    If too long, the prompt is cut from the left so the completion always fits.
    """
    prompt = tokenizer(ex.prompt, add_special_tokens=True)["input_ids"]
    completion = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    if not completion:
        raise DataError(f"empty completion in task {ex.task!r}: {ex.prompt[:40]!r}")
    if len(completion) >= max_length:
        raise DataError(f"completion of {len(completion)} tokens does not fit max_length={max_length}")
    prompt = prompt[-(max_length - len(completion)) :]
    return prompt + completion, [IGNORE] * len(prompt) + completion


def collate_train(tokenizer: Any, examples: Sequence[Example], max_length: int) -> dict[str, Any]:
    import torch

    pairs = [encode_pair(tokenizer, ex, max_length) for ex in examples]
    width = max(len(ids) for ids, _ in pairs)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(pairs), width), pad, dtype=torch.long)  # (B, T)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, T)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
