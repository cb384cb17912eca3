"""A results store of resumable cells: an experiment longer than a sitting accumulates.

One JSON line per finished cell in ``store.jsonl`` (appended and flushed to disk when the
cell is done), each ``{"key": ..., ...}``. A run skips every cell whose key is in the store,
so running the same command again continues where the last sitting stopped; a cell killed
half-way left no line and runs again. `run_cells` stops starting new cells once a time
budget is spent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from road_interp.files import atomic_file


class ResultStore:
    """The finished cells of one experiment folder, by key."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "store.jsonl"
        self.records: dict[str, dict[str, Any]] = {}
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # cut by a kill: that cell runs again
                    with atomic_file(self.path) as tmp:
                        tmp.write_text("".join(x + "\n" for x in lines[:-1]))
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
        """Append one finished cell (flushed and synced before returning)."""
        record = {"key": key, **record}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = record


def run_cells(
    cells: Iterable[tuple[str, Callable[[], dict[str, Any]]]],
    store: ResultStore,
    budget_minutes: float | None = None,
    log: Callable[[str], None] = print,
) -> bool:
    """Run each (key, compute) cell not yet in ``store`` and store what it returns.

    Returns True when every cell is finished, False when the budget stopped the run early
    (run again to continue)."""
    started = time.perf_counter()
    for key, compute in cells:
        if key in store:
            continue
        spent = (time.perf_counter() - started) / 60
        if budget_minutes is not None and spent >= budget_minutes:
            log(f"budget of {budget_minutes:g} min spent; run again to continue at {key}")
            return False
        t0 = time.perf_counter()
        record = compute()
        store.put(key, {**record, "seconds": round(time.perf_counter() - t0, 1)})
        log(f"done {key} ({time.perf_counter() - t0:.0f} s)")
    return True
