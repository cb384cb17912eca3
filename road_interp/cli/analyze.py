"""``road-interp analyze``: rotation statistics of an adapter folder as CSV tables and PNG figures
(no model is loaded); ``--compare OTHER`` adds how two adapters agree."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..analysis import figures, stats
from ..files import atomic_file, atomic_folder, check_output


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="write rotation statistics (CSV) and figures (PNG) of an adapter folder",
        description="Read a RoAd adapter folder (ours or PEFT's) without loading a model and "
        "write to DIR: planes.csv (one row per site and plane: layer, module type, θ, α), "
        "entries.csv (the stored θ, α of every 2x2 block entry), summaries per layer and "
        "module type, per layer, per module type and overall, and figures (heatmaps of mean |θ| "
        "and mean |α − 1|, an angle histogram, a θ–α scatter). With --compare, also the "
        "per-site agreement of the two adapters (comparison.csv, overlap heatmap, angle scatter). "
        "DIR is written as a whole, atomically; an earlier analysis there is replaced only with "
        "--overwrite.",
    )
    p.add_argument("adapter", help="adapter folder (road_interp or PEFT RoAd)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write into")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it holds an earlier analysis (a folder holding anything else is "
        "never replaced)",
    )
    p.add_argument("--compare", metavar="OTHER", help="a second adapter folder to compare with")
    p.add_argument(
        "--threshold-deg",
        type=float,
        default=stats.DEFAULT_THRESHOLD_DEG,
        help="|θ| in degrees above which a plane counts as rotated in the summaries "
        f"(default {stats.DEFAULT_THRESHOLD_DEG})",
    )
    p.add_argument(
        "--top-fraction",
        type=float,
        default=stats.DEFAULT_TOP_FRACTION,
        help="share of each site's planes (largest |θ|) that count as strongly rotated when "
        f"comparing (default {stats.DEFAULT_TOP_FRACTION})",
    )
    p.add_argument(
        "--layers", type=_int_list, help="only these layers, comma-separated (e.g. 0,1,5)"
    )
    p.add_argument(
        "--modules",
        type=_str_list,
        help="only these module types, comma-separated (e.g. attention.self.query,output.dense)",
    )
    p.set_defaults(func=run)


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer numbers, got {text!r}"
        ) from None


def _str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def write_png(fig: Figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return path


def _planes(path: str, args: argparse.Namespace) -> pd.DataFrame:
    planes = stats.plane_table(path)
    if args.layers is not None or args.modules is not None:
        planes = stats.select(planes, layers=args.layers, module_types=args.modules)
    return planes


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    check_output(out, overwrite=args.overwrite)  # refused before any work
    with atomic_folder(out, overwrite=args.overwrite) as tmp:
        written = _analyze(args, tmp)
    print(f"wrote {written} files to {out}")
    return 0


def _analyze(args: argparse.Namespace, out: Path) -> int:
    """Write every table and figure into ``out``; returns how many."""
    planes = _planes(args.adapter, args)
    other = _planes(args.compare, args) if args.compare else None
    if other is not None and other["adapter"].iloc[0] == planes["adapter"].iloc[0]:
        other["adapter"] = f"{other['adapter'].iloc[0]} (compare)"
    entries = stats.entry_table(args.adapter)
    entries = entries[entries["site"].isin(planes["site"])]
    t = args.threshold_deg
    by_layer_module = stats.summarize(planes, ("layer", "module_type"), threshold_deg=t)
    written = [
        write_csv(planes, out / "planes.csv"),
        write_csv(entries, out / "entries.csv"),
        write_csv(by_layer_module, out / "summary_layer_module.csv"),
        write_csv(stats.summarize(planes, ("layer",), threshold_deg=t), out / "summary_layer.csv"),
        write_csv(
            stats.summarize(planes, ("module_type",), threshold_deg=t), out / "summary_module.csv"
        ),
        write_csv(overall := stats.summarize(planes, (), threshold_deg=t), out / "summary.csv"),
        write_png(figures.layer_module_heatmap(by_layer_module), out / "theta_heatmap.png"),
        write_png(
            figures.layer_module_heatmap(by_layer_module, "mean_abs_alpha_dev"),
            out / "alpha_heatmap.png",
        ),
        write_png(figures.angle_histogram(planes), out / "angle_histogram.png"),
        write_png(figures.theta_alpha_scatter(planes), out / "theta_alpha.png"),
    ]
    row = overall.iloc[0]
    print(
        f"{row['adapter']}: {planes['variant'].iloc[0]}, group_size "
        f"{planes['group_size'].iloc[0]}, {planes['site'].nunique()} sites, "
        f"{int(row['n_planes'])} planes; mean |θ| {row['mean_abs_theta_deg']:.3g}°, "
        f"max |θ| {row['max_abs_theta_deg']:.3g}°, {100 * row['share_rotated']:.1f}% of planes "
        f"beyond {t:g}°, mean |α − 1| {row['mean_abs_alpha_dev']:.3g}"
    )
    top = by_layer_module.sort_values("mean_abs_theta_deg", ascending=False).head(3)
    print(
        "most rotated: "
        + "; ".join(
            f"layer {r.layer} {r.module_type} ({r.mean_abs_theta_deg:.3g}°)"
            for r in top.itertuples()
        )
    )
    if other is not None:
        comparison = stats.compare(planes, other, top_fraction=args.top_fraction)
        paired = stats.paired_planes(planes, other, top_fraction=args.top_fraction)
        agreement = stats.overall_agreement(paired)
        written += [
            write_csv(comparison, out / "comparison.csv"),
            write_png(figures.layer_module_heatmap(comparison, "jaccard"), out / "overlap.png"),
            write_png(figures.angle_scatter(paired), out / "angle_scatter.png"),
        ]
        print(
            f"vs {other['adapter'].iloc[0]}: {int(agreement['n_planes'])} shared planes; "
            f"Jaccard of the top {100 * args.top_fraction:g}% planes {agreement['jaccard']:.3f}, "
            f"Pearson r of θ {agreement['theta_pearson']:.3f}, Spearman ρ of |θ| "
            f"{agreement['abs_theta_spearman']:.3f}"
        )
    return len(written)
