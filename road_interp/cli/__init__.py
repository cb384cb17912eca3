"""``road-interp``: thin commands over the library. Each command lives in its own module
with ``add_parser(subparsers)`` that registers it and sets ``func``.

Errors end in one line on stderr, ``road-interp COMMAND: error: WHAT; WHAT TO DO``, and an
exit code for their kind: 2 for bad usage (argparse's flags, and `UsageError`: settings that
cannot make a run), 1 for anything that went wrong while working (a corrupt file, a locked
run folder, a diverged run), 130 for Ctrl-C (a training run first writes its checkpoint).
``--verbose`` adds the traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

COMMANDS = ("fetch", "train", "evaluate", "demo", "export", "compose", "analyze")
"""Modules of `road_interp.cli`, one per command, in --help order. Benchmarks are not
commands: they live in ``experiments/`` (``python -m experiments.bench_batching``, ...)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="road-interp",
        description="RoAd (2D rotary adaptation) adapters: fetch models and data, train, "
        "evaluate, compose, analyze, serve and export.",
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"road_interp.cli.{name.replace('-', '_')}").add_parser(sub)
    for command in sub.choices.values():  # `road-interp train ... --verbose` works too
        command.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


VERBOSE_HELP = "on an error, print the traceback as well"
EXPECTED = (ValueError, OSError, KeyError, TypeError, RuntimeError, FloatingPointError)
"""Errors the library raises with a message meant for the user; others are reported as
unexpected (a bug to report)."""


class UsageError(ValueError):
    """Settings or arguments that cannot make a run (exit code 2, as argparse's own)."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    prefix = f"road-interp {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        if args.verbose:
            traceback.print_exc()
        print(f"{prefix}: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        return 130
    except Exception as err:
        if args.verbose:
            traceback.print_exc()
        print(f"{prefix}: error: {one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


def one_line(err: BaseException) -> str:
    """The first line of an error's message (a KeyError's without its quotes), and a hint
    where more is to be seen."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    first, _, rest = text.strip().partition("\n")
    if not isinstance(err, EXPECTED):
        return f"unexpected {type(err).__name__}: {first}; rerun with --verbose and report it"
    return first + (" (more with --verbose)" if rest.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
