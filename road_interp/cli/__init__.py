"""``road-interp``: thin commands over the library. Each command lives in its own module
with ``add_parser(subparsers)`` that registers it and sets ``func``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("fetch", "train", "evaluate", "demo", "export", "compose", "analyze")
"""Modules of `road_interp.cli`, one per command, in --help order. Benchmarks are not
commands: they live in ``experiments/`` (``python -m experiments.bench_batching``, ...)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="road-interp",
        description="RoAd (2D rotary adaptation) adapters: fetch models and data, train, "
        "evaluate, compose, analyze, serve and export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"road_interp.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"road-interp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
