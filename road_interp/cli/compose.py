"""``road-interp compose``: combine adapter folders into one (union, product on overlaps,
scaling, inversion, restriction to subspaces)."""

from __future__ import annotations

import argparse

from ..compose import OverlapError, compose_folders


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compose",
        help="combine RoAd adapters: union of disjoint planes, products, scaling, inversion",
        description="Read RoAd adapter folders (ours or PEFT's), optionally restrict each to a "
        "subspace, scale and invert it (in that order), and write their union: every plane "
        "takes the parameters of the one adapter that moves it. Planes moved by several "
        "adapters are an error (the overlap report is printed) unless --on-overlap product. "
        "Example, remove skill B from a joint adapter AB: "
        "road-interp compose AB B --invert 2 --on-overlap product -o A. With --ties, adapters "
        "trained on the same planes are TIES-merged instead.",
    )
    p.add_argument("adapters", nargs="+", help="adapter folders, in the order they act")
    p.add_argument("-o", "--output", required=True, help="folder to write (atomically)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it is an adapter folder already (a folder holding anything "
        "else is never replaced)",
    )
    p.add_argument(
        "--on-overlap",
        choices=["error", "product"],
        default="error",
        help="planes moved by several adapters: error (default) or their block product",
    )
    p.add_argument(
        "--scale",
        type=float,
        nargs="+",
        metavar="LAMBDA",
        help="scale each input (one value, or one per input): θ -> λθ, α -> α^λ; for RoAd1 "
        "this is the λ-th power of the rotation (0 = identity, 1 = unchanged, -1 = inverse)",
    )
    p.add_argument(
        "--invert",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="invert these inputs (1-based positions) before combining",
    )
    p.add_argument(
        "--restrict",
        nargs="+",
        metavar="SPEC",
        help="restrict each input (one spec, or one per input) to a subspace: all, half:K, "
        "part:K/N, range:START:STOP, random:FRACTION:SEED or groups:I,J,...",
    )
    p.add_argument(
        "--ties",
        type=float,
        metavar="DENSITY",
        help="TIES-merge the inputs instead of their union (for adapters on the same planes): "
        "per adapter keep the DENSITY share of largest |θ| and |log α|, elect a sign per "
        "entry, average the entries that agree with it (e.g. 0.2)",
    )
    extra = p.add_mutually_exclusive_group()
    extra.add_argument(
        "--keep-extra",
        type=int,
        metavar="N",
        help="where inputs carry different extra weights (each its own classifier head), keep "
        "input N's (1-based); without this or --drop-extra that is an error",
    )
    extra.add_argument(
        "--drop-extra",
        action="store_true",
        help="write no extra weights (heads): give each task its head when evaluating "
        "(road-interp evaluate --head RUN/best)",
    )
    p.add_argument(
        "--format",
        choices=["road", "peft"],
        default="road",
        help="output format: road (default) or peft (PEFT's RoAd format)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        folder, report = compose_folders(
            args.adapters,
            args.output,
            on_overlap=args.on_overlap,
            scales=args.scale,
            inverted=[i - 1 for i in args.invert],
            restrictions=args.restrict,
            peft=args.format == "peft",
            overwrite=args.overwrite,
            keep_extra=args.keep_extra - 1 if args.keep_extra is not None else None,
            drop_extra=args.drop_extra,
            ties_density=args.ties,
        )
    except OverlapError as err:
        print(err.report.to_string(index=False))
        raise
    if len(report):
        summary = report.groupby(["first", "second"])[["planes_first", "planes_second", "shared"]]
        print(summary.sum().to_string())
    print(folder)
    return 0
