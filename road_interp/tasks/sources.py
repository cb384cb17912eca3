"""Turning cached source files into pools of :class:`Item` (one reader per source format).

Each reader takes the parsed BIG-bench ``task.json`` (or a reasoning-gym pool) and returns
items; nothing here splits or prompts. The formats are the ones of BIG-bench 1.0.0, checked
against the files (OFFLINE_ASSETS.md §2)."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..data import DataError, load_bigbench, load_gym
from .base import Example, Item


def _correct(scores: dict[str, float]) -> list[str]:
    return [k for k, v in scores.items() if v == 1]


def classification(
    task_path: str,
    labels: tuple[str, ...],
    split_input: Callable[[str], tuple[str, str | None]] = lambda s: (s.strip(), None),
    group_by_pair: bool = False,
) -> Callable[[], list[Item]]:
    """Items whose one correct ``target_scores`` key is in ``labels`` (others are dropped, e.g.
    MultiEmo's neutral and ambivalent). ``split_input`` cuts the input into (text, text_pair);
    ``group_by_pair`` keeps all items of one text_pair (a VitaminC claim) in one split."""

    def load() -> list[Item]:
        items = []
        for raw in load_bigbench(task_path)["examples"]:
            correct = _correct(raw["target_scores"])
            if len(correct) != 1 or correct[0] not in labels:
                continue
            text, pair = split_input(raw["input"])
            ex = Example(text, labels, labels.index(correct[0]), text_pair=pair)
            group = pair if group_by_pair and pair is not None else f"{text}\x00{pair}"
            items.append(Item(ex, group))
        return items

    return load


def multiple_choice(task_path: str) -> Callable[[], list[Item]]:
    """Items with per-example options (the ``target_scores`` keys, in file order) and exactly
    one correct option."""

    def load() -> list[Item]:
        items = []
        for raw in load_bigbench(task_path)["examples"]:
            choices = tuple(k.strip() for k in raw["target_scores"])
            correct = _correct(raw["target_scores"])
            if len(correct) != 1 or len(set(choices)) != len(choices):
                continue
            text = raw["input"].strip()
            items.append(Item(Example(text, choices, choices.index(correct[0].strip())), text))
        return items

    return load


def generation(task_path: str) -> Callable[[], list[Item]]:
    """Items with a single string ``target`` (exact-match generation)."""

    def load() -> list[Item]:
        items = []
        for raw in load_bigbench(task_path)["examples"]:
            target = raw["target"] if isinstance(raw["target"], str) else raw["target"][0]
            text = raw["input"].strip()
            items.append(Item(Example(text, (target,), 0, target=target), text))
        return items

    return load


def gym(skill: str) -> Callable[[], list[Item]]:
    """Items of a cached reasoning-gym pool; identical questions are grouped."""

    def load() -> list[Item]:
        items = []
        for raw in load_gym(skill)["examples"]:
            text, target = raw["input"].strip(), raw["target"].strip()
            items.append(Item(Example(text, (target,), 0, target=target), text))
        return items

    return load


_TWINS = re.compile(
    r"Sentence 1:\s*(?P<s1>.*?)\s*\nAnswer1:\s*(?P<a1>.*?)\s*"
    r"\nSentence 2:\s*(?P<s2>.*?)\s*\nAnswer2:\s*(?P<a2>.*?)\s*",
    re.S,
)


def winogrande(task_path: str) -> Callable[[], list[Item]]:
    """WinoGrande twin sentences as 2-way multiple choice.

    Natural Instructions subtask029 ("full object") holds, per context word, twin sentences
    with a blank and both answers, e.g. "... since the _ were crowded" -> holes, "... since the
    _ were roomy" -> spaces; the two answers are the two options, ordered as they first appear
    in the first sentence (so the twins have opposite labels). Twins whose answers coincide or do not
    both appear (case-sensitively) in both sentences are dropped (~1 %). All twins of one
    context word share a group, so a context word never spans two splits."""

    def load() -> list[Item]:
        items = []
        for raw in load_bigbench(task_path)["examples"]:
            word = raw["input"].strip().removeprefix("Context Word:").strip().rstrip(".").lower()
            for text in raw["target"]:
                m = _TWINS.fullmatch(text.strip())
                if m is None:
                    raise DataError(f"{task_path}: unexpected twin format {text[:120]!r}")
                twins = [(m["s1"], m["a1"]), (m["s2"], m["a2"])]
                twins = [(s, a.rstrip(".").strip()) for s, a in twins]
                options = [a for _, a in twins]
                if options[0] == options[1] or not all(o in s for s, _ in twins for o in options):
                    continue
                first = twins[0][0]  # order: first appearance, then text ("car" < "car seat")
                choices = tuple(sorted(options, key=lambda o: (first.index(o), o)))
                for sentence, answer in twins:
                    ex = Example(sentence, choices, choices.index(answer))
                    items.append(Item(ex, word))
        return items

    return load


def premise_hypothesis(text: str) -> tuple[str, str | None]:
    """``"Premise: P Hypothesis: H"`` -> ``(P, H)`` (epistemic_reasoning)."""
    m = re.fullmatch(r"Premise:\s*(.*?)\s*Hypothesis:\s*(.*)", text.strip(), re.S)
    if m is None:
        raise DataError(f"expected 'Premise: ... Hypothesis: ...', got {text[:80]!r}")
    return m[1], m[2]


def passage_claim(text: str) -> tuple[str, str | None]:
    """``"<passage>\\nClaim: <claim>"`` -> ``(passage, claim)`` (vitaminc_fact_verification)."""
    passage, sep, claim = text.rpartition("\nClaim:")
    if not sep:
        raise DataError(f"expected '<passage>\\nClaim: <claim>', got {text[:80]!r}")
    return passage.strip(), claim.strip()
