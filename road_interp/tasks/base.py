"""What a task is: examples, fixed splits, prompts.

Splits. Every task's pool is cut once into train / validation / test by a fixed seed of its
own (never by the caller's ``seed``), so a test set is the same in every run and never overlaps
training data. The cut is

- **grouped**: items that share a group key (the same sentence, the same claim, a WinoGrande
  twin pair, ...) land in one split, so near-duplicates do not leak across splits;
- **stratified**: each label keeps its share of the pool in every split;
- sized ``test = min(20 %, 2000)``, ``validation = min(10 %, 1000)``, train = the rest, unless a
  task says otherwise.

``Task.examples(split, limit, seed)`` returns the split in an order drawn from ``seed``, with
labels interleaved so that **every prefix** (hence every ``limit``) keeps the split's label
proportions to within one example per label.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

SPLITS = ("train", "validation", "test")
KINDS = ("classification", "multiple_choice", "generation")


@dataclass(frozen=True)
class Example:
    """One labelled example.

    ``choices`` are the answer options as text (for classification the verbalized label
    names, for generation the single target); ``label`` indexes the correct one."""

    text: str
    choices: tuple[str, ...]
    label: int
    text_pair: str | None = None
    """Second segment for encoder pair tasks (a claim, a hypothesis), else None."""
    target: str | None = None
    """Free-text answer for generation tasks (scored by exact match), else None."""

    @property
    def answer(self) -> str:
        """The correct answer as text: ``choices[label]``."""
        return self.choices[self.label]


@dataclass(frozen=True)
class Item:
    """A pool entry before splitting: the example, the key that keeps near-duplicates in one
    split, and (for tasks that share one cut across files, like MultiEmo's languages) the split
    it was given."""

    example: Example
    group: str
    split: str | None = None


@dataclass(frozen=True)
class SplitSizes:
    """Fractions of the pool, each capped at a number of examples."""

    test: float = 0.2
    test_max: int = 2000
    validation: float = 0.1
    validation_max: int = 1000


def assign_splits(
    groups: Sequence[str], strata: Sequence[object], seed: str, sizes: SplitSizes
) -> list[str]:
    """The split of each item, given each item's group key and stratum (its label).

    A group takes the stratum of its first item. Within each stratum the groups are shuffled
    by ``seed`` and dealt to test, then validation, until each holds its share of the
    stratum's items; the rest is train. Depends only on the arguments (no global RNG)."""
    n = len(groups)
    frac_test = min(sizes.test, sizes.test_max / n) if n else 0.0
    frac_val = min(sizes.validation, sizes.validation_max / n) if n else 0.0
    members: dict[str, list[int]] = defaultdict(list)
    stratum_groups: dict[str, list[str]] = defaultdict(list)
    for i, (g, s) in enumerate(zip(groups, strata, strict=True)):
        if g not in members:
            stratum_groups[repr(s)].append(g)
        members[g].append(i)
    out = ["train"] * n
    for stratum in sorted(stratum_groups):
        keys = stratum_groups[stratum]
        random.Random(f"{seed}/{stratum}").shuffle(keys)
        total = sum(len(members[g]) for g in keys)
        quotas = [("test", round(frac_test * total)), ("validation", round(frac_val * total))]
        queue = list(reversed(keys))
        for split, quota in quotas:
            taken = 0
            while taken < quota and queue:
                group = queue.pop()
                for i in members[group]:
                    out[i] = split
                taken += len(members[group])
    return out


def stratified_order(labels: Sequence[int], seed: str) -> list[int]:
    """A seeded permutation of ``range(len(labels))`` whose every prefix keeps the label shares.

    The k-th of the n_l items of label l (after a seeded shuffle) is placed at position
    (k + 1/2) / n_l on [0, 1]; sorting by that position interleaves the labels evenly."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    keyed = []
    for lab, idx in by_label.items():
        random.Random(f"{seed}/{lab}").shuffle(idx)
        keyed += [((k + 0.5) / len(idx), lab, i) for k, i in enumerate(idx)]
    return [i for _, _, i in sorted(keyed)]


@dataclass(frozen=True)
class Task:
    """A registered task: where its data comes from, how to split it and how to prompt it.

    ``kind`` is ``"classification"`` (fixed label set, ``labels``; encoders take
    ``(text, text_pair)``, causal LMs score the label words), ``"multiple_choice"``
    (per-example ``choices``, scored by log-likelihood) or ``"generation"`` (a ``target``,
    scored by exact match)."""

    name: str
    kind: str
    metric: str
    description: str
    source: str
    load: Callable[[], list[Item]] = field(repr=False, compare=False)
    labels: tuple[str, ...] = ()
    """Classification label names (``num_labels = len(labels)``); empty for other kinds."""
    instruction: str = ""
    """First line of the causal-LM prompt."""
    text_name: str = "Question"
    pair_name: str = ""
    sizes: SplitSizes = SplitSizes()
    split_seed: str = ""
    """Seed of the fixed train/validation/test cut (default: the task name)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "classification") != bool(self.labels):
            raise ValueError(f"task {self.name}: labels are required for classification only")

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        items = self.load()
        if any(it.split is None for it in items):
            cut = assign_splits(
                [it.group for it in items],
                [it.example.label if self.kind != "generation" else 0 for it in items],
                self.split_seed or self.name,
                self.sizes,
            )
            items = [Item(it.example, it.group, s) for it, s in zip(items, cut, strict=True)]
        out: dict[str, list[Example]] = {s: [] for s in SPLITS}
        for it in items:
            out[str(it.split)].append(it.example)
        return out

    def examples(self, split: str, limit: int | None = None, seed: int = 0) -> list[Example]:
        """The examples of ``split`` (``train``, ``validation`` or ``test``).

        Which examples belong to a split never depends on ``seed``; ``seed`` only orders them
        (so it picks which ``limit`` examples you get). Every prefix is label-stratified."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, not {limit}")
        pool = self._splits[split]
        order = stratified_order([e.label for e in pool], f"{self.name}/{split}/{seed}")
        return [pool[i] for i in order[:limit]]

    def sizes_by_split(self) -> dict[str, int]:
        return {s: len(v) for s, v in self._splits.items()}

    def label_counts(self, split: str) -> Counter:
        """How often each answer text is correct in ``split`` (for classification: per label)."""
        return Counter(e.answer for e in self._splits[split])

    def prompt(self, example: Example) -> str:
        """The causal-LM prompt; the answer follows after one space (``prompt + " " + choice``).

        Layout::

            <instruction>
            <text_name>: <text>
            <pair_name>: <text_pair>          (pair tasks)
            Options: <c0> / <c1> / ...        (classification and multiple choice)
            Answer:
        """
        lines = [self.instruction] if self.instruction else []
        lines.append(f"{self.text_name}: {example.text}" if self.text_name else example.text)
        if example.text_pair is not None:
            lines.append(f"{self.pair_name}: {example.text_pair}")
        if self.kind != "generation":
            lines.append("Options: " + " / ".join(example.choices))
        lines.append("Answer:")
        return "\n".join(lines)

    def continuations(self, example: Example) -> tuple[str, ...]:
        """What follows the prompt for each choice: ``" " + choice``."""
        return tuple(" " + c for c in example.choices)
