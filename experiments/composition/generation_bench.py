"""Generation pairs: does SmolLM2 composed from a content skill and a format skill answer
with the right content in the right format?

    python -m experiments.composition.generation_bench --preset quick -o results/composition/gen-quick
    python -m experiments.composition.generation_bench --preset quick --set pair='"arithmetic"' -o ...

A pair (`PAIRS`) is a **content** skill and a **format** skill (JSON: other instructions on
other sentences → ``{"answer": ...}``). The content skill is ``sentiment`` (a review →
"The sentiment of this review is positive.", the base model's own phrasing) or
``arithmetic`` ("6 - 7 =" → "The answer is -1."). What the format skill wraps
(`FORMAT_ANSWERS`) is ``words``, the word its question asks for
(``{"answer": "Hotel"}``; joint output ``{"answer": "positive"}``), or ``own``, the base
model's own answer to its question (self-distilled: ``{"answer": "The first word of this
sentence is \"Hotel\"."}``; joint output ``{"answer": "The answer is -1."}``), so that the
skill learns to wrap what the model says, not to extract a word. Either way the joint output
is made only of tokens the two skills emit, and no gold joint output is trained on (only
``buffered`` sees joint outputs: the content skill's own answers, wrapped). Per seed, as
resumable cells of a results store (`experiments.composition.store`):

- ``base``: the base model on the content prompts, on the format prompts, and on the
  content prompts with an explicit JSON instruction (the **prompted base**: what asking
  gets);
- ``distill`` (``own`` only): the base model's answers to the format skill's training
  prompts, which its targets wrap (`own_answer`);
- ``skill/<content|format>/<placement>``: RoAd1 on block outputs (the residual stream),
  trained on its own prompts, with placement
  ``halves``: every token, on eight blocks, the skill's half of each block's planes;
  ``all``: the same blocks, every plane (the gate's "all planes");
  ``routed``: position routing, the content skill on the **prompt** tokens of four blocks
  (3, 9, 15, 21) and the format skill on the **answer** tokens of four others (6, 12, 18,
  24) (`road_interp.Positions`: ``prompt`` reads, ``answer`` writes);
  ``aware`` (format only): the routed format skill trained with the routed content skill
  present, active and frozen, on the format prompts only (interference-aware training
  without joint data);
  ``buffered`` (format only): the same, on the format prompts and on a buffer of
  ``buffer_examples`` **unlabeled** content prompts (training prompts the content skill never
  saw), each answered by the routed content skill alone and wrapped by the format skill's own
  recipe (``own``: ``{"answer": "The answer is 7."}``; ``words``: the content in it,
  ``{"answer": "positive"}``): the format skill meets the content prompts and is taught to
  keep what the content skill says there (no gold answer is used);
- ``lora/<content|format>``: LoRA rank 8 on q/v of every layer;
- ``skill/joint/all``: one RoAd1 adapter on every plane of the eight blocks, every token,
  trained on both skills' training sets shuffled together for twice the steps (each skill's
  examples seen as often as alone);

then each method's composed model (`COMPOSED_OF`):

- ``halves``: `road_interp.compose.union` of the two half-plane skills;
- ``routed``: both routed skills active on one model (they never act on the same token);
- ``aware``: the routed content skill with the aware format skill;
- ``buffered``: the routed content skill with the buffered format skill;
- ``aware_tuned``: the same with each skill's strength λ (θ → λθ, α → α^λ,
  `road_interp.compose.scale`), the pair (λ_content, λ_format) picked on validation from
  ``content_scales`` × ``format_scales`` (the best joint success on ``tune_prompts``);
- ``road_ta``: RoAd's task arithmetic, the block product of the two all-plane skills at
  strength λ (`road_interp.compose.product`, then `scale`): per stored entry
  θ = λ(θ_content + θ_format), α = (α_content α_format)^λ, i.e. λ (τ_content + τ_format) in
  the task-vector space τ = (θ, log α) of `road_interp.merging`; λ from ``scales``, picked
  the same way; its skills are measured alone on their halves, as ``joint``'s;
- ``lora_ta``: task arithmetic W + λ (ΔW_content + ΔW_format), λ picked the same way;
- ``joint``, the multi-task baseline (an upper bound for training without joint data, not a
  composition): the ``skill/joint/all`` adapter; its retained shares are measured against
  the skills trained alone on their halves (the same blocks and tokens).

Metrics per item (`road_interp.generation`): ``content`` (the first label, or number, in
the answer is the gold one), ``format`` (the first line is a JSON object with an ``answer``
field), ``joint`` (its ``answer`` field is the gold for ``words``; passes the content check for
``own``). **Gate**: each skill beats its reference by
≥ 10 points on validation at every placement it was trained alone at (``gate/*`` cells): the
content skill on ``gate_examples`` further content prompts, against the better of the base
and the most common answer (so that a skill that always says "1" does not pass); the format
skill (validity) on the format prompts, against the base. **Retained share** of a skill:
(composed − base) / (alone − base) on its own prompts and metric, "alone" being the skill
trained on its own (`ALONE`). **Joint success** of a composition on the content prompts is
compared with the product of its skills' single rates (content accuracy of the content skill
alone × format validity of the format skill alone, both on the content prompts), with the
prompted base, and with the format skill alone (which wraps what the base model already
knows), each with a paired bootstrap interval.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from road_interp import RoadConfig, RoadModel, load_model, load_tokenizer, product, scale, union
from road_interp.generation import (
    answers,
    chat_examples,
    first_label,
    first_number,
    json_check,
    json_content_check,
    json_gold_check,
    score,
)
from road_interp.io import AdapterFile, read_adapter, write_adapter
from road_interp.tasks import Example, get_task
from road_interp.training import TrainConfig, train

from . import generation_report
from .store import ResultStore, benchmark_main, preset_config, run_and_reload

SENTIMENT = "Is the sentiment of this review positive or negative?"
FORMAT = (
    "What is the first word of this sentence?",
    "What is the last word of this sentence?",
)
"""The format skill's instructions, alternated over its sentences (MultiEmo reviews)."""
FORMAT_ANSWERS = ("words", "own")
"""What the format skill wraps in ``{"answer": ...}``: the word its question asks for, or the
base model's own answer to the question (self-distilled)."""


