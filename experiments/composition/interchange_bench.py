"""Do a skill's planes carry its decision, beyond chance? Interchange interventions with nulls.

    python -m experiments.composition.interchange_bench --preset quick -o /tmp/interchange-quick
    python -m experiments.composition.interchange_bench --preset default -o experiments/composition/results/interchange

On the sentiment × JSON generation benchmark's kept adapters (``adapters``: its results
folder, seeds as there), the content skill answers "The sentiment of this review is
<label>." The answer prefix is teacher-forced after each test review's chat prompt, so every
prompt ends in the same k tokens (the assistant header and the prefix), and the label is read
at the last one: the logits of " positive" vs " negative". Each prompt is paired with a
source review of the opposite gold label, and a plane set S is exchanged from the source's
run at the k suffix tokens of the eight adapted blocks (`road_interp.interchange`).
**Interchange-intervention accuracy** (IIA) = the share of pairs whose label turns into the
source's gold one.

Models (cells ``seed<i>/<model>``): ``content``, the content skill alone on its half of the
planes (``skill/content/halves``); ``halves``, that skill composed with the format skill on
the other half (the ``halves`` method's model); ``base``, the model without adapters. Plane
sets, the same in every model of a seed: ``all`` (every plane: how far an exchange at the
suffix can move the label at all), ``content`` (the content skill's half, ``half:0``),
``format`` (the other half), ``top`` (the ``top`` planes per block the content adapter
rotated most, by |θ|), and their **nulls**: ``nulls`` random plane sets with as many planes
per block as ``content`` (``random-half``) and as ``top`` (``random-top``), drawn from all
planes (`road_interp.subspaces.Subspace.random_like`). The report compares each set with its
null (paired over prompts, seeds as rows) and each model's IIA with the base model's on the
same planes. Writes README.md, results.csv, summary.json and interchange.png beside the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from road_interp import RoadModel, load_model, load_tokenizer, union
from road_interp.interchange import SuffixInterchange, shared_suffix_length, top_planes
from road_interp.subspaces import Subspace

from . import interchange_report
from .generation_bench import GenConfig, SeedRun
from .store import benchmark_main, preset_config, run_and_reload

MODELS = ("content", "halves", "base")
LABELS = ("positive", "negative")


@dataclass(frozen=True)
class InterchangeConfig:
    """Settings of the interchange benchmark (defaults: the full run)."""

    adapters: str = "experiments/composition/results/generation"
    """the sentiment generation benchmark's results folder (its config.json and kept adapters)"""
    seeds: tuple[int, ...] = (0, 1, 2)
    models: tuple[str, ...] = MODELS
    prompts: int = 300
    """test reviews (the generation benchmark's content test prompts, in order)"""
    nulls: int = 10
    """random plane sets per null"""
    top: int = 16
    """planes per block in the ``top`` set"""
    batch_size: int = 16

    def __post_init__(self) -> None:
        unknown = set(self.models) - set(MODELS)
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; choose from {MODELS}")


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(seeds=(0,), models=("content", "base"), prompts=32, nulls=2),
    "default": {},
}


