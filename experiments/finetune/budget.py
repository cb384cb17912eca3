"""Parameter budget, stated exactly: RoAd1/2/4 and LoRA on each model and target set.

For a target set (the Linear layers RoAd and LoRA act on) with layers of shape (k -> d):

- RoAd of variant v trains θ and α of `road_interp.rotation.num_params` (v, d) entries each
  per layer: d for RoAd1 (d/2 + d/2), 2d for RoAd2, 4d for RoAd4;
- LoRA of rank r trains r (k + d) per layer; the *matched* rank is the r >= 1 whose count
  is closest to RoAd1's (`road_interp.baselines.matched_lora_rank` on the default targets),
  and the table says how close it gets.

Percentages are of the model's own parameters as loaded for its task (MiniLM with a 2-label
head, SmolLM2-135M as a causal LM), the denominator `road_interp.baselines.parameter_counts`
uses. The counts are also checked against a real `RoadModel` for RoAd1.

    python -m experiments.finetune.budget     # writes results/param_budget.{json,md}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from road_interp import RoadConfig, load_model
from road_interp.injection import resolve_targets
from road_interp.model import RoadModel
from road_interp.rotation import num_params

HERE = Path(__file__).parent
TARGET_SETS: dict[str, dict[str, tuple[str, ...] | str]] = {
    "minilm": {
        "all linear (default)": "default",
        "attention outputs": ("attention.output.dense",),
    },
    "smollm2": {
        "all linear (default)": "default",
        "all linear but gate_proj": (
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "up_proj",
            "down_proj",
        ),
        "attention q, k, v, o": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "attention outputs (o_proj)": ("o_proj",),
    },
}
LORA_RANK = 8


def shapes(model: nn.Module, targets: tuple[str, ...] | str) -> list[tuple[int, int]]:
    """(d, k) = (out, in) features of every targeted Linear."""
    modules = dict(model.named_modules())
    out = []
    for name in resolve_targets(model, RoadConfig(targets=targets)):
        d, k = modules[name].weight.shape  # type: ignore[union-attr]
        out.append((int(d), int(k)))
    return out


def budget_rows(model_name: str, model: nn.Module, sets: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (target set, method): parameters and % of the base model."""
    base = sum(p.numel() for p in model.parameters())
    rows = []
    for label, targets in sets.items():
        layers = shapes(model, targets)
        road = {
            v: sum(2 * num_params(v, d) for d, _ in layers) for v in ("road_1", "road_2", "road_4")
        }
        per_rank = sum(d + k for d, k in layers)
        matched = max(1, round(road["road_1"] / per_rank))
        counts = {
            **road,
            f"lora r={LORA_RANK}": LORA_RANK * per_rank,
            f"lora r={matched} (matched)": matched * per_rank,
        }
        for method, n in counts.items():
            rows.append(
                {
                    "model": model_name,
                    "targets": label,
                    "layers": len(layers),
                    "method": method,
                    "params": int(n),
                    "percent_of_base": 100 * n / base,
                    "vs_road_1": n / road["road_1"],
                    "base_params": int(base),
                }
            )
    return rows


def check_against_model(model: nn.Module, rows: list[dict[str, Any]]) -> None:
    """RoAd1 on the default targets, counted from a real adapter, equals the formula."""
    road = RoadModel(model)
    road.add_adapter("budget", RoadConfig(variant="road_1"))
    real = sum(p.numel() for p in road.parameters() if p.requires_grad)
    expected = next(
        r["params"]
        for r in rows
        if r["targets"] == "all linear (default)" and r["method"] == "road_1"
    )
    if real != expected:
        raise AssertionError(f"RoAd1 has {real} trainable parameters, the formula says {expected}")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Parameter budget (exact counts)",
        "",
        "Percent of the model's own parameters as loaded for its task (MiniLM with a 2-label "
        "head, SmolLM2-135M causal LM); `vs road_1` = this count / RoAd1's on the same targets. "
        "LoRA of rank r on a (k -> d) Linear has r (k + d) parameters, RoAd1 has d, so the "
        "matched rank is the r >= 1 closest to RoAd1 (never below it). "
        "Written by `python -m experiments.finetune.budget`.",
        "",
        "| model | targets | layers | method | params | % of base | vs road_1 |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['targets']} | {r['layers']} | {r['method']} | {r['params']:,} | "
            f"{r['percent_of_base']:.4f} | {r['vs_road_1']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = []
    for name, sets in TARGET_SETS.items():
        model = load_model(name, task="classification" if name == "minilm" else "causal-lm")
        model_rows = budget_rows(name, model, sets)
        check_against_model(model, model_rows)
        rows += model_rows
    out = HERE / "results"
    (out / "param_budget.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows)
    (out / "param_budget.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
