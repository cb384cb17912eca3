"""The generation benchmark's report, rebuilt from its results store after every sitting.

Writes README.md (the gate, each method's retained shares, joint success against
independence and against the prompted base, with intervals and verdicts in words),
results.csv, summary.json and joint.png. Every number comes from the per-item checks in
``store.jsonl`` (answers included); intervals are paired bootstraps over the test items with
seeds as rows of the same items.
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
from road_interp.generation import json_answer, json_object
from road_interp.intervals import paired_bootstrap, verdict

from .bench_report import kept, share
from .store import ResultStore

if TYPE_CHECKING:
    from .generation_bench import GenConfig

OWN = {"content": ("content", "content"), "format": ("format", "format")}
"""skill -> (prompt set, check) that measure it on its own prompts."""


def write(
    cfg: GenConfig, store: ResultStore, folder: Path, finished: bool, seconds: float
) -> dict[str, Any]:
    """Rebuild the report from ``store``; returns the summary (also summary.json)."""
    from .generation_bench import PAIRS, SKILLS

    seeds = [s for s in cfg.seeds if all(f"seed{s}/{u}" in store for u in _units(cfg))]
    summary: dict[str, Any] = {"finished": finished, "seeds": seeds, "gate": {}, "methods": {}}
    reused = sorted({r["reused_from"] for r in store.records.values() if "reused_from" in r})
    if reused:
        summary["reused_from"] = reused
    done = {m: [s for s in seeds if _finished(store, s, m)] for m in cfg.methods}
    summary["verdicts"] = {}
    rows = []
    if seeds:
        prompted = _scores(store, seeds, "base", "test", "prompted", "joint")
        summary["prompted_base_joint"] = mean_interval(prompted)
        for skill in SKILLS:
            summary["gate"][skill] = _gate(cfg, store, seeds, skill)
        passed = all(g["passed"] for g in summary["gate"].values())
        for method in (m for m in cfg.methods if done[m]):  # over the seeds it has finished
            entry = _method(store, done[method], method, passed, rows)
            summary["methods"][method] = entry
            summary["verdicts"][method] = entry["verdict"]
        _vs_lora(store, summary)
    table = pd.DataFrame(rows)
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(folder / "results.csv", table.to_csv(index=False))
    if summary["methods"]:
        figure = joint_figure(summary, PAIRS[cfg.pair].title)
        with atomic_file(folder / "joint.png") as tmp:
            figure.savefig(tmp, dpi=120, format="png")
        plt.close(figure)
    write_text_atomic(folder / "README.md", _readme(cfg, summary, table, finished, seconds))
    return summary


def _method(
    store: ResultStore, seeds: list[int], method: str, passed: bool, rows: list[dict]
) -> dict[str, Any]:
    """One method's retained shares (a row per skill appended to ``rows``) and its joint
    success against independence, the prompted base and the format skill alone."""
    from .generation_bench import ALONE, SKILLS

    unit = f"compose/{method}"
    alone = dict(zip(SKILLS, ALONE[method], strict=True))
    entry: dict[str, Any] = {"seeds": seeds, "retained_share": {}}
    for skill in SKILLS:
        prompts, check = OWN[skill]
        arrays = (
            _scores(store, seeds, unit, "test", prompts, check),
            _scores(store, seeds, alone[skill], "test", prompts, check),
            _scores(store, seeds, "base", "test", prompts, check),
        )
        interval = paired_bootstrap(share, *arrays)
        entry["retained_share"][skill] = listed(interval)
        rows.append(
            {
                "method": method,
                "seeds": len(seeds),
                "skill": skill,
                "gate_passed": passed,
                "base": round(float(arrays[2].mean()), 4),
                "alone": round(float(arrays[1].mean()), 4),
                "composed": round(float(arrays[0].mean()), 4),
                "share_low": round(interval[0], 4),
                "share": round(interval[1], 4),
                "share_high": round(interval[2], 4),
                "verdict": kept(interval),
            }
        )
    joint = _scores(store, seeds, unit, "test", "content", "joint")
    content_alone = _scores(store, seeds, alone["content"], "test", "content", "content")
    format_alone = _scores(store, seeds, alone["format"], "test", "content", "format")
    format_joint = _scores(store, seeds, alone["format"], "test", "content", "joint")
    prompted = _scores(store, seeds, "base", "test", "prompted", "joint")
    difference = lambda a, b: a.mean() - b.mean()  # noqa: E731
    entry["joint_success"] = mean_interval(joint)
    entry["independence_product"] = round(float(content_alone.mean() * format_alone.mean()), 4)
    entry["joint_minus_independence"] = listed(
        paired_bootstrap(
            lambda j, c, f: j.mean() - c.mean() * f.mean(), joint, content_alone, format_alone
        )
    )
    entry["joint_minus_prompted_base"] = listed(paired_bootstrap(difference, joint, prompted))
    entry["format_alone_joint"] = mean_interval(format_joint)
    entry["joint_minus_format_alone"] = listed(paired_bootstrap(difference, joint, format_joint))
    entry["answers"] = answer_kinds(store, seeds, unit)
    entry["verdict"] = _verdict(passed, entry)
    return entry


ANSWER_KINDS = ("joint success", "JSON answer, wrong content", "JSON, other fields", "not JSON")


def answer_kinds(store: ResultStore, seeds: list[int], unit: str) -> dict[str, float]:
    """What a unit's answers to the test content prompts are, as shares (over seeds and
    prompts) that add up to 1: joint successes, and the three ways to fail — an ``answer``
    field with the wrong content, a JSON object without one (``{"score": "negative"}``),
    no JSON object at all."""
    counts = dict.fromkeys(ANSWER_KINDS, 0)
    for seed in seeds:
        scored = store[f"seed{seed}/{unit}"]["test/content"]
        for answer, joint in zip(scored["answer"], scored["joint"], strict=True):
            if joint:
                counts["joint success"] += 1
            elif json_answer(answer) is not None:
                counts["JSON answer, wrong content"] += 1
            elif json_object(answer) is not None:
                counts["JSON, other fields"] += 1
            else:
                counts["not JSON"] += 1
    total = sum(counts.values())
    return {kind: round(n / total, 4) for kind, n in counts.items()}


def _units(cfg: GenConfig) -> list[str]:
    """The cells a seed needs before it counts: the base, every single-skill adapter and the
    gate (a method counts the seeds whose composition it has finished, `_finished`)."""
    from .generation_bench import SKILLS, gate_units, skill_units

    single = tuple(f"skill/{s}/" for s in SKILLS)
    skills = [u for u in sorted(skill_units(cfg)) if u.startswith(single)]
    return ["base", *skills, *gate_units(cfg)]


def _finished(store: ResultStore, seed: int, method: str) -> bool:
    """Whether ``method``'s composition and the cells its skills are measured alone by are in
    the store at ``seed``."""
    from .generation_bench import ALONE

    return all(f"seed{seed}/{u}" in store for u in (f"compose/{method}", *ALONE[method]))


def _scores(
    store: ResultStore, seeds: list[int], unit: str, split: str, prompts: str, check: str
) -> np.ndarray:
    """(seeds, items) 0/1 array of ``check`` on a unit's answers to ``prompts``."""
    return np.asarray([store[f"seed{s}/{unit}"][f"{split}/{prompts}"][check] for s in seeds], float)


