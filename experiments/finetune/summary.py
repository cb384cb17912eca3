"""The finetuning grid's report, rebuilt from its results store (`experiments.finetune.grid`).

Writes beside the store:

- ``summary.json``: the gates; the sweep (mean validation score per learning rate); per
  (model, task, method) the chosen learning rate, seeds, trainable parameters and the test
  metric ``[low, mean, high]``; per (model, task) the paired difference ``road_1 − lora`` (and
  the other methods against LoRA and full finetuning) in the same form, with the verdict of
  "RoAd within 1 point of LoRA".
- ``report.md``: the same as tables, with the machine and what is missing.
- ``sweep.csv``: one row per (model, task, method, lr).

**Intervals.** A method's test metric is the mean over its seeds of the per-example
correctness (a seeds × items array). Its 95% interval comes from a two-level bootstrap
(`seeds_and_items`): each resample draws the test items with replacement *and* each method's
seeds with replacement, so it covers both the test set's sampling and the spread over seeds
(with few seeds the seed level is crude; the spread is also reported as the std of the
per-seed scores). A difference between two methods resamples the *same* items for both (the
test set is shared), which is what makes it paired. It is `road_interp.intervals.paired_bootstrap`
over the items with the seeds redrawn inside each resample; with one seed per method it is
exactly that function's interval. The verdict of "within 1 point" is `verdict(interval, -0.01)`:
met when the whole interval of road_1 − lora is above −1 point, not met when it is wholly
below, not established otherwise, and never "met" before the preset's seeds are all in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experiments.machine import describe
from road_interp.intervals import paired_bootstrap, verdict

if TYPE_CHECKING:
    from experiments.composition.store import ResultStore
    from experiments.finetune.grid import Preset

TARGET = "RoAd within 1 point of LoRA"
MARGIN = 0.01
DIFFERENCES = (
    ("road_1", "lora"),
    ("road_2", "lora"),
    ("road_4", "lora"),
    ("road_1", "lora_matched"),
    ("road_1", "full"),
)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of ``a`` minus mean of ``b`` (seeds × items each; seeds may differ in number)."""
    return float(a.mean() - b.mean())


