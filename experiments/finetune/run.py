"""Finetuning experiment (issue 3): RoAd1/2/4 against LoRA, full finetuning and zero-shot on
real tasks, with the embedded models, all through the same training loop.

A preset (``quick.json``, ``full.json`` beside this file) lists groups of (model, tasks,
methods) and the training settings that differ from the defaults; every (model, task, method,
seed) is one run of `road_interp.baselines.run`: train, then score the final model on the
task's test split. Rows are appended to ``<out>/<preset>.csv`` as runs finish (a rerun skips
rows already there), and ``<out>/<preset>.md`` holds the table of trainable-% and metric.

    python -m experiments.finetune.run --preset quick
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from experiments.machine import describe
from road_interp.baselines import run, split_settings

HERE = Path(__file__).parent
KEY = ["model", "task", "method", "seed"]


def load_preset(name: str) -> dict[str, Any]:
    path = HERE / f"{name}.json"
    if not path.exists():
        presets = sorted(p.stem for p in HERE.glob("*.json"))
        raise SystemExit(f"no preset {name!r}; presets: {presets}")
    return json.loads(path.read_text())


def planned_runs(preset: dict[str, Any]) -> list[tuple[dict[str, Any], int | None]]:
    """(settings, test_limit) of every run, validated before the first one starts."""
    runs = []
    for group in preset["groups"]:
        for task in group["tasks"]:
            for method in group["methods"]:
                for seed in preset["seeds"]:
                    settings = dict(group.get("settings", {}), model=group["model"], task=task)
                    settings.update(method=method, seed=seed, progress=False)
                    if method in group.get("lr", {}):
                        settings["lr"] = group["lr"][method]
                    split_settings(settings)  # raises on a bad setting now, not hours later
                    runs.append((settings, group.get("test_limit", preset.get("test_limit"))))
    return runs


def markdown(table: pd.DataFrame, preset: dict[str, Any]) -> str:
    """Mean (± std over seeds) test metric and trainable-% per model, task and method, under
    a header saying which preset and machine produced them."""
    grouped = table.groupby(["model", "task", "method"], sort=False)
    summary = grouped.agg(
        trainable_pct=("trainable_pct", "first"),
        trainable_params=("trainable_params", "first"),
        metric=("metric", "first"),
        test_mean=("test", "mean"),
        test_std=("test", "std"),
        majority=("majority", "first"),
        seeds=("seed", "count"),
        train_s=("train_seconds", "mean"),
    ).reset_index()
    lines = [
        f"Preset: {preset.get('description', '')}",
        "",
        f"Machine: {describe()}; test metric on the test split (first {preset.get('test_limit')} "
        "examples unless a group says otherwise); trainable % excludes the encoder's head.",
        "",
        "| model | task | method | trainable params | trainable % | test metric | majority | seeds | train s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        std = f" ± {r.test_std:.3f}" if r.seeds > 1 else ""
        lines.append(
            f"| {r.model} | {r.task} | {r.method} | {int(r.trainable_params):,} | "
            f"{r.trainable_pct:.4f} | {r.metric} {r.test_mean:.3f}{std} | {r.majority:.3f} | "
            f"{r.seeds} | {r.train_s:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick", help="quick or full (a JSON beside this file)")
    parser.add_argument(
        "-o", "--out", default=str(HERE / "results"), help="where the CSV and markdown go"
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="run folders (checkpoints, adapters); default: a temporary folder",
    )
    parser.add_argument("--only-model", help="run only this model's groups")
    parser.add_argument("--only-tasks", nargs="+", help="run only these tasks")
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the markdown from the CSVs"
    )
    args = parser.parse_args()
    preset = load_preset(args.preset)
    torch.set_num_threads(preset.get("threads", 2))
    runs = planned_runs(preset)
    if args.only_model:
        runs = [r for r in runs if r[0]["model"] == args.only_model]
    if args.only_tasks:
        runs = [r for r in runs if r[0]["task"] in args.only_tasks]
    if args.report:
        runs = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # one CSV per selection, so several processes can run parts side by side; a run found in
    # any CSV of the preset is not repeated
    part = ".".join([args.only_model or "", "+".join(args.only_tasks or [])]).strip(".")
    csv = out / (f"{args.preset}.{part}.csv" if part else f"{args.preset}.csv")
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=KEY)
    earlier = [pd.read_csv(p) for p in out.glob(f"{args.preset}*.csv")]
    finished = {tuple(r) for t in earlier for r in t[KEY].astype(str).itertuples(index=False)}
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="finetune-"))
    for i, (settings, test_limit) in enumerate(runs, 1):
        key = tuple(str(settings[k]) for k in KEY)
        if key in finished:
            continue
        print(f"[{i}/{len(runs)}] {' '.join(key)}", flush=True)
        spec, config = split_settings(settings)
        row = run(spec, config, work / "_".join(key), test_limit=test_limit)
        print(f"    -> {row['metric']} {row['test']:.3f} (majority {row['majority']})", flush=True)
        table = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        _write(csv, table.to_csv(index=False))
        done = table
    every = [pd.read_csv(p) for p in sorted(out.glob(f"{args.preset}*.csv"))]
    if every:  # all parts together, each run once, in the preset's order
        table = pd.concat(every, ignore_index=True).drop_duplicates(KEY)
        order = {tuple(str(s[k]) for k in KEY): i for i, (s, _) in enumerate(planned_runs(preset))}
        table = table.iloc[
            sorted(
                range(len(table)),
                key=lambda i: order.get(tuple(table.iloc[i][KEY].astype(str)), len(order)),
            )
        ]
        if args.report:
            _write(out / f"{args.preset}.all.csv", table.to_csv(index=False))
        _write(out / f"{args.preset}.md", markdown(table, preset))
        print(markdown(table, preset))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
