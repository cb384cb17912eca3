"""The composition benchmark: does one model composed from two skill adapters keep both?

    python -m experiments.composition.benchmark --preset quick -o results/composition/bench-quick

Each pair is two registered classification tasks on MiniLM, each read by its own head: word
order × odd word, and which of two sentences is positive × word order (skills the frozen
encoder's probe cannot read; `road_interp.tasks.probing`). Per (pair, seed) the benchmark
trains, as resumable cells of a results store (`experiments.composition.store`):

- ``probe/<task>``: the frozen encoder with a trained head (the base model's accuracy);
- ``skill/<task>/<planes>``: a RoAd1 adapter (and head) on all planes, or on the planes a
  composition method gives the task: ``halves`` (index halves), ``random`` (a seeded random
  half and its complement), ``energy`` (`road_interp.allocation`: each skill gets the planes
  the other skill's data uses least);

then scores each method's composed model on both tasks' test sets with each task's head:

- ``halves`` / ``random`` / ``energy``: `road_interp.compose.union` of the two skills;
- ``aware`` (interference-aware training): the union of task 0's half-plane skill with
  ``skill/1/aware``, task 1's adapter on its half trained with task 0's skill on the model,
  active and frozen (so task 1 learns around task 0; task 0 is not protected);
- ``buffered``: the union of task 0's half-plane skill with ``skill/1/buffered``: task 1's
  half-plane skill as trained alone (adapter and head), trained further beside task 0's skill
  on task 1's data and on a buffer of ``buffer_examples`` **unlabeled** task-0 training inputs
  (ones task 0's skill never saw), each labelled by task 0's half-plane skill alone and
  answered through its frozen head: task 1 is taught to leave task 0's answers as they were
  (a hard-label distillation to the task-0-only model; no gold task-0 label is used). Started
  from scratch instead, word order beside the which-is-positive skill did not learn (seed 0,
  validation 0.558 against a probe of 0.565);
- ``ties``: `road_interp.merging.ties` of the two all-plane skills;
- ``tuned``: the halves' union with strengths (λ_A, λ_B) (`road_interp.compose.scale`) picked
  on validation (the best worst-skill retained share);
- ``lora_ta``, the baseline: LoRA (rank 8) per skill (``lora/<task>``), merged by task
  arithmetic W + λ (ΔW_A + ΔW_B) with λ picked on validation the same way;
- ``joint``, the multi-task baseline (an upper bound for training without the other task's
  data, not a composition): ``skill/joint/all``, one RoAd1 adapter on all planes with a head
  per task (`experiments.composition.multitask`), trained on both training sets shuffled
  together for twice the steps (each task's examples seen as often as alone).

**Gate** (learnability first): a pair is scored only if each skill beats its probe by
``gate`` (10 points) on validation, on its half of the planes and on all planes (mean over
seeds). **Retained share** of a skill under a method: (acc_composed − acc_probe) /
(acc_alone − acc_probe), where "alone" is that skill's own adapter with the same planes (the
all-plane adapter for ``ties`` and ``joint``; for ``aware`` and ``buffered`` the half-plane
skills trained alone), with a
paired bootstrap interval over test items (seeds as rows of the same items). Target: ≥ 0.95
with the interval's low end ≥ 0.85.

Every per-example correctness is in ``store.jsonl``; the report (README.md, results.csv,
summary.json, retained.png) is rebuilt from the store at the end of every sitting.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from road_interp import RoadConfig, RoadModel, Subspace, load_model, load_tokenizer, scale, union
from road_interp.allocation import allocate, plane_energy
from road_interp.checkpoints import head_parameters
from road_interp.evaluation import evaluate
from road_interp.injection import resolve_targets
from road_interp.io import AdapterFile, read_adapter, write_adapter
from road_interp.merging import ties
from road_interp.subspaces import model_sizes, train_on
from road_interp.tasks import Example, get_task
from road_interp.training import TrainConfig, train

from . import bench_report
from .multitask import TaskHeads, load_head, train_mixed
from .store import ResultStore, benchmark_main, preset_config, run_and_reload

METHODS = ("halves", "random", "energy", "ties", "tuned", "lora_ta", "aware", "buffered", "joint")
PLANES = {"halves": "halves", "random": "random", "energy": "energy", "ties": "all"}
PLANES |= {"tuned": "halves", "lora_ta": "lora", "aware": "halves", "buffered": "halves"}
PLANES |= {"joint": "all"}
"""The skills each method's retained shares are measured against: RoAd1 trained alone on
those planes, or (lora) the LoRA skills; each method but ``aware``, ``buffered`` and
``joint`` composes them."""
HEAD = "head.safetensors"
"""A cell's kept head (``joint``'s cell keeps one per task: ``head0.safetensors``, ...)"""


@dataclass(frozen=True)
class BenchConfig:
    """Settings of the benchmark (the defaults are the full run; presets change a few)."""

    pairs: tuple[tuple[str, str], ...] = (
        ("wordorder_en", "oddword_en"),
        ("which_positive_en", "wordorder_en"),
    )
    """skills the frozen encoder's probe cannot read (`road_interp.tasks.probing`): sentiment
    and subjectivity on their own cannot pass the gate on MiniLM (results/gate-pilot)"""
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    steps: int = 300
    batch_size: int = 16
    max_length: int = 64
    lr: float = 1e-2
    head_lr: float = 1e-2
    train_examples: int = 4000
    val_examples: int = 600
    test_examples: int | None = None
    """None: the whole test split (≥ 1,000 items per skill)"""
    gate: float = 0.10
    """points (as a share) each skill must gain over its probe on validation"""
    ties_density: float = 0.2
    scales: tuple[float, ...] = (0.5, 1.0, 1.5)
    """strengths tried per skill by ``tuned``"""
    energy_examples: int = 256
    """training examples per skill whose activations choose the ``energy`` planes"""
    lora_rank: int = 8
    lora_lr: float = 1e-3
    """not swept: LoRA's usual rate for short runs (RoAd's, 1e-2, is ~10x it)"""
    buffer_examples: int = 1000
    """unlabeled task-0 training inputs (after the ``train_examples`` its skills saw) that
    ``buffered`` trains on"""

    READ_BY: ClassVar[dict[str, str]] = {"buffer_examples": "buffered"}

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        pairs=(("which_positive_en", "wordorder_en"),),
        seeds=(0,),
        methods=("halves", "buffered"),  # the naive union and the pair's best RoAd method
        steps=60,
        train_examples=960,
        val_examples=200,
        test_examples=400,
        energy_examples=64,
        buffer_examples=240,
    ),
    "default": {},
}


def make_config(preset: str, **changes: Any) -> BenchConfig:
    return preset_config(BenchConfig, PRESETS, preset, **changes)


# -- one (pair, seed) -------------------------------------------------------------------------
class PairRun:
    """The data, tokenizer and cell folders of one pair at one seed."""

    def __init__(
        self, cfg: BenchConfig, pair: tuple[str, str], seed: int, folder: Path, store: ResultStore
    ):
        self.cfg, self.pair, self.seed, self.folder, self.store = cfg, pair, seed, folder, store
        self.tok = load_tokenizer("minilm")
        self.tasks = [get_task(name) for name in pair]
        self.data = {
            split: [t.examples(split, limit, seed if split == "train" else 0) for t in self.tasks]
            for split, limit in (
                ("train", cfg.train_examples),
                ("validation", cfg.val_examples),
                ("test", cfg.test_examples),
            )
        }
        self._planes: dict[str, tuple[Subspace, Subspace]] = {}

    @property
    def prefix(self) -> str:
        return f"{'+'.join(self.pair)}/seed{self.seed}"

    def fresh(self, k: int) -> torch.nn.Module:
        return load_model("minilm", num_labels=len(self.tasks[k].labels), seed=self.seed)

    def train_config(self) -> TrainConfig:
        c = self.cfg
        return TrainConfig(
            lr=c.lr,
            head_lr=c.head_lr,
            batch_size=c.batch_size,
            max_steps=c.steps,
            max_length=c.max_length,
            seed=self.seed,
            log_every=max(1, c.steps // 4),
            progress=False,
        )

    def scores(self, model: torch.nn.Module, k: int) -> dict[str, list[int]]:
        """0/1 per validation and test item of task k."""
        out = {}
        for split in ("validation", "test"):
            result = evaluate(
                model,
                self.tok,
                self.data[split][k],
                batch_size=64,
                max_length=self.cfg.max_length,
                progress=False,
                predictions=True,
            )
            out[split] = result["correct"]
        return out

    # -- cells ------------------------------------------------------------------------------
    def probe(self, k: int) -> dict[str, Any]:
        model = self.fresh(k)
        for p in model.parameters():
            p.requires_grad_(False)
        folder = self.cell(f"probe{k}")
        train(model, self.tok, self.data["train"][k], self.train_config(), folder / "run")
        shutil.rmtree(folder / "run")  # the scores are what the store keeps
        return self.scores(model, k)

    def skill(self, k: int, planes: str) -> dict[str, Any]:
        """Train task k's adapter on ``planes`` (all, halves, random, energy); keep it.

        ``aware`` and ``buffered`` (task 1): on its half of the planes, with task 0's
        half-plane skill on the model, active and frozen (``buffered``: with its head, on
        `buffer`); scored with both on."""
        model = RoadModel(self.fresh(k))
        beside = planes in ("aware", "buffered")
        if beside:
            present = read_adapter(self.cell("skill0-halves") / "adapter")
            model.load_adapter(replace(present, extra={}), "present")
        if planes == "buffered":  # from the skill as trained alone on its half, head included
            alone = read_adapter(self.cell(f"skill{k}-halves") / "adapter")
            model.load_adapter(alone, "skill", trainable=True)
        else:
            model.add_adapter("skill", RoadConfig(variant="road_1", group_size=64), seed=self.seed)
        if beside:
            model.set_active("present", "skill")
        allocation = "halves" if beside else planes
        subspace = self.subspaces(model, allocation)[k] if planes != "all" else None
        folder = self.cell(f"skill{k}-{planes}")
        with train_on(model, "skill", subspace) if subspace else nullcontext():
            if planes == "buffered":
                self.train_buffered(model, folder / "run")
            else:
                train(model, self.tok, self.data["train"][k], self.train_config(), folder / "run")
        write_adapter(model.adapter_file("skill"), folder / "adapter", overwrite=True)
        head = {n: p.detach().contiguous() for n, p in head_parameters(model).items()}
        save_file(head, str(folder / HEAD))
        shutil.rmtree(folder / "run")  # the adapter and head are kept; the checkpoint is not
        return self.scores(model, k)

    def train_buffered(self, model: RoadModel, run: Path) -> None:
        """Task 1's skill on task 1's training set and `buffer`, shuffled together for the
        steps that show task 1's examples as often as alone; buffer items are answered by
        task 0's frozen head."""
        inner = model.model
        own = inner.classifier
        present = load_head(self.cell("skill0-halves") / HEAD)
        heads = TaskHeads([present, own], own=1, frozen=(0,))
        inner.classifier = heads
        buffer, examples = self.buffer(), self.data["train"][1]
        steps = round(self.cfg.steps * (len(examples) + len(buffer)) / len(examples))
        config = replace(self.train_config(), max_steps=steps)
        train_mixed(model, self.tok, heads, (buffer, examples), config, run)
        inner.classifier = own

    def buffer(self) -> list[Example]:
        """``buffer_examples`` task-0 training inputs its skills never saw, each labelled by
        task 0's half-plane skill alone (its prediction, not the gold label)."""
        c = self.cfg
        unseen = self.tasks[0].examples("train", c.train_examples + c.buffer_examples, self.seed)
        unseen = unseen[c.train_examples :]
        alone = RoadModel(self.fresh(0))
        alone.load_adapter(read_adapter(self.cell("skill0-halves") / "adapter"), "alone")
        self.use_head(alone.model, self.cell("skill0-halves") / HEAD)
        predicted = evaluate(
            alone, self.tok, unseen, batch_size=64, max_length=c.max_length,
            progress=False, predictions=True,
        )["predictions"]  # fmt: skip
        return [replace(e, label=int(p)) for e, p in zip(unseen, predicted, strict=True)]

    def joint(self) -> dict[str, Any]:
        """The ``joint`` baseline's adapter and a head per task (scored by compose/joint)."""
        model = RoadModel(self.fresh(0))
        model.add_adapter("skill", RoadConfig(variant="road_1", group_size=64), seed=self.seed)
        inner = model.model
        heads = TaskHeads([inner.classifier, self.fresh(1).classifier], own=0)
        inner.classifier = heads
        folder = self.cell("skill-joint")
        config = replace(self.train_config(), max_steps=2 * self.cfg.steps)
        train_mixed(model, self.tok, heads, self.data["train"], config, folder / "run")
        write_adapter(model.adapter_file("skill"), folder / "adapter", overwrite=True)
        for k in (0, 1):
            heads.save_head(k, folder / f"head{k}.safetensors")
        shutil.rmtree(folder / "run")
        return {"trained_steps": config.max_steps}

    def lora(self, k: int) -> dict[str, Any]:
        """Train task k's LoRA (and head); keep each target's ΔW and the head."""
        from peft import LoraConfig, get_peft_model

        base = self.fresh(k)
        targets = resolve_targets(base, RoadConfig())
        r = self.cfg.lora_rank
        model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
        for p in head_parameters(model).values():
            p.requires_grad_(True)
        folder = self.cell(f"lora{k}")
        config = replace(self.train_config(), lr=self.cfg.lora_lr)
        train(model, self.tok, self.data["train"][k], config, folder / "run")
        scores = self.scores(model, k)
        inner = model.get_base_model()
        deltas = {
            name: inner.get_submodule(name).get_delta_weight("default").detach().contiguous()
            for name in targets
        }
        save_file(deltas, str(folder / "delta.safetensors"))
        head = {n: p.detach().contiguous() for n, p in head_parameters(model).items()}
        save_file(head, str(folder / HEAD))
        shutil.rmtree(folder / "run")
        return scores

    def compose(self, method: str) -> dict[str, Any]:
        """Both tasks' validation and test scores of ``method``'s composed model."""
        if method == "lora_ta":
            return self.task_arithmetic()
        if method == "joint":
            folder = self.cell("skill-joint")
            heads = (folder / "head0.safetensors", folder / "head1.safetensors")
            return self.score_composed(read_adapter(folder / "adapter"), heads)
        planes = PLANES[method]
        beside = method in ("aware", "buffered")
        cells = (f"skill0-{planes}", f"skill1-{method}" if beside else f"skill1-{planes}")
        skills = [read_adapter(self.cell(c) / "adapter") for c in cells]
        own_heads = (self.cell(cells[0]) / HEAD, self.cell(cells[1]) / HEAD)
        if method == "ties":
            merged = ties(skills, density=self.cfg.ties_density, drop_extra=True)
            return self.score_composed(merged, own_heads)
        if method != "tuned":
            return self.score_composed(union(skills, drop_extra=True), own_heads)
        return self.tuned(skills, own_heads)

    def tuned(self, skills: list[AdapterFile], heads: tuple[Path, Path]) -> dict[str, Any]:
        """The halves' union at the strengths with the best worst-skill validation share."""
        grid = [(a, b) for a in self.cfg.scales for b in self.cfg.scales]
        results = {}
        for lam_a, lam_b in grid:
            composed = union([scale(skills[0], lam_a), scale(skills[1], lam_b)], drop_extra=True)
            results[(lam_a, lam_b)] = self.score_composed(composed, heads)
        best = max(grid, key=lambda lam: self.worst_validation_share(results[lam]))
        return {**results[best], "strengths": list(best)}

    def task_arithmetic(self) -> dict[str, Any]:
        """W + λ (ΔW_A + ΔW_B) at the λ with the best worst-skill validation share."""
        deltas = [load_file(str(self.cell(f"lora{k}") / "delta.safetensors")) for k in (0, 1)]
        results = {}
        for lam in self.cfg.scales:
            out = {}
            for k in (0, 1):
                model = self.fresh(k)
                with torch.no_grad():
                    for name, delta in deltas[0].items():
                        weight = model.get_submodule(name).weight
                        weight.add_(lam * (delta + deltas[1][name]))
                self.use_head(model, self.cell(f"lora{k}") / HEAD)
                out[f"task{k}"] = self.scores(model, k)
            results[lam] = out
        best = max(
            self.cfg.scales, key=lambda lam: self.worst_validation_share(results[lam], "lora")
        )
        return {**results[best], "strengths": [best, best]}

    def worst_validation_share(self, result: dict[str, Any], alone: str = "skill") -> float:
        shares = []
        for k in (0, 1):
            composed = np.mean(result[f"task{k}"]["validation"])
            probe = np.mean(self.store[f"{self.prefix}/probe/{k}"]["validation"])
            unit = f"skill/{k}/halves" if alone == "skill" else f"lora/{k}"
            alone_acc = np.mean(self.store[f"{self.prefix}/{unit}"]["validation"])
            gain = alone_acc - probe
            shares.append((composed - probe) / gain if gain != 0 else -math.inf)
        return min(shares)

    def score_composed(self, adapter: AdapterFile, heads: tuple[Path, Path]) -> dict[str, Any]:
        """Each task's scores with ``adapter`` and task k's head file ``heads[k]``."""
        out = {}
        for k in (0, 1):
            model = RoadModel(self.fresh(k))
            model.load_adapter(adapter, "composed")
            self.use_head(model.model, heads[k])
            out[f"task{k}"] = self.scores(model, k)
        return out

    @staticmethod
    def use_head(model: torch.nn.Module, head_file: Path) -> None:
        """Copy a kept head (a head file) into a Hugging Face classifier."""
        with torch.no_grad():
            for name, value in load_file(str(head_file)).items():
                model.get_parameter(name).copy_(value)

    # -- planes -----------------------------------------------------------------------------
    def subspaces(self, model: RoadModel, planes: str) -> tuple[Subspace, Subspace]:
        if planes not in self._planes:
            sizes = model_sizes(model, "skill")
            if planes == "halves":
                pair = (Subspace.part(sizes, 0, 2, "A"), Subspace.part(sizes, 1, 2, "B"))
            elif planes == "random":
                a = Subspace.random(sizes, 0.5, self.seed, "A")
                pair = (a, Subspace.full(sizes, "B") - a)
            else:
                pair = self.energy_planes(sizes)
            self._planes[planes] = pair
        return self._planes[planes]

    def energy_planes(self, sizes: dict[str, int]) -> tuple[Subspace, Subspace]:
        base = self.fresh(0)  # the base encoder; its head plays no part
        energies = []
        for k in (0, 1):
            texts = [e.text for e in self.data["train"][k][: self.cfg.energy_examples]]
            batches = [
                self.tok(
                    texts[i : i + 32],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.cfg.max_length,
                )
                for i in range(0, len(texts), 32)
            ]
            energies.append(plane_energy(base, batches, sizes, group_size=64))
        return allocate(energies[0], energies[1], names=("A", "B"))

    def cell(self, name: str) -> Path:
        """The folder of one cell's files (its run, adapter and head)."""
        return self.folder / "cells" / self.prefix / name


