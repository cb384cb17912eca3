"""E2: composition on classification (MiniLM, one head per task).

Skill A = sentiment (``multiemo_en``, 2 labels), skill B = fact verification (``vitaminc``,
3 labels). RoAd1 sits on every linear layer of the encoder (the default targets). Skill A
trains on the first half of each site's planes; skill B on a half that shares a fraction
``overlap`` of A's planes (0 = the other half, 1 = the same half). Every run goes through the
shared training loop (`road_interp.training.train`) with the same schedule.

Conditions (test split, accuracy per task):

- ``base``: the frozen encoder with a trained head (a linear probe).
- ``skill``: the task's own adapter (on its planes) and head.
- ``composed``: `union` of the two separately trained adapters (block product on shared
  planes), each task read by its own head.
- ``joint``: one adapter trained on both tasks at once with per-example subspace routing
  (`route_subspaces`: a sentiment example sees only A's planes, a VitaminC example only B's),
  two heads; evaluated with all planes active.
- ``loreft``: the LoReFT baseline through pyvene at every block output (all tokens), trained
  jointly with one row partition per skill, evaluated with both partitions active.

The retained share of a skill's gain is (acc − acc_base) / (acc_skill − acc_base).
An interchange test runs on the disjoint composed model: sentiment test pairs with opposite
labels, the content of A's planes (or B's, as a control) at every adapted site of the [CLS]
token taken from the source sentence.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from road_interp import Positions, RoadConfig, RoadModel, load_model, load_tokenizer
from road_interp.compose import union
from road_interp.evaluation import evaluate
from road_interp.io import AdapterFile, write_adapter
from road_interp.pyvene_view import LoreftIntervention, interchange_score
from road_interp.subspaces import Subspace, model_sizes, route_subspaces, train_on
from road_interp.tasks import Example, get_task
from road_interp.training import train

from .config import E2Config, train_config
from .heads import MultiHead, PyveneClassifier, rows_set, use_head

TASKS = {"A": "multiemo_en", "B": "vitaminc"}
SKILLS = {"A": "sentiment", "B": "fact verification"}
HIDDEN = 384
MIN_GAIN = 0.01
"""Retained shares are reported only where the single skill beats base by this much."""
LAYERS = 6


class E2:
    """One E2 run: holds the data, the tokenizer and where training runs write."""

    def __init__(self, cfg: E2Config, runs: Path, progress: bool = True):
        self.cfg, self.runs, self.progress = cfg, runs, progress
        self.tok = load_tokenizer("minilm")
        self.tasks = {k: get_task(name) for k, name in TASKS.items()}
        self.train_sets = {
            k: t.examples("train", cfg.train_examples, cfg.seed) for k, t in self.tasks.items()
        }
        self.test_sets = {k: t.examples("test", cfg.eval_examples) for k, t in self.tasks.items()}
        self.labels = {k: len(t.labels) for k, t in self.tasks.items()}

    # -- pieces ------------------------------------------------------------------------------
    def fresh(self, num_labels: int) -> nn.Module:
        return load_model(
            "minilm", task="classification", num_labels=num_labels, seed=self.cfg.seed
        )

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def accuracy(self, model: nn.Module, key: str) -> float:
        result = evaluate(
            model,
            self.tok,
            self.test_sets[key],
            max_length=self.cfg.max_length,
            batch_size=64,
            progress=False,
        )
        return float(result["accuracy"])

    def subspaces(self, sizes: dict[str, int], overlap: float) -> tuple[Subspace, Subspace]:
        a = Subspace.fraction(sizes, 0.0, 0.5, name="A")
        b = Subspace.fraction(sizes, 0.5 - overlap / 2, 1.0 - overlap / 2, name="B")
        return a, b

    def road_config(self) -> RoadConfig:
        return RoadConfig(variant=self.cfg.variant, group_size=self.cfg.group_size)

    def mixed(self) -> list[Example]:
        """Both training sets interleaved, labels offset so that one 5-way label space holds
        both (sentiment 0-1, VitaminC 2-4)."""
        choices = self.tasks["A"].labels + self.tasks["B"].labels
        a, b = self.train_sets["A"], self.train_sets["B"]
        out: list[Example] = []
        for i in range(max(len(a), len(b))):
            for examples, offset in ((a, 0), (b, self.labels["A"])):
                if i < len(examples):
                    e = examples[i]
                    out.append(Example(e.text, choices, e.label + offset, e.text_pair))
        return out

    def task_rows(self, batch: Sequence[Example]) -> torch.Tensor:
        """Each example's task index (0 = A, 1 = B), read from its offset label."""
        return torch.tensor([int(e.label >= self.labels["A"]) for e in batch])

    # -- conditions ---------------------------------------------------------------------------
    def base(self, key: str) -> float:
        """A linear probe: the frozen encoder with a trained head."""
        model = self.fresh(self.labels[key])
        for p in model.parameters():
            p.requires_grad_(False)
        train(
            model,
            self.tok,
            self.train_sets[key],
            train_config(self.cfg, self.progress, self.cfg.steps, self.cfg.lr),
            self.run_dir(f"base_{key}"),
            resume=False,
        )
        return self.accuracy(model, key)

    def skill(self, key: str, subspace: Subspace, tag: str) -> tuple[AdapterFile, nn.Module, float]:
        """Train skill ``key`` on ``subspace``; returns its adapter, its head and accuracy."""
        model = RoadModel(self.fresh(self.labels[key]))
        model.add_adapter("skill", self.road_config())
        with train_on(model, "skill", subspace):
            train(
                model,
                self.tok,
                self.train_sets[key],
                train_config(self.cfg, self.progress, self.cfg.steps, self.cfg.lr),
                self.run_dir(f"skill_{tag}"),
                resume=False,
            )
        head = copy.deepcopy(model.model.classifier)
        return model.adapter_file("skill"), head, self.accuracy(model, key)

    def evaluate_heads(
        self, model: nn.Module, hf: nn.Module, heads: dict[str, nn.Module]
    ) -> dict[str, float]:
        out = {}
        for key, head in heads.items():
            use_head(hf, head, self.labels[key])
            out[key] = self.accuracy(model, key)
        return out

    def composed(
        self, adapter: AdapterFile, heads: dict[str, nn.Module]
    ) -> tuple[dict[str, float], RoadModel]:
        model = RoadModel(self.fresh(2))
        model.load_adapter(adapter, "AB")
        return self.evaluate_heads(model, model.model, heads), model

    def two_heads(self) -> MultiHead:
        torch.manual_seed(self.cfg.seed)
        return MultiHead([nn.Linear(HIDDEN, self.labels["A"]), nn.Linear(HIDDEN, self.labels["B"])])

    def joint(self, overlap: float) -> dict[str, float]:
        """One adapter, both tasks, per-example subspace routing."""
        total = self.labels["A"] + self.labels["B"]
        model = RoadModel(self.fresh(total))
        heads = self.two_heads()
        use_head(model.model, heads, total)
        model.add_adapter("AB", self.road_config())
        skills = self.subspaces(model_sizes(model, "AB"), overlap)
        examples = self.mixed()

        @contextmanager
        def routed(batch: Sequence[Example]):
            rows = self.task_rows(batch)
            with ExitStack() as stack:
                stack.enter_context(rows_set(rows, heads))
                stack.enter_context(route_subspaces(model, "AB", list(skills), rows))
                yield

        with train_on(model, "AB", skills[0] | skills[1]):
            train(
                model,
                self.tok,
                examples,
                train_config(self.cfg, self.progress, 2 * self.cfg.steps, self.cfg.lr),
                self.run_dir(f"joint_{overlap:g}"),
                forward_context=routed,
                resume=False,
            )
        return self.evaluate_heads(model, model.model, {"A": heads.heads[0], "B": heads.heads[1]})

    def loreft(self) -> tuple[dict[str, float], int]:
        """LoReFT at every block output, one row partition per skill, trained jointly."""
        cfg = self.cfg
        total = self.labels["A"] + self.labels["B"]
        hf = self.fresh(total)
        heads = self.two_heads()
        use_head(hf, heads, total)
        r = cfg.loreft_rank
        interventions = {
            f"bert.encoder.layer.{i}": LoreftIntervention(
                embed_dim=HIDDEN,
                low_rank_dimension=2 * r,
                partitions=((0, r), (r, 2 * r)),
                seed=cfg.seed + i,
            )
            for i in range(LAYERS)
        }
        model = PyveneClassifier(hf, interventions)
        examples = self.mixed()

        def routed(batch: Sequence[Example]):
            return rows_set(self.task_rows(batch), heads, model)

        train(
            model,
            self.tok,
            examples,
            train_config(self.cfg, self.progress, 2 * cfg.steps, cfg.loreft_lr),
            self.run_dir("loreft"),
            forward_context=routed,
            resume=False,
        )
        params = sum(p.numel() for iv in interventions.values() for p in iv.parameters())
        return self.evaluate_heads(model, hf, {"A": heads.heads[0], "B": heads.heads[1]}), params

    def interchange(
        self, model: RoadModel, planes: dict[str, Subspace], head: nn.Module
    ) -> pd.DataFrame:
        """Sentiment pairs with opposite gold labels; each plane set's content at every adapted
        site of the [CLS] token from the source. Score = share of pairs whose prediction moves
        to the source's (among pairs the model predicts differently)."""
        use_head(model.model, head, self.labels["A"])
        test = self.test_sets["A"]
        pos = [e for e in test if e.label == 1]
        neg = [e for e in test if e.label == 0]
        n = min(len(pos), len(neg), 64)
        base_ex, source_ex = pos[:n] + neg[:n], neg[:n] + pos[:n]

        def enc(examples: list[Example]) -> dict[str, Any]:
            batch = self.tok(
                [e.text for e in examples],
                padding=True,
                truncation=True,
                max_length=self.cfg.max_length,
                return_tensors="pt",
            )
            return dict(batch)

        base, source = enc(base_ex), enc(source_ex)
        rows = []
        sites = {name: s.size for name, s in model.sites.items()}
        for label, sub in planes.items():
            masks = {
                site: sub.coordinate_mask(site, self.cfg.group_size)
                if site in sub.sizes
                else torch.zeros(d, dtype=torch.bool)
                for site, d in sites.items()
            }
            table, score = interchange_score(model.model, masks, base, source, Positions("first"))
            rows.append(
                {
                    "planes": label,
                    "pairs": len(table),
                    "pairs_predicted_differently": int(
                        (table.pred_base != table.pred_source).sum()
                    ),
                    "interchange_score": score,
                    "mean_source_logit_change": float(table.source_logit_change.mean()),
                }
            )
        return pd.DataFrame(rows)