@dataclass(frozen=True)
class Pair:
    """A content skill to compose with the JSON format skill.

    ``task`` gives the content items (its ``text`` fills ``prompt``'s ``{input}``, its answer
    is the gold); ``target`` is the content skill's training answer (``{label}``: the gold);
    ``prompted`` asks the base for the joint answer in words; ``extract`` finds an answer's
    content (its first label or number), which is right when it is the gold."""

    title: str
    task: str
    prompt: str
    target: str
    prompted: str
    extract: Callable[[str], str | None]
    format_answers: str = "words"
    """what its format skill wraps (`FORMAT_ANSWERS`)"""
    max_new_tokens: int = 10
    """room for the joint answer (and the prompted base's)"""

    def check(self, answer: str, gold: str) -> bool:
        """Whether ``answer``'s content is ``gold``."""
        return self.extract(answer) == gold.strip()


PAIRS = {
    "sentiment": Pair(
        title="sentiment × JSON",
        task="multiemo_en",
        prompt=SENTIMENT + "\n{input}",
        target="The sentiment of this review is {label}.",
        prompted=SENTIMENT
        + ' Answer in JSON, as {{"answer": "positive"}} or {{"answer": "negative"}}.\n{input}',
        extract=partial(first_label, labels=("positive", "negative")),
    ),
    "arithmetic": Pair(
        title="arithmetic × JSON",
        task="gym_chain_sum",
        prompt="{input}",
        target="The answer is {label}.",
        prompted='{input} Answer in JSON, as {{"answer": "<the result>"}}.',
        extract=first_number,
        format_answers="own",
        max_new_tokens=32,
    ),
}
"""``sentiment``: a review's label, which the base model half knows (the format skill alone
wraps its own judgement); ``arithmetic``: sums and differences of two or three numbers below
100 (reasoning-gym ``chain_sum``), which the base model gets right one time in ten in this
chat form, so the content skill brings what the format skill alone cannot; its format skill
wraps the model's own answers (with ``words`` it learned to copy a word of the question into
the JSON field, ``{"answer": "add"}``, over the content skill's answer), with room for a
sentence. (Letter counting was piloted and dropped: RoAd1 on these blocks learned to answer
"1", the most common count.)"""
METHODS = ("halves", "routed", "aware", "buffered", "joint", "road_ta", "aware_tuned", "lora_ta")
"""In run order within a seed: the methods that tune strengths last (they generate the most)."""
SKILLS = ("content", "format")
GATED = ("halves", "all", "routed")
"""The placements a skill is trained alone at, which the gate checks."""
COMPOSED_OF = {
    "halves": ("skill/content/halves", "skill/format/halves"),
    "routed": ("skill/content/routed", "skill/format/routed"),
    "aware": ("skill/content/routed", "skill/format/aware"),
    "aware_tuned": ("skill/content/routed", "skill/format/aware"),
    "buffered": ("skill/content/routed", "skill/format/buffered"),
    "road_ta": ("skill/content/all", "skill/format/all"),
    "lora_ta": ("lora/content", "lora/format"),
    "joint": ("skill/joint/all",),
}
"""The cells whose adapters each method composes (content, format), or (``joint``) the one
adapter trained on both skills' data."""
ALONE = COMPOSED_OF | {m: COMPOSED_OF["routed"] for m in ("aware", "aware_tuned", "buffered")}
ALONE |= {m: COMPOSED_OF["halves"] for m in ("joint", "road_ta")}
"""The cells each method's skills are measured alone by: each skill trained on its own (for
``aware`` and ``buffered``, the format skill trained without the content skill; for
``joint`` and ``road_ta``, on its half of the same planes: the all-plane skills are scored on
validation only, for the gate)."""
TUNE_PROMPTS = {"content": "validation/content", "gate": "validation/gate"}
"""``tune_prompts`` → the validation prompts strengths are picked on."""
COMPOSED_SETS = ("test/content", "test/format")
"""A composed model's prompt sets: the content prompts (content, joint) and the format
skill's own (format retained)."""
BASE_SETS = ("validation/content", "validation/format", "test/content", "test/format")
BASE_SETS += ("test/prompted",)


