"""A results store of resumable cells: an experiment longer than a sitting accumulates.

One JSON line per finished cell in ``store.jsonl`` (appended and flushed to disk when the
cell is done), each ``{"key": ..., ...}``. A run skips every cell whose key is in the store,
so running the same command again continues where the last sitting stopped; a cell killed
half-way left no line and runs again. `run_cells` stops starting new cells once a time
budget is spent. Processes may share one store (each appends under a lock): ``--only seed1``
in one shell and ``--only seed2`` in another run two seeds side by side. A folder with one
setting changed can start from another's cells that do not read it (`reuse_cells`,
``--reuse``), so trying a setting reruns only the cells it touches.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from road_interp.files import atomic_file, write_text_atomic

from .. import machine

T = TypeVar("T")


class ResultStore:
    """The finished cells of one experiment folder, by key."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "store.jsonl"
        self.records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:  # a read-only results folder reads too
            fcntl.flock(f, fcntl.LOCK_EX)  # not half-way through another process's append
            lines = f.read().splitlines(keepends=True)
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines):  # cut by a kill: that cell runs again
                        os.truncate(self.path, sum(map(len, lines[:-1])))
                        continue
                    raise ValueError(
                        f"{self.path}:{number} is not JSON; the store is corrupt"
                    ) from None
                self.records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.records[key]

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Append one finished cell (flushed and synced before returning; under a lock, as
        another process may be appending to the same store)."""
        record = {"key": key, **record}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = record


def run_cells(
    cells: Iterable[tuple[str, Callable[[], dict[str, Any]]]],
    store: ResultStore,
    budget_minutes: float | None = None,
    log: Callable[[str], None] = print,
    only: Sequence[str] = (),
) -> bool:
    """Run each (key, compute) cell not yet in ``store`` and store what it returns; with
    ``only``, just the cells whose key starts with one of those prefixes (``"seed1"``).

    Returns True when every cell is finished, False when the budget stopped the run early
    (run again to continue) or a cell left to another process is not in the store yet."""
    started = time.perf_counter()
    others_done = True
    for key, compute in cells:
        if key in store:
            continue
        if only and not key.startswith(tuple(only)):
            others_done = False
            continue
        spent = (time.perf_counter() - started) / 60
        if budget_minutes is not None and spent >= budget_minutes:
            log(f"budget of {budget_minutes:g} min spent; run again to continue at {key}")
            return False
        t0 = time.perf_counter()
        record = compute()
        store.put(key, {**record, "seconds": round(time.perf_counter() - t0, 1)})
        log(f"done {key} ({time.perf_counter() - t0:.0f} s)")
    return others_done


EXTENDABLE = ("methods", "pairs")
"""Settings a later run may add to: cells are keyed by them, so the finished ones stay valid."""


def open_store(out: str | Path, cfg: Any) -> ResultStore:
    """The store of the experiment folder ``out`` for settings ``cfg`` (a dataclass): refuses
    a folder that holds other settings (but for `EXTENDABLE` ones that ``cfg`` adds to),
    records the settings and the machine."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "config.json"
    wanted = json.loads(json.dumps(asdict(cfg)))
    if settings.exists() and not _continues(_with_defaults(settings, cfg), wanted):
        raise ValueError(
            f"{folder} holds a benchmark with other settings ({settings}); continue it with "
            f"the same preset and settings (adding to {', '.join(EXTENDABLE)} is allowed), or "
            "choose another output folder"
        )
    write_text_atomic(settings, json.dumps(wanted, indent=2) + "\n")
    write_text_atomic(folder / "machine.json", json.dumps(machine.describe(), indent=2) + "\n")
    return ResultStore(folder)