def seeds_and_items(
    statistic: Callable[..., float], *arrays: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(low, point, high) of ``statistic`` over seeds × items arrays that share their items:
    `paired_bootstrap` over the items, each resample also redrawing every array's seeds
    (rows) with replacement. One seed per array: `paired_bootstrap` itself."""
    if all(len(a) == 1 for a in arrays):
        return paired_bootstrap(statistic, *arrays, resamples=resamples, seed=seed)
    rng = np.random.default_rng(seed + 1)  # the seed level's own stream, drawn call by call

    def redrawn(*items: np.ndarray) -> float:
        return statistic(*(a[rng.integers(0, len(a), len(a))] for a in items))

    low, _, high = paired_bootstrap(redrawn, *arrays, resamples=resamples, seed=seed)
    return low, statistic(*arrays), high


def correctness(records: list[dict[str, Any]]) -> np.ndarray:
    """Seeds × items 0/1 array of stored cells (their ``test_correct`` strings)."""
    rows = [np.frombuffer(r["test_correct"].encode(), dtype=np.uint8) - ord("0") for r in records]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("cells of one (model, task) were scored on different test sets")
    return np.stack(rows).astype(float)


def build(preset: Preset, store: ResultStore) -> dict[str, Any]:
    """Everything ``summary.json`` holds, from the store."""
    from experiments.finetune.grid import chosen_lr, gate_result, key, seeds_for

    gates, sweep, table, diffs = [], [], [], []
    for g in preset.groups:
        for task in g.tasks:
            gate = gate_result(g, task, store)
            gates.append({"model": g.model, "task": task, **(gate or {"passed": None})})
            if not (gate or {}).get("passed"):
                continue
            finals: dict[str, np.ndarray] = {}
            params: dict[str, int] = {}
            for method in g.methods:
                pilot = seeds_for(method, preset.pilot_seeds)
                for lr in g.lrs[method]:
                    done = [
                        store[k] for s in pilot if (k := key(g.model, task, method, s, lr)) in store
                    ]
                    sweep.append(
                        {
                            "model": g.model,
                            "task": task,
                            "method": method,
                            "lr": lr,
                            "seeds": len(done),
                            "of": len(pilot),
                            "validation_mean": float(np.mean([r["validation"] for r in done]))
                            if done
                            else None,
                            "validation": [r["validation"] for r in done],
                        }
                    )
                try:
                    lr = chosen_lr(g, task, method, preset.pilot_seeds, store)
                except KeyError:
                    continue
                seeds = seeds_for(method, preset.seeds)
                done = [
                    store[k] for s in seeds if (k := key(g.model, task, method, s, lr)) in store
                ]
                if not done:
                    continue
                correct = correctness(done)
                finals[method], params[method] = correct, done[0]["trainable_params"]
                low, mean, high = seeds_and_items(np.mean, correct)
                per_seed = correct.mean(axis=1)
                table.append(
                    {
                        "model": g.model,
                        "task": task,
                        "method": method,
                        "lr": lr,
                        "seeds": [r["seed"] for r in done],
                        "seeds_planned": len(seeds),
                        "trainable_params": done[0]["trainable_params"],
                        "trainable_pct": done[0]["trainable_pct"],
                        "metric_name": done[0]["metric"],
                        "metric": [low, mean, high],
                        "per_seed": per_seed.tolist(),
                        "seed_std": float(per_seed.std(ddof=1)) if len(done) > 1 else None,
                        "majority": done[0]["majority"],
                        "n_test": int(correct.shape[1]),
                        "train_seconds": float(np.mean([r["train_seconds"] for r in done])),
                        "devices": sorted({r.get("device", "?") for r in done}),
                    }
                )
            complete = {
                row["method"]: len(row["seeds"]) == row["seeds_planned"]
                for row in table
                if row["model"] == g.model and row["task"] == task
            }
            for a, b in DIFFERENCES:
                if a not in finals or b not in finals:
                    continue
                if finals[a].shape[1] != finals[b].shape[1]:
                    raise ValueError(f"{g.model}/{task}: {a} and {b} have different test sets")
                interval = seeds_and_items(difference, finals[a], finals[b])
                row = {
                    "model": g.model,
                    "task": task,
                    "difference": f"{a} - {b}",
                    "value": list(interval),
                    "params_ratio": params[a] / params[b] if params[b] else None,
                    "seeds": [len(finals[a]), len(finals[b])],
                }
                if (a, b) == ("road_1", "lora"):
                    decided = verdict(interval, -MARGIN)
                    if not (complete[a] and complete[b]) and decided == "met":
                        decided = "not established"  # seeds still missing
                    row["target"] = TARGET
                    row["verdict"] = decided
                diffs.append(row)
    return {
        "preset": preset.name,
        "description": preset.description,
        "machine": describe(),
        "cells": len(store.records),
        "gates": gates,
        "sweep": sweep,
        "table": table,
        "differences": diffs,
    }


def _interval(v: list[float], scale: float = 100.0, signed: bool = False) -> str:
    low, mid, high = (x * scale for x in v)
    sign = "+" if signed else ""
    return f"{mid:{sign}.1f} [{low:{sign}.1f}, {high:{sign}.1f}]"


def markdown(summary: dict[str, Any]) -> str:
    """``report.md``: gates, sweep, final table and differences, in points (%)."""
    machine = summary["machine"]
    lines = [
        f"# Finetuning grid: preset `{summary['preset']}`",
        "",
        summary["description"],
        "",
        f"Report written on {machine['device']} ({machine['cpu']}, {machine['cpu_count']} CPUs, "
        f"load {machine.get('load_average')}); {summary['cells']} cells in the store. Metrics in "
        "points (%), mean over seeds with a 95% paired-bootstrap interval over test items; "
        "differences paired on the same test items.",
        "",
        "## Gate (learnability, validation)",
        "",
        "| model | task | gate method | lr | validation | reference | needed | passed |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for g in summary["gates"]:
        if g["passed"] is None:
            lines.append(f"| {g['model']} | {g['task']} | | | | | | not run yet |")
            continue
        lines.append(
            f"| {g['model']} | {g['task']} | {g['method']} | {g['lr']} | {100 * g['validation']:.1f} "
            f"| {g.get('reference_is', g['over'])}: {100 * g['reference']:.1f} | +{g['points']:g} | {'yes' if g['passed'] else 'no'} |"
        )
    lines += ["", "## Learning-rate sweep (validation, pilot seeds)", ""]
    lines += [
        "| model | task | method | lr | seeds | validation mean |",
        "|---|---|---|---:|---:|---:|",
    ]
    for s in summary["sweep"]:
        value = "–" if s["validation_mean"] is None else f"{100 * s['validation_mean']:.1f}"
        lines.append(
            f"| {s['model']} | {s['task']} | {s['method']} | {s['lr']} | {s['seeds']}/{s['of']} | {value} |"
        )
    lines += ["", "## Final table (test)", ""]
    lines += [
        "| model | task | method | lr | trainable params | trainable % | test metric [95%] | seed std | seeds | majority | n test |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["table"]:
        std = "–" if r["seed_std"] is None else f"{100 * r['seed_std']:.1f}"
        majority = "–" if r["majority"] is None else f"{100 * r['majority']:.1f}"
        lines.append(
            f"| {r['model']} | {r['task']} | {r['method']} | {r['lr']} | {r['trainable_params']:,} | "
            f"{r['trainable_pct']:.3f} | {r['metric_name']} {_interval(r['metric'])} | {std} | "
            f"{len(r['seeds'])}/{r['seeds_planned']} | {majority} | {r['n_test']} |"
        )
    lines += ["", f"## Differences (test, paired); target: {TARGET}", ""]
    lines += [
        "| model | task | difference | points [95%] | params ratio | seeds | verdict |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for d in summary["differences"]:
        ratio = "–" if d["params_ratio"] is None else f"{d['params_ratio']:.3f}"
        lines.append(
            f"| {d['model']} | {d['task']} | {d['difference']} | {_interval(d['value'], signed=True)} | "
            f"{ratio} | {d['seeds'][0]} vs {d['seeds'][1]} | {d.get('verdict', '')} |"
        )
    return "\n".join(lines) + "\n"


def write(preset: Preset, store: ResultStore, out: Path) -> str:
    """Write ``summary.json``, ``report.md`` and ``sweep.csv`` into ``out``; return the
    markdown."""
    summary = build(preset, store)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    write_text(out / "report.md", text)
    write_text(out / "sweep.csv", pd.DataFrame(summary["sweep"]).to_csv(index=False))
    return text


def write_text(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