def _gate(cfg: GenConfig, store: ResultStore, seeds: list[int], skill: str) -> dict[str, Any]:
    """The skill's validation rate per placement it was trained alone at (mean over seeds)
    against its reference: for the content skill, the better of the base and the most
    common answer on the gate's prompts (a skill that always gives one answer does not
    pass); for the format skill, the base on the format prompts."""
    from .generation_bench import GATED

    if skill == "content":
        units, prompts, check = {p: f"gate/content/{p}" for p in GATED}, "gate", "content"
        base = _scores(store, seeds, "gate/base", "validation", prompts, check).mean()
        golds = store[f"seed{seeds[0]}/gate/base"]["validation/gate"]["gold"]
        majority = max(golds.count(g) for g in set(golds)) / len(golds)
    else:
        units, (prompts, check) = {p: f"skill/{skill}/{p}" for p in GATED}, OWN[skill]
        base = _scores(store, seeds, "base", "validation", prompts, check).mean()
        majority = 0.0  # a constant answer is valid JSON or not: no reference beyond the base
    reference = max(float(base), majority)
    result: dict[str, Any] = {
        "metric": check,
        "prompts": f"validation/{prompts}",
        "base_validation": round(float(base), 4),
        "majority_validation": round(majority, 4),
    }
    passed = True
    for placement, unit in units.items():
        if not all(f"seed{s}/{unit}" in store for s in seeds):
            continue
        rate = _scores(store, seeds, unit, "validation", prompts, check).mean()
        result[f"{placement}_validation"] = round(float(rate), 4)
        passed &= bool(rate - reference >= cfg.gate)
    return {**result, "passed": passed}


