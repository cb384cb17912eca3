"""Evaluation per task kind, for any model the training loop trains.

- **encoder classification**: accuracy of ``argmax logits`` against ``label``.
- **causal LM, classification or multiple choice**: each choice is scored by the
  log-likelihood of its tokens after the prompt, ``score(c) = Σ_t log p(c_t | prompt, c_<t)``;
  the prediction is ``argmax_c score(c)`` (``accuracy``). ``accuracy_norm`` divides each score
  by the choice's length in characters first (lm-evaluation-harness's ``acc_norm``).
- **causal LM, generation**: greedy decoding up to a few tokens past the longest reference,
  cut at the first newline; ``exact_match`` compares the stripped strings.

Causal-LM batches are left-padded with explicit ``position_ids`` (so padding changes no
logit), and only the last K positions' logits are computed when the model supports
``logits_to_keep``: the answer tokens are always the last ones of each row.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .encoding import (
    IGNORE_INDEX,
    ExampleSet,
    answer_of,
    check_task_fits,
    encode_classification,
    encode_lm,
    example_set,
    pad,
    unwrap,
)
from .model import road_model_in

if TYPE_CHECKING:
    from .tasks import Example, Task


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    data: Task | Sequence[Example] | ExampleSet,
    split: str = "validation",
    limit: int | None = None,
    *,
    batch_size: int = 16,
    max_length: int = 256,
    seed: int = 0,
    progress: bool = True,
    predictions: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on a task split (or a list of examples) with the task's metric.

    Returns ``{"task", "split", "n", "metric", "value", <metric>: value, ``majority``, ...}``
    (``majority``: the score of always giving the most frequent gold answer, or chance for
    multiple choice with varying options) and, for causal LMs' choices, ``accuracy_norm``. With
    ``predictions``, also ``"predictions"`` (per example in order: the predicted label or
    choice index, or the generated answer's first line) and ``"correct"`` (0/1 per example),
    so that others can recompute every number and its interval.
    """
    es = data if isinstance(data, ExampleSet) else example_set(data, split, limit, seed)
    kind = check_task_fits(es, model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if kind == "encoder":
                scorer = _encoder_accuracy
            elif es.kind == "generation":
                scorer = _exact_match
            else:
                scorer = _choice_accuracy
            scores, predicted, correct = scorer(
                model, tokenizer, es, batch_size, max_length, progress
            )
    finally:
        model.train(was_training)
    result: dict[str, Any] = {"task": es.name, "split": split, "n": len(es), "metric": es.metric}
    result["value"] = scores[es.metric]
    result.update(scores)
    result["majority"] = majority_baseline(es)
    if predictions:
        result["predictions"], result["correct"] = predicted, correct
    return result


def majority_baseline(es: ExampleSet) -> float:
    """Score of always answering the most frequent gold label (fixed label sets) or answer
    (generation: its exact match), or the expected accuracy of a uniform guess (options that
    vary per example)."""
    if es.labels or es.kind == "generation":
        counts = Counter(e.label if es.labels else e.answer for e in es.examples)
        return counts.most_common(1)[0][1] / len(es)
    return sum(1.0 / len(e.choices) for e in es.examples) / len(es)


# ----------------------------------------------------------------------------- encoder


def classifier_logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """(B, num_labels) logits of a sequence classifier for a padded batch."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


Scored = tuple[dict[str, float], list[Any], list[int]]
"""What each scorer returns: the metrics, the prediction per example, and 0/1 per example."""


def _encoder_accuracy(model, tokenizer, es, batch_size, max_length, progress) -> Scored:
    device = _device(model)
    predicted: list[int] = []
    for start in tqdm(
        range(0, len(es), batch_size), desc=f"eval {es.name}", disable=not progress, leave=False
    ):
        chunk = es.examples[start : start + batch_size]
        batch = pad(encode_classification(tokenizer, chunk, max_length), _pad_id(tokenizer), True)
        batch = {k: v.to(device) for k, v in batch.items()}
        predicted += classifier_logits(model, batch).argmax(-1).tolist()
    correct = [int(p == e.label) for p, e in zip(predicted, es.examples, strict=True)]
    return {"accuracy": sum(correct) / len(es)}, predicted, correct


# ----------------------------------------------------------------------------- causal LM


def pad_left(items: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Left-pad causal-LM items: ``input_ids``, ``labels`` (B, T), ``attention_mask`` and
    ``position_ids`` counting real tokens from 0, so a row's logits do not depend on padding."""
    width = max(len(it["input_ids"]) for it in items)
    rows = {"input_ids": [], "labels": [], "attention_mask": []}  # type: dict[str, list]
    for it in items:
        gap = width - len(it["input_ids"])
        rows["input_ids"].append([pad_id] * gap + it["input_ids"])
        rows["labels"].append([IGNORE_INDEX] * gap + it["labels"])
        rows["attention_mask"].append([0] * gap + [1] * len(it["input_ids"]))
    batch = {k: torch.tensor(v) for k, v in rows.items()}
    batch["position_ids"] = positions_of(batch["attention_mask"])
    return batch


def positions_of(attention_mask: Tensor) -> Tensor:
    """(B, L) position ids of a left-padded batch: real tokens count from 0 (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def answer_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """log p of every answer token of a left-padded batch.

    With labels (B, T) whose answer tokens are the last of each row, K = longest answer + 1
    logits suffice: logit t predicts token t + 1. Returns ``(logp, mask)``, both (B, K - 1):
    ``logp[b, j]`` is log p(answer token) at that position, 0 where ``mask`` is False.
    """
    labels = batch["labels"]
    width = labels.shape[1]
    keep = min(width, int((labels != IGNORE_INDEX).sum(1).max()) + 1)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    # output sites at prompt positions must not count the answer as prompt
    road = road_model_in(model)
    prompt = batch["attention_mask"].bool() & (labels == IGNORE_INDEX)
    with road.prompt_tokens(prompt) if road is not None else nullcontext():
        if accepts(model, "logits_to_keep"):
            logits = model(**inputs, logits_to_keep=keep).logits  # (B, keep, V)
        else:
            logits = model(**inputs).logits[:, -keep:]
    targets = labels[:, width - keep + 1 :]  # (B, keep - 1)
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def _choice_accuracy(model, tokenizer, es, batch_size, max_length, progress) -> Scored:
    """Score every (example, choice) pair by summed log-likelihood; argmax per example."""
    device = _device(model)
    pairs = [(i, j) for i, e in enumerate(es.examples) for j in range(len(e.choices))]
    scores = torch.empty(len(pairs))
    for start in tqdm(
        range(0, len(pairs), batch_size), desc=f"eval {es.name}", disable=not progress, leave=False
    ):
        chunk = pairs[start : start + batch_size]
        items = [
            encode_lm(
                tokenizer,
                es.prompt(es.examples[i]),
                es.examples[i].choices[j],
                max_length,
                add_eos=False,
            )
            for i, j in chunk
        ]
        batch = {k: v.to(device) for k, v in pad_left(items, _pad_id(tokenizer)).items()}
        logp, _ = answer_logprobs(model, batch)
        scores[start : start + len(chunk)] = logp.sum(-1).float().cpu()
    predicted: list[int] = []
    correct_norm = 0
    offset = 0
    for e in es.examples:
        n = len(e.choices)
        s = scores[offset : offset + n]
        lengths = torch.tensor([max(1, len(c)) for c in e.choices], dtype=torch.float32)
        predicted.append(int(s.argmax()))
        correct_norm += int(int((s / lengths).argmax()) == e.label)
        offset += n
    correct = [int(p == e.label) for p, e in zip(predicted, es.examples, strict=True)]
    metrics = {"accuracy": sum(correct) / len(es), "accuracy_norm": correct_norm / len(es)}
    return metrics, predicted, correct


def normalize_answer(text: str) -> str:
    """The first line of a generated answer, stripped (what exact match compares)."""
    return text.strip().split("\n", 1)[0].strip()


def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    max_length: int = 256,
) -> list[str]:
    """Greedy continuations of ``prompts`` (one batch, left-padded), decoded to text."""
    device = _device(model)
    items = [{"input_ids": tokenizer(p)["input_ids"][-max_length:], "labels": []} for p in prompts]
    for it in items:
        it["labels"] = [IGNORE_INDEX] * len(it["input_ids"])
    batch = pad_left(items, _pad_id(tokenizer))
    out = model.generate(  # type: ignore[operator]
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=_pad_id(tokenizer),
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def _exact_match(model, tokenizer, es, batch_size, max_length, progress) -> Scored:
    answers = [answer_of(e) for e in es.examples]
    longest = max(len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in answers)
    predicted: list[str] = []
    for start in tqdm(
        range(0, len(es), batch_size), desc=f"eval {es.name}", disable=not progress, leave=False
    ):
        chunk = es.examples[start : start + batch_size]
        outputs = generate_answers(
            model, tokenizer, [es.prompt(e) for e in chunk], longest + 2, max_length
        )
        predicted += [normalize_answer(text) for text in outputs]
    correct = [
        int(p == normalize_answer(answer_of(e)))
        for p, e in zip(predicted, es.examples, strict=True)
    ]
    return {"exact_match": sum(correct) / len(es)}, predicted, correct


# ----------------------------------------------------------------------------- helpers


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    pad_id = tokenizer.pad_token_id
    return pad_id if pad_id is not None else tokenizer.eos_token_id


def accepts(model: nn.Module, argument: str) -> bool:
    """Whether the Hugging Face model inside ``model`` takes keyword ``argument``."""
    return argument in inspect.signature(unwrap(model).forward).parameters
