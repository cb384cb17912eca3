"""MultiEmo (BIG-bench ``multiemo/all_sentence_<lang>``): one sentiment corpus in 11 languages.

The files hold the same 57,466 sentences machine-translated, in the same order, so row i of
every language is the same sentence: a sentiment task per language and a parallel corpus.
Rows are aligned for en/fr/es/it/nl/pl/ru/ja/zh; **de is one row short and drifts from row
46,912, pt (56,193 rows) from row 51,723** (checked here by text and label; OFFLINE_ASSETS.md
§2 says ~51,725), so those languages use only the rows before their drift point.

One train/validation/test cut is made on the English rows (grouped by English sentence,
stratified by the 4-way label) and shared by every language: the French test set is the
translation of the English test set, so cross-lingual experiments never test on a sentence
whose translation was trained on. Per language, rows with an empty sentence (479 in zh, ≤16
elsewhere) and the few short sentences whose translation occurs in two splits ("Merveilleux !",
~10 per language) are left out, so no sentence text is shared between splits in any language.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from functools import cache

from ..data import load_bigbench
from .base import SPLITS, Example, Item, SplitSizes, assign_splits

LANGUAGES = ("en", "fr", "de", "es", "it", "nl", "pl", "pt", "ru", "ja", "zh")
ALIGNED_ROWS = {"de": 46_912, "pt": 51_723}
"""Rows before which these languages stay aligned with English; the others align fully."""
LABELS = ("negative", "positive")
SUBJECTIVITY = ("neutral", "polar")
"""Labels of the subjectivity task: a neutral sentence vs a positive or negative one."""
FOUR_WAY = ("negative", "neutral", "positive", "ambivalent")
POLAR = {"negative": "polar", "positive": "polar", "neutral": "neutral"}
"""4-way sentiment -> subjectivity label (ambivalent rows are left out)."""
SIZES = SplitSizes(test=0.05, test_max=3000, validation=0.025, validation_max=1500)
"""Of all 57,466 rows (4 classes): ~1,800 positive/negative test and ~900 validation rows."""


def task_path(lang: str) -> str:
    return f"multiemo/all_sentence_{lang}"


@cache
def _rows(lang: str) -> tuple[tuple[str, str], ...]:
    """(sentence, sentiment) per row, cut at the language's drift point."""
    rows = []
    for raw in load_bigbench(task_path(lang))["examples"]:
        (label,) = [k for k, v in raw["target_scores"].items() if v == 1]
        rows.append((raw["input"].strip(), label))
    return tuple(rows[: ALIGNED_ROWS.get(lang, len(rows))])


@cache
def _row_splits() -> tuple[str, ...]:
    """The split of every row, cut once on the English file."""
    en = _rows("en")
    return tuple(assign_splits([s for s, _ in en], [lab for _, lab in en], "multiemo", SIZES))


@cache
def _usable(lang: str) -> frozenset[int]:
    """Rows of ``lang`` with a non-empty sentence that occurs in one split only."""
    splits = _row_splits()
    where: dict[str, set[str]] = defaultdict(set)
    for i, (text, _) in enumerate(_rows(lang)):
        where[text].add(splits[i])
    return frozenset(i for i, (text, _) in enumerate(_rows(lang)) if text and len(where[text]) == 1)


def loader(lang: str, labels: tuple[str, ...] = LABELS, relabel: dict[str, str] | None = None):
    """Items of language ``lang`` whose (``relabel``-ed) sentiment is one of ``labels``."""
    if lang not in LANGUAGES:
        raise ValueError(f"MultiEmo has no language {lang!r}; choose from {LANGUAGES}")

    def load() -> list[Item]:
        splits, usable = _row_splits(), _usable(lang)
        items = []
        for i, (text, sentiment) in enumerate(_rows(lang)):
            label = relabel.get(sentiment, "") if relabel is not None else sentiment
            if label in labels and i in usable:
                items.append(Item(Example(text, labels, labels.index(label)), f"row{i}", splits[i]))
        return items

    return load


def sentences(lang: str = "en") -> list[tuple[int, str, str]]:
    """``(row, sentence, split)`` of every usable row of ``lang`` (all four sentiments), in
    file order, cut by the shared split."""
    if lang not in LANGUAGES:
        raise ValueError(f"MultiEmo has no language {lang!r}; choose from {LANGUAGES}")
    splits, usable = _row_splits(), _usable(lang)
    return [(i, text, splits[i]) for i, (text, _) in enumerate(_rows(lang)) if i in usable]


@dataclass(frozen=True)
class ParallelPair:
    """Row ``index`` of MultiEmo in two languages, with its (4-way) sentiment."""

    index: int
    source: str
    target: str
    sentiment: str


def parallel_sentences(
    src: str = "en", tgt: str = "fr", split: str = "train", limit: int | None = None, seed: int = 0
) -> list[ParallelPair]:
    """Aligned MultiEmo sentences, ``src`` -> ``tgt``, from one split of the shared cut.

    All four sentiments are included (``sentiment`` tells them apart); ``sentiment`` is the
    English label. Rows past either language's drift point, and rows left out of either
    language's task (empty or shared across splits), are left out. ``seed`` orders the rows (so it picks which ``limit``
    rows you get); which rows are in ``split`` never depends on it."""
    for lang in (src, tgt):
        if lang not in LANGUAGES:
            raise ValueError(f"MultiEmo has no language {lang!r}; choose from {LANGUAGES}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    splits = _row_splits()
    a, b = _rows(src), _rows(tgt)
    usable = _usable(src) & _usable(tgt)
    pairs = [
        ParallelPair(i, a[i][0], b[i][0], _rows("en")[i][1])
        for i in range(min(len(a), len(b)))
        if splits[i] == split and i in usable
    ]
    random.Random(f"parallel/{split}/{seed}").shuffle(pairs)
    return pairs[:limit]