def _vs_lora(store: ResultStore, summary: dict[str, Any]) -> None:
    """Per RoAd method: its joint success − LoRA task arithmetic's (paired interval, over the
    seeds both have finished)."""
    if "lora_ta" not in summary["methods"]:
        return
    for method, entry in summary["methods"].items():
        both = [s for s in entry["seeds"] if s in summary["methods"]["lora_ta"]["seeds"]]
        if method == "lora_ta" or not both:
            continue
        lora = _scores(store, both, "compose/lora_ta", "test", "content", "joint")
        ours = _scores(store, both, f"compose/{method}", "test", "content", "joint")
        entry["joint_vs_lora_task_arithmetic"] = listed(
            paired_bootstrap(lambda a, b: a.mean() - b.mean(), ours, lora)
        )


def _verdict(passed: bool, entry: dict[str, Any]) -> str:
    if not passed:
        return "a skill failed the learnability gate: not scored"
    shares = ", ".join(f"{s} kept: {kept(_tuple(v))}" for s, v in entry["retained_share"].items())
    above_product = verdict(_tuple(entry["joint_minus_independence"]), 0.0)
    above_prompted = verdict(_tuple(entry["joint_minus_prompted_base"]), 0.0)
    above_format = verdict(_tuple(entry["joint_minus_format_alone"]), 0.0)
    return (
        f"{shares}; joint success ≥ independence product: {above_product}; "
        f"above the prompted base: {above_prompted}; above the format skill alone: "
        f"{above_format}"
    )


def mean_interval(scores: np.ndarray) -> list[float | None]:
    return listed(paired_bootstrap(lambda x: x.mean(), scores))


def listed(interval: tuple[float, float, float]) -> list[float | None]:
    """[low, point, high], rounded; JSON has no NaN, so an undefined end is null."""
    return [None if math.isnan(v) else round(v, 4) for v in interval]


def _tuple(values: list[float | None]) -> tuple[float, float, float]:
    low, point, high = (math.nan if v is None else v for v in values)
    return low, point, high


