"""Finetuning grid (issue 12): RoAd against tuned LoRA and full finetuning, seeds and intervals.

Every (model, task, method, seed, lr) is one **cell**: `road_interp.baselines.run` trains the
method, scores the final model on the validation split (what learning rates are chosen on)
and on the test split with every example's prediction kept. Cells go to a results store
(`experiments.composition.store.ResultStore`, one JSON line per finished cell), so running the
same command again skips finished cells and continues; ``--budget-minutes`` stops starting
new cells once spent. The grid runs in three phases, in order:

1. **gate** (learnability first): per (model, task) one run of the group's gate method, seed
   0; the task enters the comparison when its validation score beats the gate's reference
   (the majority label, or the zero-shot base, or the larger of the two where the task has
   a majority label) by ``points`` points.
2. **sweep**: each method at each learning rate of its list, on the pilot seeds; the chosen
   learning rate is the one with the best mean validation score (the first on ties).
3. **final**: each method at its chosen learning rate on all ``seeds`` (cells of the sweep at
   that rate are the same cells, so they are reused).

A phase's cells are planned only once the cells it depends on are in the store, so a sitting
stopped by its budget picks up where it was. The report (``summary.json``, ``report.md``,
``sweep.csv``) is rebuilt from the store at the end of every sitting
(`experiments.finetune.summary`). The same command runs on a GPU when one is present; each
cell records its device.

    python -m experiments.finetune.grid --preset quick
    python -m experiments.finetune.grid --preset full --budget-minutes 60   # again and again

Presets are JSON files in ``presets/`` beside this module; results go to
``results/<preset>/`` (``results/`` itself for the ``full`` preset).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.composition.store import ResultStore, run_cells
from experiments.machine import describe
from road_interp.baselines import UNTRAINED, run, split_settings

HERE = Path(__file__).parent
PRESETS = HERE / "presets"
PHASES = ("gate", "sweep", "final")
Cell = tuple[str, Callable[[], dict[str, Any]]]


@dataclass(frozen=True)
class Group:
    """One model's part of a preset: its tasks, methods, learning rates and gate."""

    model: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    lrs: dict[str, tuple[float | None, ...]]
    settings: dict[str, Any]
    gate: dict[str, Any]
    test_limit: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Group:
        known = {"model", "tasks", "methods", "lrs", "settings", "gate", "test_limit"}
        if unknown := set(data) - known:
            raise ValueError(f"unknown group keys {sorted(unknown)}; known: {sorted(known)}")
        methods = tuple(data["methods"])
        lrs = {m: tuple(data.get("lrs", {}).get(m, [None])) for m in methods}
        for m in methods:
            if m in UNTRAINED:
                lrs[m] = (None,)
            elif None in lrs[m]:
                raise ValueError(f"group {data['model']}: method {m!r} needs a list of lrs")
        gate = {"method": "full", "lr": None, "over": "majority", "points": 10.0}
        gate.update(data.get("gate", {}))
        if gate["over"] not in ("majority", "zero_shot"):
            raise ValueError(f"gate 'over' must be majority or zero_shot, got {gate['over']!r}")
        return cls(
            model=data["model"],
            tasks=tuple(data["tasks"]),
            methods=methods,
            lrs=lrs,
            settings=dict(data.get("settings", {})),
            gate=gate,
            test_limit=data.get("test_limit"),
        )


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    groups: tuple[Group, ...]
    pilot_seeds: tuple[int, ...]
    seeds: tuple[int, ...]
    threads: int = 1

    @classmethod
    def load(cls, name: str, folder: Path = PRESETS) -> Preset:
        path = folder / f"{name}.json"
        if not path.exists():
            raise SystemExit(
                f"no preset {name!r}; presets: {sorted(p.stem for p in folder.glob('*.json'))}"
            )
        data = json.loads(path.read_text())
        return cls(
            name=name,
            description=data.get("description", ""),
            groups=tuple(Group.from_dict(g) for g in data["groups"]),
            pilot_seeds=tuple(data["pilot_seeds"]),
            seeds=tuple(data["seeds"]),
            threads=data.get("threads", 1),
        )

    def validate(self) -> None:
        """Build every settings mapping the grid can produce: a bad setting fails now."""
        for g in self.groups:
            for task in g.tasks:
                for m in (*g.methods, g.gate["method"]):
                    for lr in g.lrs.get(m, (g.gate["lr"],)):
                        split_settings(settings(g, task, m, 0, lr))


