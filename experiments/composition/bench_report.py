"""The composition benchmark's report, rebuilt from its results store after every sitting.

Writes README.md (settings, the gate, each method's retained shares with intervals and a
verdict in words), results.csv (one row per pair, method and skill), summary.json and
retained.png. Every number comes from the per-item correctness in ``store.jsonl``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from road_interp.files import atomic_file, write_text_atomic
from road_interp.intervals import paired_bootstrap

from .store import ResultStore

if TYPE_CHECKING:
    from .benchmark import BenchConfig

TARGET, FLOOR = 0.95, 0.85
"""A skill is kept when its retained share is ≥ 0.95 with the interval's low end ≥ 0.85."""


def share(composed: np.ndarray, alone: np.ndarray, probe: np.ndarray) -> float:
    """(acc_composed − acc_probe) / (acc_alone − acc_probe) over (seeds, items) arrays."""
    gain = alone.mean() - probe.mean()
    return float((composed.mean() - probe.mean()) / gain) if gain != 0 else math.nan


def kept(interval: tuple[float, float, float]) -> str:
    low, point, high = interval
    if any(math.isnan(v) for v in interval):
        return "not established"
    if point >= TARGET and low >= FLOOR:
        return "met"
    if high < TARGET:
        return "not met"
    return "not established"


def write(
    cfg: BenchConfig, store: ResultStore, folder: Path, finished: bool, seconds: float
) -> dict[str, Any]:
    """Rebuild the report from ``store``; returns the summary (also summary.json)."""
    rows, summary = [], {"finished": finished, "pairs": {}, "verdicts": {}}
    for pair in cfg.pairs:
        name = "+".join(pair)
        seeds = [s for s in cfg.seeds if all(_has(store, name, s, f"probe/{k}") for k in (0, 1))]
        entry: dict[str, Any] = {"seeds": seeds, "gate": {}, "methods": {}}
        summary["pairs"][name] = entry
        if not seeds:
            continue
        for k, task in enumerate(pair):
            entry["gate"][task] = _gate(cfg, store, name, seeds, k)
        passed = all(g["passed"] for g in entry["gate"].values())
        for method in cfg.methods:
            done = [s for s in seeds if _has(store, name, s, f"compose/{method}")]
            if len(done) < len(seeds):
                continue
            result = {}
            for k, task in enumerate(pair):
                row = _retained(cfg, store, name, seeds, k, method)
                row.update(pair=name, method=method, skill=task, gate_passed=passed)
                rows.append(row)
                result[task] = [_finite(row[c]) for c in ("share_low", "share", "share_high")]
            entry["methods"][method] = {
                "retained_share": result,
                "vs_lora_task_arithmetic": _vs_lora(cfg, store, name, seeds, method),
            }
            summary["verdicts"][f"{name}/{method}"] = (
                "pair failed the learnability gate: not scored"
                if not passed
                else ("both kept" if all(_verdict(v) == "met" for v in result.values())
                      else ", ".join(f"{t}: {_verdict(v)}" for t, v in result.items()))
            )  # fmt: skip
    table = pd.DataFrame(rows)
    if len(table):
        first = ["pair", "method", "skill", "gate_passed"]
        table = table[first + [c for c in table.columns if c not in first]]
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(folder / "results.csv", table.to_csv(index=False))
    if len(table):
        figure = retained_figure(table)
        with atomic_file(folder / "retained.png") as tmp:
            figure.savefig(tmp, dpi=120, format="png")
        plt.close(figure)
    write_text_atomic(folder / "README.md", _readme(cfg, summary, table, finished, seconds))
    return summary


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined share is null."""
    return None if math.isnan(value) else value


def _verdict(interval: list[float | None]) -> str:
    return kept(tuple(math.nan if v is None else v for v in interval))  # type: ignore[arg-type]


def _has(store: ResultStore, pair: str, seed: int, unit: str) -> bool:
    return f"{pair}/seed{seed}/{unit}" in store


def _scores(store: ResultStore, pair: str, seeds: list[int], unit: str, split: str, k=None):
    """(seeds, items) 0/1 array of a unit's scores on ``split``."""
    out = []
    for s in seeds:
        record = store[f"{pair}/seed{s}/{unit}"]
        out.append(record[f"task{k}"][split] if k is not None else record[split])
    return np.asarray(out, dtype=float)


def _gate(cfg: BenchConfig, store: ResultStore, pair: str, seeds: list[int], k: int) -> dict:
    probe = _scores(store, pair, seeds, f"probe/{k}", "validation").mean()
    result = {"probe_validation": round(float(probe), 4)}
    passed = True
    for planes in ("halves", "all"):
        unit = f"skill/{k}/{planes}"
        if not all(_has(store, pair, s, unit) for s in seeds):
            return {**result, "passed": False, "why": f"skill on {planes} not trained yet"}
        acc = _scores(store, pair, seeds, unit, "validation").mean()
        result[f"skill_{planes}_validation"] = round(float(acc), 4)
        passed &= bool(acc - probe >= cfg.gate)
    return {**result, "passed": passed}


