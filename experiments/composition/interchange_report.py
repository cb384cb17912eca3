"""The interchange benchmark's report, rebuilt from its results store after every sitting.

Writes README.md (per model and plane set: IIA, the difference from its random null and from
the same planes in the base model, with intervals and a verdict in words), results.csv,
summary.json and interchange.png. Intervals are paired bootstraps over prompts with seeds as
rows of the same prompts (every seed reads the same test reviews).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from road_interp.files import atomic_file, write_text_atomic
from road_interp.intervals import paired_bootstrap, verdict

from .generation_report import listed, mean_interval
from .report import markdown_table
from .store import ResultStore

if TYPE_CHECKING:
    from .interchange_bench import InterchangeConfig

SETS = {"content": "random-half", "format": "random-half", "top": "random-top"}
"""plane set -> the random null of its size (``all`` is reported as the ceiling)"""


def hits(store: ResultStore, seeds: list[int], model: str, name: str) -> np.ndarray:
    """(seeds, prompts) 1 where plane set ``name``'s exchange gave the source's gold label
    (``plain``: where the prediction without an exchange already is the source's label, i.e.
    wrong: what IIA counts with no exchange at all)."""
    rows = []
    for seed in seeds:
        cell = store[f"seed{seed}/{model}"]
        source_gold = np.asarray(cell["gold"])[np.asarray(cell["source"])]
        rows.append(np.asarray(cell["predicted"][name]) == source_gold)
    return np.asarray(rows, dtype=float)


def effect(exchanged: np.ndarray, unchanged: np.ndarray) -> float:
    """What an exchange moves: IIA − the share already at the source's label without it."""
    return float(exchanged.mean() - unchanged.mean())


def null_hits(store: ResultStore, seeds: list[int], model: str, null: str) -> np.ndarray:
    """(draws, seeds, prompts) the hits of every random draw of ``null``."""
    draws = sorted(
        (n for n in store[f"seed{seeds[0]}/{model}"]["predicted"] if n.startswith(null + "/")),
        key=lambda n: int(n.rsplit("/", 1)[1]),
    )
    return np.stack([hits(store, seeds, model, d) for d in draws])


def write(
    cfg: InterchangeConfig, store: ResultStore, finished: bool, seconds: float
) -> dict[str, Any]:
    """Rebuild the report from ``store``; returns the summary (also summary.json)."""
    folder = store.folder
    difference = lambda a, b: a.mean() - b.mean()  # noqa: E731
    summary: dict[str, Any] = {"finished": finished, "models": {}, "verdicts": {}}
    rows = []
    for model in cfg.models:
        seeds = [s for s in cfg.seeds if f"seed{s}/{model}" in store]
        if not seeds:
            continue
        with_base = [s for s in seeds if f"seed{s}/base" in store]
        unchanged = hits(store, seeds, model, "plain")
        entry: dict[str, Any] = {
            "seeds": seeds,
            "accuracy": mean_interval(1 - unchanged),
            "all_planes_effect": listed(
                paired_bootstrap(effect, hits(store, seeds, model, "all"), unchanged)
            ),
            "sets": {},
        }
        for name, null in SETS.items():
            mine = hits(store, seeds, model, name)
            draws = null_hits(store, seeds, model, null)
            vs_null = paired_bootstrap(difference, mine, draws.mean(0))
            draw_iia = draws.mean(-1)  # (draws, seeds)
            at_least = int((draw_iia >= mine.mean(-1)).sum())
            result = {
                "iia": mean_interval(mine),
                "effect": listed(paired_bootstrap(effect, mine, unchanged)),
                "null_iia": mean_interval(draws.mean(0)),
                "vs_null": listed(vs_null),
                "null_draws_at_least": f"{at_least} of {draw_iia.size}",
                "verdict": _beyond_chance(vs_null),
            }
            if model != "base" and with_base:  # effects, not IIAs: the models' errors differ
                vs_base = paired_bootstrap(
                    lambda a, a0, b, b0: effect(a, a0) - effect(b, b0),
                    hits(store, with_base, model, name),
                    hits(store, with_base, model, "plain"),
                    hits(store, with_base, "base", name),
                    hits(store, with_base, "base", "plain"),
                )
                result["vs_base"] = listed(vs_base)
            entry["sets"][name] = result
            summary["verdicts"][f"{model}/{name}"] = result["verdict"]
            planes = store[f"seed{seeds[0]}/{model}"]["planes"][name]
            rows.append(_row(model, name, null, len(seeds), planes, result))
        summary["models"][model] = entry
    table = pd.DataFrame(rows)
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(folder / "results.csv", table.to_csv(index=False))
    if rows:
        figure = iia_figure(store, summary)
        with atomic_file(folder / "interchange.png") as tmp:
            figure.savefig(tmp, dpi=120, format="png")
        plt.close(figure)
    write_text_atomic(folder / "README.md", _readme(cfg, summary, table, finished, seconds))
    return summary