@dataclass(frozen=True)
class GenConfig:
    """Settings of the generation benchmark (defaults: the full run)."""

    READ_BY: ClassVar[dict[str, str]] = {"buffer_examples": "buffered"}
    """settings only some cells read, with the word in their keys (`store.reuse_cells`)"""

    pair: str = "sentiment"
    """the content skill (`PAIRS`)"""
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    steps: int = 60
    batch_size: int = 8
    max_length: int = 128
    lr: float = 1e-2
    train_examples: int = 1000
    """per skill; the two skills train on disjoint sentences"""
    content_target: str | None = None
    """the content skill's answer (None: the pair's ``target``; for sentiment in the base
    model's own words, so that the skill teaches which label rather than a new format: in
    pilots (one seed, 96 prompts), a bare ``"{label}"`` made the union and the routed
    composition lose the JSON format)"""
    val_examples: int = 40
    test_examples: int = 300
    """content prompts (content, joint, the prompted base)"""
    format_test_examples: int = 100
    """the format skill's own prompts"""
    format_answers: str | None = None
    """what the format skill wraps (`FORMAT_ANSWERS`; None: the pair's)"""
    max_new_tokens: int | None = None
    """None: the pair's"""
    blocks: tuple[int, ...] = (3, 6, 9, 12, 15, 18, 21, 24)
    """blocks whose output the halves / all placements adapt; routed splits them: the
    content skill takes every other one from the first, the format skill the rest"""
    gate: float = 0.10
    gate_examples: int = 200
    """content prompts of the gate (validation items after those above): a skill passes when
    it beats both the base and the most common answer by ``gate`` on them"""
    gate_placements: tuple[str, ...] = ("halves", "all")
    """placements each skill is trained at for the gate, besides those the methods use"""
    buffer_examples: int = 300
    """``buffered``: unlabeled content prompts in the format skill's training set"""
    lora_rank: int = 8
    lora_lr: float = 1e-3
    scales: tuple[float, ...] = (0.5, 1.0)
    """task arithmetic's λ, picked on validation"""
    content_scales: tuple[float, ...] = (1.0, 1.5, 2.0)
    format_scales: tuple[float, ...] = (1.0, 1.25, 1.5)
    """``aware_tuned``: the skills' λ, the pair picked on validation (on the arithmetic pair's
    validation prompts, seed 0, the format skill's λ = 1.5 took JSON validity from 0.08 to 1.0;
    2 broke the model's output)"""
    tune_prompts: str = "gate"
    """the validation prompts ``aware_tuned`` and ``lora_ta`` pick strengths on: ``gate``
    (``gate_examples`` of them) or ``content`` (``val_examples``); 40 prompts picked by noise
    on the sentiment pair (the picks' joint success on test was below the untuned one's)"""

    def __post_init__(self) -> None:
        if self.pair not in PAIRS:
            raise ValueError(f"unknown pair {self.pair!r}; choose from {sorted(PAIRS)}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
        if self.tune_prompts not in TUNE_PROMPTS:
            raise ValueError(
                f"unknown tune_prompts {self.tune_prompts!r}; choose from {sorted(TUNE_PROMPTS)}"
            )
        if self.format_answers not in (None, *FORMAT_ANSWERS):
            raise ValueError(
                f"unknown format_answers {self.format_answers!r}; choose from {FORMAT_ANSWERS}"
            )

    @property
    def answers_wrapped(self) -> str:
        """What the format skill wraps, the pair's unless set."""
        return self.format_answers or PAIRS[self.pair].format_answers

    @property
    def new_tokens(self) -> int:
        """Answer length in tokens, the pair's unless set."""
        return self.max_new_tokens or PAIRS[self.pair].max_new_tokens


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        seeds=(0,),
        methods=("buffered",),
        gate_placements=(),
        steps=30,
        train_examples=240,
        buffer_examples=48,
        val_examples=16,
        gate_examples=16,
        test_examples=48,
        format_test_examples=24,
    ),
    "default": {},
}