def reuse_cells(source: str | Path, out: str | Path, cfg: Any) -> list[str]:
    """Start the folder ``out`` (settings ``cfg``) from the finished cells of ``source`` that
    do not read the settings the two folders differ in; the keys copied.

    ``cfg``'s class may name, in ``READ_BY``, settings that only some cells read, each with
    the word in those cells' keys and folder names (``{"buffer_examples": "buffered"}``); a
    difference in any other setting (but for `EXTENDABLE` ones) is refused, as every cell may
    read it. Each copied record is marked ``reused_from``; the files under ``cells/`` that go
    with it are copied first (each in one rename), so a run killed half-way copies again."""
    source = Path(source)
    settings = source / "config.json"
    if not settings.exists():
        raise ValueError(f"{source} holds no benchmark (no config.json) to reuse cells from")
    stored, wanted = _with_defaults(settings, cfg), json.loads(json.dumps(asdict(cfg)))
    changed = {k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k)}
    read_by: Mapping[str, str] = getattr(type(cfg), "READ_BY", {})
    unsafe = sorted(changed - set(EXTENDABLE) - set(read_by))
    if unsafe:
        raise ValueError(
            f"{source} differs in {', '.join(unsafe)}, which every cell may read: no cell can "
            f"be reused (only {', '.join(sorted(read_by)) or 'no setting'} may differ)"
        )
    words = tuple(read_by[k] for k in changed if k in read_by)
    target = open_store(out, cfg).folder

    def unaffected(name: str) -> bool:
        return not any(word in name for word in words)

    done, records = ResultStore(target), ResultStore(source).records
    keys = [k for k in records if unaffected(k) and k not in done]
    for path in sorted((source / "cells").rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and unaffected(str(relative)) and not (target / relative).exists():
            with atomic_file(target / relative) as tmp:
                shutil.copyfile(path, tmp)
    for key in keys:
        done.put(key, {**records[key], "reused_from": str(source)})
    return keys


def _with_defaults(settings: Path, cfg: Any) -> dict[str, Any]:
    """The settings stored in ``settings``, with those added to ``cfg``'s class since at their
    defaults (a folder started before a setting existed ran with its default)."""
    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
    return json.loads(json.dumps(defaults)) | json.loads(settings.read_text())


def _continues(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether settings ``wanted`` continue a folder of settings ``stored``."""

    def fixed(settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k not in EXTENDABLE}

    def members(settings: dict[str, Any], key: str) -> set[Any]:  # a pair is a JSON list
        return {tuple(v) if isinstance(v, list) else v for v in settings.get(key) or ()}

    grown = all(members(stored, k) <= members(wanted, k) for k in EXTENDABLE)
    return fixed(stored) == fixed(wanted) and grown


def run_and_reload(
    cfg: Any,
    out: str | Path,
    cells: Callable[[ResultStore], Iterable[tuple[str, Callable[[], dict[str, Any]]]]],
    budget_minutes: float | None = None,
    only: Sequence[str] = (),
) -> tuple[ResultStore, bool, float]:
    """Run (or continue) a benchmark with settings ``cfg`` into ``out``: its ``cells(store)``
    (`run_cells`, with ``budget_minutes`` and ``only``); then (the store read again, with the
    cells other processes added meanwhile, whether every cell is finished, seconds spent)."""
    store = open_store(out, cfg)
    started = time.perf_counter()
    finished = run_cells(cells(store), store, budget_minutes, only=only)
    return ResultStore(store.folder), finished, time.perf_counter() - started


def preset_config(
    config: type[T], presets: Mapping[str, Mapping[str, Any]], preset: str, **changes: Any
) -> T:
    """A benchmark's settings: the ``config`` dataclass's defaults, preset ``preset`` over
    them, then ``changes``."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    return replace(config(), **{**presets[preset], **changes})


def benchmark_main(
    argv: list[str] | None,
    prog: str,
    description: str,
    presets: Mapping[str, Any],
    config: type,
    make_config: Callable[..., Any],
    run: Callable[..., dict[str, Any]],
) -> int:
    """A benchmark's ``main``: `parse_cli`, the cells of ``--reuse`` copied (`reuse_cells`),
    ``run(make_config(preset, **changes), out, budget, only)``, its verdicts printed."""
    preset, out, budget, changes, only, reuse = parse_cli(argv, prog, description, presets, config)
    cfg = make_config(preset, **changes)
    if reuse:
        print(f"reused {len(reuse_cells(reuse, out, cfg))} finished cells of {reuse}")
    summary = run(cfg, out, budget, only)
    print(json.dumps(summary["verdicts"], indent=2))
    return 0


def parse_cli(
    argv: list[str] | None, prog: str, description: str, presets: Iterable[str], config: type
) -> tuple[str, str, float | None, dict[str, Any], list[str], str | None]:
    """A benchmark's command line: (preset, output folder, budget minutes, setting changes
    from ``--set KEY=JSON`` with lists read as tuples, the key prefixes of ``--only``, the
    folder of ``--reuse``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--preset", default="quick", choices=sorted(presets))
    parser.add_argument("-o", "--output", required=True, help="results folder (accumulates)")
    parser.add_argument(
        "--budget-minutes", type=float, default=None, help="start no new cell after this long"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=JSON",
        help=f"override settings, e.g. seeds=[0,1] (fields: {[f.name for f in fields(config)]})",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        metavar="PREFIX",
        help="run only the cells whose key starts with one of these, e.g. seed1 (several "
        "processes can share one output folder, each with its own seeds; the report counts "
        "every finished cell)",
    )
    parser.add_argument(
        "--reuse",
        metavar="FOLDER",
        help="start from FOLDER's finished cells that do not read the settings changed, e.g. "
        "another buffer_examples (the others are refused: every cell reads them)",
    )
    args = parser.parse_args(argv)
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = _tuples(json.loads(value))
    return args.preset, args.output, args.budget_minutes, changes, args.only, args.reuse


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
