"""The built-in offline tasks: nine tasks, deterministic splits.

=========  ==============  ===================================================
name       family          what the model answers
=========  ==============  ===================================================
topic      classification  the topic word of a BBC News article
yesno      reading         whether a short text contains a given word
arith      arithmetic      the number answering a small word problem
strtf      code            a string transformed by a named function
parity     numbers         whether a number is even (yes/no, like yesno)
first      lists           the first word of a word list
last       lists           the last word of the same word lists
isodate    dates           a date in words, in ISO format
textdate   dates           the same dates, from ISO format to words
=========  ==============  ===================================================

The first four are the default suite (:data:`DEFAULT_SUITE`); the last five,
with ``yesno``, form the long-horizon suite's three colliding pairs
(:data:`COLLIDING_PAIRS`: shared label words with another meaning, the same
input asked another question, opposite answer formats).

Prompt format, shared by every task (so one trainer and one exact-match
evaluator serve them all)::

    Task: <task title>
    <one to three "Key: value" lines>
    Answer:

and the completion is the answer with one leading space (``" sport"``,
``" yes"``, ``" 12"``, ``" getUserName"``). Prompts stay under ~90 tokens of a
SmolLM2-style tokenizer (article text is cut to one sentence and ~180
characters on a word boundary) and completions are a few tokens, so a 135M
model can learn each task in a few hundred steps and greedy exact match is a
meaningful score.

Determinism: every random choice comes from a stream named by (task, split,
seed, ...) through SHA-256 (see ``_rng``), never from ``hash()`` or set order,
so the same seed gives byte-identical examples in every process. Streams are
prefix-stable: ``load_task(t, n=100)`` is the first 100 of ``load_task(t,
n=1000)``.

Splits never share an item: the BBC tasks split *articles* (one split shared
by ``topic`` and ``yesno``, see :func:`edgedfl.data.bbc.article_split`); the
generated tasks put each distinct prompt in train or test by a keyed hash of
the prompt, so the test set never leaks into train whatever sizes are asked
for.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Callable, Iterator, Sequence

from edgedfl.data import bbc
from edgedfl.data._rng import derive_seed, rng_for
from edgedfl.data.examples import Example
from edgedfl.errors import DataError

SPLITS: tuple[str, ...] = ("train", "test")
DEFAULT_TRAIN_SIZE = 2000
DEFAULT_TEST_SIZE = 200

#: share of the generated tasks' prompt space that belongs to the test split
_GENERATED_TEST_SHARE = 10  # percent


def format_prompt(title: str, lines: Sequence[tuple[str, str]]) -> str:
    """The shared prompt template: ``Task: <title>``, ``Key: value`` lines, ``Answer:``."""
    body = "".join(f"{key}: {value}\n" for key, value in lines)
    return f"Task: {title}\n{body}Answer:"


def _answer(text: str) -> str:
    return " " + text


@dataclasses.dataclass(frozen=True)
class Task:
    """One built-in task: a named, seeded, split-aware example stream."""

    name: str
    family: str
    description: str
    #: (split, seed) -> the split's examples in a fixed order (may be endless)
    stream: Callable[[str, int], Iterator[Example]] = dataclasses.field(repr=False)
    #: (split, seed) -> how many examples the split holds, or None if unbounded
    capacity: Callable[[str, int], int | None] = dataclasses.field(repr=False)

    def size(self, split: str = "train", seed: int = 0) -> int:
        """Examples that ``generate(split, n=None)`` returns."""
        default = DEFAULT_TRAIN_SIZE if split == "train" else DEFAULT_TEST_SIZE
        cap = self.capacity(split, seed)
        return default if cap is None else min(default, cap)

    def generate(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """The first ``n`` examples of ``split`` (default: the split's default size)."""
        _check_split(split)
        cap = self.capacity(split, seed)
        if n is None:
            n = self.size(split, seed)
        elif n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        elif cap is not None and n > cap:
            raise DataError(
                f"task {self.name!r} has only {cap} {split} examples for seed {seed}, asked for {n}"
            )
        out: list[Example] = []
        for ex in self.stream(split, seed):
            if len(out) >= n:
                break
            out.append(ex)
        if len(out) < n:  # a stream ran dry before its declared capacity: a bug, say so
            raise DataError(f"task {self.name!r} produced {len(out)} {split} examples, expected {n}")
        return out

    __call__ = generate


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


# --- topic: BBC News topic classification -------------------------------------------

_TEXT_CHARS = 180  # ~40 tokens of article text keeps the whole prompt under ~90 tokens


def _topic_stream(split: str, seed: int) -> Iterator[Example]:
    for article in bbc.article_split(split, seed):
        prompt = format_prompt(
            "news topic",
            [
                ("Title", article.title),
                ("Text", bbc.clip(bbc.lead_sentence(article.body), _TEXT_CHARS)),
                ("Topics", ", ".join(bbc.TOPICS)),
            ],
        )
        yield Example(prompt, _answer(article.topic), "topic")


def _topic_capacity(split: str, seed: int) -> int:
    return len(bbc.article_split(split, seed))


# --- yesno: does a short text contain a word? ----------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")
# Too common to be an interesting question, and nearly always present anyway.
_STOPWORDS = frozenset(
    [
        "about",
        "above",
        "after",
        "again",
        "against",
        "also",
        "although",
        "among",
        "another",
        "around",
        "because",
        "been",
        "before",
        "being",
        "between",
        "both",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "even",
        "every",
        "first",
        "from",
        "further",
        "have",
        "having",
        "here",
        "into",
        "itself",
        "just",
        "last",
        "made",
        "make",
        "many",
        "more",
        "most",
        "much",
        "must",
        "next",
        "only",
        "other",
        "over",
        "same",
        "says",
        "said",
        "should",
        "since",
        "some",
        "still",
        "such",
        "than",
        "that",
        "their",
        "theirs",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "though",
        "through",
        "under",
        "until",
        "upon",
        "very",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "whom",
        "whose",
        "will",
        "with",
        "would",
        "year",
        "years",
        "your",
        "told",
        "added",
        "people",
        "like",
        "also",
        "been",
    ]
)
_YESNO_CHARS = 160
_YESNO_PASSES = 3  # pass p shows sentences from 2p on, so one article yields several texts


def _eligible_words(text: str) -> list[str]:
    """Content words of ``text`` in order of first appearance, one form per lower-case word."""
    seen: set[str] = set()
    words: list[str] = []
    for word in _WORD.findall(text):
        low = word.lower()
        if 4 <= len(word) <= 12 and low not in _STOPWORDS and low not in seen:
            seen.add(low)
            words.append(word)
    return words


def _yesno_window(article: bbc.Article, pass_no: int) -> str | None:
    parts = bbc.sentences(article.body)[2 * pass_no :]
    return bbc.clip(" ".join(parts), _YESNO_CHARS) if parts else None


def _yesno_pool(articles: Sequence[bbc.Article]) -> list[str]:
    """Candidate absent words: content words of the split's own texts (same distribution as present ones)."""
    seen: set[str] = set()
    pool: list[str] = []
    for article in articles:
        window = _yesno_window(article, 0)
        for word in _eligible_words(window or ""):
            if word.lower() not in seen:
                seen.add(word.lower())
                pool.append(word)
    return pool


def _yesno_stream(split: str, seed: int) -> Iterator[Example]:
    articles = bbc.article_split(split, seed)
    pool = _yesno_pool(articles)
    emitted = 0
    for pass_no in range(_YESNO_PASSES):
        for article in articles:
            window = _yesno_window(article, pass_no)
            if window is None:
                continue
            # Labels are fixed per pair of emitted examples (one yes, one no, in a
            # seeded order), so every even-length prefix is exactly balanced.
            first_yes = rng_for("yesno-pair", split, seed, emitted // 2).random() < 0.5
            want_yes = first_yes if emitted % 2 == 0 else not first_yes
            rng = rng_for("yesno", split, seed, article.uid, pass_no)
            word: str | None
            if want_yes:
                present = _eligible_words(window)
                word = rng.choice(present) if present else None
            else:
                low = window.lower()
                word = None
                for _ in range(50):
                    candidate = rng.choice(pool)
                    # substring test, so "medal" is not asked of a text saying "medals"
                    if candidate.lower() not in low:
                        word = candidate
                        break
            if word is None:
                continue
            prompt = format_prompt(
                "yes/no question about a text",
                [("Text", window), ("Question", f'Does the text contain the word "{word}"?')],
            )
            yield Example(prompt, _answer("yes" if want_yes else "no"), "yesno")
            emitted += 1


def _yesno_capacity(split: str, seed: int) -> int:
    return _yesno_count(str(bbc.corpus_dir()), split, seed)


@functools.lru_cache(maxsize=16)
def _yesno_count(corpus: str, split: str, seed: int) -> int:
    # Counting walks the whole stream (about a second), and every generate()
    # asks, hence the cache (keyed by the corpus folder, which tests may swap).
    return sum(1 for _ in _yesno_stream(split, seed))


# --- generated tasks: shared split-by-hash machinery -----------------------------------


def _generated_stream(
    task: str, make: Callable[[random.Random], tuple[str, str]], split: str, seed: int
) -> Iterator[Example]:
    """Draw (prompt, answer) candidates, keep the distinct ones hashed into ``split``."""
    rng = rng_for(task, seed)  # one stream for both splits; the hash decides the split
    seen: set[str] = set()
    misses = 0
    while misses < 10_000:  # the prompt spaces are far larger; this only guards a bug
        prompt, answer = make(rng)
        in_test = derive_seed(task, "split", seed, prompt) % 100 < _GENERATED_TEST_SHARE
        if prompt in seen or in_test != (split == "test"):
            misses += prompt in seen
            continue
        seen.add(prompt)
        misses = 0
        yield Example(prompt, _answer(answer), task)


# --- arith: arithmetic word problems --------------------------------------------------

_NAMES = [
    "Tom",
    "Ana",
    "Sam",
    "Mia",
    "Leo",
    "Eva",
    "Max",
    "Zoe",
    "Ben",
    "Lily",
    "Omar",
    "Nina",
    "Raj",
    "Emma",
    "Yuki",
    "Carlos",
    "Fatima",
    "Ivan",
    "Grace",
    "Kofi",
]
_THINGS = [
    "apples",
    "pencils",
    "marbles",
    "stickers",
    "books",
    "cookies",
    "coins",
    "cards",
    "shells",
    "stamps",
    "balloons",
    "eggs",
    "oranges",
    "toys",
    "flowers",
    "candles",
    "cups",
    "bottles",
    "buttons",
    "keys",
]


def _arith_make(r: random.Random) -> tuple[str, str]:
    name, other = r.sample(_NAMES, 2)
    thing = r.choice(_THINGS)
    kind = r.randrange(5)
    # every answer is a non-negative integer below 100 (one or two tokens)
    if kind == 0:
        a, b = r.randint(2, 30), r.randint(1, 20)
        q, ans = f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?", a + b
    elif kind == 1:
        a = r.randint(5, 40)
        b = r.randint(1, a - 1)
        q, ans = f"{name} had {a} {thing} and gave {b} to {other}. How many {thing} are left?", a - b
    elif kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 9)
        q, ans = f"There are {a} boxes with {b} {thing} in each box. How many {thing} are there?", a * b
    elif kind == 3:
        a, b = r.randint(3, 20), r.randint(1, 15)
        c = r.randint(1, a + b - 1)
        q = f"{name} has {a} {thing}, gets {b} more and then loses {c}. How many {thing} does {name} have?"
        ans = a + b - c
    else:
        a = r.randint(4, 40)
        b = r.randint(1, a - 1)
        q = f"{name} has {a} {thing} and {other} has {b}. How many more {thing} does {name} have?"
        ans = a - b
    return format_prompt("arithmetic word problem", [("Question", q)]), str(ans)


def _arith_capacity(split: str, seed: int) -> None:
    return None  # hundreds of thousands of distinct problems


# --- strtf: code-like string transformations -------------------------------------------

_IDENT_WORDS = [
    "get",
    "set",
    "user",
    "name",
    "file",
    "path",
    "data",
    "list",
    "item",
    "size",
    "count",
    "max",
    "min",
    "total",
    "open",
    "read",
    "write",
    "load",
    "save",
    "node",
    "key",
    "value",
    "time",
    "date",
    "index",
    "text",
    "line",
    "word",
    "table",
    "row",
    "page",
    "port",
    "host",
    "mode",
    "type",
    "base",
    "step",
    "rate",
    "view",
    "send",
    "sync",
    "cache",
    "queue",
    "token",
    "model",
    "batch",
]


def _snake_to_camel(s: str) -> str:
    head, *rest = s.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _camel_to_snake(s: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", s).lower()


#: function name -> (how many words it takes, how the input is shown, the transformation)
STRING_FUNCTIONS: dict[str, tuple[tuple[int, int], Callable[[list[str]], str], Callable[[str], str]]] = {
    "reverse_words": ((3, 4), " ".join, lambda s: " ".join(reversed(s.split()))),
    "sort_words": ((3, 4), " ".join, lambda s: " ".join(sorted(s.split()))),
    "upper": ((2, 3), " ".join, str.upper),
    "snake_to_camel": ((2, 4), "_".join, _snake_to_camel),
    "camel_to_snake": ((2, 4), lambda ws: _snake_to_camel("_".join(ws)), _camel_to_snake),
}


def apply_string_function(function: str, text: str) -> str:
    """The reference answer of the ``strtf`` task (tests recompute answers with it)."""
    try:
        return STRING_FUNCTIONS[function][2](text)
    except KeyError:
        raise DataError(f"unknown string function {function!r}; known: {sorted(STRING_FUNCTIONS)}") from None


def _strtf_make(r: random.Random) -> tuple[str, str]:
    function = r.choice(sorted(STRING_FUNCTIONS))
    (lo, hi), show, _ = STRING_FUNCTIONS[function]
    text = show(r.sample(_IDENT_WORDS, r.randint(lo, hi)))
    answer = apply_string_function(function, text)
    return format_prompt("string transformation", [("Function", function), ("Input", text)]), answer


def _strtf_capacity(split: str, seed: int) -> None:
    return None


# --- tasks whose outputs collide (the long-horizon suite) -----------------------------------
#
# Each pair below asks a *different* question whose answers share one output space, so an
# adapter shared by both tasks is pulled two ways on look-alike prompts:
#
# * ``parity`` answers " yes"/" no" like ``yesno``, with another meaning (is a number even);
# * ``first`` and ``last`` ask about the *same* word lists (one shared input stream: the i-th
#   example of each shows the same list), and both answer a word of that list;
# * ``isodate`` and ``textdate`` convert the same dates in opposite directions, so each
#   task's answer format is the other's input format.
#
# A shared input stream splits by the input, not the prompt: an input in one task's test
# split is in every sibling's test split, so a multi-task model never trains on a test input.


def _input_split(family: str, seed: int, key: str) -> str:
    return "test" if derive_seed(family, "split", seed, key) % 100 < _GENERATED_TEST_SHARE else "train"


def _shared_stream(
    family: str, draw: Callable[[random.Random], str], split: str, seed: int
) -> Iterator[str]:
    """The distinct inputs of ``family`` (a key string each) that fall in ``split``, in one fixed order."""
    rng = rng_for(family, seed)
    seen: set[str] = set()
    misses = 0
    while misses < 10_000:
        key = draw(rng)
        if key in seen or _input_split(family, seed, key) != split:
            misses += key in seen
            continue
        seen.add(key)
        misses = 0
        yield key


def _parity_make(r: random.Random) -> tuple[str, str]:
    n = r.randint(0, 99_999)
    return format_prompt("is the number even", [("Number", str(n))]), "yes" if n % 2 == 0 else "no"


_LIST_WORDS = [
    "apple", "river", "stone", "lamp", "cloud", "horse", "bread", "chair", "garden", "window",
    "pencil", "mountain", "candle", "bottle", "forest", "ticket", "rocket", "castle", "mirror", "basket",
    "violin", "tiger", "island", "jacket", "ladder", "orange", "pillow", "rabbit", "silver", "tunnel",
    "wallet", "yellow", "bridge", "camera", "dragon", "engine", "feather", "guitar", "hammer", "kettle",
    "lemon", "market", "needle", "ocean", "planet", "quilt", "saddle", "turtle", "umbrella", "valley",
]


def _word_list(r: random.Random) -> str:
    return " ".join(r.sample(_LIST_WORDS, r.randint(4, 6)))


def _pick_stream(title: str, pick: Callable[[list[str]], str], task: str) -> Callable[[str, int], Iterator[Example]]:
    def stream(split: str, seed: int) -> Iterator[Example]:
        for key in _shared_stream("wordlist", _word_list, split, seed):
            yield Example(format_prompt(title, [("Words", key)]), _answer(pick(key.split())), task)

    return stream


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_DAYS_IN = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _date(r: random.Random) -> str:
    """An ISO date between 1950 and 2049 (the shared input of the two date tasks)."""
    year, month = r.randint(1950, 2049), r.randint(1, 12)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    day = r.randint(1, _DAYS_IN[month - 1] + (month == 2 and leap))
    return f"{year:04d}-{month:02d}-{day:02d}"


def date_in_words(iso: str) -> str:
    """``"2024-03-07"`` -> ``"7 March 2024"`` (the reference answer of ``textdate``)."""
    year, month, day = (int(x) for x in iso.split("-"))
    return f"{day} {MONTHS[month - 1]} {year}"


def _date_stream(to_iso: bool) -> Callable[[str, int], Iterator[Example]]:
    task = "isodate" if to_iso else "textdate"

    def stream(split: str, seed: int) -> Iterator[Example]:
        for iso in _shared_stream("date", _date, split, seed):
            words = date_in_words(iso)
            if to_iso:
                yield Example(format_prompt("date to ISO format", [("Date", words)]), _answer(iso), task)
            else:
                yield Example(format_prompt("date to words", [("Date", iso)]), _answer(words), task)

    return stream


def _unbounded(split: str, seed: int) -> None:
    return None


#: the tasks of the long-horizon suite that collide in pairs (see above) and the pairs themselves
COLLIDING_PAIRS: tuple[tuple[str, str], ...] = (("yesno", "parity"), ("first", "last"), ("isodate", "textdate"))


# --- registry ---------------------------------------------------------------------------


def _generated(
    name: str, make: Callable[[random.Random], tuple[str, str]]
) -> Callable[[str, int], Iterator[Example]]:
    def stream(split: str, seed: int) -> Iterator[Example]:
        return _generated_stream(name, make, split, seed)

    return stream


#: task name -> task, in the suite's canonical order (the partitioner's round-robin order)
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "topic",
            "classification",
            "topic of a BBC News article (title + lead sentence)",
            _topic_stream,
            _topic_capacity,
        ),
        Task(
            "yesno",
            "reading",
            "does a short BBC News passage contain a given word? (yes/no)",
            _yesno_stream,
            _yesno_capacity,
        ),
        Task(
            "arith",
            "arithmetic",
            "arithmetic word problems with small integers (+, -, x)",
            _generated("arith", _arith_make),
            _arith_capacity,
        ),
        Task(
            "strtf",
            "code",
            "code-like string transformations (reverse, sort, upper, snake/camel case)",
            _generated("strtf", _strtf_make),
            _strtf_capacity,
        ),
        Task("parity", "numbers", "is a number even? (yes/no: the label words of yesno, another meaning)",
             _generated("parity", _parity_make), _unbounded),
        Task("first", "lists", "the first word of a word list (the same lists as last)",
             _pick_stream("first word", lambda ws: ws[0], "first"), _unbounded),
        Task("last", "lists", "the last word of a word list (the same lists as first)",
             _pick_stream("last word", lambda ws: ws[-1], "last"), _unbounded),
        Task("isodate", "dates", "a date in words to ISO format (the same dates as textdate)",
             _date_stream(True), _unbounded),
        Task("textdate", "dates", "an ISO date to words (the same dates as isodate)",
             _date_stream(False), _unbounded),
    )
}