def _beyond_chance(vs_null: tuple[float, float, float]) -> str:
    """In words: is the plane set's IIA above its null's (paired interval excluding 0)?"""
    said = verdict(vs_null, 0.0)
    return {
        "met": "carries the label beyond chance",
        "not met": "below chance",
        "not established": "not established against chance",
    }[said]


def _row(model: str, name: str, null: str, seeds: int, planes: int, result: dict) -> dict:
    low, iia, high = result["iia"]
    row = {
        "model": model,
        "planes": name,
        "n_planes": planes,
        "seeds": seeds,
        "iia": iia,
        "iia_low": low,
        "iia_high": high,
        "effect": result["effect"][1],
        "effect_low": result["effect"][0],
        "effect_high": result["effect"][2],
        "null": null,
        "null_iia": result["null_iia"][1],
        "vs_null": result["vs_null"][1],
        "vs_null_low": result["vs_null"][0],
        "vs_null_high": result["vs_null"][2],
        "null_draws_at_least": result["null_draws_at_least"],
        "verdict": result["verdict"],
    }
    if "vs_base" in result:
        row |= {
            "vs_base": result["vs_base"][1],
            "vs_base_low": result["vs_base"][0],
            "vs_base_high": result["vs_base"][2],
        }
    return row


def iia_figure(store: ResultStore, summary: dict[str, Any]) -> Figure:
    """Per model: each plane set's IIA with its interval, and every random draw of its null
    (grey dots, one per seed and draw)."""
    models = list(summary["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, model in zip(axes, models, strict=True):
        entry = summary["models"][model]
        for x, (name, null) in enumerate(SETS.items()):
            draws = null_hits(store, entry["seeds"], model, null).mean(-1).ravel()
            ax.scatter(np.full(draws.size, x + 0.2), draws, s=8, color="0.6")
            low, point, high = entry["sets"][name]["iia"]
            ax.errorbar([x], [point], yerr=[[point - low], [high - point]], fmt="o", capsize=3)
        ax.set_xticks(range(len(SETS)), list(SETS))
        ax.set_title(model)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("IIA (label → source's)")
    fig.suptitle("Interchange on plane sets (dots: random sets of equal size)", fontsize=9)
    fig.tight_layout()
    return fig


def _readme(
    cfg: InterchangeConfig, summary: dict, table: pd.DataFrame, finished: bool, seconds: float
) -> str:
    state = "finished" if finished else "partial (run the same command again to continue)"
    lines = [
        "# Interchange interventions on the sentiment skill's planes, with nulls",
        "",
        "Written by `python -m experiments.composition.interchange_bench` (see its docstring) "
        f"on the adapters of `{cfg.adapters}`: {cfg.prompts} test reviews, each paired with a "
        "review of the opposite gold label; the answer prefix teacher-forced and the label "
        "read at its last token; plane sets exchanged from the source at the shared suffix "
        f"tokens of the eight adapted blocks. {cfg.nulls} random plane sets per null and seed. "
        f"State: {state}; this sitting {seconds / 60:.1f} min.",
        "",
        "IIA = share of pairs whose label turns into the source's gold label; it counts the "
        "prompts a model already gets wrong, so `effect` = IIA − that share (what the exchange "
        "moved). `vs_null` = IIA − the mean IIA of random plane sets with as many planes per "
        "block (paired over prompts; the same model, so the same errors); `vs_base` = effect − "
        "the same planes' effect in the base model. Intervals: 95% paired bootstrap over "
        "prompts, seeds as rows. `null_draws_at_least` = random draws (over seeds) whose IIA "
        "reached the set's on that seed.",
        "",
        "Accuracy without an exchange (teacher-forced label, 95% interval): "
        + "; ".join(
            f"{m} {_fmt(e['accuracy'])} ({len(e['seeds'])} seeds)"
            for m, e in summary["models"].items()
        )
        + ". Effect of exchanging every plane (the ceiling): "
        + "; ".join(f"{m} {_fmt(e['all_planes_effect'])}" for m, e in summary["models"].items())
        + ".",
        "",
        markdown_table(table) if len(table) else "(no cells yet)",
        "",
        "![IIA per plane set](interchange.png)",
    ]
    return "\n".join(lines) + "\n"


def _fmt(interval: list[float | None]) -> str:
    low, point, high = interval
    return f"{point:.2f} [{low:.2f}, {high:.2f}]"
