"""What a task source holds, before a swarm spends hours on it: split sizes, answers, the majority-class rate.

``edgedfl data check SOURCE`` prints :func:`source_stats`. The majority-class
rate is the test accuracy of a model that always gives the commonest training
answer: a task whose accuracy never rises above it has learned nothing a
constant would not (the emulator's report flags such a task). For free-text
answers (almost every answer distinct) the rate is near zero and says little.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from edgedfl.data.examples import Example, normalise_answer
from edgedfl.data.sources import load_examples

__all__ = ["majority_rate", "source_stats"]


def majority_rate(train: list[Example], test: list[Example]) -> tuple[str | None, float]:
    """(the commonest training answer, the share of ``test`` whose answer it is)."""
    answers = Counter(normalise_answer(ex.completion) for ex in train)
    if not answers or not test:
        return None, 0.0
    top = answers.most_common(1)[0][0]
    return top, sum(normalise_answer(ex.completion) == top for ex in test) / len(test)


def source_stats(source: str, *, seed: int = 0, top: int = 10) -> dict[str, Any]:
    """Split sizes, the tasks named in the rows, the commonest answers per split, overlap, the majority rate.

    :raises DataError: the source cannot be read or a row is malformed (the message names file and line).
    """
    train = load_examples(source, "train", seed=seed)
    test = load_examples(source, "test", seed=seed)
    answers = {name: Counter(normalise_answer(ex.completion) for ex in rows)
               for name, rows in (("train", train), ("test", test))}
    label, rate = majority_rate(train, test)
    distinct = len(answers["train"] | answers["test"])
    total = len(train) + len(test)
    warnings = []
    if not test:
        warnings.append("the test split is empty: nothing would score this task")
    if len(train) < 8:
        warnings.append(f"only {len(train)} training examples")
    shared = len(set(train) & set(test))
    if shared:
        warnings.append(f"{shared} examples are in both splits")
    free_text = total > 0 and distinct > 0.5 * total
    if free_text:
        warnings.append("most answers are distinct (free text): the majority rate says little")
    elif test and rate >= 0.9:
        warnings.append(f"{rate:.0%} of the test answers are {label!r}: a constant answer scores that")
    return {
        "source": source, "train": len(train), "test": len(test), "shared": shared,
        "tasks": sorted({ex.task for ex in train} | {ex.task for ex in test}),
        "distinct_answers": distinct, "free_text": free_text,
        "answers": {name: dict(c.most_common(top)) for name, c in answers.items()},
        "majority_answer": label, "majority_rate": rate, "warnings": warnings,
    }
