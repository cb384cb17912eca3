"""Entry point of the composition experiments.

    python -m experiments.composition.run --experiment e2 --preset quick -o results/composition/e2-quick

writes, into the output folder (atomically: all or nothing):

    README.md        summary: settings, results table, figures, what the numbers say
    results.csv      one row per condition, overlap and task
    *.csv            further tables (interchange scores, parameter counts)
    *.png            figures
    config.json      the settings of the run
    machine.json     where it ran
    adapters/        (E2) the trained sentiment, VitaminC and composed adapters
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from road_interp.files import atomic_folder

from .. import machine
from . import report
from .config import PRESETS, E1Config, E2Config, make_config

EXPERIMENTS = ("e2", "e1")
"""Experiment names; the first is the default (the one ``make demo`` runs)."""


def run_experiment(
    name: str = "e2", preset: str = "quick", out_dir: str | Path = "results/composition"
) -> Path:
    """Run experiment ``name`` with ``preset`` and write its report folder; returns it."""
    cfg = make_config(name, preset)
    out = Path(out_dir)
    started = time.perf_counter()
    with atomic_folder(out) as tmp:
        if isinstance(cfg, E2Config):
            from .e2 import run_e2

            tables = run_e2(cfg, tmp)
            text = _e2_readme(cfg, preset, tables)
            figure = report.e2_figure(tables["results"])
        else:
            from .e1 import run_e1

            tables = run_e1(cfg, tmp)
            text = _e1_readme(cfg, preset, tables)
            figure = report.e1_figure(tables["results"])
        figure.savefig(tmp / f"{name}.png", dpi=120)
        for table_name, table in tables.items():
            table.to_csv(tmp / f"{table_name}.csv", index=False)
        seconds = time.perf_counter() - started
        (tmp / "config.json").write_text(
            json.dumps({"experiment": name, "preset": preset, **asdict(cfg)}, indent=2) + "\n"
        )
        (tmp / "machine.json").write_text(
            json.dumps({**machine.describe(), "seconds": round(seconds, 1)}, indent=2) + "\n"
        )
        (tmp / "README.md").write_text(
            text
            + f"\n\nRun time: {seconds / 60:.1f} min on {machine.describe()['device']} ({torch.get_num_threads()} threads).\n"
        )
    return out


def _settings(cfg: E1Config | E2Config, preset: str) -> str:
    return f"Preset `{preset}`: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items())


def _e2_readme(cfg: E2Config, preset: str, tables: dict) -> str:
    results = tables["results"]
    summary = report.e2_summary(results)
    disjoint = results[(results.condition == "composed") & (results.overlap == 0.0)]
    retained = _shares(disjoint)
    retained_joint = _shares(results[(results.condition == "joint") & (results.overlap == 0.0)])
    shares = disjoint.retained_share
    if (shares < 0.95).any():
        verdict = "NOT met"
    elif shares.isna().any():
        verdict = "not established: a skill gained under one point over base"
    else:
        verdict = "met"
    parts = [
        "# E2: composing RoAd adapters on classification (MiniLM)",
        "",
        "Skill A = sentiment (MultiEmo-en, 2 labels), skill B = fact verification (VitaminC, "
        "3 labels), each with its own head. RoAd1 on every linear layer; A trains on the first "
        "half of each site's planes, B on a half sharing `overlap` of A's planes. Accuracy on "
        "the test split; retained share = (acc - base) / (acc_skill - base).",
        "",
        _settings(cfg, preset),
        "",
        f"**Disjoint composition keeps {retained} of the single skills' gains "
        f"(target: >= 95% each: {verdict}).** Joint training with per-example subspaces "
        f"keeps {retained_joint}.",
        "",
        "## Results",
        "",
        report.markdown_table(summary),
        "",
        "![E2](e2.png)",
        "",
        "## Interchange on the disjoint composed model",
        "",
        "Sentiment test pairs with opposite gold labels; the content of one skill's planes at "
        "every adapted site of the [CLS] token is taken from the source sentence (pyvene). "
        "Score = share of pairs whose prediction moves to the source's, among pairs predicted "
        "differently.",
        "",
        report.markdown_table(tables["interchange"]),
        "",
        "## Trainable parameters",
        "",
        report.markdown_table(tables["params"]),
    ]
    return "\n".join(parts)


def _shares(rows) -> str:
    """'multiemo_en 90.5%, vitaminc undefined (no gain)' for rows with a retained share."""
    return ", ".join(
        f"{r.task_name} {r.retained_share:.1%}"
        if pd.notna(r.retained_share)
        else f"{r.task_name} undefined (no gain over base)"
        for r in rows.itertuples()
    )


def _e1_readme(cfg: E1Config, preset: str, tables: dict) -> str:
    results = report.e1_summary(tables["results"])
    joint = results.set_index("condition")["joint_success"]
    singles = max(joint["skill A (French)"], joint["skill B (sentiment)"])
    met = joint["composed A+B"] > singles
    parts = [
        "# E1: composing RoAd adapters on generation (SmolLM2-135M-Instruct)",
        "",
        "Skill A = answering in French (MultiEmo en->fr aligned sentences), skill B = answering "
        "a sentiment instruction with positive/negative (MultiEmo-en). RoAd1 on the output of "
        f"blocks {list(cfg.layers)} (positions: {cfg.positions}); A on the first half of each "
        "site's planes, B on the second. Held-out test sentences; answers generated greedily. "
        "French = an unambiguously French sentiment word (positif, négatif, négative) or more "
        "French than English function words.",
        "",
        _settings(cfg, preset),
        "",
        f"**Joint success (correct and in French): composed A+B {joint['composed A+B']:.3f} vs "
        f"the better single skill {singles:.3f} (target: composed beats both: "
        f"{'met' if met else 'NOT met'}).** Jointly trained with per-example subspaces: "
        f"{joint['joint A+B']:.3f}.",
        "",
        "## Results",
        "",
        report.markdown_table(results),
        "",
        "![E1](e1.png)",
        "",
        "## Sample answers",
        "",
        report.markdown_table(tables["samples"]),
        "",
        "## Skill A's own instructions (held-out sentences)",
        "",
        report.markdown_table(
            tables["skill_a_answers"]
            .head(4)[["message", "base", "skill A (French)", "composed A+B"]]
            .map(lambda text: " ".join(str(text).split())[:70])
        ),
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.composition.run",
        description="Composition experiments of RoAd adapters (E1 generation, E2 classification).",
    )
    parser.add_argument("--experiment", choices=EXPERIMENTS, default=EXPERIMENTS[0])
    parser.add_argument("--preset", default="quick", help=f"one of {sorted(PRESETS['e2'])}")
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="report folder (default results/composition/<experiment>-<preset>)",
    )
    args = parser.parse_args(argv)
    out = args.output or f"results/composition/{args.experiment}-{args.preset}"
    print(run_experiment(args.experiment, args.preset, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