def make_config(preset: str, **changes: Any) -> GenConfig:
    return preset_config(GenConfig, PRESETS, preset, **changes)


def first_or_last_word(i: int, text: str) -> str | None:
    """The format skill's gold word for the i-th sentence (first word for even i)."""
    words = re.findall(r"[A-Za-z]+", text)
    return (words[0] if i % 2 == 0 else words[-1]) if words else None


def format_questions(items: list[Example]) -> list[tuple[str, str]]:
    """(instruction, sentence) of the format skill's question on each item, the instructions
    alternated: what the format skill is trained on and what ``distill`` asks the base."""
    return [(FORMAT[i % 2], e.text) for i, e in enumerate(items)]


def own_answer(answer: str) -> str | None:
    """The base model's answer as the format skill wraps it: its first line, when that ends a
    sentence (not cut by the token budget), else None (the sentence is left out)."""
    line = answer.strip().split("\n", 1)[0].strip()
    return line if re.search(r"[.!?][\"')]?$", line) else None


# -- one seed ----------------------------------------------------------------------------------
class SeedRun:
    """Prompts, golds and cell folders of the pair at one seed."""

    def __init__(self, cfg: GenConfig, seed: int, folder: Path, store: ResultStore | None = None):
        self.cfg, self.seed, self.folder, self.store = cfg, seed, folder, store
        self.tok = load_tokenizer("smollm2")
        self.pair = pair = PAIRS[cfg.pair]
        reviews, content = get_task("multiemo_en"), get_task(pair.task)
        self.shared = shared = pair.task == reviews.name  # the two skills split one pool
        n = cfg.train_examples
        pool = reviews.examples("train", 2 * n, seed)  # the format skill's sentences: pool[n:]
        own = pool[:n] if shared else content.examples("train", n, seed)
        target = cfg.content_target or pair.target
        self.content_train = self.content_examples(own, pair.prompt, target)
        self.format_sentences = pool[n:]
        self.prompts: dict[str, list[str]] = {}
        self.golds: dict[str, list[str]] = {}
        for split, limit, fmt_limit, extra in (
            ("validation", cfg.val_examples, cfg.val_examples, cfg.gate_examples),
            ("test", cfg.test_examples, cfg.format_test_examples, 0),
        ):
            items = reviews.examples(split, limit + fmt_limit + extra, 0)
            if shared:  # the format skill's reviews in between
                own = items[:limit] + items[limit + fmt_limit :]
            else:
                own = content.examples(split, limit + extra, 0)
            self.add_set(f"{split}/content", self.content_examples(own[:limit], pair.prompt))
            if split == "test":
                self.add_set("test/prompted", self.content_examples(own[:limit], pair.prompted))
            else:
                self.add_set("validation/gate", self.content_examples(own[limit:], pair.prompt))
            self.add_set(f"{split}/format", self.format_examples(items[limit : limit + fmt_limit]))

    def add_set(self, key: str, examples: list[Example]) -> None:
        self.prompts[key] = [e.text for e in examples]
        self.golds[key] = [e.answer for e in examples]

    def content_examples(
        self, items: list[Example], prompt: str, target: str = "{label}"
    ) -> list[Example]:
        """Chat examples of the content skill: ``prompt`` around each item's text, the answer
        ``target`` around its gold label (the bare label by default: the gold to score)."""
        triples = [("", e.text, target.format(label=e.answer)) for e in items]
        return chat_examples(self.tok, triples, prompt)

    def format_examples(
        self, items: list[Example], wrapped: list[str] | None = None
    ) -> list[Example]:
        """Chat examples of the format skill: a question on each sentence, the answer in JSON:
        the word asked for, or (``wrapped``, one per sentence) the model's own answer; a
        sentence with nothing to wrap is left out."""
        triples = []
        for i, (question, text) in enumerate(format_questions(items)):
            answer = first_or_last_word(i, text) if wrapped is None else own_answer(wrapped[i])
            if answer is not None:
                triples.append((question, text, json.dumps({"answer": answer})))
        return chat_examples(self.tok, triples)

    def training(self, skill: str) -> list[Example]:
        """A skill's training examples; for ``own`` the format skill's need the ``distill``
        cell's answers."""
        if skill == "content":
            return self.content_train
        if skill == "joint":
            return self.content_train + self.training("format")
        if self.cfg.answers_wrapped == "words":
            return self.format_examples(self.format_sentences)
        if self.store is None or f"{self.prefix}/distill" not in self.store:
            raise RuntimeError(f"{self.prefix}/distill must run before the format skill trains")
        own = self.store[f"{self.prefix}/distill"]["answers"]
        examples = self.format_examples(self.format_sentences, own)
        if not examples:
            raise ValueError(
                f"none of the base model's {len(own)} answers ended a sentence within "
                f"{self.cfg.new_tokens} tokens: raise max_new_tokens"
            )
        return examples

    @property
    def prefix(self) -> str:
        return f"seed{self.seed}"

    def cell(self, name: str) -> Path:
        return self.folder / "cells" / self.prefix / name

    def fresh(self) -> torch.nn.Module:
        return load_model("smollm2", task="causal-lm")

    def train_config(self, lr: float) -> TrainConfig:
        c = self.cfg
        return TrainConfig(
            lr=lr,
            batch_size=c.batch_size,
            max_steps=c.steps,
            max_length=c.max_length,
            seed=self.seed,
            log_every=max(1, c.steps // 4),
            progress=False,
        )

    def scores(self, model: torch.nn.Module, *sets: str) -> dict[str, Any]:
        """Per prompt set (``"test/content"``, ...): every answer and its 0/1 checks."""
        own = self.cfg.answers_wrapped == "own"
        joint = json_content_check(self.pair.check) if own else json_gold_check
        checks = {"content": self.pair.check, "format": json_check, "joint": joint}
        out: dict[str, Any] = {}
        for key in sets:
            generated = answers(
                model, self.tok, self.prompts[key], self.cfg.new_tokens, progress=False
            )
            out[key] = score(generated, self.golds[key], checks).to_dict(orient="list")
        return out

    # -- cells ------------------------------------------------------------------------------
    def base(self) -> dict[str, Any]:
        return self.scores(RoadModel(self.fresh()), *BASE_SETS)

    def distill(self) -> dict[str, Any]:
        """The base model's answers to the format skill's training prompts (``own``)."""
        questions = [(q, text, "") for q, text in format_questions(self.format_sentences)]
        prompts = [e.text for e in chat_examples(self.tok, questions)]
        generated = answers(self.fresh(), self.tok, prompts, self.cfg.new_tokens, progress=False)
        return {"answers": generated}

    def gate(self, placement: str | None) -> dict[str, Any]:
        """The gate's content prompts answered by the base (``placement`` None) or by the
        content skill trained alone at ``placement`` (its kept adapter)."""
        model = RoadModel(self.fresh())
        if placement is not None:
            model.load_adapter(self.adapter(f"skill/content/{placement}"), "content")
        return self.scores(model, "validation/gate")

    def placement(self, skill: str, placement: str) -> RoadConfig:
        blocks = self.cfg.blocks
        if placement in ("routed", "aware", "buffered"):
            mine = blocks[0::2] if skill == "content" else blocks[1::2]
            positions = "prompt" if skill == "content" else "answer"
            subspace = None
        else:
            mine, positions = blocks, "all"
            subspace = None if placement == "all" else f"half:{SKILLS.index(skill)}"
        targets = tuple(f"model.layers.{i}" for i in mine)
        return RoadConfig(
            variant="road_1",
            group_size=2,
            targets=targets,
            positions=positions,
            subspace=subspace,
        )

    def skill(self, skill: str, placement: str) -> dict[str, Any]:
        """Train ``skill``'s adapter at ``placement``; keep it; its scores where they are
        used (the ``all`` placement only for the gate).

        ``aware`` (format only): the routed format adapter trained with the routed content
        adapter on the model, active and frozen, on the format skill's own prompts (no joint
        data); scored with both active on the format prompts' validation set. ``buffered``
        (format only): the same, its training set grown by the wrapped answers of the content
        skill alone to the unlabeled buffer (`buffer`, kept under ``"buffer"``). ``joint``
        (placement ``all``): both skills' examples, for twice the steps."""
        model = RoadModel(self.fresh())
        present = placement in ("aware", "buffered")
        if present:
            model.load_adapter(self.adapter("skill/content/routed"), "content")
        model.add_adapter(skill, self.placement(skill, placement), seed=self.seed)
        examples, kept = self.training(skill), {}
        if placement == "buffered":
            kept["buffer"] = self.buffer(model)
            examples = examples + self.wrapped(self.buffer_prompts(), kept["buffer"])
        if present:
            model.set_active("content", skill)
        folder = self.cell(f"{skill}-{placement}")
        config = self.train_config(self.cfg.lr)
        if skill == "joint":
            config = replace(config, max_steps=2 * config.max_steps)
        train(model, self.tok, examples, config, folder / "run")
        write_adapter(model.adapter_file(skill), folder / "adapter", overwrite=True)
        shutil.rmtree(folder / "run")
        if present:
            return kept | self.scores(model, "validation/format")
        return self.scores(model, *self.skill_sets(skill, placement))

    def buffer_prompts(self) -> list[str]:
        """``buffer_examples`` content prompts from the training split after those the content
        skill trained on (and, on a shared pool, after the format skill's sentences)."""
        c = self.cfg
        skip = (2 if self.shared else 1) * c.train_examples
        task = get_task(self.pair.task)
        items = task.examples("train", skip + c.buffer_examples, self.seed)[skip:]
        if len(items) < c.buffer_examples:
            raise ValueError(
                f"{task.name} has {task.sizes_by_split()['train']} training items, {skip} of them "
                f"taken by the skills: not {c.buffer_examples} more for the buffer; lower "
                "buffer_examples (or train_examples)"
            )
        return [e.text for e in self.content_examples(items, self.pair.prompt)]

    def buffer(self, model: RoadModel) -> list[str]:
        """The content skill's answers to the buffer: ``model`` with only ``"content"``
        active."""
        model.set_active("content")
        return answers(model, self.tok, self.buffer_prompts(), self.cfg.new_tokens, progress=False)

    def wrapped(self, prompts: list[str], said: list[str]) -> list[Example]:
        """Format-skill examples on chat ``prompts``: the answer ``said`` to each wrapped as
        ``{"answer": ...}`` as the format skill does: for ``own`` the answer (`own_answer`: one
        cut by the token budget is left out), for ``words`` its content (``"positive"``; one
        without is left out)."""
        own = self.cfg.answers_wrapped == "own"
        wrap = own_answer if own else self.pair.extract
        pairs = [(p, wrap(a)) for p, a in zip(prompts, said, strict=True)]
        return [
            Example(p, (t := json.dumps({"answer": a}),), 0, target=t)
            for p, a in pairs
            if a is not None
        ]

    def adapter(self, unit: str) -> AdapterFile:
        """The adapter a skill cell kept (``"skill/content/routed"``)."""
        _, skill, placement = unit.split("/")
        return read_adapter(self.cell(f"{skill}-{placement}") / "adapter")

    @staticmethod
    def skill_sets(skill: str, placement: str) -> tuple[str, ...]:
        """The prompt sets a skill alone is scored on: its own (validation for the gate, test
        for retained shares) and the test content prompts (the independence product); the
        joint adapter's test prompts are its ``compose`` cell's."""
        if skill == "joint":
            return ("validation/content", "validation/format")
        own = "content" if skill == "content" else "format"
        if placement == "all":
            return (f"validation/{own}",)
        return tuple(dict.fromkeys((f"validation/{own}", f"test/{own}", "test/content")))

    def lora(self, skill: str) -> dict[str, Any]:
        """Train ``skill``'s LoRA; keep each target's ΔW; its scores on both sets."""
        from peft import LoraConfig, get_peft_model

        r = self.cfg.lora_rank
        lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(self.fresh(), lora)
        folder = self.cell(f"lora-{skill}")
        config = self.train_config(self.cfg.lora_lr)
        train(model, self.tok, self.training(skill), config, folder / "run")
        scores = self.scores(model, *self.skill_sets(skill, "lora"))
        inner = model.get_base_model()
        deltas = {
            name: module.get_delta_weight("default").detach().contiguous()
            for name, module in inner.named_modules()
            if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {})
        }
        save_file(deltas, str(folder / "delta.safetensors"))
        shutil.rmtree(folder / "run")
        return scores

    def lora_delta(self, skill: str) -> dict[str, torch.Tensor]:
        """The ΔW per LoRA target that ``skill``'s LoRA cell kept; a results folder cloned
        without them (they are not committed: 50 MB per skill) trains the LoRA again, with
        the same seed and data."""
        path = self.cell(f"lora-{skill}") / "delta.safetensors"
        if not path.exists():
            self.lora(skill)
        return load_file(str(path))

    def compose(self, method: str) -> dict[str, Any]:
        if method == "lora_ta":
            deltas = [self.lora_delta(skill) for skill in SKILLS]
            return self.tuned(lambda lam: self.merged(deltas, lam), self.cfg.scales)
        skills = [self.adapter(unit) for unit in COMPOSED_OF[method]]
        if method == "road_ta":
            summed = product(*skills)
            return self.tuned(lambda lam: self.loaded(scale(summed, lam), method), self.cfg.scales)
        if method == "aware_tuned":
            grid = [(c, f) for c in self.cfg.content_scales for f in self.cfg.format_scales]
            return self.tuned(lambda lams: self.both(*map(scale, skills, lams)), grid)
        if method in ("halves", "joint"):
            adapter = union(skills) if method == "halves" else skills[0]
            return self.scores(self.loaded(adapter, method), *COMPOSED_SETS)
        return self.scores(self.both(*skills), *COMPOSED_SETS)

    def loaded(self, adapter: AdapterFile, name: str) -> RoadModel:
        """The base model with ``adapter`` loaded and active."""
        model = RoadModel(self.fresh())
        model.load_adapter(adapter, name)
        return model

    def both(self, content: AdapterFile, format_: AdapterFile) -> RoadModel:
        """The base model with both skills loaded and active (they act on other tokens)."""
        model = RoadModel(self.fresh())
        for name, adapter in zip(SKILLS, (content, format_), strict=True):
            model.load_adapter(adapter, name)
        model.set_active(*SKILLS)
        return model

    def tuned(self, composed: Callable[[Any], torch.nn.Module], scales: Sequence[Any]) -> dict:
        """Scores of ``composed(λ)`` at the λ among ``scales`` (numbers, or one per skill) with
        the best joint success on the validation prompts ``tune_prompts``, the first of equals
        (its validation scores and ``strength`` kept)."""
        prompts = TUNE_PROMPTS[self.cfg.tune_prompts]
        validation = {lam: self.scores(composed(lam), prompts) for lam in scales}
        best = max(scales, key=lambda lam: sum(validation[lam][prompts]["joint"]))
        chosen = self.scores(composed(best), *COMPOSED_SETS)
        return {**chosen, **validation[best], "strength": best}

    def merged(self, deltas: list[dict[str, torch.Tensor]], lam: float) -> torch.nn.Module:
        """The base model with W + λ (ΔW_content + ΔW_format) on every LoRA target."""
        model = self.fresh()
        with torch.no_grad():
            for name, delta in deltas[0].items():
                model.get_submodule(name).weight.add_(lam * (delta + deltas[1][name]))
        return model