def settings(group: Group, task: str, method: str, seed: int, lr: float | None) -> dict[str, Any]:
    """The flat settings of one cell (`road_interp.baselines.split_settings` reads them)."""
    out = dict(group.settings, model=group.model, task=task, method=method, seed=seed)
    out["progress"] = False
    if lr is not None:
        out["lr"] = lr
    return out


def key(model: str, task: str, method: str, seed: int, lr: float | None) -> str:
    """A cell's key: ``model/task/method/seed<s>/lr<lr>`` (``lr-`` for zero-shot)."""
    return f"{model}/{task}/{method}/seed{seed}/lr{'-' if lr is None else f'{lr:g}'}"


# ----------------------------------------------------------------------------- decisions


def gate_result(group: Group, task: str, store: ResultStore) -> dict[str, Any] | None:
    """The gate of one task once its cells are stored: the gate method's validation score,
    the reference it must beat, and ``passed``; None while a cell is missing."""
    gate = group.gate
    k = key(group.model, task, gate["method"], 0, gate["lr"])
    if k not in store:
        return None
    value = store[k]["validation"]
    if gate["over"] == "majority":
        reference = store[k]["validation_majority"]
        label = "majority"
    else:
        zk = key(group.model, task, "zero_shot", 0, None)
        if zk not in store:
            return None
        # the stricter of the two where the task has a majority label: a base model below
        # the majority (label likelihood at chance) must not make learning look easy
        majority = store[k].get("validation_majority")
        reference = max(store[zk]["validation"], majority or 0.0)
        label = f"zero-shot {100 * store[zk]['validation']:.1f}"
        if majority is not None:
            label = f"max({label}, majority {100 * majority:.1f})"
    return {
        "method": gate["method"],
        "lr": gate["lr"],
        "validation": value,
        "over": gate["over"],
        "reference": reference,
        "reference_is": label,
        "points": gate["points"],
        "passed": bool(value - reference >= gate["points"] / 100),
    }


def seeds_for(method: str, seeds: tuple[int, ...]) -> tuple[int, ...]:
    """The seeds a method runs at: one for the zero-shot base (nothing in it depends on the
    seed), all for the others (for few-shot the seed picks the shots)."""
    return (0,) if method == "zero_shot" else seeds


def chosen_lr(
    group: Group, task: str, method: str, pilot_seeds: tuple[int, ...], store: ResultStore
) -> float | None:
    """The learning rate with the best mean validation score over the pilot seeds (the
    first listed on ties; a cell that diverged counts as -inf); raises KeyError while a
    sweep cell is missing."""
    if method in UNTRAINED:
        return None
    best, best_score = group.lrs[method][0], -np.inf
    for lr in group.lrs[method]:
        seeds = pilot_seeds
        scores = [store[key(group.model, task, method, s, lr)].get("validation") for s in seeds]
        score = -np.inf if any(v is None for v in scores) else float(np.mean(scores))
        if score > best_score:
            best, best_score = lr, score
    return best


# ----------------------------------------------------------------------------- cells


def cells(
    preset: Preset,
    store: ResultStore,
    work: Path,
    phases: tuple[str, ...] = PHASES,
    compute: Callable[[Group, dict[str, Any], Path], dict[str, Any]] | None = None,
) -> Iterator[Cell]:
    """The grid's cells, phase after phase; each phase planned from the store as it stands
    when the phase is reached (generators run lazily inside `run_cells`)."""
    compute = compute or run_cell

    def cell(group: Group, task: str, method: str, seed: int, lr: float | None) -> Cell:
        k = key(group.model, task, method, seed, lr)
        s = settings(group, task, method, seed, lr)
        return k, lambda: compute(group, s, work / k.replace("/", "_"))

    if "gate" in phases:
        for g in preset.groups:
            for task in g.tasks:
                yield cell(g, task, g.gate["method"], 0, g.gate["lr"])
                if g.gate["over"] == "zero_shot":
                    yield cell(g, task, "zero_shot", 0, None)
    learnable = [
        (g, t)
        for g in preset.groups
        for t in g.tasks
        if (gate_result(g, t, store) or {}).get("passed")
    ]
    if "sweep" in phases:
        for g, task in learnable:
            for method in g.methods:
                if method in UNTRAINED:
                    continue  # nothing to sweep: the final phase asks the base model
                for lr in g.lrs[method]:
                    for seed in preset.pilot_seeds:
                        yield cell(g, task, method, seed, lr)
    if "final" in phases:
        for g, task in learnable:
            for method in g.methods:
                try:
                    lr = chosen_lr(g, task, method, preset.pilot_seeds, store)
                except KeyError:
                    continue  # its sweep is not finished (another phase selection)
                for seed in seeds_for(method, preset.seeds):
                    yield cell(g, task, method, seed, lr)


