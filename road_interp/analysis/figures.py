"""Figures drawn from the analysis tables. Each function takes a table, draws it into ``ax``
(an Axes you made, so panels compose: ``fig, (a, b) = plt.subplots(1, 2)``,
``figures.layer_profile(t, ax=a)``) or, without ``ax``, into a new Figure, and returns the
figure (no pyplot state; save it with ``fig.savefig(path)``). A notebook shows a returned
figure as the cell's value once ``%matplotlib inline`` has run (or pyplot has been imported).

| function | table it takes |
| --- | --- |
| `layer_module_heatmap` | `stats.summarize` (by layer, module_type) or `stats.compare` |
| `layer_profile` | `stats.summarize` (by layer; or by layer, module_type for one adapter) |
| `angle_histogram`, `theta_alpha_scatter` | `stats.plane_table` (one or several adapters) |
| `angle_scatter` | `stats.paired_planes` |
| `similarity_heatmap` | `stats.similarity` |
| `drift_curves` | `drift.representation_drift` (one or several adapters, concatenated) |
| `importance_bars` | `importance.plane_importance` |

**Intervals.** Where a table holds several runs of the same thing (a ``seed`` column, or any
column named by ``runs=``: several rows per plotted point), the plot shows their mean with a
95 % t-interval across runs (error bars, or a band) and says so; columns ``<value>_low`` and
``<value>_high`` (a bootstrap interval) are drawn as given. Drift curves show the 95 %
interval of the mean over examples. Colour scales span the data (a signed statistic: ±its
largest magnitude, centred on 0), never a fixed 0 to max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
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
    "module_type": "module type",
    "layer": "layer",
    "adapter": "adapter",
}
"""Column -> axis, legend or colorbar label (other columns: underscores become spaces)."""

SIGNED = frozenset({"theta_pearson", "abs_theta_spearman"})
"""Columns in [−1, 1], drawn with a diverging colour map centred on 0."""

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
"""Two-sided 95 % quantiles of Student's t for 1 to 30 degrees of freedom."""


def t975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30)."""
    if dof < 1:
        return math.nan
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def mean_interval(values: Sequence[float] | pd.Series) -> tuple[float, float, int]:
    """(mean, half-width of its 95 % t-interval, n); the half-width is NaN for n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    half = t975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return float(x.mean()), half, n


def _label(column: str) -> str:
    return LABELS.get(column, column.replace("_", " "))


def _layer_label(layer: object) -> str:
    return "other" if pd.isna(layer) else str(layer)  # type: ignore[call-overload]


def _figure_of(ax: Axes) -> Figure:
    """The root Figure an Axes is drawn in (also inside a SubFigure)."""
    fig = ax.figure
    return fig if isinstance(fig, Figure) else fig.figure  # type: ignore[return-value]


