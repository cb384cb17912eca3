"""Figures drawn from the analysis tables: each function takes a table and returns a
`matplotlib.figure.Figure` (no pyplot state; save it with ``fig.savefig(path)``). A notebook
shows a returned figure as the cell's value once ``%matplotlib inline`` has run (or pyplot has
been imported), which registers Jupyter's figure display.

| function | table it takes |
| --- | --- |
| `layer_module_heatmap` | `stats.summarize` (by layer, module_type) or `stats.compare` |
| `layer_profile` | `stats.summarize` (by layer; or by layer, module_type for one adapter) |
| `angle_histogram`, `polar_view` | `stats.plane_table` (one or several adapters) |
| `angle_scatter` | `stats.paired_planes` |
| `similarity_heatmap` | `stats.similarity` |
| `drift_curves` | `drift.representation_drift` (one or several adapters, concatenated) |
| `importance_bars` | `importance.plane_importance` |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.projections.polar import PolarAxes
from matplotlib.ticker import MaxNLocator

from .stats import check_table, module_order

LABELS = {
    "mean_abs_theta_deg": "mean |θ| (degrees)",
    "max_abs_theta_deg": "max |θ| (degrees)",
    "q50_abs_theta_deg": "median |θ| (degrees)",
    "q90_abs_theta_deg": "90th percentile of |θ| (degrees)",
    "share_rotated": "share of planes rotated",
    "mean_alpha": "mean α",
    "mean_abs_alpha_dev": "mean |α − 1|",
    "max_abs_alpha_dev": "max |α − 1|",
    "jaccard": "Jaccard overlap of strongly rotated planes",
    "theta_pearson": "Pearson correlation of θ",
    "abs_theta_spearman": "Spearman correlation of |θ|",
    "drop": "metric drop when the planes are reset",
    "share_of_gain": "share of the adapter's gain lost",
}
"""Column -> axis or colorbar label."""

SIGNED = frozenset({"theta_pearson", "abs_theta_spearman"})
"""Columns in [−1, 1], drawn with a diverging colour map centred on 0."""


def _label(column: str) -> str:
    return LABELS.get(column, column.replace("_", " "))


def _layer_label(layer: object) -> str:
    return "other" if pd.isna(layer) else str(layer)  # type: ignore[call-overload]


# -- heatmaps -----------------------------------------------------------------------------------
def layer_module_heatmap(
    table: pd.DataFrame,
    value: str = "mean_abs_theta_deg",
    *,
    title: str | None = None,
    cmap: str | None = None,
) -> Figure:
    """Layers (rows) × module types (columns) coloured by ``value``; one panel per adapter
    (``stats.summarize`` with by=("layer", "module_type")) or per compared pair
    (``stats.compare``), on one shared colour scale. Sites without a layer index form the
    row "other"."""
    if "adapter" not in table.columns and {"adapter_a", "adapter_b"} <= set(table.columns):
        table = table.assign(adapter=table["adapter_a"] + " vs " + table["adapter_b"])
    check_table(table, ["adapter", "layer", "module_type", value], "layer_module_heatmap")
    panels = list(pd.unique(table["adapter"]))
    modules = module_order(table["module_type"])
    layers = sorted(pd.unique(table["layer"].dropna()))
    rows = [*layers, *(["other"] if table["layer"].isna().any() else [])]
    grids = []
    for name in panels:
        part = table[table["adapter"] == name]
        grid = np.full((len(rows), len(modules)), np.nan)
        for layer, module, v in zip(part["layer"], part["module_type"], part[value], strict=True):
            row = rows.index("other" if pd.isna(layer) else layer)
            grid[row, modules.index(module)] = v
        grids.append(grid)
    finite = np.concatenate([g[np.isfinite(g)] for g in grids])
    if value in SIGNED:
        norm = Normalize(-1.0, 1.0)
        cmap = cmap or "RdBu_r"
    else:
        top = float(finite.max()) if finite.size else 1.0
        norm = Normalize(min(0.0, float(finite.min()) if finite.size else 0.0), top or 1.0)
        cmap = cmap or ("magma" if "alpha" in value else "viridis")
    width = min(6.0, 0.9 * len(modules) + 1.6)
    height = min(11.0, max(3.2, 0.32 * len(rows) + 2.2))
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(width * ncols + 1.2, height * nrows), layout="constrained")
    grid_axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for spare in grid_axes[len(panels) :]:
        spare.remove()
    axes = grid_axes[: len(panels)]
    annotate = len(rows) * len(modules) <= 80
    largest = float(np.abs(finite).max()) if finite.size else 0.0
    decimals = min(4, max(0, 2 - math.floor(math.log10(largest)))) if largest > 0 else 2
    for ax, name, grid in zip(axes, panels, grids, strict=True):
        image = ax.imshow(grid, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(modules)), modules, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [_layer_label(r) for r in rows], fontsize=8)
        ax.set_xlabel("module type")
        ax.set_ylabel("layer")
        ax.set_title(str(name), fontsize=10)
        if annotate:
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    shade = image.cmap(norm(v))
                    light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.55
                    ax.text(j, i, f"{v:.{decimals}f}", ha="center", va="center", fontsize=7,
                            color="black" if light else "white")  # fmt: skip
    fig.colorbar(image, ax=list(axes), label=_label(value), shrink=0.9)
    fig.suptitle(title or f"{_label(value)} per layer and module type")
    return fig


def layer_profile(
    summary: pd.DataFrame,
    value: str = "mean_abs_theta_deg",
    *,
    hue: str = "adapter",
    title: str | None = None,
) -> Figure:
    """``value`` against the layer, one line per ``hue`` value (``stats.summarize`` with
    by=("layer",) for one line per adapter, or by=("layer", "module_type") with
    hue="module_type" for one adapter's modules). Sites without a layer index are left out."""
    check_table(summary, ["layer", hue, value], "layer_profile")
    if summary.duplicated(["layer", hue]).any():
        raise ValueError(
            f"layer_profile needs one row per layer and {hue}; summarize by ('layer',) for "
            "hue='adapter', or pass one adapter's table for hue='module_type'"
        )
    rows = summary.dropna(subset=["layer"])
    keys = module_order(rows[hue]) if hue == "module_type" else list(pd.unique(rows[hue]))
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, key in enumerate(keys):
        part = rows[rows[hue] == key].sort_values("layer")
        ax.plot(part["layer"].astype(int), part[value], marker="o", markersize=4,
                color=f"C{i % 10}", label=str(key))  # fmt: skip
    ax.set_xlabel("layer")
    ax.set_ylabel(_label(value))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(title=hue.replace("_", " "), fontsize=8, title_fontsize=8, frameon=False)
    ax.set_title(title or f"{_label(value)} per layer")
    return fig


def similarity_heatmap(matrix: pd.DataFrame, statistic: str = "jaccard") -> Figure:
    """An adapters × adapters matrix (`stats.similarity`), annotated."""
    check_table(matrix, [], "similarity_heatmap")
    if list(matrix.index) != list(matrix.columns):
        raise ValueError(
            "similarity_heatmap takes a square matrix with the same adapters as rows and columns"
        )
    n = len(matrix)
    size = min(9.0, 1.0 + 0.9 * n)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    signed = statistic in SIGNED
    norm = Normalize(-1.0, 1.0) if signed else Normalize(0.0, 1.0)
    image = ax.imshow(matrix.to_numpy(float), cmap="RdBu_r" if signed else "viridis", norm=norm)
    names = [str(c) for c in matrix.columns]
    ax.set_xticks(range(n), names, rotation=40, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("adapter")
    ax.set_ylabel("adapter")
    for (i, j), v in np.ndenumerate(matrix.to_numpy(float)):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if (not signed and v < 0.6) else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label=_label(statistic), shrink=0.85)
    ax.set_title(f"{_label(statistic)} between adapters")
    return fig


# -- angles -------------------------------------------------------------------------------------
def angle_histogram(
    planes: pd.DataFrame, *, hue: str | None = None, bins: int = 61, log: bool = True
) -> Figure:
    """Histogram of the planes' θ (degrees), one outline per ``hue`` value (default: per
    adapter when the table holds several, else per module type)."""
    check_table(planes, ["adapter", "theta_deg"], "angle_histogram")
    if hue is None:
        hue = "adapter" if planes["adapter"].nunique() > 1 else "module_type"
    check_table(planes, [hue], "angle_histogram")
    values = planes[hue].map(_layer_label) if hue == "layer" else planes[hue].astype(str)
    order = module_order(values) if hue == "module_type" else list(pd.unique(values))
    if len(order) > 12:
        raise ValueError(f"{hue} has {len(order)} values; pick a hue with at most 12 (or None)")
    extent = max(float(planes["theta_deg"].abs().max()), 1e-3) * 1.02
    edges = np.linspace(-extent, extent, bins + 1).tolist()
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, key in enumerate(order):
        theta = planes.loc[values == key, "theta_deg"]
        ax.hist(theta, bins=edges, histtype="step", linewidth=1.4, color=f"C{i % 10}",
                label=f"{key} ({len(theta)})", log=log)  # fmt: skip
    ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xlabel("θ (degrees)")
    ax.set_ylabel("planes" + (" (log scale)" if log else ""))
    ax.legend(title=hue.replace("_", " "), fontsize=8, title_fontsize=8, frameon=False)
    names = ", ".join(str(n) for n in pd.unique(planes["adapter"]))
    ax.set_title(f"Rotation angles of {len(planes)} planes — {names}")
    return fig


def polar_view(
    planes: pd.DataFrame, *, color: str = "layer", max_points: int = 20_000, seed: int = 0
) -> Figure:
    """Each plane as a point at angle θ and radius α (dashed: α = 1). When every |θ| is below
    90° the view zooms into the sector the angles span. At most ``max_points`` planes are drawn
    (a fixed-seed sample), coloured by ``color`` (a numeric column)."""
    check_table(planes, ["adapter", "theta", "alpha", color], "polar_view")
    # a shuffled sample, so that no layer is drawn entirely on top of the others
    shown = planes.sample(min(len(planes), max_points), random_state=seed)
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = cast(PolarAxes, fig.subplots(subplot_kw={"projection": "polar"}))
    hue = pd.to_numeric(shown[color], errors="coerce").astype(float)
    points = ax.scatter(shown["theta"], shown["alpha"], c=hue, s=6, alpha=0.6, cmap="viridis",
                        linewidths=0)  # fmt: skip
    spread = float(np.degrees(planes["theta"].abs().max()))
    if spread < 90.0:
        ticks = MaxNLocator(nbins=8, symmetric=True, steps=[1, 2, 2.5, 5, 10]).tick_values(
            -spread, spread
        )
        limit = float(ticks[-1])
        ax.set_thetamin(-limit)
        ax.set_thetamax(limit)
        ax.set_thetagrids(ticks)
    low, high = float(planes["alpha"].min()), float(planes["alpha"].max())
    margin = max(0.05 * (high - low), 0.01)
    ax.set_rlim(max(0.0, min(low, 1.0) - margin), max(high, 1.0) + margin)
    circle = np.linspace(-math.pi, math.pi, 721)
    ax.plot(circle, np.ones_like(circle), color="0.3", linestyle="--", linewidth=0.9)
    fig.colorbar(points, ax=ax, label=color.replace("_", " "), shrink=0.7, pad=0.08)
    names = ", ".join(str(n) for n in pd.unique(planes["adapter"]))
    sampled = f", {len(shown)} of {len(planes)} shown" if len(shown) < len(planes) else ""
    ax.set_title(
        f"Planes as (θ, α) — {names}{sampled}\nangle: θ (degrees), radius: α (dashed: α = 1)",
        fontsize=10,
    )
    return fig


def angle_scatter(paired: pd.DataFrame, *, max_points: int = 20_000, seed: int = 0) -> Figure:
    """θ of adapter A against θ of adapter B on each shared plane (`stats.paired_planes`),
    coloured by which adapter rotates the plane strongly."""
    check_table(
        paired, ["adapter_a", "adapter_b", "theta_deg_a", "theta_deg_b", "strong_a", "strong_b"],
        "angle_scatter",
    )  # fmt: skip
    name_a, name_b = str(paired["adapter_a"].iloc[0]), str(paired["adapter_b"].iloc[0])
    shown = paired.sample(max_points, random_state=seed) if len(paired) > max_points else paired
    kinds = {
        "neither": ~shown["strong_a"] & ~shown["strong_b"],
        f"strong in {name_a} only": shown["strong_a"] & ~shown["strong_b"],
        f"strong in {name_b} only": ~shown["strong_a"] & shown["strong_b"],
        "strong in both": shown["strong_a"] & shown["strong_b"],
    }
    fig = Figure(figsize=(6.5, 6.0), layout="constrained")
    ax = fig.subplots()
    for (label, mask), tone in zip(kinds.items(), ("0.75", "C0", "C1", "C3"), strict=True):
        ax.scatter(shown.loc[mask, "theta_deg_a"], shown.loc[mask, "theta_deg_b"], s=5,
                   color=tone, alpha=0.7, linewidths=0, label=f"{label} ({int(mask.sum())})")  # fmt: skip
    extent = float(np.nanmax(np.abs(shown[["theta_deg_a", "theta_deg_b"]].to_numpy()))) * 1.05
    extent = extent or 1.0
    ax.plot([-extent, extent], [-extent, extent], color="0.4", linewidth=0.8, linestyle=":")
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel(f"θ in {name_a} (degrees)")
    ax.set_ylabel(f"θ in {name_b} (degrees)")
    r = paired["theta_deg_a"].corr(paired["theta_deg_b"])
    ax.set_title(f"Angles per shared plane (Pearson r = {r:.2f}, n = {len(paired)})")
    ax.legend(fontsize=8, markerscale=3, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, -0.1), ncol=2)  # fmt: skip
    return fig


