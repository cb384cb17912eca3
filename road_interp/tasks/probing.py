"""Tasks on MultiEmo's English sentences that a mean-pooled sentence encoder's frozen probe
cannot read but a finetuned encoder can learn.

- ``wordorder_en`` (SentEval's BShift, Conneau et al. 2018): in about half of the sentences
  two adjacent words are swapped; labels ``original`` / ``swapped``.
- ``oddword_en`` (SentEval's SOMO): in about half of the sentences one word is replaced by a
  word drawn from the other sentences of its split (so by its frequency in text); labels
  ``original`` / ``replaced``.
- ``which_positive_en``: two sentences of one split, one negative and one positive, as a
  sentence pair; which is the positive one (``first`` / ``second``)?

Mean pooling hardly registers word order, one word out of place, or which segment a word
is in, so the frozen linear probe stays near chance here: skills whose gain over the probe
can be large, which the composition benchmark's learnability gate asks of a skill (plain
sentiment is not one on MiniLM: its probe already reads it).

Which sentences are changed, and how, is drawn from a seed per row, so each task is fixed.
Only alphabetic words are moved or replaced, so punctuation gives nothing away, and a
replacement keeps the capital of the word it replaces (a swap with the first word does move
its capital, as in BShift). Only sentences of ``MIN_WORDS`` to
``MAX_WORDS`` whitespace-separated words are kept (86% of the rows), so the change lies within
the 64 tokens an encoder reads. The split is MultiEmo's shared cut (row-aligned
with ``multiemo_en``), all four sentiments included.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Callable

from . import multiemo
from .base import SPLITS, Example, Item

MIN_WORDS, MAX_WORDS = 4, 30
WORD = re.compile(r"^[A-Za-z]+$")
WORD_ORDER = ("original", "swapped")
ODD_WORD = ("original", "replaced")
WHICH_POSITIVE = ("first", "second")
PAIR_MAX_WORDS = 20
"""``which_positive_en``: the longest sentence of a pair, so that both fit 64 tokens."""


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


def which_positive_loader() -> Callable[[], list[Item]]:
    """Items of ``which_positive_en``.

    Per split, the negative sentences N and positive sentences P of ``multiemo_en`` with at
    most ``PAIR_MAX_WORDS`` words, each list in a seeded order, give the pairs
    (N[j mod |N|], P[j mod |P|]) for j < |N| + |P| (fewer if the pairs would repeat), each in a
    seeded order: every sentence is in about two pairs (so a test set has ≥ 1,000 pairs), with
    different partners, and never in another split's."""

    def load() -> list[Item]:
        polar: dict[tuple[str, str], list[str]] = defaultdict(list)
        for item in multiemo.loader("en")():
            if len(item.example.text.split()) <= PAIR_MAX_WORDS:
                polar[str(item.split), item.example.answer].append(item.example.text)
        items = []
        for split in SPLITS:
            neg, pos = polar[split, "negative"], polar[split, "positive"]
            for side in (neg, pos):
                random.Random(f"which_positive_en/{split}").shuffle(side)
            for j in range(min(len(neg) + len(pos), math.lcm(len(neg), len(pos)))):
                negative, positive = neg[j % len(neg)], pos[j % len(pos)]
                second = random.Random(f"which_positive_en/{split}/{j}").random() < 0.5
                pair = (negative, positive) if second else (positive, negative)
                example = Example(pair[0], WHICH_POSITIVE, int(second), text_pair=pair[1])
                items.append(Item(example, f"{split}{j}", split))
        return items

    return load
