"""What an adapter learned, as tidy pandas tables read from its file (no model is loaded).

**Plane table** (`plane_table`): one row per site and plane. Every plane's 2×2 block M =
[[c_a, −s_a], [s_b, c_b]] (`road_interp.rotation`) is described by its nearest scaled rotation
S = α_eff [[cos θ_eff, −sin θ_eff], [sin θ_eff, cos θ_eff]] in the Frobenius norm:

    x = (c_a + c_b) / 2,   y = (s_a + s_b) / 2,   θ_eff = atan2(y, x) ∈ (−π, π],   α_eff = √(x² + y²)
    asymmetry = ‖M − S‖_F / ‖M‖_F = √(((c_a − c_b)² + (s_a − s_b)²) / 2) / ‖M‖_F

For RoAd1 the block *is* a scaled rotation: θ_eff is the stored θ wrapped to (−π, π] and
α_eff the stored α (for α < 0 the block is a rotation by θ + π scaled by |α|, and that is what
the table shows); asymmetry is 0. For RoAd2/RoAd4, whose rows or entries have their own (θ, α),
asymmetry says how far a block is from a pure scaled rotation.

Columns: adapter, variant, group_size, site, layer (block index parsed from the module path,
<NA> if it has none), module_type (the path after the block index, e.g. ``self_attn.q_proj``,
``attention.self.query``; ``block`` for a block's own output), plane, coord_a, coord_b, theta (rad), theta_deg, alpha, asymmetry.

**Entry table** (`entry_table`), the per-row parameters in long format: one row per site, plane
and block entry ("11", "12", "21", "22"; `road_interp.rotation.ENTRIES`), with the entry's row ("a" or "b"),
the index of the stored parameter it reads (``param_index``), that parameter's stored θ (not
wrapped) and α, and the entry's signed value in the block (α cos θ for "11"/"22", −α sin θ for
"12", α sin θ for "21"). RoAd1 repeats one parameter in all four entries, RoAd2 one per row,
RoAd4 has four distinct ones; ``param_index`` shows the sharing.

Tables of several adapters concatenate (``pd.concat``); every function groups by ``adapter``.
Rows come in layer order, numerically (layer 3 before layer 12), then in forward order of the
module types (`MODULE_ORDER`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..io import AdapterFile, read_adapter, validate
from ..rotation import ENTRIES, Layout, plane_indices

AdapterLike = AdapterFile | str | os.PathLike
"""An `AdapterFile` in memory, or the path of an adapter folder (ours or PEFT's)."""

DEFAULT_THRESHOLD_DEG = 5.0
"""|θ| above which a plane counts as rotated in `summarize` (degrees)."""

DEFAULT_TOP_FRACTION = 0.1
"""Share of each site's planes, by |θ|, that count as strongly rotated in comparisons."""

BLOCK = "block"
"""The module type of a block's own output (a site such as ``model.layers.3``, where an
adapter with positions acts on the residual stream)."""

MODULE_ORDER = (
    "q_proj",
    "query",
    "k_proj",
    "key",
    "v_proj",
    "value",
    "c_attn",
    "o_proj",
    "attention.output",
    "attn.c_proj",
    "gate_proj",
    "up_proj",
    "intermediate",
    "c_fc",
    "down_proj",
    "output.dense",
    "mlp.c_proj",
    BLOCK,
)
"""Module-type name parts in forward order (first match wins), for sorting rows and plot axes
without loading the model; unknown types come after these, alphabetically."""

PLANE_COLUMNS = (
    "adapter",
    "variant",
    "group_size",
    "site",
    "layer",
    "module_type",
    "plane",
    "coord_a",
    "coord_b",
    "theta",
    "theta_deg",
    "alpha",
    "asymmetry",
)


# -- reading ------------------------------------------------------------------------------------
RUN_FOLDERS = ("final", "best")
"""Folder names the training loop gives adapters inside a run folder; such an adapter is
named "<run>/<folder>" by default."""


def load(adapter: AdapterLike, name: str | None = None) -> tuple[AdapterFile, str]:
    """The `AdapterFile` and its display name (default: the folder's name, "<run>/final" for
    a training run's final adapter, or "adapter" for one in memory)."""
    if isinstance(adapter, AdapterFile):
        return validate(adapter, name or "adapter"), name or "adapter"
    path = Path(adapter).resolve()
    default = f"{path.parent.name}/{path.name}" if path.name in RUN_FOLDERS else path.name
    return read_adapter(path), name or default


def parse_site(path: str) -> tuple[int | None, str]:
    """(layer, module type) of a module path: the first all-digit component is the block index,
    the rest is the module type. ``model.layers.3.mlp.up_proj`` -> (3, "mlp.up_proj");
    a block's output ``model.layers.3`` -> (3, "block"); a path without an index -> (None,
    path)."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return int(part), ".".join(parts[i + 1 :]) or BLOCK
    return None, path


def site_key(path: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key ordering module paths by their numbers as numbers (``layers.3`` before
    ``layers.12``), the other parts as text."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in path.split("."))


def module_rank(module_type: str) -> tuple[int, str]:
    """Sort key putting module types in forward order (see `MODULE_ORDER`)."""
    for rank, part in enumerate(MODULE_ORDER):
        if part in module_type:
            return rank, module_type
    return len(MODULE_ORDER), module_type


def module_order(module_types: Sequence[str] | pd.Series) -> list[str]:
    """The distinct module types in forward order."""
    return sorted(set(module_types), key=module_rank)


def _sort(table: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Rows by adapter (first appearance), layer (missing last), module order, then ``extra``."""
    keys = pd.DataFrame(
        {
            "adapter": pd.factorize(table["adapter"])[0],
            "layer": table["layer"].astype("Float64").fillna(math.inf).astype(float),
            "module": [module_rank(m)[0] for m in table["module_type"]],
            "module_type": table["module_type"].to_numpy(),
        },
        index=table.index,
    )
    for column in extra:
        if column == "site":  # numbers as numbers: layers.3 before layers.12
            ranks = {site: i for i, site in enumerate(sorted(set(table["site"]), key=site_key))}
            keys[column] = table[column].map(ranks)
        else:
            keys[column] = table[column]
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return table.loc[order].reset_index(drop=True)


def plane_table(adapter: AdapterLike, name: str | None = None) -> pd.DataFrame:
    """One row per site and plane with the plane's effective θ, α (see the module docstring).

    Args:
        adapter: an `AdapterFile` or an adapter folder (ours or PEFT's RoAd).
        name: the ``adapter`` column's value (default: the folder's name).
    """
    file, name = load(adapter, name)
    if not file.params:
        raise ValueError(f"adapter {name!r} has no sites; there is nothing to analyse")
    variant, group_size = file.config.variant, file.config.group_size
    layout = Layout.of(file.config)
    frames = []
    for site, size in file.sites.items():
        theta, alpha = file.params[site]
        c, s = layout.coefficients(theta.double(), alpha.double())  # (d,) each
        a, b = plane_indices(size, group_size)  # (d/2,) each
        x, y = (c[a] + c[b]) / 2, (s[a] + s[b]) / 2
        norm2 = c[a] ** 2 + c[b] ** 2 + s[a] ** 2 + s[b] ** 2
        resid2 = ((c[a] - c[b]) ** 2 + (s[a] - s[b]) ** 2) / 2
        asymmetry = torch.where(norm2 > 0, (resid2 / norm2.clamp_min(1e-300)).sqrt(), 0.0)
        theta_eff = torch.atan2(y, x)
        layer, module_type = parse_site(site)
        frames.append(
            pd.DataFrame(
                {
                    "site": site,
                    "layer": pd.array([layer] * (size // 2), dtype="Int64"),
                    "module_type": module_type,
                    "plane": np.arange(size // 2),
                    "coord_a": a.numpy(),
                    "coord_b": b.numpy(),
                    "theta": theta_eff.numpy(),
                    "theta_deg": np.degrees(theta_eff.numpy()),
                    "alpha": torch.hypot(x, y).numpy(),
                    "asymmetry": asymmetry.numpy(),
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "adapter", name)
    table.insert(1, "variant", variant)
    table.insert(2, "group_size", group_size)
    return _sort(table, extra=("site", "plane"))


def plane_tables(adapters: Mapping[str, AdapterLike]) -> pd.DataFrame:
    """The plane tables of several adapters (name -> adapter or folder), concatenated: the
    input of `summarize`, `similarity` and the figures for comparisons across tasks and
    variants."""
    if not adapters:
        raise ValueError("no adapters given; pass a mapping name -> adapter folder")
    tables = [plane_table(adapter, name) for name, adapter in adapters.items()]
    return pd.concat(tables, ignore_index=True)


def entry_table(adapter: AdapterLike, name: str | None = None) -> pd.DataFrame:
    """One row per site, plane and block entry with the stored (θ, α) it reads (long format;
    see the module docstring)."""
    file, name = load(adapter, name)
    if not file.params:
        raise ValueError(f"adapter {name!r} has no sites; there is nothing to analyse")
    variant, group_size = file.config.variant, file.config.group_size
    layout = Layout.of(file.config)
    sign = np.array([1.0, -1.0, 1.0, 1.0])
    is_cos = np.array([True, False, False, True])
    frames = []
    for site, size in file.sites.items():
        theta, alpha = (t.double() for t in file.params[site])
        index = layout.entry_index(size)  # (d/2, 4)
        th, al = theta[index].numpy(), alpha[index].numpy()  # (d/2, 4) each
        value = sign * al * np.where(is_cos, np.cos(th), np.sin(th))
        layer, module_type = parse_site(site)
        n = index.numel()
        frames.append(
            pd.DataFrame(
                {
                    "site": site,
                    "layer": pd.array([layer] * n, dtype="Int64"),
                    "module_type": module_type,
                    "plane": np.repeat(np.arange(size // 2), 4),
                    "entry": np.tile(ENTRIES, size // 2),
                    "row": np.tile(["a", "a", "b", "b"], size // 2),
                    "param_index": index.reshape(-1).numpy(),
                    "theta": th.reshape(-1),
                    "theta_deg": np.degrees(th.reshape(-1)),
                    "alpha": al.reshape(-1),
                    "value": value.reshape(-1),
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "adapter", name)
    table.insert(1, "variant", variant)
    table.insert(2, "group_size", group_size)
    return _sort(table, extra=("site", "plane"))


# -- selecting ----------------------------------------------------------------------------------
def check_table(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ValueError if ``table`` is empty or lacks ``columns``."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{what} needs a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{what} needs the columns {missing}, which this table lacks (it has "
            f"{list(table.columns)}); pass the table the matching road_interp.analysis "
            "function returns"
        )
    if table.empty:
        raise ValueError(f"{what}: the table is empty; there is nothing to show")


def select(
    planes: pd.DataFrame,
    *,
    layers: Sequence[int] | None = None,
    module_types: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The rows of these layers, module types and sites (None: all). Asking for something the
    table does not have is an error that lists what it has."""
    check_table(planes, ["site", "layer", "module_type"], "select")
    mask = pd.Series(True, index=planes.index)
    for column, wanted in (("layer", layers), ("module_type", module_types), ("site", sites)):
        if wanted is None:
            continue
        have = planes[column].dropna().unique().tolist()
        missing = [w for w in wanted if w not in have]
        if missing:
            shown = sorted(have, key=str)
            raise ValueError(
                f"the adapter has no {column} {missing}; it has {shown[:12]}"
                + (" ..." if len(shown) > 12 else "")
            )
        mask &= planes[column].isin(list(wanted))
    return planes[mask].reset_index(drop=True)


# -- summaries ----------------------------------------------------------------------------------
def summarize(
    planes: pd.DataFrame,
    by: Sequence[str] = ("layer", "module_type"),
    *,
    threshold_deg: float = DEFAULT_THRESHOLD_DEG,
    quantiles: Sequence[float] = (0.5, 0.9),
) -> pd.DataFrame:
    """Per adapter and group (``by``: any of layer, module_type, site; () for the whole adapter).

    Columns: adapter, *by, n_planes, mean_abs_theta_deg, q50_abs_theta_deg (one per quantile),
    max_abs_theta_deg, share_rotated (share of planes with |θ| > ``threshold_deg``), mean_alpha,
    mean_abs_alpha_dev (mean |α − 1|), max_abs_alpha_dev.
    """
    check_table(planes, ["adapter", "theta_deg", "alpha", *by], "summarize")
    bad = [c for c in by if c not in ("layer", "module_type", "site")]
    if bad:
        raise ValueError(f"summarize groups by layer, module_type or site, not {bad}")
    work = planes.assign(
        abs_theta_deg=planes["theta_deg"].abs(),
        rotated=planes["theta_deg"].abs() > threshold_deg,
        abs_alpha_dev=(planes["alpha"] - 1.0).abs(),
    )
    aggregations: dict[str, pd.NamedAgg] = {
        "n_planes": pd.NamedAgg("abs_theta_deg", "size"),
        "mean_abs_theta_deg": pd.NamedAgg("abs_theta_deg", "mean"),
    }
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must lie in [0, 1], got {q}")
        aggregations[f"q{round(100 * q)}_abs_theta_deg"] = pd.NamedAgg(
            "abs_theta_deg", partial(pd.Series.quantile, q=q)
        )
    aggregations.update(
        max_abs_theta_deg=pd.NamedAgg("abs_theta_deg", "max"),
        share_rotated=pd.NamedAgg("rotated", "mean"),
        mean_alpha=pd.NamedAgg("alpha", "mean"),
        mean_abs_alpha_dev=pd.NamedAgg("abs_alpha_dev", "mean"),
        max_abs_alpha_dev=pd.NamedAgg("abs_alpha_dev", "max"),
    )
    out = work.groupby(["adapter", *by], sort=False, dropna=False).agg(**aggregations)
    out = out.reset_index()
    out["share_rotated"] = out["share_rotated"].astype(float)
    return _sort_groups(out, by)


def _sort_groups(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Rows by adapter (first appearance), then layer (numeric, missing last), module type
    (forward order) and site (numbers as numbers), for the grouping columns present."""
    keys = pd.DataFrame({"adapter": pd.factorize(table["adapter"])[0]}, index=table.index)
    if "layer" in by:
        keys["layer"] = table["layer"].astype("Float64").fillna(math.inf).astype(float)
    if "module_type" in by:
        keys["module"] = [module_rank(m) for m in table["module_type"]]
    if "site" in by:  # a site's own layer and module type first, for tables by site alone
        keys["site"] = [_site_rank(str(site)) for site in table["site"]]
    order = sorted(table.index, key=lambda i: tuple(keys.loc[i]))
    return table.loc[order].reset_index(drop=True)


def _site_rank(site: str) -> tuple:
    layer, module_type = parse_site(site)
    return (math.inf if layer is None else layer, module_rank(module_type), site_key(site))


# -- comparing adapters -------------------------------------------------------------------------
def strong_planes(
    planes: pd.DataFrame,
    *,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    threshold_deg: float | None = None,
) -> pd.Series:
    """Boolean mask of strongly rotated planes: the ``top_fraction`` largest |θ| of each site
    (at least one plane per site, never a plane with θ = 0), or, when ``threshold_deg`` is
    given, the planes with |θ| > threshold_deg (then ``top_fraction`` is not used)."""
    check_table(planes, ["adapter", "site", "theta_deg"], "strong_planes")
    magnitude = planes["theta_deg"].abs()
    if threshold_deg is not None:
        return magnitude > threshold_deg
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    groups = magnitude.groupby([planes["adapter"], planes["site"]], sort=False)
    rank = groups.rank(method="first", ascending=False)
    keep = np.ceil(top_fraction * groups.transform("size"))
    return (rank <= keep) & (magnitude > 0)


def _single_adapter(planes: pd.DataFrame, what: str) -> str:
    names = planes["adapter"].unique()
    if len(names) != 1:
        raise ValueError(
            f"{what} takes the plane table of one adapter, got {len(names)} ({list(names)[:5]})"
        )
    return str(names[0])


def paired_planes(
    planes_a: pd.DataFrame,
    planes_b: pd.DataFrame,
    *,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    threshold_deg: float | None = None,
) -> pd.DataFrame:
    """The planes two adapters share (same site, same coordinate pair), side by side.

    Columns: site, layer, module_type, coord_a, coord_b, then theta_deg, alpha and strong
    (see `strong_planes`, computed on each full table) with suffixes _a and _b. Raises
    ValueError if they share no plane (other sites, or another pairing ``group_size``).
    """
    columns = ["adapter", "site", "layer", "module_type", "coord_a", "coord_b"]
    check_table(planes_a, [*columns, "theta_deg", "alpha"], "compare (first adapter)")
    check_table(planes_b, [*columns, "theta_deg", "alpha"], "compare (second adapter)")
    name_a, name_b = _single_adapter(planes_a, "compare"), _single_adapter(planes_b, "compare")
    if name_a == name_b:
        raise ValueError(
            f"both adapters are named {name_a!r}; give them distinct names (plane_table(..., name=))"
        )
    keep = ["site", "layer", "module_type", "coord_a", "coord_b", "theta_deg", "alpha", "strong"]
    a = planes_a.assign(
        strong=strong_planes(planes_a, top_fraction=top_fraction, threshold_deg=threshold_deg)
    )[keep]
    b = planes_b.assign(
        strong=strong_planes(planes_b, top_fraction=top_fraction, threshold_deg=threshold_deg)
    )[keep].drop(columns=["layer", "module_type"])
    paired = a.merge(b, on=["site", "coord_a", "coord_b"], suffixes=("_a", "_b"), sort=False)
    if paired.empty:
        shared = set(planes_a["site"]) & set(planes_b["site"])
        why = (
            f"they pair coordinates differently (group_size {planes_a['group_size'].iloc[0]} "
            f"vs {planes_b['group_size'].iloc[0]})"
            if shared and "group_size" in planes_a and "group_size" in planes_b
            else "they have no site in common"
        )
        raise ValueError(f"adapters {name_a!r} and {name_b!r} share no plane: {why}")
    paired.insert(0, "adapter_a", name_a)
    paired.insert(1, "adapter_b", name_b)
    return paired


def _spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rank correlation (Pearson on average ranks; no scipy needed)."""
    return float(x.rank().corr(y.rank()))


def compare(
    planes_a: pd.DataFrame,
    planes_b: pd.DataFrame,
    *,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    threshold_deg: float | None = None,
) -> pd.DataFrame:
    """How two adapters' rotations agree, per shared site.

    Columns: adapter_a, adapter_b, site, layer, module_type, n_planes, n_strong_a, n_strong_b,
    n_strong_both, jaccard (|A ∩ B| / |A ∪ B| of the strongly rotated planes; NaN if neither has
    any), theta_pearson (Pearson correlation of the signed angles), abs_theta_spearman (rank
    correlation of |θ|). Correlations are NaN where an adapter's angles are constant.
    """
    paired = paired_planes(
        planes_a, planes_b, top_fraction=top_fraction, threshold_deg=threshold_deg
    )
    rows = []
    for (site, layer, module_type), group in paired.groupby(
        ["site", "layer", "module_type"], sort=False, dropna=False
    ):
        both = int((group["strong_a"] & group["strong_b"]).sum())
        either = int((group["strong_a"] | group["strong_b"]).sum())
        rows.append(
            {
                "site": site,
                "layer": layer,
                "module_type": module_type,
                "n_planes": len(group),
                "n_strong_a": int(group["strong_a"].sum()),
                "n_strong_b": int(group["strong_b"].sum()),
                "n_strong_both": both,
                "jaccard": both / either if either else math.nan,
                "theta_pearson": float(group["theta_deg_a"].corr(group["theta_deg_b"])),
                "abs_theta_spearman": _spearman(
                    group["theta_deg_a"].abs(), group["theta_deg_b"].abs()
                ),
            }
        )
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    table.insert(0, "adapter", paired["adapter_a"].iloc[0])  # for _sort; dropped below
    table = _sort(table, extra=("site",)).drop(columns="adapter")
    table.insert(0, "adapter_a", paired["adapter_a"].iloc[0])
    table.insert(1, "adapter_b", paired["adapter_b"].iloc[0])
    return table


def overall_agreement(paired: pd.DataFrame) -> dict[str, float]:
    """Whole-adapter agreement from `paired_planes`: jaccard of all strongly rotated planes,
    Pearson correlation of θ and Spearman correlation of |θ| over all shared planes."""
    check_table(paired, ["strong_a", "strong_b", "theta_deg_a", "theta_deg_b"], "agreement")
    either = int((paired["strong_a"] | paired["strong_b"]).sum())
    both = int((paired["strong_a"] & paired["strong_b"]).sum())
    return {
        "n_planes": float(len(paired)),
        "jaccard": both / either if either else math.nan,
        "theta_pearson": float(paired["theta_deg_a"].corr(paired["theta_deg_b"])),
        "abs_theta_spearman": _spearman(paired["theta_deg_a"].abs(), paired["theta_deg_b"].abs()),
    }


STATISTICS = ("jaccard", "theta_pearson", "abs_theta_spearman")


def similarity(
    planes: pd.DataFrame,
    statistic: str = "jaccard",
    *,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    threshold_deg: float | None = None,
) -> pd.DataFrame:
    """Adapters × adapters matrix of one `overall_agreement` statistic, from the concatenated
    plane tables of several adapters (e.g. tasks or variants). The diagonal is 1."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    check_table(planes, ["adapter"], "similarity")
    names = list(pd.unique(planes["adapter"]))
    if len(names) < 2:
        raise ValueError(f"similarity needs the plane tables of at least 2 adapters, got {names}")
    matrix = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    tables = {n: planes[planes["adapter"] == n] for n in names}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            paired = paired_planes(
                tables[first],
                tables[second],
                top_fraction=top_fraction,
                threshold_deg=threshold_deg,
            )
            value = overall_agreement(paired)[statistic]
            matrix.loc[first, second] = matrix.loc[second, first] = value
    matrix.index.name = matrix.columns.name = "adapter"
    return matrix
