"""The built-in task suite: determinism, disjoint splits, and answers that are right."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from edgedfl.data import bbc
from edgedfl.data.tasks import DEFAULT_TEST_SIZE, TASKS, Example, load_task, suite
from edgedfl.errors import DataError

SMALL = 60


def digest(examples: list[Example]) -> str:
    blob = "\n".join(json.dumps(e.to_dict(), sort_keys=True) for e in examples)
    return hashlib.sha256(blob.encode()).hexdigest()


def field(prompt: str, key: str) -> str:
    match = re.search(rf"^{key}: (.*)$", prompt, flags=re.MULTILINE)
    assert match, f"no {key!r} line in {prompt!r}"
    return match.group(1)


# --- format --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_every_example_follows_the_shared_format(name: str) -> None:
    for split in ("train", "test"):
        examples = load_task(name, split, n=SMALL)

        for ex in examples:
            assert ex.task == name
            assert ex.prompt.startswith("Task: ") and ex.prompt.endswith("\nAnswer:")
            assert ex.completion.startswith(" ") and ex.completion.strip() == ex.completion[1:]
            assert "\n" not in ex.completion
            # short prompts: ~90 tokens is about 400 characters of English
            assert len(ex.prompt) <= 420, ex.prompt
            assert len(ex.completion.split()) <= 4


def test_default_sizes() -> None:
    for name, task in TASKS.items():
        assert task.size("test") == DEFAULT_TEST_SIZE
        assert len(load_task(name, "test")) == DEFAULT_TEST_SIZE
    assert [len(load_task(n, "train")) for n in ("yesno", "arith", "strtf")] == [2000, 2000, 2000]
    # topic: one example per (deduplicated) training article
    assert len(load_task("topic", "train")) == len(bbc.article_split("train")) > 1500


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_same_seed_same_examples_different_seed_different(name: str) -> None:
    first = load_task(name, "train", n=SMALL, seed=3)
    again = load_task(name, "train", n=SMALL, seed=3)
    other = load_task(name, "train", n=SMALL, seed=4)

    assert digest(first) == digest(again)
    assert digest(first) != digest(other)


@pytest.mark.parametrize("name", list(TASKS))
def test_smaller_n_is_a_prefix(name: str) -> None:
    assert load_task(name, "train", n=20) == load_task(name, "train", n=200)[:20]


def test_identical_across_processes_with_different_hash_seeds() -> None:
    script = (
        "import hashlib, json\n"
        "from edgedfl.data import load_task, TASKS\n"
        "blob = '\\n'.join(json.dumps(e.to_dict(), sort_keys=True)"
        " for t in TASKS for s in ('train', 'test') for e in load_task(t, s, n=40, seed=7))\n"
        "print(hashlib.sha256(blob.encode()).hexdigest())\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout.strip())

    here = digest([e for t in TASKS for s in ("train", "test") for e in load_task(t, s, n=40, seed=7)])
    assert outputs == {here}


# --- splits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_articles_split_disjointly_and_cover_the_corpus(seed: int) -> None:
    train = {a.uid for a in bbc.article_split("train", seed)}
    test = {a.uid for a in bbc.article_split("test", seed)}

    assert not train & test
    assert train | test == {a.uid for a in bbc.load_articles()}
    # stratified: every topic is in the test split with about TEST_FRACTION of its articles
    topics = Counter(a.topic for a in bbc.article_split("test", seed))
    assert set(topics) == set(bbc.TOPICS)


def test_corpus_is_deduplicated_and_normalised() -> None:
    articles = bbc.load_articles()
    titles = [a.title.lower() for a in articles]

    assert len(titles) == len(set(titles))
    assert 2000 < len(articles) <= 2225
    assert {a.topic for a in articles} == set(bbc.TOPICS)  # the "sports" folder reads as "sport"


@pytest.mark.parametrize("name", ["topic", "yesno"])
def test_bbc_tasks_never_show_a_test_article_in_train(name: str) -> None:
    test_texts = {field(e.prompt, "Text").removesuffix("...") for e in load_task(name, "test")}
    train_bodies = [a.title + " " + a.body for a in bbc.article_split("train")]

    # every shown test text comes from a test article, never from a training one
    joined = "\n".join(train_bodies)
    assert not [t for t in test_texts if t in joined]


@pytest.mark.parametrize("name", ["arith", "strtf", "parity"])
def test_generated_tasks_keep_test_prompts_out_of_train(name: str) -> None:
    train = {e.prompt for e in load_task(name, "train", n=2000)}
    test = {e.prompt for e in load_task(name, "test", n=500)}

    assert len(train) == 2000 and len(test) == 500  # no duplicates either
    assert not train & test


# --- answers ---------------------------------------------------------------------------------


def test_topic_answers_are_the_article_topic() -> None:
    by_title = {a.title: a.topic for a in bbc.load_articles()}
    examples = load_task("topic", "test")

    for ex in examples:
        assert ex.completion.strip() == by_title[field(ex.prompt, "Title")]
    assert set(Counter(e.completion.strip() for e in examples)) == set(bbc.TOPICS)


def test_yesno_is_balanced_in_every_even_prefix() -> None:
    answers = [e.completion.strip() for e in load_task("yesno", "train")]

    assert set(answers) == {"yes", "no"}
    for k in range(2, len(answers) + 1, 2):
        assert answers[:k].count("yes") == k // 2
    assert Counter(e.completion.strip() for e in load_task("yesno", "test")) == {"yes": 100, "no": 100}


def test_yesno_answers_match_the_text() -> None:
    for ex in load_task("yesno", "train", n=400) + load_task("yesno", "test"):
        text = field(ex.prompt, "Text")
        word = re.fullmatch(r'Does the text contain the word "(.+)"\?', field(ex.prompt, "Question")).group(1)  # type: ignore[union-attr]
        if ex.completion == " yes":
            assert re.search(rf"\b{re.escape(word)}\b", text), (word, text)
        else:
            assert word.lower() not in text.lower(), (word, text)


ARITH: list[tuple[str, Callable[..., int]]] = [
    (r"(\w+) has (\d+) (\w+) and buys (\d+) more\. How many \3 does \1 have now\?", lambda a, b: a + b),
    (r"(\w+) had (\d+) (\w+) and gave (\d+) to \w+\. How many \3 are left\?", lambda a, b: a - b),
    (r"There are (\d+) boxes with (\d+) (\w+) in each box\. How many \3 are there\?", lambda a, b: a * b),
    (
        r"(\w+) has (\d+) (\w+), gets (\d+) more and then loses (\d+)\. How many \3 does \1 have\?",
        lambda a, b, c: a + b - c,
    ),
    (r"(\w+) has (\d+) (\w+) and \w+ has (\d+)\. How many more \3 does \1 have\?", lambda a, b: a - b),
]


def test_arithmetic_answers_are_correct() -> None:
    seen_templates = set()
    for ex in load_task("arith", "train", n=1000) + load_task("arith", "test"):
        question = field(ex.prompt, "Question")
        for i, (pattern, op) in enumerate(ARITH):
            match = re.fullmatch(pattern, question)
            if match:
                numbers = [int(g) for g in match.groups() if g.isdigit()]
                assert int(ex.completion) == op(*numbers), question
                assert int(ex.completion) >= 0
                seen_templates.add(i)
                break
        else:
            pytest.fail(f"unrecognised problem: {question}")
    assert seen_templates == set(range(len(ARITH)))


def _camel(s: str) -> str:
    parts = s.split("_")
    return parts[0] + "".join(p.capitalize() for p in parts[1:])


def _snake(s: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in s)


STRTF = {
    "reverse_words": lambda s: " ".join(s.split()[::-1]),
    "sort_words": lambda s: " ".join(sorted(s.split())),
    "upper": lambda s: s.upper(),
    "snake_to_camel": _camel,
    "camel_to_snake": _snake,
}


def test_string_transformations_are_correct() -> None:
    functions: Counter[str] = Counter()
    for ex in load_task("strtf", "train", n=1000) + load_task("strtf", "test"):
        function, text = field(ex.prompt, "Function"), field(ex.prompt, "Input")
        assert ex.completion.strip() == STRTF[function](text), ex.prompt
        functions[function] += 1
    assert set(functions) == set(STRTF)


# --- errors and the suite -----------------------------------------------------------------------


def test_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(DataError, match="split"):
        load_task("arith", "validation")
    with pytest.raises(DataError, match="has only"):
        load_task("topic", "test", n=10_000)


def test_suite_by_count_and_by_names() -> None:
    assert list(suite(2, "test", n=5)) == list(TASKS)[:2]
    picked = suite(["strtf", "arith"], "test", n=5)
    assert list(picked) == ["strtf", "arith"] and all(len(v) == 5 for v in picked.values())
    with pytest.raises(DataError):
        suite(0)


# --- the colliding tasks of the long suite ----------------------------------------------------


def test_parity_answers_are_correct_and_share_yesno_label_words() -> None:
    examples = load_task("parity", "train", n=400)
    for ex in examples:
        n = int(field(ex.prompt, "Number"))
        assert ex.completion == (" yes" if n % 2 == 0 else " no")
    answers = Counter(ex.completion for ex in examples)
    assert set(answers) == {" yes", " no"} == {ex.completion for ex in load_task("yesno", "train", n=400)}
    assert 0.4 < answers[" yes"] / len(examples) < 0.6


@pytest.mark.parametrize(("a", "b"), [("first", "last"), ("isodate", "textdate")])
def test_sibling_tasks_ask_about_the_same_inputs_and_never_leak_them(a: str, b: str) -> None:
    from edgedfl.data.tasks import COLLIDING_PAIRS

    assert (a, b) in COLLIDING_PAIRS
    key = "Words" if a == "first" else "Date"
    for split in ("train", "test"):
        xs, ys = load_task(a, split, n=300), load_task(b, split, n=300)
        # the i-th example of each sibling asks its own question about the same input
        shown_a = [field(e.prompt, key) for e in xs]
        shown_b = [field(e.prompt, key) for e in ys]
        if a == "first":
            assert shown_a == shown_b
        else:  # the same dates, each task showing it in the other's answer format
            assert shown_a == [e.completion.strip() for e in ys] and shown_b == [e.completion.strip() for e in xs]
        assert {e.prompt for e in xs}.isdisjoint(e.prompt for e in ys)  # distinguishable prompts
    # split by input: a test input of one sibling is never a training input of the other (a multi-task
    # adapter trains on both)
    test_inputs = {field(e.prompt, key) for t in (a, b) for e in load_task(t, "test", n=DEFAULT_TEST_SIZE)}
    train_inputs = {field(e.prompt, key) for t in (a, b) for e in load_task(t, "train", n=2000)}
    if a == "isodate":  # one task shows the date in words, the other in ISO: compare ISO dates
        from edgedfl.data.tasks import MONTHS

        def iso(shown: str) -> str:
            if "-" in shown:
                return shown
            day, month, year = shown.split()
            return f"{int(year):04d}-{MONTHS.index(month) + 1:02d}-{int(day):02d}"

        test_inputs, train_inputs = {iso(x) for x in test_inputs}, {iso(x) for x in train_inputs}
    assert test_inputs and train_inputs and test_inputs.isdisjoint(train_inputs)


def test_list_and_date_answers_are_correct() -> None:
    from edgedfl.data.tasks import date_in_words

    for ex in load_task("first", "test", n=100):
        assert ex.completion == " " + field(ex.prompt, "Words").split()[0]
    for ex in load_task("last", "test", n=100):
        assert ex.completion == " " + field(ex.prompt, "Words").split()[-1]
    for ex in load_task("textdate", "test", n=100):
        assert ex.completion == " " + date_in_words(field(ex.prompt, "Date"))
    assert date_in_words("2024-02-29") == "29 February 2024"
    assert all(int(e.completion[1:5]) in range(1950, 2050) for e in load_task("isodate", "train", n=200))
