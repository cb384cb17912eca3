"""The task registry on the real cached data (run `road-interp fetch` first)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

from road_interp.data import DataError
from road_interp.tasks import (
    SPLITS,
    TASKS,
    Example,
    get_task,
    list_tasks,
    multiemo,
    parallel_sentences,
)
from road_interp.tasks.base import SplitSizes, assign_splits, stratified_order
from road_interp.tasks.multiemo import ALIGNED_ROWS, _rows
from road_interp.tasks.probing import replace_word, swap_adjacent


@pytest.fixture(scope="module", autouse=True)
def needs_data():
    try:
        get_task("strategyqa").examples("test", limit=1)
    except DataError as err:
        pytest.skip(str(err))


def fresh(task):
    """The same task without its memoized splits: recomputes everything from the files."""
    return dataclasses.replace(task)


def key(e: Example) -> tuple:
    return (e.text, e.text_pair)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_real_examples(name):
    task = get_task(name)
    sizes = task.sizes_by_split()
    assert all(sizes[s] > 0 for s in SPLITS), sizes
    for e in task.examples("validation", limit=20):
        assert e.text.strip()
        assert 0 <= e.label < len(e.choices)
        assert all(c.strip() for c in e.choices)
        if task.kind == "classification":
            assert e.choices == task.labels
        if task.kind == "multiple_choice":
            assert len(e.choices) >= 2 and len(set(e.choices)) == len(e.choices)
        if task.kind == "generation":
            assert e.target == e.answer and e.choices == (e.target,)
        prompt = task.prompt(e)
        assert e.text in prompt and prompt.endswith("Answer:")
        assert (e.text_pair is None) or (e.text_pair in prompt)
    assert task.metric == ("exact_match" if task.kind == "generation" else "accuracy")


@pytest.mark.parametrize("name", ["multiemo_en", "vitaminc", "winogrande", "social_iqa", "mathqa"])
def test_splits_are_disjoint_and_deterministic(name):
    task = get_task(name)
    parts = {s: task.examples(s) for s in SPLITS}
    keys = {s: {key(e) for e in parts[s]} for s in SPLITS}
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]
    again = fresh(task)
    for s in SPLITS:
        assert again.examples(s) == parts[s]


def test_seed_orders_but_never_moves_examples():
    task = get_task("epistemic_reasoning")
    a, b = task.examples("test", seed=0), task.examples("test", seed=1)
    assert a != b
    assert sorted(map(key, a)) == sorted(map(key, b))
    assert task.examples("test", limit=50, seed=1) == b[:50]


def test_groups_never_span_splits():
    """VitaminC: all passages of one claim sit in one split; WinoGrande twins likewise."""
    task = get_task("vitaminc")
    where: dict[str, set[str]] = {}
    for s in SPLITS:
        for e in task.examples(s):
            where.setdefault(str(e.text_pair), set()).add(s)
    assert all(len(v) == 1 for v in where.values())


@pytest.mark.parametrize("name", ["multiemo_en", "vitaminc", "strategyqa", "epistemic_reasoning"])
def test_splits_and_every_prefix_are_stratified(name):
    task = get_task(name)
    whole = Counter(e.label for s in SPLITS for e in task.examples(s))
    n = sum(whole.values())
    for s in SPLITS:
        exs = task.examples(s, seed=3)
        share = Counter(e.label for e in exs)
        for lab, count in whole.items():
            assert abs(share[lab] / len(exs) - count / n) < 0.02, (s, lab)
        for m in (10, 57, 200):
            prefix = Counter(e.label for e in exs[:m])
            for lab in whole:
                assert abs(prefix[lab] - m * share[lab] / len(exs)) <= 1.0 + 1e-9, (s, m, lab)


@pytest.mark.parametrize(
    "name, counts",
    [
        # OFFLINE_ASSETS.md §2, counted from the files
        ("epistemic_reasoning", {"entailment": 741, "non-entailment": 1259}),
        ("vitaminc", {"True": 27242, "False": 20169, "Neither": 7257}),
        ("strategyqa", {"Yes": 1071, "No": 1219}),
        ("hyperbaton", {"a": 25000, "b": 25000}),
    ],
)
def test_label_counts_are_as_documented(name, counts):
    task = get_task(name)
    got = sum((task.label_counts(s) for s in SPLITS), Counter())
    assert dict(got) == counts


def test_multiemo_counts():
    """The file's 21,156 negative / 15,324 positive rows, less the empty sentences."""
    raw = Counter(lab for _, lab in _rows("en"))
    assert raw["negative"] == 21156 and raw["positive"] == 15324
    task = get_task("multiemo_en")
    got = sum((task.label_counts(s) for s in SPLITS), Counter())
    empty = Counter(lab for text, lab in _rows("en") if not text)
    assert got == {lab: raw[lab] - empty[lab] for lab in ("negative", "positive")}


