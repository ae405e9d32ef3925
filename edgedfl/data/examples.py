"""Prompt/completion examples and the two ways users bring their own: JSONL and HF datasets.

An :class:`Example` is one training or evaluation pair. The convention every
edgedfl trainer follows (and the built-in tasks produce):

* the model sees ``prompt`` and learns ``completion``; training tokenizes
  ``prompt + completion`` (plus EOS) and puts the loss on the completion tokens
  only;
* ``completion`` starts with a space (``" sport"``) so BPE tokenizers cut
  prompt and completion on a token boundary;
* exact-match accuracy compares ``generated.strip()`` with
  ``completion.strip()``;
* ``task`` names the task; devices, routing and evaluation group by it.

JSONL: one JSON object per line with string fields ``prompt``, ``completion``
and ``task`` (``task`` may be left out when ``default_task`` is given); other
keys are ignored, blank lines skipped. A bad line raises :class:`DataError`
naming the file, the line number and the problem.

Hugging Face ``datasets`` is optional: :func:`from_hf_dataset` takes any object
that looks like a ``datasets.Dataset`` (column access through ``column_names``
and ``ds[column]``), a dict of columns, or any iterable of row dicts, and never
imports ``datasets`` itself. :func:`load_hf_dataset` imports it lazily.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from edgedfl.errors import BackendUnavailable, DataError

FIELDS: tuple[str, ...] = ("prompt", "completion", "task")


def normalise_answer(text: str) -> str:
    """What exact match compares: the first line of an answer, stripped (the one rule everywhere)."""
    return text.strip().split("\n", 1)[0].strip()


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt/completion pair of a task (see the module docstring for the conventions)."""

    prompt: str
    completion: str
    task: str

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "completion": self.completion, "task": self.task}


def _check_row(row: Any, default_task: str | None, fields: Mapping[str, str]) -> Example:
    """Build an Example from a mapping, or raise DataError with the problem (no location)."""
    if not isinstance(row, Mapping):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    values: dict[str, str] = {}
    for name, key in fields.items():
        if key not in row or row[key] is None:
            if name == "task" and default_task is not None:
                values[name] = default_task
                continue
            raise DataError(f"missing field {key!r} (have {sorted(map(str, row))})")
        value = row[key]
        if not isinstance(value, str):
            raise DataError(f"field {key!r} must be a string, got {type(value).__name__}")
        values[name] = value
    if not values["prompt"]:
        raise DataError(f"field {fields['prompt']!r} is empty")
    # an empty completion can never be matched or learned
    if not values["completion"].strip():
        raise DataError(f"field {fields['completion']!r} is empty")
    if not values["task"].strip():
        raise DataError(f"field {fields['task']!r} is empty")
    return Example(values["prompt"], values["completion"], values["task"])


_DEFAULT_FIELDS = {"prompt": "prompt", "completion": "completion", "task": "task"}


def load_jsonl(path: str | os.PathLike[str], *, default_task: str | None = None) -> list[Example]:
    """Read examples from a JSONL file; raise :class:`DataError` on the first bad line."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    examples: list[Example] = []
    with handle:
        lineno = 0
        try:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
                try:
                    examples.append(_check_row(row, default_task, _DEFAULT_FIELDS))
                except DataError as exc:
                    raise DataError(f"{path}:{lineno}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno + 1}: not UTF-8: {exc.reason}") from exc
    return examples


def save_jsonl(examples: Iterable[Example], path: str | os.PathLike[str]) -> Path:
    """Write examples as JSONL (sorted keys, UTF-8), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as handle:
        for ex in examples:
            handle.write(json.dumps(ex.to_dict(), sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def _rows(ds: Any, fields: Mapping[str, str]) -> Iterator[Any]:
    """Iterate row mappings of a Dataset-like object, a dict of columns or an iterable of rows."""
    if isinstance(ds, Mapping):
        if ds and all(hasattr(v, "column_names") for v in ds.values()):
            # a DatasetDict: which split to use is the caller's decision
            raise DataError(f"got a dataset with splits {sorted(ds)}; pass one split, e.g. ds['train']")
        columns: Mapping[str, Any] = ds
        names = list(ds)
    elif hasattr(ds, "column_names") and not isinstance(ds, (str, bytes)):
        names = list(ds.column_names)
        # column access is much faster than row access on an Arrow-backed Dataset
        columns = {key: ds[key] for key in fields.values() if key in names}
    else:
        if isinstance(ds, (str, bytes)) or not isinstance(ds, Iterable):
            raise DataError(f"expected a Dataset, a dict of columns or rows, got {type(ds).__name__}")
        yield from ds
        return
    for name, key in fields.items():
        if key not in names and name != "task":
            raise DataError(f"dataset has no column {key!r} (columns: {sorted(map(str, names))})")
    present = [key for key in fields.values() if key in columns]
    for values in zip(*(columns[key] for key in present), strict=True):
        yield dict(zip(present, values, strict=True))


def from_hf_dataset(
    ds: Any,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    task_field: str = "task",
    *,
    task: str | None = None,
) -> list[Example]:
    """Examples from a Hugging Face ``datasets.Dataset`` or anything shaped like one.

    ``task`` names the task for datasets without a ``task_field`` column (and
    fills rows where it is missing). Row numbers in errors count from 0, as
    ``ds[i]`` does.
    """
    fields = {"prompt": prompt_field, "completion": completion_field, "task": task_field}
    examples: list[Example] = []
    for index, row in enumerate(_rows(ds, fields)):
        try:
            examples.append(_check_row(row, task, fields))
        except DataError as exc:
            raise DataError(f"dataset row {index}: {exc}") from None
    return examples


def is_datasets_available() -> bool:
    """Whether the optional Hugging Face ``datasets`` package can be imported."""
    return importlib.util.find_spec("datasets") is not None


def load_hf_dataset(
    path: str,
    split: str = "train",
    *,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    task_field: str = "task",
    task: str | None = None,
    **load_kwargs: Any,
) -> list[Example]:
    """``datasets.load_dataset(path, split=split, **load_kwargs)`` turned into examples."""
    if not is_datasets_available():
        raise BackendUnavailable(
            "loading a Hugging Face dataset needs the 'datasets' package: pip install datasets"
        )
    import datasets  # optional; imported only here

    ds = datasets.load_dataset(path, split=split, **load_kwargs)
    return from_hf_dataset(ds, prompt_field, completion_field, task_field, task=task)