def _new_or(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.subplots()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    return _figure_of(ax), ax


def _fit_norm(values: np.ndarray, signed: bool) -> Normalize:
    """A colour scale spanning the finite ``values``: [min, max], or ±max|v| when signed."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return Normalize(-1.0, 1.0) if signed else Normalize(0.0, 1.0)
    if signed:
        top = float(np.abs(finite).max()) or 1.0
        return Normalize(-top, top)
    low, high = float(finite.min()), float(finite.max())
    if high - low < 1e-12 * max(1.0, abs(high)):
        pad = 0.05 * abs(high) or 0.5
        low, high = low - pad, high + pad
    return Normalize(low, high)


def _runs(table: pd.DataFrame, keys: Sequence[str], runs: str | None) -> str | None:
    """The column telling repeated runs apart (``runs``, else ``seed`` if present), when the
    table has several rows per ``keys``; None when each key has one row."""
    column = runs or ("seed" if "seed" in table.columns else None)
    if column is None or not table.duplicated(list(keys)).any():
        return None
    check_table(table, [column], "runs")
    return column


def _aggregate(
    table: pd.DataFrame, keys: Sequence[str], value: str, runs: str
) -> tuple[pd.DataFrame, str]:
    """Mean and 95 % t-interval half-width (``half``) of ``value`` across runs, per ``keys``;
    and a note saying so."""
    rows = []
    for key, part in table.groupby(list(keys), sort=False, dropna=False):
        mean, half, n = mean_interval(part[value])
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key, strict=True)), value: mean, "half": half, "n": n})
    out = pd.DataFrame(rows)
    counts = sorted(set(out["n"]))
    n_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return out, f"mean of {n_text} {_label(runs)}s, bars: 95 % t-interval"


def _annotate(ax: Axes, grid: np.ndarray, image, norm: Normalize, decimals: int) -> None:
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            shade = image.cmap(norm(v))
            light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.55
            ax.text(j, i, f"{v:.{decimals}f}", ha="center", va="center", fontsize=7,
                    color="black" if light else "white")  # fmt: skip


def _decimals(values: np.ndarray) -> int:
    finite = np.abs(values[np.isfinite(values)])
    largest = float(finite.max()) if finite.size else 0.0
    return min(4, max(0, 2 - math.floor(math.log10(largest)))) if largest > 0 else 2


# -- heatmaps -----------------------------------------------------------------------------------
def layer_module_heatmap(
    table: pd.DataFrame,
    value: str = "mean_abs_theta_deg",
    *,
    title: str | None = None,
    cmap: str | None = None,
    runs: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Layers (rows) × module types (columns) coloured by ``value``; one panel per adapter
    (``stats.summarize`` with by=("layer", "module_type")) or per compared pair
    (``stats.compare``), on one colour scale fitted to the data. Sites without a layer index
    form the row "other". Several runs per cell (``runs`` or a ``seed`` column) are averaged
    and the title says how many. ``ax``: one Axes per panel."""
    if "adapter" not in table.columns and {"adapter_a", "adapter_b"} <= set(table.columns):
        table = table.assign(adapter=table["adapter_a"] + " vs " + table["adapter_b"])
    check_table(table, ["adapter", "layer", "module_type", value], "layer_module_heatmap")
    keys = ["adapter", "layer", "module_type"]
    column = _runs(table, keys, runs)
    note = ""
    if column is not None:
        table, note = _aggregate(table, keys, value, column)
        note = " (" + note.split(",")[0] + ")"
    panels = list(pd.unique(table["adapter"]))
    modules = module_order(table["module_type"])
    layers = sorted(pd.unique(table["layer"].dropna()))
    rows = [*layers, *(["other"] if table["layer"].isna().any() else [])]
    grids = []
    for name in panels:
        part = table[table["adapter"] == name]
        grid = np.full((len(rows), len(modules)), np.nan)
        for layer, module, v in zip(part["layer"], part["module_type"], part[value], strict=True):
            grid[rows.index("other" if pd.isna(layer) else layer), modules.index(module)] = v
        grids.append(grid)
    signed = value in SIGNED
    norm = _fit_norm(np.concatenate([g.ravel() for g in grids]), signed)
    cmap = cmap or ("RdBu_r" if signed else "magma" if "alpha" in value else "viridis")
    if ax is None:
        width = min(6.0, 0.9 * len(modules) + 1.6)
        height = min(11.0, max(3.2, 0.32 * len(rows) + 2.2))
        ncols = min(len(panels), 3)
        nrows = math.ceil(len(panels) / ncols)
        fig = Figure(figsize=(width * ncols + 1.2, height * nrows), layout="constrained")
        grid_axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
        for spare in grid_axes[len(panels) :]:
            spare.remove()
        axes = list(grid_axes[: len(panels)])
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != len(panels):
            raise ValueError(f"the table has {len(panels)} panels ({panels}); pass as many axes")
        fig = _figure_of(axes[0])
    annotate = len(rows) * len(modules) <= 80
    decimals = _decimals(np.concatenate([g.ravel() for g in grids]))
    image = None
    for panel, name, grid in zip(axes, panels, grids, strict=True):
        image = panel.imshow(grid, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        panel.set_xticks(range(len(modules)), modules, rotation=40, ha="right", fontsize=8)
        panel.set_yticks(range(len(rows)), [_layer_label(r) for r in rows], fontsize=8)
        panel.set_xlabel("module type")
        panel.set_ylabel("layer")
        panel.set_title(str(name), fontsize=10)
        if annotate:
            _annotate(panel, grid, image, norm, decimals)
    assert image is not None  # there is at least one panel
    fig.colorbar(image, ax=axes, label=_label(value), shrink=0.9)
    heading = title or f"{_label(value)} per layer and module type{note}"
    if len(axes) == 1 and ax is not None:
        axes[0].set_title(f"{heading}\n{panels[0]}", fontsize=10)
    else:
        fig.suptitle(heading)
    return fig


def similarity_heatmap(
    matrix: pd.DataFrame, statistic: str = "jaccard", *, ax: Axes | None = None
) -> Figure:
    """An adapters × adapters matrix (`stats.similarity`), annotated. The diagonal (1 by
    definition) is left blank, so that the colour scale spans the pairs' values."""
    check_table(matrix, [], "similarity_heatmap")
    if list(matrix.index) != list(matrix.columns):
        raise ValueError(
            "similarity_heatmap takes a square matrix with the same adapters as rows and columns"
        )
    n = len(matrix)
    size = min(9.0, 1.0 + 0.9 * n)
    fig, ax = _new_or(ax, (size + 1.5, size))
    values = matrix.to_numpy(float).copy()
    np.fill_diagonal(values, np.nan)
    signed = statistic in SIGNED
    norm = _fit_norm(values, signed)
    image = ax.imshow(values, cmap="RdBu_r" if signed else "viridis", norm=norm)
    names = [str(c) for c in matrix.columns]
    ax.set_xticks(range(n), names, rotation=40, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("adapter")
    ax.set_ylabel("adapter")
    _annotate(ax, values, image, norm, 2)
    for i in range(n):
        ax.text(i, i, "—", ha="center", va="center", fontsize=9, color="0.5")
    fig.colorbar(image, ax=ax, label=_label(statistic), shrink=0.85)
    ax.set_title(f"{_label(statistic)} between adapters")
    return fig


# -- lines --------------------------------------------------------------------------------------
def layer_profile(
    summary: pd.DataFrame,
    value: str = "mean_abs_theta_deg",
    *,
    hue: str = "adapter",
    title: str | None = None,
    runs: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """``value`` against the layer, one line per ``hue`` value (``stats.summarize`` with
    by=("layer",) for one line per adapter, or by=("layer", "module_type") with
    hue="module_type" for one adapter's modules). Several runs per point (``runs`` or a
    ``seed`` column, e.g. summaries of one task trained with several seeds) are drawn as their
    mean with 95 % t-interval error bars. Sites without a layer index are left out."""
    check_table(summary, ["layer", hue, value], "layer_profile")
    column = _runs(summary, ["layer", hue], runs)
    note = None
    if column is not None:
        summary, note = _aggregate(summary, [hue, "layer"], value, column)
    elif summary.duplicated(["layer", hue]).any():
        raise ValueError(
            f"layer_profile needs one row per layer and {hue}; summarize by ('layer',) for "
            "hue='adapter', pass one adapter's table for hue='module_type', or name the "
            "column that tells repeated runs apart (runs=, e.g. 'seed')"
        )
    rows = summary.dropna(subset=["layer"])
    keys = module_order(rows[hue]) if hue == "module_type" else list(pd.unique(rows[hue]))
    fig, ax = _new_or(ax, (7.5, 4.5))
    for i, key in enumerate(keys):
        part = rows[rows[hue] == key].sort_values("layer")
        x = part["layer"].astype(int).to_numpy()
        y = part[value].to_numpy(float)
        ax.plot(x, y, marker="o", markersize=4, color=f"C{i % 10}", label=str(key))
        if note is not None:
            ax.errorbar(x, y, yerr=part["half"].to_numpy(float), fmt="none",
                        ecolor=f"C{i % 10}", elinewidth=1.0, capsize=2.5)  # fmt: skip
    ax.set_xlabel("layer")
    ax.set_ylabel(_label(value))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend(title=_label(hue), fontsize=8, title_fontsize=8, frameon=False)
    heading = title or f"{_label(value)} per layer" + (f" — {keys[0]}" if len(keys) == 1 else "")
    ax.set_title(heading + (f"\n({note})" if note else ""), fontsize=10)
    return fig


def drift_curves(
    drift: pd.DataFrame | Sequence[pd.DataFrame],
    *,
    title: str | None = None,
    ax: Sequence[Axes] | None = None,
) -> Figure:
    """ΔM and cos(x, x0) per layer, one line per ``adapter`` value, each the mean over the
    examples with a band for its 95 % t-interval (± 1 std when the table has no ``n``);
    ``drift`` is one table or several (concatenated here). ``ax``: two Axes (ΔM, cos)."""
    if not isinstance(drift, pd.DataFrame):
        if not drift:
            raise ValueError("drift_curves: no drift tables given")
        drift = pd.concat(list(drift), ignore_index=True)
    check_table(
        drift, ["adapter", "layer", "delta_m_mean", "delta_m_std", "cos_mean", "cos_std"],
        "drift_curves",
    )  # fmt: skip
    if ax is None:
        fig = Figure(figsize=(11.0, 4.2), layout="constrained")
        ax_m, ax_c = fig.subplots(1, 2)
    else:
        if isinstance(ax, Axes) or len(ax) != 2:
            raise ValueError("drift_curves draws two panels (ΔM, cos): pass ax=(ax_m, ax_c)")
        ax_m, ax_c = ax
        fig = _figure_of(ax_m)
    has_n = "n" in drift.columns
    for i, (name, part) in enumerate(drift.groupby("adapter", sort=False)):
        part = part.sort_values("layer")
        if has_n:
            n = part["n"].to_numpy(float)
            scale = np.array([t975(int(k) - 1) for k in n]) / np.sqrt(n)
        else:
            scale = np.ones(len(part))
        for axis, column in ((ax_m, "delta_m"), (ax_c, "cos")):
            mean = part[f"{column}_mean"].to_numpy(float)
            half = part[f"{column}_std"].to_numpy(float) * scale
            axis.plot(part["layer"], mean, marker="o", markersize=4, color=f"C{i}", label=str(name))
            axis.fill_between(part["layer"], mean - half, mean + half, color=f"C{i}", alpha=0.2)
    ax_m.set_ylabel("ΔM = |‖x‖ − ‖x0‖| / ‖x0‖")
    ax_m.set_title("Relative change of magnitude")
    ax_c.set_ylabel("cos(x, x0)")
    ax_c.set_title("Change of direction")
    for axis in (ax_m, ax_c):
        axis.set_xlabel("layer (0 = embeddings)")
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_m.legend(fontsize=8, frameon=False)
    counts = sorted(set(drift["n"].astype(int))) if has_n else []
    examples = f"{counts[0]} examples" if len(counts) == 1 else "examples"
    band = f"band: 95 % interval of the mean over {examples}" if has_n else "band: ± 1 std"
    heading = title or "Representation drift per layer" + (f" ({examples})" if counts else "")
    if ax is None:
        fig.suptitle(f"{heading}\n{band}", fontsize=11)
    else:
        ax_m.set_title(f"{heading}\nRelative change of magnitude ({band})", fontsize=9)
    return fig


# -- angles -------------------------------------------------------------------------------------
def angle_histogram(
    planes: pd.DataFrame,
    *,
    hue: str | None = None,
    bins: int = 61,
    log: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Histogram of the planes' θ (degrees), one outline per ``hue`` value (default: per
    adapter when the table holds several, else per module type); the legend gives each
    outline's number of planes."""
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
    fig, ax = _new_or(ax, (7.5, 4.5))
    for i, key in enumerate(order):
        theta = planes.loc[values == key, "theta_deg"]
        ax.hist(theta, bins=edges, histtype="step", linewidth=1.4, color=f"C{i % 10}",
                label=f"{key} ({len(theta)})", log=log)  # fmt: skip
    ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xlabel("θ (degrees)")
    ax.set_ylabel("planes" + (" (log scale)" if log else ""))
    ax.legend(title=f"{_label(hue)} (planes)", fontsize=8, title_fontsize=8, frameon=False)
    names = ", ".join(str(n) for n in pd.unique(planes["adapter"]))
    ax.set_title(f"Rotation angles of {len(planes)} planes — {names}", fontsize=10)
    return fig


def theta_alpha_scatter(
    planes: pd.DataFrame,
    *,
    color: str = "layer",
    max_points: int = 20_000,
    seed: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Each plane as a point (θ in degrees, α) on Cartesian axes, so that small angles stay
    readable: the axes span the data, with the identity (θ = 0, α = 1) marked by dotted lines.
    Points are coloured by ``color``: a numeric column (default: the layer) on a colour bar,
    or a categorical one (module_type, adapter) in a legend. At most ``max_points`` planes are
    drawn (a fixed-seed shuffled sample, so that no group hides the others)."""
    check_table(planes, ["adapter", "theta_deg", "alpha", color], "theta_alpha_scatter")
    shown = planes.sample(min(len(planes), max_points), random_state=seed)
    fig, ax = _new_or(ax, (7.5, 5.0))
    size = 10 if len(shown) < 2_000 else 4
    numeric = pd.api.types.is_numeric_dtype(planes[color])
    if numeric:
        hue = pd.to_numeric(shown[color], errors="coerce").astype(float)
        points = ax.scatter(shown["theta_deg"], shown["alpha"], c=hue, s=size, alpha=0.7,
                            cmap="viridis", norm=_fit_norm(hue.to_numpy(), False),
                            linewidths=0)  # fmt: skip
        fig.colorbar(points, ax=ax, label=_label(color), shrink=0.85)
    else:
        labels = shown[color].astype(str)
        keys = module_order(labels) if color == "module_type" else list(pd.unique(labels))
        for i, key in enumerate(keys):
            part = shown[labels == key]
            ax.scatter(part["theta_deg"], part["alpha"], s=size, alpha=0.7, color=f"C{i % 10}",
                       linewidths=0, label=f"{key} ({len(part)})")  # fmt: skip
        ax.legend(title=_label(color), fontsize=8, title_fontsize=8, markerscale=2,
                  frameon=False, loc="best")  # fmt: skip
    ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle=":")
    ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle=":")
    ax.set_xlabel("θ (degrees)")
    ax.set_ylabel("α (magnitude; 1 = no scaling)")
    ax.grid(alpha=0.25)
    names = ", ".join(str(n) for n in pd.unique(planes["adapter"]))
    sampled = f", {len(shown)} of {len(planes)} shown" if len(shown) < len(planes) else ""
    ax.set_title(f"Planes as (θ, α) — {names} ({len(planes)} planes{sampled})", fontsize=10)
    return fig


def angle_scatter(
    paired: pd.DataFrame, *, max_points: int = 20_000, seed: int = 0, ax: Axes | None = None
) -> Figure:
    """θ of adapter A against θ of adapter B on each shared plane (`stats.paired_planes`),
    coloured by which adapter rotates the plane strongly (legend: only the kinds present)."""
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
    fig, ax = _new_or(ax, (6.5, 6.0))
    for (label, mask), tone in zip(kinds.items(), ("0.75", "C0", "C1", "C3"), strict=True):
        if not mask.any():
            continue  # no empty legend entries
        ax.scatter(shown.loc[mask, "theta_deg_a"], shown.loc[mask, "theta_deg_b"], s=5,
                   color=tone, alpha=0.7, linewidths=0, label=f"{label} ({int(mask.sum())})")  # fmt: skip
    extent = float(np.nanmax(np.abs(shown[["theta_deg_a", "theta_deg_b"]].to_numpy()))) * 1.05
    extent = extent or 1.0
    ax.plot([-extent, extent], [-extent, extent], color="0.4", linewidth=0.8, linestyle=":",
            label="θ equal in both")  # fmt: skip
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel(f"θ in {name_a} (degrees)")
    ax.set_ylabel(f"θ in {name_b} (degrees)")
    r = paired["theta_deg_a"].corr(paired["theta_deg_b"])
    ax.set_title(f"Angles per shared plane (Pearson r = {r:.2f}, n = {len(paired)})", fontsize=10)
    ax.legend(fontsize=8, markerscale=3, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, -0.1), ncol=2)  # fmt: skip
    return fig


# -- importance ---------------------------------------------------------------------------------
def importance_bars(
    importance: pd.DataFrame,
    *,
    value: str = "drop",
    title: str | None = None,
    top: int = 30,
    runs: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Horizontal bars of each group's ``value`` (``drop`` or ``share_of_gain``), the ``top``
    largest, largest at the top, each with its value written beside it (a zero shows as a
    marker on the axis, not as a missing bar). Several runs per group (``runs`` or a ``seed``
    column) are drawn as their mean with 95 % t-interval error bars; columns
    ``<value>_low``/``<value>_high`` as given."""
    check_table(importance, ["group", value], "importance_bars")
    context = ""
    if {"baseline", "none"} <= set(importance.columns) and importance["baseline"].nunique() == 1:
        baseline, none = importance["baseline"].iloc[0], importance["none"].iloc[0]
        context = f" (metric {baseline:.3g} with the adapter, {none:.3g} without)"
    column = _runs(importance, ["group"], runs)
    note = ""
    low, high = f"{value}_low", f"{value}_high"
    if column is not None:
        importance, note = _aggregate(importance, ["group"], value, column)
        importance[low] = importance[value] - importance["half"]
        importance[high] = importance[value] + importance["half"]
    elif {low, high} <= set(importance.columns):
        note = "bars: the table's interval"
    shown = importance.sort_values(value, ascending=False, kind="stable").head(top)
    fig, ax = _new_or(ax, (7.5, min(10.0, 1.6 + 0.32 * len(shown))))
    y = np.arange(len(shown))
    x = shown[value].to_numpy(float)
    ax.barh(y, x, color=np.where(x >= 0, "C0", "C3"))
    ax.plot(x, y, "o", color="0.2", markersize=3)  # visible also where the bar has no length
    if {low, high} <= set(shown.columns):
        err = np.vstack([x - shown[low].to_numpy(float), shown[high].to_numpy(float) - x])
        ax.errorbar(x, y, xerr=err, fmt="none", ecolor="0.2", elinewidth=1.0, capsize=2.5)
    span = float(np.nanmax(np.abs(x))) if len(x) else 0.0
    for yi, xi in zip(y, x, strict=True):
        ax.annotate(f"{xi:.3g}", (xi, yi), xytext=(4 if xi >= 0 else -4, 0),
                    textcoords="offset points", va="center", ha="left" if xi >= 0 else "right",
                    fontsize=7)  # fmt: skip
    if span == 0.0:
        ax.set_xlim(-1.0, 1.0)
    ax.set_yticks(y, [str(g) for g in shown["group"]], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlabel(_label(value))
    ax.set_ylabel("planes reset to the identity")
    ax.grid(axis="x", alpha=0.3)
    heading = title or f"Plane importance{context}"
    ax.set_title(heading + (f"\n({note})" if note else ""), fontsize=10)
    return fig
