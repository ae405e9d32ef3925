"""User data: JSONL files and Hugging Face datasets (duck-typed), and load_examples."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from edgedfl.data import Example, from_hf_dataset, load_examples, load_jsonl, save_jsonl
from edgedfl.data.examples import is_datasets_available, load_hf_dataset
from edgedfl.errors import BackendUnavailable, DataError

ROWS = [
    {"prompt": "Task: t\nQ: 1+1\nAnswer:", "completion": " 2", "task": "arith"},
    {"prompt": "Ünïcode — ✓", "completion": " 日本", "task": "misc"},
]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    examples = [Example(**row) for row in ROWS]

    path = save_jsonl(examples, tmp_path / "sub" / "data.jsonl")

    assert load_jsonl(path) == examples
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert not list(tmp_path.glob("sub/*.tmp"))  # the temporary file was renamed away


def test_jsonl_skips_blank_lines_ignores_extra_keys_and_fills_default_task(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('\n{"prompt": "p", "completion": " c", "id": 7}\n\n', encoding="utf-8")

    assert load_jsonl(path, default_task="mine") == [Example("p", " c", "mine")]


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"prompt": "p", "completion": " c"}', "missing field 'task'"),
        ('{"prompt": "p", "completion": 3, "task": "t"}', "'completion' must be a string"),
        ('{"prompt": "p", "completion": "  ", "task": "t"}', "'completion' is empty"),
        ('{"prompt": "", "completion": " c", "task": "t"}', "'prompt' is empty"),
    ],
)
def test_bad_jsonl_line_is_named(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(ROWS[0])
    path.write_text(f"{good}\n\n{bad_line}\n{good}\n", encoding="utf-8")

    with pytest.raises(DataError) as info:
        load_jsonl(path)

    message = str(info.value)
    assert f"{path}:3:" in message and problem in message
    assert isinstance(info.value, ValueError)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        load_jsonl(tmp_path / "absent.jsonl")


class FakeDataset:
    """What edgedfl relies on from datasets.Dataset: column_names, ds[column], len."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self._columns = columns
        self.column_names = list(columns)
        self.row_access = 0

    def __len__(self) -> int:
        return len(next(iter(self._columns.values())))

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            self.row_access += 1
            return {name: col[key] for name, col in self._columns.items()}
        return self._columns[key]

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))


def test_hf_dataset_like_object_by_columns() -> None:
    ds = FakeDataset({k: [r[k] for r in ROWS] for k in ("prompt", "completion", "task")} | {"x": [1, 2]})

    examples = from_hf_dataset(ds)

    assert examples == [Example(**row) for row in ROWS]
    assert ds.row_access == 0  # columns, not rows


def test_hf_dataset_with_other_field_names_and_a_fixed_task() -> None:
    ds = FakeDataset({"question": ["q1", "q2"], "answer": [" a1", " a2"]})

    examples = from_hf_dataset(ds, prompt_field="question", completion_field="answer", task="qa")

    assert examples == [Example("q1", " a1", "qa"), Example("q2", " a2", "qa")]


def test_rows_and_column_dicts_are_accepted() -> None:
    expected = [Example(**row) for row in ROWS]
    columns = {k: [r[k] for r in ROWS] for k in ("prompt", "completion", "task")}

    assert from_hf_dataset(ROWS) == expected
    assert from_hf_dataset(iter(ROWS)) == expected
    assert from_hf_dataset(columns) == expected


def test_hf_dataset_errors_name_the_row_or_column() -> None:
    with pytest.raises(DataError, match="no column 'prompt'"):
        from_hf_dataset(FakeDataset({"text": ["x"], "completion": [" y"]}), task="t")
    with pytest.raises(DataError, match="dataset row 1: .*'completion' must be a string"):
        from_hf_dataset([ROWS[0], {"prompt": "p", "completion": None, "task": "t"} | {"completion": 5}])
    with pytest.raises(DataError, match="missing field 'task'"):
        from_hf_dataset(FakeDataset({"prompt": ["x"], "completion": [" y"]}))
    with pytest.raises(DataError, match="splits \\['test', 'train'\\]"):
        from_hf_dataset({"train": FakeDataset({"prompt": []}), "test": FakeDataset({"prompt": []})})
    with pytest.raises(DataError, match="expected a Dataset"):
        from_hf_dataset("prompt,completion")


def test_hub_loading_without_datasets_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: find_spec and import both fail

    assert not is_datasets_available()
    with pytest.raises(BackendUnavailable, match="pip install datasets"):
        load_hf_dataset("someone/something")
    with pytest.raises(BackendUnavailable, match="pip install datasets"):
        load_examples("hf:someone/something")


def test_hf_source_loads_a_local_dataset_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")  # the "hf" extra; scripts/setup.sh installs it
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the user's cache
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network, whatever the environment says
    train = [Example(**ROWS[0]), Example(**ROWS[1]), Example("Task: t\nQ: 2+3\nAnswer:", " 5", "arith")]
    test = [Example("Task: t\nQ: 4+4\nAnswer:", " 8", "arith")]
    # a dataset laid out as on the Hub (data/<split>-*.parquet), written by datasets itself
    repo = tmp_path / "my-dataset"
    for split, examples in (("train", train), ("test", test)):
        rows = datasets.Dataset.from_list([ex.to_dict() for ex in examples])
        rows.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    no_task = tmp_path / "no-task"
    datasets.Dataset.from_dict({"prompt": ["p1", "p2"], "completion": [" c1", " c2"]}).to_parquet(
        str(no_task / "data" / "train-00000-of-00001.parquet")
    )

    assert load_examples(f"hf:{repo}") == train  # split "train" by default
    assert load_examples(f"hf:{repo}", "test") == test
    assert load_examples(f"hf:{repo}", "train", n=2) == train[:2]
    assert load_examples(f"hf:{no_task}", default_task="mine") == [Example("p1", " c1", "mine"),
                                                                     Example("p2", " c2", "mine")]
    with pytest.raises(DataError, match="asked for 5 examples, it has 3"):
        load_examples(f"hf:{repo}", n=5)
    with pytest.raises(DataError, match="missing field 'task'"):
        load_examples(f"hf:{no_task}")


def test_load_examples_dispatches_on_the_source(tmp_path: Path) -> None:
    path = save_jsonl([Example(**row) for row in ROWS], tmp_path / "mine.jsonl")

    assert load_examples("arith", "test", n=3) == load_examples("arith", "test", n=5)[:3]
    rows = [Example(**row) for row in ROWS]
    train, test = load_examples(path), load_examples(path, "test")
    assert sorted(train + test, key=rows.index) == rows  # a file is its two splits, in file order
    split, rows_of = ("train", train) if train else ("test", test)
    assert load_examples(path, split, n=1) == rows_of[:1]
    with pytest.raises(DataError, match="neither a built-in task"):
        load_examples(tmp_path / "absent.jsonl")