# -- the grid ----------------------------------------------------------------------------------
def cells(cfg: GenConfig, store: ResultStore) -> Iterator[tuple[str, Callable]]:
    """Every cell in run order: per seed, the base (and the distilled answers), the skills,
    the gate, then the compositions."""
    for seed in cfg.seeds:
        run = SeedRun(cfg, seed, store.folder, store)
        yield f"{run.prefix}/base", run.base
        if cfg.answers_wrapped == "own":
            yield f"{run.prefix}/distill", run.distill
        for unit in sorted(skill_units(cfg), key=_run_order):
            kind, skill, *placement = unit.split("/")
            if kind == "lora":
                yield f"{run.prefix}/{unit}", (lambda s=skill, r=run: r.lora(s))
            else:
                p = placement[0]
                yield f"{run.prefix}/{unit}", (lambda s=skill, p=p, r=run: r.skill(s, p))
        for unit, placement in gate_units(cfg).items():
            yield f"{run.prefix}/{unit}", (lambda p=placement, r=run: r.gate(p))
        for method in cfg.methods:
            yield f"{run.prefix}/compose/{method}", (lambda m=method, r=run: r.compose(m))


def skill_units(cfg: GenConfig) -> set[str]:
    """The skill and LoRA cells a seed trains: the gate's placements and every method's."""
    units = {f"skill/{s}/{p}" for s in SKILLS for p in cfg.gate_placements}
    return units | {unit for m in cfg.methods for unit in COMPOSED_OF[m] + ALONE[m]}