def run_e2(cfg: E2Config, out: Path, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Run every E2 condition; returns the tables (also written by the caller)."""
    with tempfile.TemporaryDirectory(prefix="e2-runs-") as tmp:
        exp = E2(cfg, Path(tmp), progress)
        rows: list[dict[str, Any]] = []
        base = {k: exp.base(k) for k in TASKS}
        for k, acc in base.items():
            rows.append({"condition": "base", "overlap": None, "task": k, "accuracy": acc})

        sizes = model_sizes(_probe_model(exp), "probe")
        a_space, _ = exp.subspaces(sizes, 0.0)
        adapter_a, head_a, acc_a = exp.skill("A", a_space, "A")
        interchange_table = pd.DataFrame()
        for overlap in cfg.overlaps:
            _, b_space = exp.subspaces(sizes, overlap)
            adapter_b, head_b, acc_b = exp.skill("B", b_space, f"B_{overlap:g}")
            rows.append({"condition": "skill", "overlap": overlap, "task": "A", "accuracy": acc_a})
            rows.append({"condition": "skill", "overlap": overlap, "task": "B", "accuracy": acc_b})
            both = union({"A": adapter_a, "B": adapter_b}, on_overlap="product")
            scores, composed_model = exp.composed(both, {"A": head_a, "B": head_b})
            for k, acc in scores.items():
                rows.append(
                    {"condition": "composed", "overlap": overlap, "task": k, "accuracy": acc}
                )
            if overlap == 0.0:
                write_adapter(adapter_a, out / "adapters" / "sentiment_A")
                write_adapter(adapter_b, out / "adapters" / "vitaminc_B")
                write_adapter(both, out / "adapters" / "composed_AB")
                interchange_table = exp.interchange(
                    composed_model,
                    {"A (sentiment)": a_space, "B (fact verification)": b_space},
                    head_a,
                )
            if overlap in cfg.joint_overlaps:
                for k, acc in exp.joint(overlap).items():
                    rows.append(
                        {"condition": "joint", "overlap": overlap, "task": k, "accuracy": acc}
                    )
        loreft_scores, loreft_params = exp.loreft()
        for k, acc in loreft_scores.items():
            rows.append({"condition": "loreft", "overlap": None, "task": k, "accuracy": acc})

    results = pd.DataFrame(rows)
    results["task_name"] = results["task"].map(TASKS)
    results = retained_shares(results)
    params = pd.DataFrame(
        [
            {"condition": "RoAd1 per skill (half the planes)", "params": sum(sizes.values()) // 4},
            {"condition": "RoAd1 joint (both halves)", "params": sum(sizes.values()) // 2},
            {"condition": f"LoReFT, rank {cfg.loreft_rank} per skill", "params": loreft_params},
        ]
    )
    return {"results": results, "interchange": interchange_table, "params": params}


def _probe_model(exp: E2) -> RoadModel:
    model = RoadModel(exp.fresh(2))
    model.add_adapter("probe", exp.road_config())
    return model


def retained_shares(results: pd.DataFrame) -> pd.DataFrame:
    """Add base and single-skill accuracy and the retained share of the gain per row."""
    base = results[results.condition == "base"].set_index("task")["accuracy"]
    skill = results[results.condition == "skill"].set_index(["overlap", "task"])["accuracy"]
    out = results.copy()
    out["base_accuracy"] = out["task"].map(base)

    def single(row: pd.Series) -> float:
        if row["condition"] in ("base", "loreft") or pd.isna(row["overlap"]):
            return (
                float(skill.xs(0.0, level="overlap")[row["task"]])
                if 0.0 in skill.index.get_level_values(0)
                else float("nan")
            )
        return float(skill[(row["overlap"], row["task"])])

    out["skill_accuracy"] = out.apply(single, axis=1)
    gain = out["skill_accuracy"] - out["base_accuracy"]
    # a share of a gain below one accuracy point is noise, not a measurement: left empty
    out["retained_share"] = ((out["accuracy"] - out["base_accuracy"]) / gain).where(
        gain >= MIN_GAIN
    )
    return out
