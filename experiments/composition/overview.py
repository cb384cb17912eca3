"""One page over every composition benchmark folder: per pair, the gate and each method's
retained shares and difference to LoRA task arithmetic, and the issue's targets across pairs.

    python -m experiments.composition.overview experiments/composition/results

Reads each ``<results>/<folder>/summary.json`` that a benchmark wrote (the classification
benchmark's ``pairs``, or one generation pair's ``gate`` / ``methods``) and writes
``<results>/summary.json`` and ``<results>/README.md``. Per pair::

    {"benchmark": folder, "kind": "classification" | "generation", "seeds": [...],
     "gate": {skill: passed}, "scored": all passed, "counted": scored on >= 3 seeds,
     "methods": {method: {"retained_share": {skill: [low, point, high]},
                          "vs_lora_task_arithmetic": [low, point, high] | per skill | words,
                          "verdict": words}}}

``vs_lora_task_arithmetic`` is the paired difference to LoRA task arithmetic: per skill in
retained share for classification, in joint success for generation (words where it was not
run). Targets, over the pairs
that passed the gate and have ``MIN_SEEDS`` finished seeds (a pair scored on fewer is listed as
partial, not counted): the best RoAd method keeps each skill (`bench_report.kept`), beats
LoRA task arithmetic on at least half of the pairs, and on generation pairs has joint
success above the independence product and above the prompted base. A pair held by several
folders (the same skills at other settings) counts once, by the best RoAd method of any.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from road_interp.files import write_text_atomic
from road_interp.intervals import verdict

from .bench_report import kept

BASELINES = ("lora_ta", "lora_ties", "joint")
"""Methods that are not RoAd compositions (never the 'best RoAd method')."""

MIN_SEEDS = 3
"""Finished seeds a scored pair needs before the targets count it (the issue's honesty bar)."""


def collect(results: Path) -> dict[str, dict[str, Any]]:
    """Every scored or gated pair under ``results``, keyed ``<folder>/<pair>``."""
    pairs: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*/summary.json")):
        folder, summary = path.parent.name, json.loads(path.read_text())
        if "pairs" in summary:  # the classification benchmark: several pairs per folder
            for name, pair in summary["pairs"].items():
                verdicts = {
                    method: summary["verdicts"].get(f"{name}/{method}", "")
                    for method in pair["methods"]
                }
                pairs[f"{folder}/{name}"] = _classification(folder, pair, verdicts)
        elif summary.get("seeds"):
            settings = json.loads((path.parent / "config.json").read_text())
            pairs[f"{folder}/{settings.get('pair', 'sentiment')}"] = _generation(folder, summary)
    return pairs


def _classification(folder: str, pair: dict[str, Any], verdicts: dict) -> dict[str, Any]:
    gate = {skill: g["passed"] for skill, g in pair["gate"].items()}
    methods = {
        method: {
            "retained_share": entry["retained_share"],
            "vs_lora_task_arithmetic": entry.get("vs_lora_task_arithmetic"),
            "verdict": verdicts[method],
        }
        for method, entry in pair["methods"].items()
    }
    return _entry(folder, "classification", pair["seeds"], gate, methods)


def _generation(folder: str, summary: dict[str, Any]) -> dict[str, Any]:
    gate = {skill: g["passed"] for skill, g in summary["gate"].items()}
    methods = {
        method: {
            "seeds": entry.get("seeds", summary["seeds"]),  # a method may lag in a partial run
            "retained_share": entry["retained_share"],
            "vs_lora_task_arithmetic": entry.get("joint_vs_lora_task_arithmetic"),
            "joint_success": entry["joint_success"],
            "joint_minus_independence": entry["joint_minus_independence"],
            "joint_minus_prompted_base": entry["joint_minus_prompted_base"],
            "verdict": entry["verdict"],
        }
        for method, entry in summary["methods"].items()
    }
    return _entry(folder, "generation", summary["seeds"], gate, methods)


def _entry(folder: str, kind: str, seeds: list, gate: dict, methods: dict) -> dict[str, Any]:
    scored = bool(gate) and all(gate.values())
    counted = scored and len(seeds) >= MIN_SEEDS
    return dict(
        benchmark=folder,
        kind=kind,
        seeds=seeds,
        gate=gate,
        scored=scored,
        counted=counted,
        methods=methods,
    )


def best_method(pair: dict[str, Any]) -> str | None:
    """The RoAd method with the highest joint success (generation) or smallest retained
    share (classification), point estimates."""
    road = [m for m in pair["methods"] if m not in BASELINES]
    return max(road, key=lambda m: _score(pair, m)) if road else None


def _score(pair: dict[str, Any], method: str) -> float:
    """What `best_method` ranks by: joint success, or the smallest retained share."""
    entry = pair["methods"][method]
    if pair["kind"] == "generation":
        return float(entry["joint_success"][1])
    return min(s[1] for s in entry["retained_share"].values())


def targets(pairs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The issue's three targets over the pairs that passed the gate on `MIN_SEEDS` seeds, in
    words. Folders of one pair (``<folder>/<pair>``: the same skills at other settings) count
    once, by the best RoAd method of any of them."""
    counted = {name: p for name, p in pairs.items() if p["counted"] and best_method(p)}
    partial = [
        f"{name} (seeds {p['seeds']})"
        for name, p in pairs.items()
        if p["scored"] and not p["counted"] and best_method(p)
    ]
    waiting = {f"scored on fewer than {MIN_SEEDS} seeds, not counted": ", ".join(partial)}
    if not counted:
        return {
            "every target": f"not established: no pair passed the gate on {MIN_SEEDS} seeds",
            **(waiting if partial else {}),
        }
    best: dict[str, tuple[str, str]] = {}  # pair -> (folder entry, method)
    for name, pair in counted.items():
        method = best_method(pair)
        held = best.get(pair_of(name))
        if held is None or _score(pair, method) > _score(counted[held[0]], held[1]):
            best[pair_of(name)] = (name, method)
    keeps, beats, joint = [], [], []
    for name, method in best.values():
        pair, entry = counted[name], counted[name]["methods"][method]
        keeps.append(all(kept(tuple(s)) == "met" for s in entry["retained_share"].values()))
        beats.append(_beats(entry["vs_lora_task_arithmetic"]))
        if pair["kind"] == "generation":
            joint.append(
                verdict(tuple(entry["joint_minus_independence"]), 0.0) == "met"
                and verdict(tuple(entry["joint_minus_prompted_base"]), 0.0) == "met"
            )
    n = len(best)
    used = ", ".join(f"{p}: {m} in {name.split('/')[0]}" for p, (name, m) in best.items())
    out = {
        "pairs scored": f"{n} of {len({pair_of(name) for name in pairs})} ({used})",
        **(waiting if partial else {}),
        "best RoAd method keeps >= 95% of each skill's gain (low end >= 85%) on every pair": (
            f"{'met' if all(keeps) else 'not met'} ({sum(keeps)} of {n} pairs)"
        ),
        "beats LoRA task arithmetic (interval above 0) on at least half of the pairs": (
            f"{'met' if 2 * sum(beats) >= n else 'not met'} ({sum(beats)} of {n} pairs)"
        ),
    }
    if joint:
        out["generation: joint success above the independence product and the prompted base"] = (
            f"{'met' if all(joint) else 'not met'} ({sum(joint)} of {len(joint)} pairs)"
        )
    return out


def pair_of(name: str) -> str:
    """The pair of an overview entry ``<folder>/<pair>``."""
    return name.split("/", 1)[1]


def _beats(vs: Any) -> bool:
    """Whether a difference to LoRA TA (an interval, or one per skill) is above 0 throughout."""
    if isinstance(vs, dict):
        return bool(vs) and all(_beats(v) for v in vs.values())
    return isinstance(vs, list) and verdict(tuple(vs), 0.0) == "met"


def write(results: str | Path) -> dict[str, Any]:
    """Collect the pairs under ``results``; write its summary.json and README.md."""
    results = Path(results)
    pairs = collect(results)
    for pair in pairs.values():
        pair["best_road_method"] = best_method(pair)
    summary = {"pairs": pairs, "targets": targets(pairs)}
    claims = results / "interchange" / "summary.json"
    if claims.exists():  # the interchange benchmark: what the skill's planes carry
        summary["interchange"] = json.loads(claims.read_text())["models"]
    write_text_atomic(results / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(results / "README.md", _readme(summary))
    return summary


def _rounded(value: Any) -> str:
    """An interval ``[low, point, high]``, or one per skill, as text to 4 decimals ('–' if
    there is none); words as they are."""
    if value is None:
        return "–"
    if isinstance(value, dict):
        return "; ".join(f"{name} {_rounded(v)}" for name, v in value.items())
    if isinstance(value, list):
        return str([None if x is None else round(x, 4) for x in value])
    return str(value)


def _readme(summary: dict[str, Any]) -> str:
    lines = [
        "# Composition results: every pair",
        "",
        "Written by `python -m experiments.composition.overview experiments/composition/results`"
        " from each benchmark folder's summary.json (each folder's README has the details). "
        "Intervals: 95% paired bootstrap over test items, seeds as rows; shares are "
        "(composed − base) / (alone − base).",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {target}: **{words}**" for target, words in summary["targets"].items()]
    lines += [
        "",
        "## Pairs",
        "",
        "| pair | kind | seeds | gate | method | retained shares | vs LoRA TA | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, pair in summary["pairs"].items():
        gate = ", ".join(f"{s} {'passed' if ok else 'failed'}" for s, ok in pair["gate"].items())
        if not pair["methods"]:
            lines.append(f"| {name} | {pair['kind']} | {pair['seeds']} | {gate} | – | – | – | "
                         "not scored |")  # fmt: skip
        for method, e in pair["methods"].items():
            shares = _rounded(e["retained_share"])
            best = " (best RoAd)" if method == pair["best_road_method"] else ""
            partial = pair["scored"] and not pair["counted"]
            verdict_words = f"partial, not counted: {e['verdict']}" if partial else e["verdict"]
            lines.append(
                f"| {name} | {pair['kind']} | {e.get('seeds', pair['seeds'])} | {gate} | "
                f"{method}{best} | "
                f"{shares} | {_rounded(e['vs_lora_task_arithmetic'])} | {verdict_words} |"
            )
    if "interchange" in summary:
        lines += [
            "",
            "## Interchange interventions: does the content skill's plane set carry its label?",
            "",
            "From `interchange/` (its README has the protocol): IIA of each plane set, its "
            "difference from random plane sets of equal size and from the same planes in the "
            "base model.",
            "",
            "| model | planes | seeds | IIA | vs random planes | vs base model | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for model, entry in summary["interchange"].items():
            for name, e in entry["sets"].items():
                lines.append(
                    f"| {model} | {name} | {entry['seeds']} | {e['iia']} | {e['vs_null']} | "
                    f"{e.get('vs_base', '–')} | {e['verdict']} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.composition.overview",
        description="Summarize every composition benchmark folder under RESULTS into "
        "RESULTS/summary.json and RESULTS/README.md (per pair: gate, retained shares, vs LoRA "
        "task arithmetic; the targets across pairs).",
    )
    parser.add_argument("results", nargs="?", default="experiments/composition/results")
    summary = write(parser.parse_args(argv).results)
    print(json.dumps(summary["targets"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
