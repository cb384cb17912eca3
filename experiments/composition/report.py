"""Tables and figures of the composition experiments: plots take tables, return figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CONDITION_ORDER = ["base", "skill", "composed", "joint", "loreft"]


def e2_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per condition and overlap (rows) and task (columns), with retained shares."""
    table = results.pivot_table(
        index=["condition", "overlap"],
        columns="task_name",
        values=["accuracy", "retained_share"],
        dropna=False,
    )
    table = table.dropna(how="all")
    order = {c: i for i, c in enumerate(CONDITION_ORDER)}
    table = table.reset_index()
    table["overlap"] = table["overlap"].astype(object).where(table["overlap"].notna(), "-")
    table = table.sort_values("condition", key=lambda s: s.map(order), kind="stable")
    table.columns = [" ".join(str(p) for p in c if p).strip() for c in table.columns]
    return table.reset_index(drop=True)


def e2_figure(results: pd.DataFrame) -> Figure:
    """Left: retained share of each skill's gain vs plane overlap (composed and joint).
    Right: accuracy per condition at overlap 0 (disjoint halves)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for condition, style in (("composed", "-o"), ("joint", "--s")):
        for task, group in results[results.condition == condition].groupby("task_name"):
            group = group.sort_values("overlap")
            left.plot(
                group["overlap"], group["retained_share"], style, label=f"{condition}: {task}"
            )
    left.axhline(1.0, color="grey", lw=0.8)
    left.axhline(0.95, color="grey", lw=0.8, ls=":")
    left.set_xlabel("shared share of the two skills' planes (0 = disjoint, 1 = identical)")
    left.set_ylabel("retained share of the skill's gain over base")
    left.set_title("E2: composing sentiment and fact verification")
    left.legend(fontsize=8)
    disjoint = results[(results.overlap.isna()) | (results.overlap == 0.0)]
    pivot = disjoint.pivot_table(index="condition", columns="task_name", values="accuracy")
    pivot = pivot.reindex([c for c in CONDITION_ORDER if c in pivot.index])
    pivot.plot.bar(ax=right, rot=0)
    right.set_ylabel("test accuracy")
    right.set_title("accuracy at overlap 0 (LoReFT: joint, 2 partitions)")
    right.set_ylim(0, 1.15)
    right.legend(loc="upper center", ncols=2, fontsize=8)
    fig.tight_layout()
    return fig


def e1_summary(results: pd.DataFrame) -> pd.DataFrame:
    order = {
        c: i
        for i, c in enumerate(
            [
                "base",
                "skill A (French)",
                "skill B (sentiment)",
                "composed A+B",
                "joint A+B",
                "loreft A+B",
            ]
        )
    }
    return results.sort_values("condition", key=lambda s: s.map(order)).reset_index(drop=True)


def e1_figure(results: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4))
    metrics = [
        "sentiment_accuracy",
        "french_share",
        "joint_success",
        "french_share_on_skill_a_prompts",
    ]
    e1_summary(results).set_index("condition")[metrics].plot.bar(ax=ax, rot=20)
    ax.set_ylim(0, 1.25)
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    ax.set_ylabel("share of held-out sentences")
    ax.set_title("E1: sentiment instruction answered in French (SmolLM2-135M)")
    fig.tight_layout()
    return fig


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub markdown table (floats to 3 decimals), without the tabulate package."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.3f}"
        return " ".join(str(value).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |"]
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)
