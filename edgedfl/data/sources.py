"""One entry point for "where do this device's examples come from": a built-in
task name, a JSONL file, or a Hugging Face dataset (``hf:<path>``).

Front ends (the CLI, node configs) take a single string from the user and hand
it here, so every front end accepts the same spellings.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgedfl.data.examples import Example, load_hf_dataset, load_jsonl
from edgedfl.data.tasks import TASKS, load_task
from edgedfl.errors import DataError

HF_PREFIX = "hf:"


def load_examples(
    source: str | os.PathLike[str],
    split: str = "train",
    *,
    n: int | None = None,
    seed: int = 0,
    default_task: str | None = None,
) -> list[Example]:
    """Examples from ``source``, tried in this order:

    * a built-in task name (``"topic"``): :func:`~edgedfl.data.tasks.load_task`;
    * ``"hf:<dataset path>"``: :func:`~edgedfl.data.examples.load_hf_dataset` on ``split``
      (the dataset must have ``prompt``/``completion`` columns; ``default_task``
      names the task when it has no ``task`` column);
    * anything else is a JSONL file (``split`` and ``seed`` do not apply).

    ``n`` keeps the first ``n`` examples.
    """
    text = os.fspath(source)
    if text in TASKS:
        return load_task(text, split, n, seed)
    if text.startswith(HF_PREFIX):
        examples = load_hf_dataset(text[len(HF_PREFIX) :], split, task=default_task)
    else:
        path = Path(text)
        if not path.exists():
            raise DataError(f"{text!r} is neither a built-in task ({', '.join(TASKS)}) nor an existing file")
        examples = load_jsonl(path, default_task=default_task)
    if n is not None:
        if n > len(examples):
            raise DataError(f"{text}: asked for {n} examples, it has {len(examples)}")
        examples = examples[:n]
    return examples
