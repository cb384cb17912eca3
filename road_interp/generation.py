"""Generation skills: chat-template examples, batched greedy answers, pluggable checks.

A generation skill is a list of (instruction, input, answer) triples. `chat_examples` turns
them into `road_interp.tasks.Example` with the model's chat template (the prompt is the
user turn plus the assistant header, the target is the answer), ready for
`road_interp.training.train`. `answers` generates greedy answers in batches; `score` runs
named checks over (answer, gold) pairs and returns one row per item, so every prediction is
kept and any rate or interval is computed from the table.

    examples = chat_examples(tok, [("Sentiment?", "I loved it.", "positive")])
    table = score(answers(model, tok, prompts, max_new_tokens=10), golds,
                  {"content": label_check(("positive", "negative")), "format": json_check,
                   "joint": json_gold_check})
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .evaluation import generate_answers
from .tasks import Example

Check = Callable[[str, str], bool]
"""(answer, gold) -> whether the answer passes."""


def chat_prompt(tokenizer: Any, message: str) -> str:
    """``message`` as the user turn of ``tokenizer``'s chat template, with the assistant
    header after it (the model's answer follows)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat template; use an instruct model's tokenizer"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
    )


def chat_examples(
    tokenizer: Any,
    triples: Iterable[tuple[str, str, str]],
    template: str = "{instruction}\n{input}",
) -> list[Example]:
    """One generation `Example` per (instruction, input, answer): prompt = the chat template
    around ``template`` filled with instruction and input; target = answer."""
    out = []
    for instruction, text, answer in triples:
        prompt = chat_prompt(tokenizer, template.format(instruction=instruction, input=text))
        out.append(Example(prompt, (answer,), 0, target=answer))
    return out


def answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to ``prompts`` (eval mode, no gradients), stripped of whitespace.

    Batches are left-padded (`road_interp.evaluation.generate_answers`), and a batch's
    answers equal each prompt's alone up to float rounding."""
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        with torch.no_grad():
            for start in tqdm(
                range(0, len(prompts), batch_size), desc="generate", disable=not progress
            ):
                chunk = prompts[start : start + batch_size]
                out += generate_answers(model, tokenizer, chunk, max_new_tokens)
    finally:
        model.train(was_training)
    return [a.strip() for a in out]


# -- checks ---------------------------------------------------------------------------------
def first_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label that occurs first in ``answer`` as a whole word (case-insensitive), or
    None. Labels that are prefixes of each other are told apart by the word boundary."""
    found = [
        (m.start(), label)
        for label in labels
        if (m := re.search(rf"\b{re.escape(label)}\b", answer, re.IGNORECASE))
    ]
    return min(found)[1] if found else None


def label_check(labels: Sequence[str]) -> Check:
    """A check: the first label in the answer is the gold one."""
    return lambda answer, gold: first_label(answer, labels) == gold


def first_number(answer: str) -> str | None:
    """The first integer written in digits in ``answer`` (a leading minus kept), or None."""
    found = re.search(r"-?\d+", answer)
    return found.group() if found else None


def number_check(answer: str, gold: str) -> bool:
    """A check: the first integer in the answer is the gold one (``"3"``)."""
    return first_number(answer) == gold.strip()


def json_object(answer: str) -> dict | None:
    """The JSON object the answer's first line is; None if that line is not one."""
    line = answer.strip().split("\n", 1)[0]
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def json_answer(answer: str) -> str | None:
    """The ``"answer"`` field of the JSON object the answer's first line is, as text; None
    if the line is not such an object."""
    value = json_object(answer)
    if value is None or "answer" not in value:
        return None
    return str(value["answer"])


def json_check(answer: str, gold: str) -> bool:
    """A check: the answer's first line is a JSON object with an ``"answer"`` field."""
    return json_answer(answer) is not None


def json_gold_check(answer: str, gold: str) -> bool:
    """A check: the answer is a JSON object whose ``"answer"`` field is the gold answer
    (case and surrounding space aside): right content in the right format."""
    field = json_answer(answer)
    return field is not None and field.strip().lower() == gold.strip().lower()


def json_content_check(check: Check) -> Check:
    """A check: the answer is a JSON object whose ``"answer"`` field passes ``check`` (right
    content in the right format, the field in the model's own words:
    ``{"answer": "The answer is 7."}`` passes `number_check` for gold ``"7"``)."""

    def passes(answer: str, gold: str) -> bool:
        field = json_answer(answer)
        return field is not None and check(field, gold)

    return passes


def score(
    generated: Sequence[str], golds: Sequence[str], checks: Mapping[str, Check]
) -> pd.DataFrame:
    """One row per item: ``answer``, ``gold`` and a 0/1 column per check."""
    if len(generated) != len(golds):
        raise ValueError(f"{len(generated)} answers but {len(golds)} gold answers")
    table = pd.DataFrame({"answer": list(generated), "gold": list(golds)})
    for name, check in checks.items():
        table[name] = [int(check(a, g)) for a, g in zip(generated, golds, strict=True)]
    return table