# -- the grid -----------------------------------------------------------------------------------
def cells(cfg: BenchConfig, folder: Path, store: ResultStore) -> Iterator[tuple[str, Callable]]:
    """Every cell in run order: per pair and seed, probes, skills, then compositions."""
    for pair in cfg.pairs:
        for seed in cfg.seeds:
            run = PairRun(cfg, pair, seed, folder, store)
            planes = {PLANES[m] for m in cfg.methods} | {"halves", "all"}
            for k in (0, 1):
                yield f"{run.prefix}/probe/{k}", (lambda r=run, k=k: r.probe(k))
                for p in sorted(planes - {"lora"}):
                    yield f"{run.prefix}/skill/{k}/{p}", (lambda r=run, k=k, p=p: r.skill(k, p))
                if "lora" in planes:
                    yield f"{run.prefix}/lora/{k}", (lambda r=run, k=k: r.lora(k))
            for beside in ("aware", "buffered"):  # after task 0's half-plane skill
                if beside in cfg.methods:
                    yield f"{run.prefix}/skill/1/{beside}", (lambda r=run, b=beside: r.skill(1, b))
            if "joint" in cfg.methods:
                yield f"{run.prefix}/skill/joint/all", run.joint
            for method in cfg.methods:
                yield f"{run.prefix}/compose/{method}", (lambda r=run, m=method: r.compose(m))


def run_benchmark(
    cfg: BenchConfig,
    out: str | Path,
    budget_minutes: float | None = None,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    """Run (or continue) the benchmark into ``out`` (``only``: the cells whose key starts with
    one of these) and rewrite its report; the summary."""
    store, finished, seconds = run_and_reload(
        cfg, out, lambda store: cells(cfg, store.folder, store), budget_minutes, only
    )
    return bench_report.write(cfg, store, store.folder, finished, seconds)


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        argv,
        prog="python -m experiments.composition.benchmark",
        description="The composition benchmark: pairs x methods x seeds as resumable cells; "
        "running it again continues where it stopped and rewrites the report.",
        presets=PRESETS,
        config=BenchConfig,
        make_config=make_config,
        run=run_benchmark,
    )


if __name__ == "__main__":
    raise SystemExit(main())
