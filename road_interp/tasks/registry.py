"""The task registry: every task, filled at import time, looked up by name.

| task | kind | source | RoAd-paper analogue |
| --- | --- | --- | --- |
| ``multiemo_<lang>`` | classification, 2 labels | BIG-bench multiemo (pos/neg rows) | SST-2 |
| ``multiemo4_en`` | classification, 4 labels | BIG-bench multiemo (all rows, English) | SST-5-like |
| ``subjectivity_en`` | classification, 2 labels | BIG-bench multiemo (neutral vs pos/neg) | SUBJ |
| ``wordorder_en`` | classification, 2 labels | MultiEmo English, two adjacent words swapped | BShift |
| ``oddword_en`` | classification, 2 labels | MultiEmo English, one word replaced | SOMO |
| ``which_positive_en`` | classification, 2 labels | MultiEmo English, a negative and a positive sentence | – |
| ``vitaminc`` | classification, 3 labels | BIG-bench vitaminc_fact_verification | MNLI |
| ``epistemic_reasoning`` | classification, 2 labels | BIG-bench epistemic_reasoning | RTE |
| ``hyperbaton`` | classification, 2 labels (a/b) | BIG-bench hyperbaton | CoLA |
| ``strategyqa`` | classification, 2 labels | BIG-bench strategyqa | BoolQ |
| ``social_iqa`` | multiple choice, 3 options | BIG-bench social_iqa | SIQA |
| ``winogrande`` | multiple choice, 2 options | BIG-bench natural_instructions subtask029 | WinoGrande |
| ``mathqa`` | multiple choice, ~5 options | BIG-bench elementary_math_qa/question_only | AQuA |
| ``arithmetic`` | generation | BIG-bench arithmetic/2_digit_addition | arithmetic |
| ``gym_*`` | generation | reasoning-gym pools | GSM8K-like / skills |
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import pandas as pd

from ..data import DataError, GymSkill, fetch_bigbench, fetch_gym
from . import multiemo, probing, sources
from .base import SPLITS, Task

GYM_SKILLS = (
    GymSkill(
        "gym_chain_sum",
        "chain_sum",
        (("min_terms", 2), ("max_terms", 3), ("min_digits", 1), ("max_digits", 2)),
    ),
    GymSkill("gym_spell_backward", "spell_backward", (("min_word_len", 3), ("max_word_len", 7))),
    GymSkill("gym_letter_counting", "letter_counting", (("min_words", 3), ("max_words", 6))),
    GymSkill("gym_gsm_symbolic", "gsm_symbolic", (("difficulty", 1.0),), size=2000),
)

_LANG_NAMES = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "ja": "Japanese",
    "zh": "Chinese",
}


def _build() -> dict[str, Task]:
    tasks: list[Task] = []
    for lang in multiemo.LANGUAGES:
        tasks.append(
            Task(
                f"multiemo_{lang}",
                "classification",
                "accuracy",
                f"MultiEmo sentiment of a {_LANG_NAMES[lang]} sentence (reviews; machine-"
                "translated from Polish), positive vs negative; neutral/ambivalent rows dropped. "
                "Split shared with every language (row-aligned).",
                f"bigbench:{multiemo.task_path(lang)}",
                multiemo.loader(lang),
                labels=multiemo.LABELS,
                instruction="Is the sentiment of this sentence positive or negative?",
                text_name="Sentence",
            )
        )
    tasks += [
        Task(
            "multiemo4_en",
            "classification",
            "accuracy",
            "MultiEmo sentiment of an English sentence, 4-way: negative, neutral, positive or "
            "ambivalent. Same split as multiemo_en.",
            f"bigbench:{multiemo.task_path('en')}",
            multiemo.loader("en", multiemo.FOUR_WAY),
            labels=multiemo.FOUR_WAY,
            instruction="Is the sentiment of this sentence negative, neutral, positive or "
            "ambivalent?",
            text_name="Sentence",
        ),
        Task(
            "subjectivity_en",
            "classification",
            "accuracy",
            "MultiEmo subjectivity of an English sentence: neutral vs polar (positive or "
            "negative); ambivalent rows dropped. Same split as multiemo_en, so its polar test "
            "rows are multiemo_en's test rows.",
            f"bigbench:{multiemo.task_path('en')}",
            multiemo.loader("en", multiemo.SUBJECTIVITY, multiemo.POLAR),
            labels=multiemo.SUBJECTIVITY,
            instruction="Is this sentence neutral, or does it express an opinion (polar)?",
            text_name="Sentence",
        ),
        Task(
            "wordorder_en",
            "classification",
            "accuracy",
            "Word order (SentEval's BShift) on MultiEmo's English sentences: were two adjacent "
            "words swapped (about half were)? Same split as multiemo_en; all sentiments.",
            f"bigbench:{multiemo.task_path('en')}",
            probing.word_order_loader(),
            labels=probing.WORD_ORDER,
            instruction="Is this sentence as written (original), or were two adjacent words "
            "swapped?",
            text_name="Sentence",
        ),
        Task(
            "oddword_en",
            "classification",
            "accuracy",
            "Odd word (SentEval's SOMO) on MultiEmo's English sentences: was one word replaced "
            "by a random word of the corpus (about half were)? Same split as multiemo_en.",
            f"bigbench:{multiemo.task_path('en')}",
            probing.odd_word_loader(),
            labels=probing.ODD_WORD,
            instruction="Is this sentence as written (original), or was one word replaced?",
            text_name="Sentence",
        ),
        Task(
            "which_positive_en",
            "classification",
            "accuracy",
            "Which of two MultiEmo English sentences, one negative and one positive (each of at "
            "most 20 words, both from one split of multiemo_en), is the positive one? Each "
            "sentence is in about two pairs.",
            f"bigbench:{multiemo.task_path('en')}",
            probing.which_positive_loader(),
            labels=probing.WHICH_POSITIVE,
            instruction="One of these two sentences is positive and the other negative. Which "
            "is the positive one, the first or the second?",
            text_name="First",
            pair_name="Second",
        ),
        Task(
            "vitaminc",
            "classification",
            "accuracy",
            "VitaminC fact verification: does a Wikipedia passage support the claim (True), "
            "refute it (False) or neither? Items of one claim stay in one split.",
            "bigbench:vitaminc_fact_verification",
            sources.classification(
                "vitaminc_fact_verification",
                ("True", "False", "Neither"),
                sources.passage_claim,
                group_by_pair=True,
            ),
            labels=("True", "False", "Neither"),
            instruction="Does the passage support the claim (True), refute it (False), "
            "or neither (Neither)?",
            text_name="Passage",
            pair_name="Claim",
        ),
        Task(
            "epistemic_reasoning",
            "classification",
            "accuracy",
            "Epistemic reasoning (RTE-like): does the premise about beliefs entail the hypothesis?",
            "bigbench:epistemic_reasoning",
            sources.classification(
                "epistemic_reasoning", ("entailment", "non-entailment"), sources.premise_hypothesis
            ),
            labels=("entailment", "non-entailment"),
            instruction="Does the premise entail the hypothesis?",
            text_name="Premise",
            pair_name="Hypothesis",
        ),
        Task(
            "hyperbaton",
            "classification",
            "accuracy",
            "Hyperbaton (CoLA-like): which of two noun phrases, a or b, has the correct "
            "English adjective order?",
            "bigbench:hyperbaton",
            sources.classification("hyperbaton", ("a", "b")),
            labels=("a", "b"),
            text_name="",
        ),
        Task(
            "strategyqa",
            "classification",
            "accuracy",
            "StrategyQA (BoolQ-like): yes/no questions that need implicit multi-step reasoning.",
            "bigbench:strategyqa",
            sources.classification("strategyqa", ("No", "Yes")),
            labels=("No", "Yes"),
            instruction="Answer the question with Yes or No.",
        ),
        Task(
            "social_iqa",
            "multiple_choice",
            "accuracy",
            "Social IQa: commonsense about people's motives and reactions, 3 options.",
            "bigbench:social_iqa",
            sources.multiple_choice("social_iqa"),
            instruction="Choose the most likely answer.",
        ),
        Task(
            "winogrande",
            "multiple_choice",
            "accuracy",
            "WinoGrande twin sentences (Natural Instructions subtask029, objects): which of "
            "the sentence's two objects fills the blank (_)? A context word's twins stay in "
            "one split.",
            "bigbench:natural_instructions/subtask029_winogrande_full_object",
            sources.winogrande("natural_instructions/subtask029_winogrande_full_object"),
            instruction="Which option fills the blank (_)?",
            text_name="Sentence",
        ),
        Task(
            "mathqa",
            "multiple_choice",
            "accuracy",
            "MathQA (AQuA-like) math word problems with ~5 numeric options "
            "(BIG-bench elementary_math_qa, question only).",
            "bigbench:elementary_math_qa/question_only",
            sources.multiple_choice("elementary_math_qa/question_only"),
            instruction="Solve the math word problem.",
        ),
        Task(
            "arithmetic",
            "generation",
            "exact_match",
            "Two-digit addition ('What is 80 plus 29?' -> '109').",
            "bigbench:arithmetic/2_digit_addition",
            sources.generation("arithmetic/2_digit_addition"),
        ),
    ]
    for skill in GYM_SKILLS:
        settings = ", ".join(f"{k}={v}" for k, v in skill.config)
        tasks.append(
            Task(
                skill.name,
                "generation",
                "exact_match",
                f"reasoning-gym {skill.dataset} ({settings}); {skill.size} generated with seed "
                f"{skill.seed}, identical questions grouped.",
                f"reasoning_gym:{skill.dataset}",
                sources.gym(skill.name),
            )
        )
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _build()


def get_task(name: str) -> Task:
    """The registered task ``name``; a KeyError suggests the closest names."""
    try:
        return TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(name, TASKS, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise KeyError(f"unknown task {name!r}; {hint}known tasks: {', '.join(TASKS)}") from None


def list_tasks() -> pd.DataFrame:
    """One row per task: name, kind, metric, source, split sizes, labels/choices and the
    share of the most frequent answer in the test split (the majority baseline for
    classification). Sizes are NaN for tasks whose data is not in the cache."""
    rows = []
    for task in TASKS.values():
        row: dict[str, object] = {
            "name": task.name,
            "kind": task.kind,
            "metric": task.metric,
            "source": task.source,
        }
        try:
            sizes = task.sizes_by_split()
            test = task.examples("test")
            counts = task.label_counts("test")
            row |= {f"n_{s}": sizes[s] for s in SPLITS}
            row["choices"] = len(task.labels) if task.labels else max(len(e.choices) for e in test)
            row["majority_test"] = (
                max(counts.values()) / len(test) if task.kind == "classification" else math.nan
            )
        except DataError:
            row |= {f"n_{s}": math.nan for s in SPLITS}
        rows.append(row)
    return pd.DataFrame(rows)


def data_sources() -> tuple[list[str], list[GymSkill]]:
    """The BIG-bench task paths and reasoning-gym skills the registry reads."""
    paths = sorted(
        {t.source.split(":", 1)[1] for t in TASKS.values() if t.source.startswith("bigbench:")}
    )
    return paths, list(GYM_SKILLS)


def fetch_data(force: bool = False, gym: bool = True) -> list[Path]:
    """Put every file the registry needs into the cache (download, extract, verify, generate);
    files already cached and valid are kept. ``gym=False`` skips reasoning-gym."""
    paths, skills = data_sources()
    out = fetch_bigbench(paths, force=force)
    if gym:
        out += fetch_gym(skills, force=force)
    return out
