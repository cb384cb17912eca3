"""Probing tasks on MultiEmo's English sentences (SentEval's BShift and SOMO, Conneau et al.
2018): is a sentence as written, or was it changed?

- ``wordorder_en`` (BShift): in about half of the sentences two adjacent words are swapped;
  labels ``original`` / ``swapped``.
- ``oddword_en`` (SOMO): in about half of the sentences one word is replaced by a word drawn
  from the other sentences of its split (so by its frequency in text); labels ``original`` /
  ``replaced``.

A mean-pooled sentence encoder hardly registers word order or one word out of place, so its
frozen linear probe stays near chance here while a finetuned encoder can learn both: skills
whose gain over the probe is large, which the composition benchmark's learnability gate asks
of a skill (sentiment is not one on MiniLM: its probe already reads it).

Which sentences are changed, and how, is drawn from a seed per row, so each task is fixed.
Only alphabetic words are moved or replaced and a replacement keeps the capital of the word
it replaces, so punctuation and case give nothing away. Only sentences of ``MIN_WORDS`` to
``MAX_WORDS`` whitespace-separated words are kept (86% of the rows), so the change lies within
the 64 tokens an encoder reads. The split is MultiEmo's shared cut (row-aligned
with ``multiemo_en``), all four sentiments included.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable

from . import multiemo
from .base import Example, Item

MIN_WORDS, MAX_WORDS = 4, 30
WORD = re.compile(r"^[A-Za-z]+$")
WORD_ORDER = ("original", "swapped")
ODD_WORD = ("original", "replaced")


def _words(sentence: str) -> tuple[list[str], list[int]]:
    """The sentence's whitespace tokens and the positions of its alphabetic ones."""
    tokens = sentence.split()
    return tokens, [i for i, t in enumerate(tokens) if WORD.match(t)]


def swap_adjacent(sentence: str, rng: random.Random) -> str | None:
    """``sentence`` with two adjacent, different alphabetic words swapped (None if it has
    no such pair)."""
    tokens, alpha = _words(sentence)
    pairs = [i for i in alpha if i + 1 in alpha and tokens[i].lower() != tokens[i + 1].lower()]
    if not pairs:
        return None
    i = rng.choice(pairs)
    tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    return " ".join(tokens)


def replace_word(sentence: str, vocabulary: list[str], rng: random.Random) -> str | None:
    """``sentence`` with one alphabetic word replaced by a different word drawn from
    ``vocabulary`` (lower-case; occurrences, so frequent words come up more often), the
    capital kept; None if the sentence has no alphabetic word."""
    tokens, alpha = _words(sentence)
    if not alpha:
        return None
    i = rng.choice(alpha)
    word = rng.choice(vocabulary)
    while word == tokens[i].lower():
        word = rng.choice(vocabulary)
    tokens[i] = word.capitalize() if tokens[i][0].isupper() else word
    return " ".join(tokens)


def _loader(
    name: str,
    labels: tuple[str, str],
    change: Callable[[str, list[str], random.Random], str | None],
) -> Callable[[], list[Item]]:
    def load() -> list[Item]:
        rows = [
            (i, text, split)
            for i, text, split in multiemo.sentences("en")
            if MIN_WORDS <= len(text.split()) <= MAX_WORDS
        ]
        vocabulary: dict[str, list[str]] = defaultdict(list)
        for _, text, split in rows:
            vocabulary[split] += [t.lower() for t in text.split() if WORD.match(t)]
        items = []
        for i, text, split in rows:
            rng = random.Random(f"{name}/row{i}")
            changed = change(text, vocabulary[split], rng) if rng.random() < 0.5 else None
            label = int(changed is not None)
            items.append(Item(Example(changed or text, labels, label), f"row{i}", split))
        return items

    return load


def word_order_loader() -> Callable[[], list[Item]]:
    """Items of ``wordorder_en``."""
    return _loader("wordorder_en", WORD_ORDER, lambda text, _, rng: swap_adjacent(text, rng))


def odd_word_loader() -> Callable[[], list[Item]]:
    """Items of ``oddword_en``."""
    return _loader("oddword_en", ODD_WORD, replace_word)