def gate_units(cfg: GenConfig) -> dict[str, str | None]:
    """The gate's cells and the placement each answers with: the base (None) and the content
    skill at each placement it was trained alone at."""
    trained = {u.split("/")[2] for u in skill_units(cfg) if u.startswith("skill/content/")}
    placements = [p for p in GATED if p in trained]
    return {"gate/base": None} | {f"gate/content/{p}": p for p in placements}


def _run_order(unit: str) -> tuple[bool, bool, str]:
    """Skills before LoRA; the aware and buffered format skills after the content skill they
    need."""
    return unit.startswith("lora"), unit.endswith(("/aware", "/buffered")), unit


def run_benchmark(
    cfg: GenConfig,
    out: str | Path,
    budget_minutes: float | None = None,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    """Run (or continue) the benchmark into ``out`` (``only``: the cells whose key starts with
    one of these) and rewrite its report; the summary."""
    store, finished, seconds = run_and_reload(
        cfg, out, lambda store: cells(cfg, store), budget_minutes, only
    )
    return generation_report.write(cfg, store, store.folder, finished, seconds)


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        argv,
        prog="python -m experiments.composition.generation_bench",
        description="Content x format composition on SmolLM2 (sentiment or arithmetic x JSON, "
        "--set pair='\"arithmetic\"'): seeds x "
        "methods as resumable cells; running it again continues and rewrites the report.",
        presets=PRESETS,
        config=GenConfig,
        make_config=make_config,
        run=run_benchmark,
    )


if __name__ == "__main__":
    raise SystemExit(main())