# -- drift and importance -----------------------------------------------------------------------
def drift_curves(
    drift: pd.DataFrame | Sequence[pd.DataFrame], *, title: str | None = None
) -> Figure:
    """ΔM and cos(x, x0) per layer (mean ± std over the examples), one line per ``adapter``
    value; ``drift`` is one table or several (concatenated here)."""
    if not isinstance(drift, pd.DataFrame):
        if not drift:
            raise ValueError("drift_curves: no drift tables given")
        drift = pd.concat(list(drift), ignore_index=True)
    check_table(
        drift, ["adapter", "layer", "delta_m_mean", "delta_m_std", "cos_mean", "cos_std"],
        "drift_curves",
    )  # fmt: skip
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    ax_m, ax_c = fig.subplots(1, 2)
    for i, (name, part) in enumerate(drift.groupby("adapter", sort=False)):
        part = part.sort_values("layer")
        for ax, column in ((ax_m, "delta_m"), (ax_c, "cos")):
            mean, std = part[f"{column}_mean"], part[f"{column}_std"]
            ax.plot(part["layer"], mean, marker="o", markersize=4, color=f"C{i}", label=str(name))
            ax.fill_between(part["layer"], mean - std, mean + std, color=f"C{i}", alpha=0.18)
    ax_m.set_ylabel("ΔM = |‖x‖ − ‖x0‖| / ‖x0‖")
    ax_m.set_title("Relative change of magnitude")
    ax_c.set_ylabel("cos(x, x0)")
    ax_c.set_title("Change of direction")
    for ax in (ax_m, ax_c):
        ax.set_xlabel("layer (0 = embeddings)")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_m.legend(fontsize=8, frameon=False)
    n = int(drift["n"].iloc[0]) if "n" in drift else None
    fig.suptitle(title or "Representation drift per layer" + (f" ({n} examples)" if n else ""))
    return fig


def importance_bars(
    importance: pd.DataFrame, *, value: str = "drop", title: str | None = None, top: int = 30
) -> Figure:
    """Horizontal bars of each group's ``value`` (``drop`` or ``share_of_gain``), the ``top``
    largest, largest at the top."""
    check_table(importance, ["group", value], "importance_bars")
    shown = importance.sort_values(value, ascending=False, kind="stable").head(top)
    fig = Figure(figsize=(7.5, min(10.0, 1.6 + 0.32 * len(shown))), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(shown)), shown[value], color=np.where(shown[value] >= 0, "C0", "C3"))
    ax.set_yticks(range(len(shown)), [str(g) for g in shown["group"]], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlabel(_label(value))
    ax.set_ylabel("planes reset to the identity")
    ax.grid(axis="x", alpha=0.3)
    context = ""
    if {"baseline", "none"} <= set(importance.columns):
        baseline, none = importance["baseline"].iloc[0], importance["none"].iloc[0]
        context = f" (metric {baseline:.3g} with the adapter, {none:.3g} without)"
    ax.set_title(title or f"Plane importance{context}", fontsize=10)
    return fig