def _share_arrays(
    store: ResultStore, pair: str, seeds: list[int], k: int, method: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(composed, alone, probe) test scores of skill k under ``method``, each (seeds, items)."""
    from .benchmark import PLANES

    composed = _scores(store, pair, seeds, f"compose/{method}", "test", k)
    own = f"skill/{k}/{PLANES[method]}" if PLANES[method] != "lora" else f"lora/{k}"
    alone = _scores(store, pair, seeds, own, "test")
    return composed, alone, _scores(store, pair, seeds, f"probe/{k}", "test")


def _vs_lora(
    cfg: BenchConfig, store: ResultStore, pair: str, seeds: list[int], method: str
) -> dict[str, list[float | None]] | str:
    """Per skill, retained share of ``method`` − that of LoRA task arithmetic, [low, point,
    high] by a paired bootstrap over the same test items."""
    if method == "lora_ta":
        return "the baseline itself"
    if not all(_has(store, pair, s, "compose/lora_ta") for s in seeds):
        return "not run"
    out = {}
    for k, task in enumerate(pair.split("+")):
        ours, lora = (
            _share_arrays(store, pair, seeds, k, method),
            _share_arrays(store, pair, seeds, k, "lora_ta"),
        )
        interval = paired_bootstrap(
            lambda c, a, p, lc, la: share(c, a, p) - share(lc, la, p), *ours, *lora[:2]
        )
        out[task] = [_finite(v) for v in interval]
    return out


def _retained(
    cfg: BenchConfig, store: ResultStore, pair: str, seeds: list[int], k: int, method: str
) -> dict[str, Any]:
    composed, alone, probe = _share_arrays(store, pair, seeds, k, method)
    low, point, high = paired_bootstrap(share, composed, alone, probe)
    return {
        "seeds": len(seeds),
        "test_items": composed.shape[1],
        "probe": round(float(probe.mean()), 4),
        "alone": round(float(alone.mean()), 4),
        "composed": round(float(composed.mean()), 4),
        "share_low": round(low, 4),
        "share": round(point, 4),
        "share_high": round(high, 4),
        "verdict": kept((low, point, high)),
    }


def retained_figure(table: pd.DataFrame) -> plt.Figure:
    """Retained share per method and skill with its 95% interval; the target as a line."""
    pairs = list(dict.fromkeys(table["pair"]))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 3.6), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        part = table[table["pair"] == pair]
        methods = list(dict.fromkeys(part["method"]))
        skills = list(dict.fromkeys(part["skill"]))
        width = 0.8 / len(skills)
        for i, skill in enumerate(skills):
            rows = part[part["skill"] == skill].set_index("method").reindex(methods)
            x = np.arange(len(methods)) + (i - (len(skills) - 1) / 2) * width
            err = np.vstack([rows["share"] - rows["share_low"], rows["share_high"] - rows["share"]])
            ax.bar(x, rows["share"], width, yerr=np.nan_to_num(err), capsize=3, label=skill)
        ax.axhline(TARGET, color="black", linestyle="--", linewidth=1, label="target 0.95")
        ax.set_xticks(np.arange(len(methods)), methods)
        ax.set_ylabel("retained share of the skill's gain")
        ax.set_ylim(-0.5, 1.5)  # a gain near 0 makes the ratio's interval unbounded: clipped
        gate = "" if part["gate_passed"].all() else "\n(gate not passed: for diagnosis only)"
        ax.set_title(pair.replace("+", " × ") + gate)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _readme(
    cfg: BenchConfig, summary: dict, table: pd.DataFrame, finished: bool, seconds: float
) -> str:
    lines = [
        "# Composition benchmark",
        "",
        "Does one model composed from two skill adapters keep both skills? MiniLM, one head "
        "per task, RoAd1 on every linear layer (group size 64). Retained share = (composed − "
        "probe) / (alone − probe) on the test items, 95% paired bootstrap interval (items "
        f"resampled, seeds as rows); kept = share ≥ {TARGET} with the low end ≥ {FLOOR}.",
        "",
        f"Status: {'finished' if finished else 'partial (run the same command again to continue)'}"
        f"; this sitting {seconds / 60:.1f} min.",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()),
        "",
        "## Learnability gate (validation, mean over seeds)",
        "",
        "| pair | skill | probe | skill on its half | skill on all planes | passed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pair, entry in summary["pairs"].items():
        for skill, gate in entry["gate"].items():
            lines.append(
                f"| {pair} | {skill} | {gate.get('probe_validation', '–')} | "
                f"{gate.get('skill_halves_validation', '–')} | "
                f"{gate.get('skill_all_validation', '–')} | {'yes' if gate['passed'] else 'no'} |"
            )
    lines += [
        "",
        f"A skill passes when it beats its probe by ≥ {cfg.gate:.2f} on both. A pair that fails "
        "is not scored: its retained shares below are shown for diagnosis only.",
        "",
        "## Retained shares (test)",
        "",
    ]
    if len(table):
        lines.append(table.to_markdown(index=False) if _has_tabulate() else table.to_string())
        lines += ["", "![retained shares](retained.png)", ""]
    lines += ["## Verdicts", ""]
    lines += [f"- {k}: {v}" for k, v in summary["verdicts"].items()]
    lines += [
        "",
        "`joint` (one all-plane adapter trained on both tasks, a head each) is a baseline, "
        "not a composition: it needs both tasks' data at once. Generation pairs on SmolLM2 "
        "are in `experiments.composition.generation_bench`; interchange interventions with "
        "their nulls (on the generation pair's sentiment skill) in "
        "`experiments.composition.interchange_bench`.",
    ]
    return "\n".join(lines) + "\n"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
