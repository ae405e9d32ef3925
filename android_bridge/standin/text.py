"""Tokenization and batches for the phone stand-in: the ``tokenizers`` package on the bundle's
tokenizer.json, numpy arrays out. No transformers, no torch.

The rules are those of ``edgedfl.train.batching`` (which the Python nodes use),
re-stated here because that module builds torch tensors: prompt and completion
are encoded separately and concatenated with EOS, prompt tokens carry the label
-100, an over-long prompt is cut from the left. Training batches pad on the
right to the training program's fixed shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = -100


class PhoneTokenizer:
    """tokenizer.json + the special ids the manifest names."""

    def __init__(self, path: str | Path, spec: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.pad_id = int(spec["pad_id"])
        self.eos_id = None if spec.get("eos_id") is None else int(spec["eos_id"])

    def prompt_ids(self, text: str, max_length: int) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=True).ids)[-max_length:]

    def encode_pair(self, prompt: str, completion: str, max_length: int) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one example, as ``edgedfl.train.batching.encode_pair``."""
        p = list(self.tok.encode(prompt, add_special_tokens=True).ids)
        c = list(self.tok.encode(completion, add_special_tokens=False).ids)
        if self.eos_id is not None:
            c = c + [self.eos_id]
        if not c or len(c) >= max_length:
            raise ValueError(f"completion of {len(c)} tokens does not fit max_length={max_length}")
        p = p[-(max_length - len(c)) :]
        return p + c, [IGNORE] * len(p) + c

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))


def train_batch(tok: PhoneTokenizer, pairs: Sequence[tuple[str, str]], batch_size: int,
                max_length: int) -> dict[str, np.ndarray]:
    """Right-padded (batch_size, max_length) int64 arrays; missing rows are all padding (no loss)."""
    ids = np.full((batch_size, max_length), tok.pad_id, dtype=np.int64)  # (B, T)
    labels = np.full((batch_size, max_length), IGNORE, dtype=np.int64)  # (B, T)
    mask = np.zeros((batch_size, max_length), dtype=np.int64)  # (B, T)
    for i, (prompt, completion) in enumerate(pairs[:batch_size]):
        x, y = tok.encode_pair(prompt, completion, max_length)
        ids[i, : len(x)] = x
        labels[i, : len(y)] = y
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