def test_unknown_task_suggests_names():
    with pytest.raises(KeyError, match="did you mean 'multiemo_en'"):
        get_task("multiemo_eng")
    with pytest.raises(KeyError, match="did you mean 'winogrande'"):
        get_task("winogrand")


def test_bad_split_and_limit():
    task = get_task("strategyqa")
    with pytest.raises(ValueError, match="split must be one of"):
        task.examples("dev")
    with pytest.raises(ValueError, match="limit"):
        task.examples("train", limit=-1)


def test_prompt_layout():
    task = get_task("vitaminc")
    e = Example("The sky is blue.", task.labels, 0, text_pair="The sky has a colour.")
    assert task.prompt(e) == (
        "Does the passage support the claim (True), refute it (False), or neither (Neither)?\n"
        "Passage: The sky is blue.\n"
        "Claim: The sky has a colour.\n"
        "Options: True / False / Neither\n"
        "Answer:"
    )
    assert task.continuations(e) == (" True", " False", " Neither")
    gen = get_task("arithmetic").examples("test", limit=1)[0]
    assert get_task("arithmetic").prompt(gen) == f"Question: {gen.text}\nAnswer:"


def test_multiemo_languages_are_row_aligned():
    """Labels agree row by row up to each language's drift point (pt has one row, 43,645,
    whose label differs in the source file); the row after the drift point is shifted."""
    en = _rows("en")
    for lang in ("fr", "ja", "zh", "de", "pt"):
        rows = _rows(lang)
        assert len(rows) == ALIGNED_ROWS.get(lang, len(en))
        differ = [i for i, (r, e) in enumerate(zip(rows, en, strict=False)) if r[1] != e[1]]
        assert differ == ([43645] if lang == "pt" else [])


def test_multiemo_split_is_shared_across_languages():
    """The French test set is the translation of the English test set (same rows, less the
    few rows left out in either language), and no sentence text spans two splits."""
    pairs = [
        p for p in parallel_sentences("en", "fr", "test") if p.sentiment in ("positive", "negative")
    ]
    en = {e.text for e in get_task("multiemo_en").examples("test")}
    fr = {e.text for e in get_task("multiemo_fr").examples("test")}
    assert {p.source for p in pairs} <= en and {p.target for p in pairs} <= fr
    assert len(pairs) >= 0.99 * len(fr)
    for lang in ("fr", "zh"):
        task = get_task(f"multiemo_{lang}")
        texts = {s: {e.text for e in task.examples(s)} for s in SPLITS}
        assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
        assert "" not in texts["train"]


def test_parallel_sentences():
    a = parallel_sentences("en", "de", "validation", limit=30, seed=5)
    assert len(a) == 30 and a == parallel_sentences("en", "de", "validation", limit=30, seed=5)
    assert all(p.index < ALIGNED_ROWS["de"] for p in a)
    assert {p.sentiment for p in parallel_sentences("en", "fr", "validation")} == {
        "positive",
        "negative",
        "neutral",
        "ambivalent",
    }
    with pytest.raises(ValueError, match="no language 'xx'"):
        parallel_sentences("en", "xx")


def test_list_tasks_table():
    table = list_tasks()
    assert isinstance(table, pd.DataFrame)
    assert list(table["name"]) == list(TASKS)
    assert (table[["n_train", "n_validation", "n_test"]] > 0).all().all()
    row = table.set_index("name").loc["multiemo_en"]
    assert row["choices"] == 2 and 0.5 < row["majority_test"] < 0.65


def test_assign_splits_sizes_and_groups():
    groups = [f"g{i // 3}" for i in range(3000)]  # 1000 groups of 3
    strata = [i % 2 for i in range(3000)]  # a group's first item decides: g even -> 0
    cut = assign_splits(groups, strata, "s", SplitSizes())
    count = Counter(cut)
    assert abs(count["test"] - 600) <= 3 and abs(count["validation"] - 300) <= 3
    for g in set(groups):
        assert len({c for c, gg in zip(cut, groups, strict=True) if gg == g}) == 1
    assert cut == assign_splits(groups, strata, "s", SplitSizes())
    assert cut != assign_splits(groups, strata, "t", SplitSizes())


