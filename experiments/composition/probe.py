"""Does one skill learn at these settings? Train a single skill of E1 or E2 and score it,
before spending a full experiment run on a preset.

    python -m experiments.composition.probe e2 B --preset default --set steps=600 lr=0.01 --planes 1
    python -m experiments.composition.probe e1 A --preset default --set train_examples=600 eval_examples=40

E2: the skill's adapter on the first ``planes`` share of every site's planes (the experiment
uses 0.5), with its head; prints test accuracy, the linear probe's (``--base``) and the test
labels' majority share. E1: the skill's adapter on its half of the planes; prints the scores
of the sentiment test prompts (sentiment accuracy, French share, joint success), the French
share on skill A's own held-out instructions, and the first answers.
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
import time
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from road_interp.subspaces import Subspace, model_sizes

from .config import PRESETS, E1Config, E2Config, make_config


def with_overrides(cfg: E1Config | E2Config, pairs: list[str]) -> E1Config | E2Config:
    """``cfg`` with ``key=value`` pairs applied (values are Python literals: 0.01, (3, 6))."""
    known = {f.name for f in fields(cfg)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set takes key=value with key one of {sorted(known)}; got {pair!r}")
        try:
            changes[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            changes[key] = text  # a bare string, e.g. positions=last
    return replace(cfg, **changes)


def probe_e2(cfg: E2Config, skill: str, planes: float, base: bool, runs: Path) -> dict[str, Any]:
    from .e2 import E2, _probe_model

    exp = E2(cfg, runs, progress=True)
    sizes = model_sizes(_probe_model(exp), "probe")
    _, _, accuracy = exp.skill(skill, Subspace.fraction(sizes, 0.0, planes, name=skill), skill)
    labels = Counter(e.label for e in exp.test_sets[skill])
    out = {"accuracy": accuracy, "majority": max(labels.values()) / sum(labels.values())}
    if base:
        out["linear_probe_accuracy"] = exp.base(skill)
    return out


def probe_e1(cfg: E1Config, skill: str, runs: Path) -> dict[str, Any]:
    from .e1 import E1

    exp = E1(cfg, runs, progress=True)
    adapter = exp.skill(skill, exp.subspaces()["AB".index(skill)])
    answers, own = exp.answer_both(exp.with_adapter(adapter, runs / "adapter"))
    return {
        **exp.scores(answers, own),
        "first_answers": answers[:4],
        "first_skill_a_answers": own[:4],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.composition.probe",
        description="Train and score one skill of a composition experiment (A or B) alone.",
    )
    parser.add_argument("experiment", choices=sorted(PRESETS))
    parser.add_argument("skill", choices=("A", "B"))
    parser.add_argument("--preset", default="default", help="the preset to start from")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    parser.add_argument(
        "--planes", type=float, default=0.5, help="E2: share of each site's planes to train on"
    )
    parser.add_argument("--base", action="store_true", help="E2: also train the linear probe")
    args = parser.parse_args(argv)
    cfg = with_overrides(make_config(args.experiment, args.preset), args.set)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        if isinstance(cfg, E2Config):
            result = probe_e2(cfg, args.skill, args.planes, args.base, Path(tmp))
        else:
            result = probe_e1(cfg, args.skill, Path(tmp))
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
