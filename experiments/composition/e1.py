"""E1: composition on generation (SmolLM2-135M-Instruct): a sentiment answer, in French.

Skill A = answering in French: English MultiEmo sentences, each with one of eight instructions
that name no language (rewrite, repeat, paraphrase, ...), answered by their aligned French
translation. Skill B = the sentiment instruction on MultiEmo-en, answered "positive" /
"negative". RoAd1 acts on the outputs of the blocks ``E1Config.layers`` (the residual stream;
`RoadConfig.positions`), skill A on the first half of each site's planes, skill B on
the second half. Prompts use the model's chat template.

Conditions: base, skill A, skill B, composed (`union` of A and B), joint (one adapter, per-
example subspace routing, both tasks mixed), and LoReFT (the same `LoreftIntervention` class
as E2's, one row partition per skill, trained jointly). LoReFT acts at every token, so that
it also acts on generated tokens it is attached with a forward hook rather than through
``pyvene.IntervenableModel.generate``, which intervenes on the prompt or on generated tokens
but not both in one call.

Metrics on held-out (test) sentences with the sentiment instruction, greedy answers:

- ``sentiment_accuracy``: the first sentiment word of the answer (positive/positif/positiv…,
  negative/négatif/négative…) is the gold label;
- ``french_share``: the answer is French: it holds an unambiguously French sentiment word
  (positif, négatif, négative; "positive" is both English and French, so it does not count),
  or more French than English function words;
- ``joint_success``: both;
- ``french_share_on_skill_a_prompts``: the French share of the answers to skill A's own
  instructions on held-out sentences (whether skill A was learned at all, apart from whether
  it carries over to the sentiment instruction).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from road_interp import RoadConfig, RoadModel, load_model, load_tokenizer
from road_interp.compose import union
from road_interp.evaluation import generate_answers
from road_interp.io import AdapterFile, write_adapter
from road_interp.pyvene_view import LoreftIntervention
from road_interp.subspaces import Subspace, route_subspaces, train_on
from road_interp.tasks import Example, get_task, parallel_sentences
from road_interp.training import train

from .config import E1Config, train_config
from .heads import rows_set

HIDDEN = 576
"""SmolLM2-135M's hidden size (the size of every block output)."""
FRENCH = (
    "Rewrite this sentence:\n{text}",
    "Repeat this sentence:\n{text}",
    "Paraphrase the following:\n{text}",
    "Say this again in your own words:\n{text}",
    "What does this sentence say?\n{text}",
    "Restate this review:\n{text}",
    "Copy the text below.\n{text}",
    "Summarize this sentence:\n{text}",
)
"""Skill A's instructions (none names a language), cycled over the training sentences: with one
instruction the adapter learns "translate when asked to rewrite", not "answer in French"."""
SENTIMENT = "Is the sentiment of this sentence positive or negative? Answer with one word.\nSentence: {text}"
POSITIVE = re.compile(r"\bpositi(?:ve|f|v)\w*", re.IGNORECASE)
NEGATIVE = re.compile(r"\bn[ée]gati(?:ve|f|v)\w*", re.IGNORECASE)
FRENCH_WORDS = re.compile(r"\b(?:positif|n[ée]gatif|négative)\b", re.IGNORECASE)
FR_FUNCTION = {
    "le",
    "la",
    "les",
    "des",
    "est",
    "et",
    "un",
    "une",
    "du",
    "je",
    "nous",
    "pas",
    "très",
    "ce",
    "cette",
    "il",
    "elle",
    "sont",
    "pour",
    "avec",
    "mais",
    "c'est",
    "à",
}
EN_FUNCTION = {
    "the",
    "a",
    "an",
    "is",
    "and",
    "of",
    "to",
    "it",
    "this",
    "that",
    "was",
    "are",
    "with",
    "for",
    "but",
    "very",
    "not",
    "i",
    "we",
}


def sentiment_of(answer: str) -> str | None:
    """'positive', 'negative' or None: the first sentiment word of the answer."""
    pos, neg = POSITIVE.search(answer), NEGATIVE.search(answer)
    if pos and (not neg or pos.start() < neg.start()):
        return "positive"
    return "negative" if neg else None


def is_french(answer: str) -> bool:
    """See the module docstring."""
    if FRENCH_WORDS.search(answer):
        return True
    words = re.findall(r"[\w'’]+", answer.lower())
    fr = sum(w in FR_FUNCTION for w in words)
    en = sum(w in EN_FUNCTION for w in words)
    return fr > en


def french_message(i: int, text: str) -> str:
    """Skill A's message for the i-th sentence (the instructions are cycled)."""
    return FRENCH[i % len(FRENCH)].format(text=text)