def test_stratified_order_is_a_permutation():
    labels = [0] * 70 + [1] * 20 + [2] * 10
    order = stratified_order(labels, "x")
    assert sorted(order) == list(range(100))
    first10 = Counter(labels[i] for i in order[:10])
    assert first10 == {0: 7, 1: 2, 2: 1}


def test_splits_do_not_depend_on_the_process(tmp_path):
    """Same splits and labels under another PYTHONHASHSEED (no set or hash order leaks in)."""
    names = ["winogrande", "vitaminc", "mathqa", "gym_chain_sum"]
    code = (
        "import hashlib, sys\n"
        "from road_interp.tasks import get_task\n"
        "for n in sys.argv[1:]:\n"
        "    t = get_task(n)\n"
        "    h = hashlib.sha256(repr([t.examples(s) for s in ('train', 'validation', 'test')])"
        ".encode())\n"
        "    print(n, h.hexdigest())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, *names], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    for name, digest in zip(out[::2], out[1::2], strict=True):
        task = get_task(name)
        mine = repr([task.examples(s) for s in SPLITS]).encode()
        assert hashlib.sha256(mine).hexdigest() == digest, name


@pytest.mark.parametrize("name", ["wordorder_en", "oddword_en"])
def test_probing_tasks_change_about_half_of_real_sentences(name):
    """An ``original`` example is a MultiEmo sentence of its split as written; a changed one
    is that split's sentence with two adjacent words swapped (wordorder) or one word replaced
    by a word of the split (oddword), never a sentence of another split."""
    task = get_task(name)
    for split in SPLITS:
        rows = [text for _, text, s in multiemo.sentences("en") if s == split]
        written = set(rows)
        by_words = {tuple(sorted(t.split())): t for t in rows}
        by_length = Counter(len(t.split()) for t in rows)
        vocabulary = {w.lower() for t in rows for w in t.split()}
        exs = task.examples(split)
        assert 0.45 < sum(e.label for e in exs) / len(exs) < 0.55
        for e in exs[:300]:
            words = e.text.split()
            if e.answer == "original":
                assert e.text in written
                continue
            assert e.text not in written and by_length[len(words)]
            if name == "wordorder_en":
                source = by_words[tuple(sorted(words))].split()
                moved = [i for i, (a, b) in enumerate(zip(words, source, strict=True)) if a != b]
                assert len(moved) == 2 and moved[1] == moved[0] + 1
                assert words[moved[0]] == source[moved[1]] and words[moved[1]] == source[moved[0]]
            else:
                assert any(
                    sum(a != b for a, b in zip(words, t.split(), strict=True)) == 1
                    for t in rows
                    if len(t.split()) == len(words)
                )
                assert {w.lower() for w in words} <= vocabulary


def test_probing_changes_are_alphabetic_and_keep_case():
    rng = random.Random(0)
    assert swap_adjacent("Good , nice .", rng) is None  # no two adjacent words
    assert swap_adjacent("the the food", rng) == "the food the"
    assert replace_word("Great service, really.", ["bad"], rng) == "Bad service, really."
    assert replace_word("... !", ["bad"], rng) is None


def test_which_positive_pairs_a_negative_with_a_positive_sentence_of_one_split():
    task = get_task("which_positive_en")
    sentiment: dict[tuple[str, str], set[str]] = {}  # a few texts occur with both labels
    for s in SPLITS:
        for e in get_task("multiemo_en").examples(s):
            sentiment.setdefault((s, e.text), set()).add(e.answer)
    assert task.sizes_by_split()["test"] >= 1000
    for split in SPLITS:
        exs = task.examples(split)
        assert 0.45 < sum(e.label for e in exs) / len(exs) < 0.55
        pairs = [(e.text, e.text_pair) for e in exs]
        assert len(set(pairs)) == len(pairs)
        for e in exs:
            positive = (e.text, e.text_pair)[e.label]
            negative = (e.text, e.text_pair)[1 - e.label]
            assert "positive" in sentiment[split, positive]
            assert "negative" in sentiment[split, negative]
            assert max(len(positive.split()), len(negative.split())) <= 20
