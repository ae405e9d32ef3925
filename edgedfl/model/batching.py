"""Left-padded prompt batches: what generation, routing and calibration feed a causal LM.

Rows pad on the left so every row ends where generation starts; a prompt longer
than ``max_length`` tokens keeps its last ``max_length``. Training batches
(prompt + completion, labels) are built in :mod:`edgedfl.train.batching`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def collate_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int) -> dict[str, Any]:
    """Left-padded prompts for generation and calibration."""
    import torch

    rows = [tokenizer(p, add_special_tokens=True)["input_ids"][-max_length:] for p in prompts]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r)
        attention[i, width - len(r) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