#: the default suite (``suite()``, ``partition_suite()``, ``edgedfl data partition``): the four tasks
#: that never collide; the later tasks form the long suite's colliding pairs (COLLIDING_PAIRS)
DEFAULT_SUITE: tuple[str, ...] = ("topic", "yesno", "arith", "strtf")


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}") from None


def load_task(name: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
    """The first ``n`` examples of a built-in task's ``split`` (default 2000 train / 200 test,
    fewer where the task has fewer: ``topic`` has one example per training article)."""
    return get_task(name).generate(split, n, seed)


def suite(
    tasks: Sequence[str] | int | None = None,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
) -> dict[str, list[Example]]:
    """Several tasks at once: ``tasks`` names them, or takes the first ``tasks`` of
    :data:`TASKS`; ``None`` means :data:`DEFAULT_SUITE`. Returns task name -> examples, in order."""
    if tasks is None:
        names = list(DEFAULT_SUITE)
    elif isinstance(tasks, int):
        if not 1 <= tasks <= len(TASKS):
            raise DataError(f"suite size must be 1..{len(TASKS)}, got {tasks}")
        names = list(TASKS)[:tasks]
    else:
        names = list(tasks)
        if len(set(names)) != len(names):
            raise DataError(f"task names repeat: {names}")
    return {name: load_task(name, split, n, seed) for name in names}
