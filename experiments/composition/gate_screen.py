"""Which MiniLM tasks could pass the composition benchmark's learnability gate?

    python -m experiments.composition.gate_screen multiemo4_en multiemo_zh -o experiments/composition/results/gate-screen

Per candidate task (one seed, the benchmark's default settings and items): the frozen
encoder's linear probe on mean-pooled features (``probe``) and RoAd1 on every plane (``all``,
the gate's larger skill), each a cell of a results store (`experiments.composition.store`),
so the screen resumes and accumulates across calls. The gate asks a skill to beat its probe
by ``gate`` (10 points) on validation on its half of the planes *and* on all planes, so a task
whose all-plane skill falls short cannot pass, and the half-plane skill is left to the
benchmark. Writes ``screen.csv`` and ``README.md`` beside the store.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from road_interp.files import write_text_atomic

from .benchmark import BenchConfig, PairRun
from .report import markdown_table
from .store import open_store, run_cells


def screen(
    tasks: Sequence[str], out: str | Path, cfg: BenchConfig | None = None, seed: int = 0
) -> pd.DataFrame:
    """Run (or continue) the screen of ``tasks`` into ``out`` (settings: ``cfg``, the
    benchmark's defaults if None); the table of every task screened there so far, earlier
    calls' first (also written)."""
    cfg = replace(cfg or BenchConfig(), pairs=(), seeds=(seed,), methods=())  # any tasks
    store = open_store(out, cfg)
    folder = store.folder
    runs = {task: PairRun(cfg, (task, task), seed, folder, store) for task in tasks}
    cells = []
    for task, run in runs.items():
        cells.append((f"seed{seed}/probe/{task}", lambda r=run: r.probe(0)))
        cells.append((f"seed{seed}/all/{task}", lambda r=run: r.skill(0, "all")))
    run_cells(cells, store)
    done = f"seed{seed}/all/"
    earlier = [k.removeprefix(done) for k in store.records if k.startswith(done)]
    for task in earlier:
        runs.setdefault(task, PairRun(cfg, (task, task), seed, folder, store))
    rows = []
    for task in dict.fromkeys(earlier + list(runs)):
        run = runs[task]
        probe, skill = (store[f"seed{seed}/{kind}/{task}"] for kind in ("probe", "all"))
        labels = [e.label for e in run.data["validation"][0]]
        gain = float(np.mean(skill["validation"]) - np.mean(probe["validation"]))
        rows.append(
            {
                "task": task,
                "labels": len(run.tasks[0].labels),
                "majority": round(float(np.bincount(labels).max() / len(labels)), 4),
                "probe": round(float(np.mean(probe["validation"])), 4),
                "all_planes": round(float(np.mean(skill["validation"])), 4),
                "gain": round(gain, 4),
                "could_pass": gain >= cfg.gate,
                "probe_test": round(float(np.mean(probe["test"])), 4),
                "all_planes_test": round(float(np.mean(skill["test"])), 4),
                "test_items": len(skill["test"]),
            }
        )
    table = pd.DataFrame(rows)
    write_text_atomic(folder / "screen.csv", table.to_csv(index=False))
    write_text_atomic(folder / "README.md", _readme(table, cfg, seed))
    return table


def _readme(table: pd.DataFrame, cfg: BenchConfig, seed: int) -> str:
    lines = [
        "# Gate screen: which MiniLM tasks could pass the composition gate",
        "",
        f"Seed {seed}; {cfg.steps} steps of {cfg.batch_size}, lr {cfg.lr}, {cfg.train_examples} "
        f"training and {cfg.val_examples} validation items (the benchmark's defaults). Accuracy "
        "on validation (test beside it); `gain` = RoAd1 on all planes − the frozen encoder's "
        f"linear probe on mean-pooled features; a task could pass only if gain ≥ {cfg.gate}.",
        "",
        markdown_table(table),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.composition.gate_screen",
        description="Linear probe vs RoAd1 on all planes, per MiniLM task: which tasks could "
        "pass the composition benchmark's gate (resumable; writes screen.csv and README.md).",
    )
    parser.add_argument("tasks", nargs="+", help="registered classification tasks")
    parser.add_argument("-o", "--output", required=True, help="results folder (accumulates)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(screen(args.tasks, args.output, seed=args.seed).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
