"""Turning task examples into model inputs, shared by training and evaluation.

Two model kinds read examples differently:

- **encoder** (a ``*ForSequenceClassification`` model): ``text`` (and ``text_pair``) go through
  the tokenizer as one sequence (pair); the target is the class index ``label``. The classes
  are the task's label names, or the ``choices`` every example shares.
- **causal-lm**: the input is ``prompt + continuation(prompt, answer)``, where the prompt
  comes from the task (or is the example's text) and the answer is ``target`` for generation
  tasks and ``choices[label]`` otherwise. Only the answer tokens (and, in training, an EOS
  after them) count in the loss: prompt positions get label -100.

`ExampleSet` is what training and evaluation consume: examples plus how to prompt them and
which metric applies, whether they came from a registered `Task` or a plain list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .model import unwrap  # kept importable from here

if TYPE_CHECKING:
    from .tasks import Example, Task

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (PyTorch's cross-entropy default)."""


@dataclass(frozen=True)
class ExampleSet:
    """Examples ready for training or evaluation.

    Attributes:
        name: the task's name (or ``"examples"`` for a plain list).
        kind: ``"classification"``, ``"multiple_choice"`` or ``"generation"``.
        metric: ``"accuracy"`` or ``"exact_match"``.
        examples: the examples, in a fixed order.
        prompt: example -> the causal-LM prompt before the answer.
        labels: class names for encoders (the shared choices), or ``()``.
    """

    name: str
    kind: str
    metric: str
    examples: tuple[Example, ...]
    prompt: Callable[[Example], str]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.examples)


def default_prompt(example: Example) -> str:
    """The prompt of an example that comes without a task: its text (and text pair)."""
    if example.text_pair is None:
        return example.text
    return f"{example.text}\n{example.text_pair}"


def answer_of(example: Example) -> str:
    """The answer string a causal LM should produce for ``example``."""
    if example.target is not None:
        return example.target
    return example.choices[example.label]


def continuation(prompt: str, answer: str) -> str:
    """The text that follows ``prompt``: the answer after one space, unless the prompt
    already ends in whitespace."""
    return answer if not prompt or prompt[-1].isspace() else " " + answer


def example_set(
    data: Task | Sequence[Example], split: str, limit: int | None = None, seed: int = 0
) -> ExampleSet:
    """Examples of a `Task` split (``limit`` of them, the task's fixed-seed split), or a plain
    list of `Example` (split, limit and seed apply only to tasks; a list is used as given)."""
    if hasattr(data, "examples") and hasattr(data, "prompt"):
        task: Any = data
        examples = tuple(task.examples(split, limit=limit, seed=seed))
        labels = tuple(task.labels) if task.kind == "classification" else _shared_choices(examples)
        return ExampleSet(task.name, task.kind, task.metric, examples, task.prompt, labels)
    examples = tuple(data)  # type: ignore[arg-type]
    if not examples:
        raise ValueError("the example list is empty; pass at least one Example")
    generation = all(e.target is not None for e in examples)
    if generation:
        return ExampleSet("examples", "generation", "exact_match", examples, default_prompt, ())
    for i, e in enumerate(examples):
        if not e.choices or not 0 <= e.label < len(e.choices):
            raise ValueError(
                f"example {i} has label {e.label} but choices {e.choices!r}; a classification "
                "or multiple-choice Example needs a label that indexes its choices (or set "
                "target and no choices for a generation example)"
            )
    shared = _shared_choices(examples)
    kind = "classification" if shared else "multiple_choice"
    return ExampleSet("examples", kind, "accuracy", examples, default_prompt, shared)


def _shared_choices(examples: Sequence[Example]) -> tuple[str, ...]:
    """The choices, if every example has the same ones (then an encoder can classify)."""
    first = tuple(examples[0].choices) if examples else ()
    return first if all(tuple(e.choices) == first for e in examples) else ()


# ----------------------------------------------------------------------------- models


def model_kind(model: nn.Module) -> str:
    """``"causal-lm"`` or ``"encoder"`` (a sequence classifier), looking through wrappers
    (`RoadModel`, PEFT, DDP)."""
    inner = unwrap(model)
    name = type(inner).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "causal-lm"
    if name.endswith("ForSequenceClassification"):
        return "encoder"
    raise ValueError(
        f"{name} is neither a causal LM nor a sequence classifier; load it with "
        "road_interp.load_model(..., task='classification' or 'causal-lm')"
    )


def check_task_fits(data: ExampleSet, model: nn.Module) -> str:
    """Raise ValueError if ``model`` cannot learn or answer ``data``; returns the model kind."""
    kind = model_kind(model)
    if kind == "encoder":
        if not data.labels:
            raise ValueError(
                f"task {data.name!r} is a {data.kind} task whose examples do not share one label "
                "set; an encoder with a classification head cannot answer it. Use a causal LM "
                "(e.g. 'smollm2')"
            )
        num_labels = getattr(unwrap(model).config, "num_labels", None)
        if num_labels != len(data.labels):
            raise ValueError(
                f"task {data.name!r} has {len(data.labels)} labels {data.labels} but the model's "
                f"classification head has {num_labels}; load it with num_labels={len(data.labels)}"
            )
    return kind


# ----------------------------------------------------------------------------- tensors


def encode_classification(
    tokenizer: Any, examples: Sequence[Example], max_length: int
) -> list[dict[str, list[int]]]:
    """Token ids per example for an encoder; ``"labels"`` holds ``[label]``."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    has_pair = any(p is not None for p in pairs)
    if has_pair:
        enc = tokenizer(
            texts, [p or "" for p in pairs], truncation="longest_first", max_length=max_length
        )
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
    out = []
    for i, e in enumerate(examples):
        item = {k: list(v[i]) for k, v in enc.items() if k in ("input_ids", "token_type_ids")}
        item["labels"] = [e.label]
        out.append(item)
    return out


def encode_lm(
    tokenizer: Any, prompt: str, answer: str, max_length: int, add_eos: bool
) -> dict[str, list[int]]:
    """``input_ids`` = prompt tokens + answer tokens (+ EOS); ``labels`` masks the prompt.

    Prompt and answer are tokenized separately, so the split point is exact. A sequence over
    ``max_length`` loses tokens from the start of the prompt, never from the answer.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(continuation(prompt, answer), add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    if not answer_ids:
        raise ValueError(f"the answer {answer!r} tokenizes to nothing")
    answer_ids = answer_ids[:max_length]
    keep = max(0, max_length - len(answer_ids))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def pad(
    items: Sequence[dict[str, list[int]]], pad_id: int, classification: bool
) -> dict[str, Tensor]:
    """Right-pad a list of encoded items into a batch (``attention_mask`` added).

    Causal LM ``labels`` (B, T) are padded with -100; a classifier's ``labels`` become (B,)."""
    width = max(len(it["input_ids"]) for it in items)
    batch: dict[str, Tensor] = {}
    for key in items[0]:
        if key == "labels" and classification:
            batch[key] = torch.tensor([it[key][0] for it in items])
            continue
        fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}.get(key, 0)
        batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items])
    batch["attention_mask"] = torch.tensor(
        [[1] * len(it["input_ids"]) + [0] * (width - len(it["input_ids"])) for it in items]
    )
    return batch
