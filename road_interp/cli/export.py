"""``road-interp export``: convert an adapter folder between our format and PEFT's RoAd format."""

from __future__ import annotations

import argparse

from ..io import read_adapter, write_adapter, write_peft


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="convert an adapter folder to PEFT's RoAd format or back",
        description="Read a RoAd adapter folder (ours or PEFT's) and write it in the chosen "
        "format. The parameter layouts are the same, so this copies tensors.",
    )
    p.add_argument("adapter", help="adapter folder to read (road_interp or PEFT RoAd)")
    p.add_argument("-o", "--output", required=True, help="folder to write")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it is an adapter folder already (a folder holding anything "
        "else is never replaced)",
    )
    p.add_argument(
        "--format",
        choices=["peft", "road"],
        default="peft",
        help="peft: adapter_config.json + adapter_model.safetensors (default); "
        "road: road_config.json + road_adapter.safetensors",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    adapter = read_adapter(args.adapter)
    write = write_peft if args.format == "peft" else write_adapter
    print(write(adapter, args.output, overwrite=args.overwrite))
    return 0
