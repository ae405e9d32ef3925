"""One entry point for "where do this device's examples come from": a built-in
task name, a JSONL file, or a Hugging Face dataset (``hf:<path>``).

Front ends (the CLI, node configs, the emulator, the benches) take a single
string from the user and hand it here, so every front end accepts the same
spellings:

* ``topic``: a built-in task (seeded train and test splits of their own);
* ``mine.jsonl``: one file, split deterministically into train and test by a
  hash of each example (prompt, completion and task): an example's split never
  depends on the other rows, so adding rows never moves old ones between splits,
  and equal examples always land together: train and test share none.
  :data:`TEST_FRACTION` of the examples go to test;
* ``train.jsonl:test.jsonl``: a file per split (an example of the test file
  that is also in the train file is dropped from training);
* ``hf:<dataset path>``: the dataset's own ``train`` / ``test`` splits.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from edgedfl.data.examples import Example, load_hf_dataset, load_jsonl
from edgedfl.data.tasks import TASKS, load_task
from edgedfl.errors import DataError

HF_PREFIX = "hf:"
#: share of a single file's examples that the hash split puts in test
TEST_FRACTION = 0.2
SPLITS = ("train", "test")

log = logging.getLogger("edgedfl.data")


def is_test_example(ex: Example, fraction: float = TEST_FRACTION) -> bool:
    """The hash split of one file: whether ``ex`` belongs to the test split (depends on ``ex`` alone)."""
    digest = hashlib.sha256(f"{ex.task}\x00{ex.prompt}\x00{ex.completion}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def file_parts(source: str) -> tuple[Path, Path | None]:
    """``a.jsonl`` -> (a.jsonl, None); ``a.jsonl:b.jsonl`` -> (a.jsonl, b.jsonl) when ``a.jsonl:b.jsonl`` is no file."""
    if ":" in source and not Path(source).exists():
        train, test = source.rsplit(":", 1)
        return Path(train), Path(test)
    return Path(source), None


def task_label(source: str | None) -> str:
    """A short name for a task source: a built-in name as it is, a file by its stem (``/x/mine.jsonl`` ->
    ``mine``), a dataset by its last part (``hf:org/set`` -> ``set``); ``?`` for none."""
    if not source:
        return "?"
    if source.startswith(HF_PREFIX):
        return source[len(HF_PREFIX):].rsplit("/", 1)[-1]
    if "/" in source or source.endswith(".jsonl"):
        return Path(source.split(":", 1)[0]).stem
    return source


def check_source(source: str) -> str:
    """``source`` if it names a built-in task, an ``hf:`` dataset or existing file(s); :class:`DataError` otherwise."""
    if source in TASKS or source.startswith(HF_PREFIX):
        return source
    for path in filter(None, file_parts(source)):
        if not path.is_file():
            raise DataError(f"{source!r} is neither a built-in task ({', '.join(TASKS)}) nor an existing file "
                            f"({path} is missing); a file per split is spelled TRAIN.jsonl:TEST.jsonl")
    return source


def _file_split(source: str, split: str, default_task: str | None) -> list[Example]:
    train_path, test_path = file_parts(check_source(source))
    if test_path is None:
        examples = load_jsonl(train_path, default_task=default_task)
        return [ex for ex in examples if is_test_example(ex) == (split == "test")]
    if split == "test":
        return load_jsonl(test_path, default_task=default_task)
    test = set(load_jsonl(test_path, default_task=default_task))
    train = load_jsonl(train_path, default_task=default_task)
    kept = [ex for ex in train if ex not in test]
    if len(kept) < len(train):
        log.warning("%s: %d training examples are also in %s: left out of training", train_path,
                    len(train) - len(kept), test_path)
    return kept


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
    * anything else is a JSONL file, or ``TRAIN.jsonl:TEST.jsonl`` (the module
      doc says how a single file is split; ``seed`` does not apply).

    ``n`` keeps the first ``n`` examples.
    """
    text = os.fspath(source)
    if text in TASKS:
        return load_task(text, split, n, seed)
    if split not in SPLITS:
        raise DataError(f"split={split!r}: choose from {SPLITS}")
    if text.startswith(HF_PREFIX):
        examples = load_hf_dataset(text[len(HF_PREFIX) :], split, task=default_task)
    else:
        examples = _file_split(text, split, default_task)
    if n is not None:
        if n > len(examples):
            raise DataError(f"{text}: asked for {n} examples, it has {len(examples)}")
        examples = examples[:n]
    return examples