def run_cell(group: Group, cell_settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Train and score one cell; its run folder is removed once the store has the scores
    (a killed cell resumes from the folder's checkpoint)."""
    spec, config = split_settings(cell_settings)
    # the test scores the final model, the one whose validation score chose the lr
    row = run(
        spec, config, folder, test_limit=group.test_limit, test_checkpoint="final", detail=True
    )
    info = describe()
    row["device"] = info["device"] if "gpu" not in info else f"cuda ({info['gpu']})"
    # compact: "0110..." instead of a JSON list of ints
    row["test_correct"] = "".join(str(int(c)) for c in row["test_correct"])
    shutil.rmtree(folder, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick", help="a JSON file in presets/")
    parser.add_argument("-o", "--out", help="results folder (default: results/<preset>)")
    parser.add_argument("--work-dir", help="run folders of unfinished cells (default: in /tmp)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--budget-minutes", type=float, help="start no cell after this long")
    parser.add_argument(
        "--models",
        nargs="+",
        help="run only these models' groups: one process per model, each with --models (a process only knows the cells the store held when it started, so an unfiltered one would redo them)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        help="run only these tasks' cells (the same caveat as --models: split processes by task)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        help="sweep and score only these methods (gate cells are kept), e.g. road_1 lora first",
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: the preset's), e.g. 1 beside another job"
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the report")
    args = parser.parse_args(argv)
    preset = Preset.load(args.preset)
    preset.validate()
    torch.set_num_threads(args.threads or preset.threads)
    out = Path(args.out) if args.out else results_folder(preset.name)
    store = ResultStore(out)
    work = Path(args.work_dir or Path(tempfile.gettempdir()) / f"road_finetune_{preset.name}")
    finished = True
    if not args.report:
        chosen = only(preset, args.models, args.tasks, args.methods)
        finished = run_cells(
            cells(chosen, store, work, tuple(args.phases)), store, args.budget_minutes
        )
    from experiments.finetune import summary  # imported late: a sitting's cells never wait on it

    report = summary.write(preset, store, out)  # the whole preset: other processes' cells too
    print(report)
    if not finished:
        print("(budget spent: run the same command again to continue)")
    return 0


def only(
    preset: Preset,
    models: list[str] | None,
    tasks: list[str] | None,
    methods: list[str] | None = None,
) -> Preset:
    """``preset`` cut to the groups of ``models`` and, in them, the ``tasks`` and ``methods``
    (None: all; a group's gate stays as it is)."""
    known = {m for group in preset.groups for m in group.methods}
    if methods is not None and (unknown := set(methods) - known):
        raise SystemExit(
            f"unknown methods {sorted(unknown)}; preset {preset.name!r} has {sorted(known)}"
        )
    groups = []
    for group in preset.groups:
        kept = tuple(t for t in group.tasks if tasks is None or t in tasks)
        used = tuple(m for m in group.methods if methods is None or m in methods)
        if kept and used and (models is None or group.model in models):
            groups.append(replace(group, tasks=kept, methods=used))
    if not groups:
        raise SystemExit(
            f"no group of preset {preset.name!r} has models {models}, tasks {tasks}, "
            f"methods {methods}"
        )
    return replace(preset, groups=tuple(groups))


def results_folder(preset: str) -> Path:
    return HERE / "results" if preset == "full" else HERE / "results" / preset


if __name__ == "__main__":
    raise SystemExit(main())