def french_share(answers: Sequence[str]) -> float:
    return sum(map(is_french, answers)) / max(1, len(answers))


def score_answers(answers: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
    correct = [sentiment_of(a) == g for a, g in zip(answers, gold, strict=True)]
    french = [is_french(a) for a in answers]
    n = len(answers)
    return {
        "sentiment_accuracy": sum(correct) / n,
        "french_share": sum(french) / n,
        "joint_success": sum(c and f for c, f in zip(correct, french, strict=True)) / n,
        "n": n,
    }


class E1:
    def __init__(self, cfg: E1Config, runs: Path, progress: bool = True):
        self.cfg, self.runs, self.progress = cfg, runs, progress
        self.tok = load_tokenizer("smollm2")
        sentiment = get_task("multiemo_en")
        n = cfg.train_examples
        self.train_sets = {
            "A": [
                self.example(french_message(i, p.source), p.target)
                for i, p in enumerate(
                    parallel_sentences("en", "fr", "train", limit=n, seed=cfg.seed)
                )
            ],
            "B": [
                self.example(SENTIMENT.format(text=e.text), e.answer)
                for e in sentiment.examples("train", n, cfg.seed)
            ],
        }
        test = sentiment.examples("test", cfg.eval_examples)
        self.test_prompts = [self.chat(SENTIMENT.format(text=e.text)) for e in test]
        held_out = parallel_sentences("en", "fr", "test", limit=cfg.skill_a_eval, seed=cfg.seed)
        self.skill_a_messages = [french_message(i, p.source) for i, p in enumerate(held_out)]
        self.skill_a_prompts = [self.chat(m) for m in self.skill_a_messages]
        self.test_gold = [e.answer for e in test]
        self.test_text = [e.text for e in test]

    def chat(self, message: str) -> str:
        return self.tok.apply_chat_template(
            [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
        )

    def example(self, message: str, answer: str) -> Example:
        return Example(self.chat(message), (answer,), 0, target=answer)

    def mixed(self) -> tuple[list[Example], dict[str, int]]:
        out: list[Example] = []
        for pair in zip(self.train_sets["A"], self.train_sets["B"], strict=False):
            out.extend(pair)
        task_of = {e.text: 0 for e in self.train_sets["A"]} | {
            e.text: 1 for e in self.train_sets["B"]
        }
        return out, task_of

    def subspaces(self) -> tuple[Subspace, Subspace]:
        """Skill A on the first half of every site's planes, skill B on the second."""
        sizes = {f"model.layers.{i}": HIDDEN for i in self.cfg.layers}
        return Subspace.part(sizes, 0, 2, "A"), Subspace.part(sizes, 1, 2, "B")

    def site_config(self) -> RoadConfig:
        targets = tuple(f"model.layers.{i}" for i in self.cfg.layers)
        return RoadConfig(
            variant="road_1", group_size=2, targets=targets, positions=self.cfg.positions
        )

    def answers(self, model: nn.Module, prompts: list[str] | None = None) -> list[str]:
        """Greedy answers to ``prompts`` (default: the sentiment test prompts)."""
        out: list[str] = []
        prompts = self.test_prompts if prompts is None else prompts
        for start in tqdm(
            range(0, len(prompts), 16), desc="generate", disable=not self.progress, leave=False
        ):
            out += generate_answers(
                model, self.tok, prompts[start : start + 16], self.cfg.max_new_tokens
            )
        return [a.strip() for a in out]

    def answer_both(self, model: nn.Module) -> tuple[list[str], list[str]]:
        """Greedy answers (eval mode, no grad) to the sentiment test prompts and to skill A's
        held-out instructions."""
        model.eval()
        with torch.no_grad():
            return self.answers(model), self.answers(model, self.skill_a_prompts)

    def scores(self, answers: Sequence[str], own: Sequence[str]) -> dict[str, float]:
        """`score_answers` on the sentiment prompts plus the French share on skill A's own."""
        return {
            **score_answers(answers, self.test_gold),
            "french_share_on_skill_a_prompts": french_share(own),
        }

    # -- conditions ---------------------------------------------------------------------------
    def road_model(self) -> RoadModel:
        return RoadModel(load_model("smollm2", task="causal-lm"))

    def skill(self, key: str, subspace: Subspace) -> AdapterFile:
        model = self.road_model()
        model.add_adapter("skill", self.site_config())
        with train_on(model, "skill", subspace):
            train(
                model,
                self.tok,
                self.train_sets[key],
                train_config(self.cfg, self.progress, self.cfg.steps, self.cfg.lr),
                self.runs / f"skill_{key}",
                resume=False,
            )
        return model.adapter_file("skill")

    def with_adapter(self, adapter: AdapterFile, folder: Path) -> RoadModel:
        """Write ``adapter`` to ``folder`` and load it into a fresh model (a save/load trip)."""
        write_adapter(adapter, folder)
        model = self.road_model()
        model.load_adapter(folder)
        return model

    def joint(self, skills: tuple[Subspace, Subspace]) -> AdapterFile:
        model = self.road_model()
        model.add_adapter("AB", self.site_config())
        examples, task_of = self.mixed()

        def routed(batch: Sequence[Example]):
            rows = torch.tensor([task_of[e.text] for e in batch])
            return route_subspaces(model, "AB", list(skills), rows)

        train(
            model,
            self.tok,
            examples,
            train_config(self.cfg, self.progress, 2 * self.cfg.steps, self.cfg.lr),
            self.runs / "joint",
            forward_context=routed,
            resume=False,
        )
        return model.adapter_file("AB")

    def loreft(self) -> tuple[list[str], list[str]]:
        """Answers to the sentiment test prompts and to skill A's held-out prompts."""
        cfg = self.cfg
        model = load_model("smollm2", task="causal-lm")
        for p in model.parameters():
            p.requires_grad_(False)
        r = cfg.loreft_rank
        hidden = model.config.hidden_size
        los = {
            model.model.layers[i]: LoreftIntervention(
                embed_dim=hidden,
                low_rank_dimension=2 * r,
                partitions=((0, r), (r, 2 * r)),
                seed=cfg.seed + i,
            )
            for i in cfg.layers
        }
        examples, task_of = self.mixed()
        with attached(los) as holder:

            def routed(batch: Sequence[Example]):
                return rows_set(torch.tensor([task_of[e.text] for e in batch]), holder)

            train(
                model,
                self.tok,
                examples,
                train_config(self.cfg, self.progress, 2 * cfg.steps, cfg.loreft_lr),
                self.runs / "loreft",
                forward_context=routed,
                resume=False,
            )
            return self.answer_both(model)


class _Rows(nn.Module):
    """Holds the current batch's skill rows for the LoReFT hook (None: every partition)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: torch.Tensor | None = None


@contextmanager
def attached(interventions: dict[nn.Module, LoreftIntervention]) -> Iterator[_Rows]:
    """LoReFT on every token of each block's output, as a submodule (so its parameters train)
    and a forward hook; all removed on exit. Yields the holder of the batch's skill rows."""
    holder = _Rows()
    handles = []

    def make_hook(lo: LoreftIntervention):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            rows = holder.rows
            subspaces = None if rows is None else [[int(k)] for k in rows]
            z = lo(h, subspaces=subspaces)
            return (z, *output[1:]) if isinstance(output, tuple) else z

        return hook

    try:
        for block, lo in interventions.items():
            block.add_module("loreft", lo)
            handles.append(block.register_forward_hook(make_hook(lo)))
        yield holder
    finally:
        for handle in handles:
            handle.remove()
        for block in interventions:
            if hasattr(block, "loreft"):
                del block.loreft


def run_e1(cfg: E1Config, out: Path, progress: bool = True) -> dict[str, pd.DataFrame]:
    with tempfile.TemporaryDirectory(prefix="e1-runs-") as tmp:
        runs = Path(tmp)
        exp = E1(cfg, runs, progress)
        answers: dict[str, list[str]] = {}
        a_answers: dict[str, list[str]] = {}
        answers["base"], a_answers["base"] = exp.answer_both(exp.road_model())
        skills = exp.subspaces()
        adapters = {
            "skill A (French)": exp.skill("A", skills[0]),
            "skill B (sentiment)": exp.skill("B", skills[1]),
        }
        adapters["composed A+B"] = union(
            {"A": adapters["skill A (French)"], "B": adapters["skill B (sentiment)"]}
        )
        adapters["joint A+B"] = exp.joint(skills)
        for name, adapter in adapters.items():
            model = exp.with_adapter(adapter, out / "adapters" / _slug(name))
            answers[name], a_answers[name] = exp.answer_both(model)
        answers["loreft A+B"], a_answers["loreft A+B"] = exp.loreft()
    rows = [{"condition": n, **exp.scores(a, a_answers[n])} for n, a in answers.items()]
    samples = pd.DataFrame(
        {"sentence": [t[:80] for t in exp.test_text[:6]], "gold": exp.test_gold[:6]}
        | {name: [a[:60] for a in ans[:6]] for name, ans in answers.items()}
    )
    every = pd.DataFrame({"sentence": exp.test_text, "gold": exp.test_gold} | answers)
    skill_a = pd.DataFrame({"message": exp.skill_a_messages} | a_answers)
    return {
        "results": pd.DataFrame(rows),
        "samples": samples,
        "answers": every,
        "skill_a_answers": skill_a,
    }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
