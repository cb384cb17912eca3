"""``road-interp``: thin commands over the library. Each command lives in its own module
with ``add_parser(subparsers)`` that registers it and sets ``func``.

Errors end in one line on stderr, ``road-interp COMMAND: error: WHAT; WHAT TO DO``, and an
exit code for their kind: 2 for bad usage (argparse's flags, and `UsageError`: settings that
cannot make a run), 1 for anything that went wrong while working (a corrupt file, a locked
run folder, a diverged run), 130 for Ctrl-C (a training run first writes its checkpoint).
``--verbose`` adds the traceback.

**Output.** Results go to stdout; progress and reports (a training run's line per evaluation,
fetch's repairs) go through the library's `logging` logger ``road_interp`` to stderr, at INFO
by default. ``--quiet`` shows only warnings and errors, ``--verbose`` adds DEBUG messages and
tracebacks. Both may come before or after the command."""

from __future__ import annotations

import argparse
import importlib
import logging
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
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"road-interp {__version__}")
    _add_verbosity(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"road_interp.cli.{name.replace('-', '_')}").add_parser(sub)
    for command in sub.choices.values():  # `road-interp train ... --verbose` works too
        _add_verbosity(command, default=argparse.SUPPRESS)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default, help=VERBOSE_HELP)
    group.add_argument("-q", "--quiet", action="store_true", default=default, help=QUIET_HELP)


VERBOSE_HELP = "also print DEBUG messages, and on an error the traceback"
QUIET_HELP = "print only results, warnings and errors (no per-evaluation lines, no reports)"
EXPECTED = (ValueError, OSError, KeyError, TypeError, RuntimeError, FloatingPointError)
"""Errors the library raises with a message meant for the user; others are reported as
unexpected (a bug to report)."""


class UsageError(ValueError):
    """Settings or arguments that cannot make a run (exit code 2, as argparse's own)."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    configure_logging(
        logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    )
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


class _TqdmHandler(logging.StreamHandler):
    """Writes each record with ``tqdm.write``, so it does not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging's own handlers: never raise from logging
            self.handleError(record)


def configure_logging(level: int) -> None:
    """Send the ``road_interp`` logger's records at ``level`` and above to stderr (one
    handler, replaced on a second call)."""
    logger = logging.getLogger("road_interp")
    for handler in [h for h in logger.handlers if isinstance(h, _TqdmHandler)]:
        logger.removeHandler(handler)
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


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