def joint_figure(summary: dict[str, Any], title: str) -> plt.Figure:
    """Joint success per method with its 95% interval, beside the independence product and
    the prompted base."""
    methods = list(summary["methods"])
    fig, ax = plt.subplots(figsize=(3.6 + 1.4 * len(methods), 3.4))
    x = np.arange(len(methods))
    joint = np.array([_tuple(summary["methods"][m]["joint_success"]) for m in methods])
    err = np.vstack([joint[:, 1] - joint[:, 0], joint[:, 2] - joint[:, 1]])
    ax.bar(x, joint[:, 1], 0.6, yerr=np.nan_to_num(err), capsize=3, label="joint success")
    product = [summary["methods"][m]["independence_product"] for m in methods]
    ax.scatter(x, product, marker="_", s=900, color="black", label="independence product")
    alone = [summary["methods"][m]["format_alone_joint"][1] for m in methods]
    ax.scatter(x, alone, marker="o", color="tab:red", label="format skill alone")
    prompted = summary["prompted_base_joint"][1]
    ax.axhline(prompted, color="grey", linestyle="--", label="prompted base")
    ax.set_xticks(x, methods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("joint success (gold in the JSON answer)")
    ax.set_title(f"{title} on SmolLM2-135M-Instruct (test)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def _readme(
    cfg: GenConfig, summary: dict[str, Any], table: pd.DataFrame, finished: bool, seconds: float
) -> str:
    from .generation_bench import GATED, PAIRS

    pair = PAIRS[cfg.pair]
    wrapped, joint = {
        "words": ("<the word asked for>", '{"answer": "<gold>"}'),
        "own": ("<the base model's own answer>", '{"answer": "<an answer with the gold in it>"}'),
    }[cfg.answers_wrapped]
    lines = [
        f"# Generation composition benchmark: {pair.title} (SmolLM2-135M-Instruct)",
        "",
        f"A content skill ({pair.task}) and a format skill (other questions on other sentences "
        f'→ {{"answer": "{wrapped}"}}), RoAd1 on block outputs, composed; is the answer to a '
        f"content question {joint}? See the module docstring of "
        "`experiments.composition.generation_bench` for the cells and metrics. Intervals: 95% "
        "paired bootstrap over test items, seeds as rows.",
        "",
        f"Status: {'finished' if finished else 'partial (run the same command again to continue)'}"
        f"; seeds {summary['seeds']}; this sitting {seconds / 60:.1f} min.",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()),
        "",
    ]
    if "reused_from" in summary:
        lines += [
            f"Cells that do not read the settings changed were reused from "
            f"{', '.join(summary['reused_from'])} (`--reuse`; their records say so).",
            "",
        ]
    lines += [
        "## Learnability gate (validation, mean over seeds)",
        "",
        "| skill | prompts | metric | base | most common answer | halves | all planes | routed "
        "| passed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for skill, g in summary["gate"].items():
        cells = [g.get(f"{p}_validation", "–") for p in GATED]
        lines.append(
            f"| {skill} | {g['prompts']} | {g['metric']} | {g['base_validation']} | "
            f"{g['majority_validation']} | "
            + " | ".join(map(str, cells))
            + f" | {'yes' if g['passed'] else 'no'} |"
        )
    lines += [
        "",
        f"A skill passes when it beats the larger of the base and the most common answer by "
        f"≥ {cfg.gate:.2f} at every placement; a pair that fails is reported, not scored.",
        "",
        "## Retained shares (test, each skill on its own prompts)",
        "",
    ]
    if len(table):
        lines += [table.to_string(index=False), ""]
    lines += [
        "## Joint success on the content prompts (test)",
        "",
        f"Prompted base (asked for JSON in words): {summary.get('prompted_base_joint')}",
        "",
        "The format skill alone may already answer some content prompts in JSON with the right "
        "answer (the base model's own judgement, formatted): `joint − format alone` is what the "
        "content skill adds inside the composition.",
        "",
        "| method | seeds | joint success | independence product | joint − product | joint − "
        "prompted base | format alone | joint − format alone | joint − LoRA TA |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, e in summary["methods"].items():
        lines.append(
            f"| {method} | {e['seeds']} | {e['joint_success']} | {e['independence_product']} | "
            f"{e['joint_minus_independence']} | {e['joint_minus_prompted_base']} | "
            f"{e['format_alone_joint']} | {e['joint_minus_format_alone']} | "
            f"{e.get('joint_vs_lora_task_arithmetic', '–')} |"
        )
    if summary["methods"]:
        lines += ["", "![joint success](joint.png)"]
        lines += [
            "",
            "What the answers to the content prompts are (shares over seeds and prompts; each "
            "row adds up to 1):",
            "",
            "| method | " + " | ".join(ANSWER_KINDS) + " |",
            "| --- |" + " --- |" * len(ANSWER_KINDS),
        ]
        for method, e in summary["methods"].items():
            lines.append(
                f"| {method} | " + " | ".join(str(e["answers"][k]) for k in ANSWER_KINDS) + " |"
            )
    lines += ["", "## Verdicts", ""]
    lines += [f"- {k}: {v}" for k, v in summary["verdicts"].items()]
    return "\n".join(lines) + "\n"