def generation_config(folder: str | Path) -> GenConfig:
    """The settings of a generation benchmark results folder (its config.json)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: `adapters` must be a generation benchmark's results folder"
        )
    data = json.loads(path.read_text())
    names = {f.name for f in fields(GenConfig)}
    cfg = GenConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    )
    if cfg.pair != "sentiment":
        raise ValueError(f"{folder} holds the {cfg.pair!r} pair; this test reads sentiment labels")
    return cfg


class SeedInterchange:
    """The prompts, pairs and plane sets of one seed's adapters."""

    def __init__(self, cfg: InterchangeConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        gen = generation_config(cfg.adapters)
        self.run = SeedRun(gen, seed, Path(cfg.adapters))
        self.tok = load_tokenizer("smollm2")
        self.tok.padding_side = "left"
        prefix = (gen.content_target or self.run.pair.target).split("{label}")[0].rstrip()
        prompts = self.run.prompts["test/content"][: cfg.prompts]
        self.texts = [p + prefix for p in prompts]
        gold = [LABELS.index(g) for g in self.run.golds["test/content"][: cfg.prompts]]
        self.gold = torch.tensor(gold)
        self.source = opposite_sources(self.gold)
        self.label_ids = [
            self.tok(" " + label, add_special_tokens=False).input_ids[0] for label in LABELS
        ]
        content = self.run.adapter("skill/content/halves")
        self.sites = sorted(content.params, key=lambda s: int(s.rsplit(".", 1)[1]))
        sizes = content.sites
        half = Subspace.from_spec("half:0", sizes)
        top = top_planes(content, cfg.top)
        self.plane_sets = {
            "all": Subspace.full(sizes),
            "content": half,
            "format": Subspace.from_spec("half:1", sizes),
            "top": top,
        }
        for r in range(cfg.nulls):
            self.plane_sets[f"random-half/{r}"] = Subspace.random_like(half, 1000 * seed + r)
            self.plane_sets[f"random-top/{r}"] = Subspace.random_like(top, 1000 * seed + 500 + r)
        self.group_size = content.config.group_size

    def model(self, name: str) -> torch.nn.Module:
        """``content``, ``halves`` or ``base`` (see the module docstring), in eval mode."""
        hf = load_model("smollm2", task="causal-lm")
        if name != "base":
            model = RoadModel(hf)
            skills = [self.run.adapter("skill/content/halves")]
            if name == "halves":
                skills.append(self.run.adapter("skill/format/halves"))
            model.load_adapter(union(skills) if len(skills) > 1 else skills[0], name)
        return hf.eval()

    def cell(self, name: str) -> dict[str, Any]:
        """Every plane set's intervened predictions in model ``name``, per prompt."""
        model = self.model(name)
        encoded = self.tok(self.texts, padding=True, add_special_tokens=False, return_tensors="pt")
        k = shared_suffix_length(encoded["input_ids"], encoded["attention_mask"])
        runs = []
        for start in range(0, len(self.texts), self.cfg.batch_size):
            rows = self.tok(
                self.texts[start : start + self.cfg.batch_size],
                padding=True,
                add_special_tokens=False,
                return_tensors="pt",
            )
            runs.append(SuffixInterchange(model, rows, self.sites, self.label_ids, k=k))
        recorded = [run.sources() for run in runs]
        sources = {site: torch.cat([r[site] for r in recorded])[self.source] for site in self.sites}
        predicted = {"plain": torch.cat([run.plain() for run in runs]).argmax(-1)}
        for set_name, planes in self.plane_sets.items():
            masks = {s: planes.coordinate_mask(s, self.group_size) for s in self.sites}
            batches = []
            for i, run in enumerate(runs):
                rows = slice(i * self.cfg.batch_size, i * self.cfg.batch_size + len(run.ids))
                batches.append(run.logits(masks, {s: v[rows] for s, v in sources.items()}))
            predicted[set_name] = torch.cat(batches).argmax(-1)
        return {
            "k": k,
            "gold": self.gold.tolist(),
            "source": self.source.tolist(),
            "planes": {n: p.num_planes() for n, p in self.plane_sets.items()},
            "predicted": {n: p.tolist() for n, p in predicted.items()},
        }


def opposite_sources(gold: torch.Tensor) -> torch.Tensor:
    """(n,) for each prompt the index of its source: the prompts of the other label in turn
    (the i-th prompt of a label takes the (i mod m)-th of the m prompts of the other)."""
    source = torch.empty_like(gold)
    for label in (0, 1):
        mine, theirs = (gold == label).nonzero().flatten(), (gold != label).nonzero().flatten()
        if len(theirs) == 0:
            raise ValueError("every prompt has the same gold label: no opposite sources")
        source[mine] = theirs[torch.arange(len(mine)) % len(theirs)]
    return source


def cells(cfg: InterchangeConfig) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    for seed in cfg.seeds:
        run: SeedInterchange | None = None

        def compute(name: str, seed: int = seed) -> dict[str, Any]:
            nonlocal run
            run = run or SeedInterchange(cfg, seed)
            return run.cell(name)

        for name in cfg.models:
            yield f"seed{seed}/{name}", (lambda n=name, c=compute: c(n))


def run_benchmark(
    cfg: InterchangeConfig,
    out: str | Path,
    budget_minutes: float | None = None,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    """Run (or continue) the benchmark into ``out`` (``only``: the cells whose key starts with
    one of these) and rewrite its report; the summary."""
    store, finished, seconds = run_and_reload(
        cfg, out, lambda store: cells(cfg), budget_minutes, only
    )
    return interchange_report.write(cfg, store, finished, seconds)


def make_config(preset: str, **changes: Any) -> InterchangeConfig:
    return preset_config(InterchangeConfig, PRESETS, preset, **changes)


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        argv,
        prog="python -m experiments.composition.interchange_bench",
        description="Interchange interventions on the sentiment skill's planes against random "
        "plane sets of equal size and the base model (resumable cells; rewrites the report).",
        presets=PRESETS,
        config=InterchangeConfig,
        make_config=make_config,
        run=run_benchmark,
    )


if __name__ == "__main__":
    raise SystemExit(main())
