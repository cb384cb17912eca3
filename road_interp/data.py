"""Real task data, fetched once into the cache and then read offline.

Two sources (DESIGN.md §3, OFFLINE_ASSETS.md §2):

- **BIG-bench**: the PyPI source distribution ``bigbench==1.0.0`` (358 MB). It is downloaded
  once into ``$cache/downloads/`` (checked against its published sha256) and never installed.
  Only the task files the registry needs are streamed out of the tarball (``tarfile`` in
  ``"r|gz"`` mode: one pass, nothing else unpacked) into
  ``$cache/data/bigbench/<task path>/task.json``.
- **reasoning-gym** (the ``[data]`` extra): seeded procedural generators. ``fetch`` generates a
  fixed pool per skill into ``$cache/data/reasoning_gym/<skill>.json``, so loading needs neither
  the package nor any randomness, and a cache stays the same data when the package changes.

The sdist is downloaded with ``pip download --no-deps`` from the index pip is configured with,
and its sha256 is pinned here. pip >= 26 refuses it (bigbench declares a ``file://`` dependency
on bleurt, which pip 26 rejects while preparing metadata), so the set-up pins ``pip<26``.

Every file is verified (valid JSON with a non-empty ``examples`` list, each example with an
``input`` and its targets) and written under a temporary name, then renamed, so an interrupted
fetch leaves nothing half-written. Its size and sha256 are recorded then, in
``$cache/data/manifest.json``: a file cut short later, even at an example boundary (still
valid JSON), no longer matches and is refetched by ``road-interp fetch``; loading checks the
size. A file cached before sizes were recorded is recorded the first time it verifies. A
missing or corrupt file raises :class:`DataError` telling the user to run ``road-interp fetch``.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .files import atomic_file, check_record, file_record, pip_download, sha256
from .models import cache_dir

BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
BIGBENCH_SIZE = 358_249_635
BIGBENCH_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"

FETCH_HINT = "run `road-interp fetch` (or road_interp.data.fetch_data()) to (re)build it"


class DataError(FileNotFoundError):
    """A data file is missing, partial or corrupt; the message says how to repair it."""


@dataclass(frozen=True)
class GymSkill:
    """A reasoning-gym dataset turned into a fixed pool of examples.

    ``config`` holds the generator's settings (the ``*Config`` fields of reasoning-gym) besides
    ``seed`` and ``size``; the pool is ``size`` examples generated with ``seed``."""

    name: str
    dataset: str
    config: tuple[tuple[str, Any], ...]
    size: int = 3000
    seed: int = 1234


def data_dir() -> Path:
    return cache_dir() / "data"


def bigbench_file(task_path: str) -> Path:
    """``multiemo/all_sentence_en`` -> ``$cache/data/bigbench/multiemo/all_sentence_en/task.json``."""
    return data_dir() / "bigbench" / task_path / "task.json"


def gym_file(skill: str) -> Path:
    return data_dir() / "reasoning_gym" / f"{skill}.json"


# ----------------------------------------------------------------------------- checking


def _check_task_json(payload: bytes, where: str) -> dict:
    """Parse a task file and check its shape; raise :class:`DataError` naming ``where``."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{where} is corrupt or partial ({err}); {FETCH_HINT}") from err
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise DataError(f"{where} has no examples; {FETCH_HINT}")
    if not all(isinstance(e, dict) and "input" in e for e in examples):
        raise DataError(f"{where} has examples without an 'input' field; {FETCH_HINT}")
    if not all(isinstance(e.get("target_scores"), dict) or "target" in e for e in examples):
        raise DataError(
            f"{where} has examples without their targets ('target_scores' or 'target'); "
            f"{FETCH_HINT}"
        )
    return data


# ----------------------------------------------------------------------------- recorded files


def manifest_file() -> Path:
    return data_dir() / "manifest.json"


def _records() -> dict[str, dict[str, Any]]:
    try:
        records = json.loads(manifest_file().read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _record(path: Path) -> None:
    """Remember ``path``'s size and sha256 as fetched (in ``manifest.json``)."""
    records = _records()
    records[str(path.relative_to(data_dir()))] = file_record(path)
    with atomic_file(manifest_file()) as tmp:
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


def _changed(path: Path, *, checksum: bool) -> str | None:
    """What differs from the recorded fetch of ``path`` (None: it matches, or there is no
    record yet)."""
    record = _records().get(str(path.relative_to(data_dir())))
    return None if record is None else check_record(path, record, checksum=checksum)


def _verified(path: Path) -> bool:
    """A cached file parses as a task and matches its record; an unrecorded one that parses
    is recorded now."""
    try:
        _check_task_json(path.read_bytes(), str(path))
    except (OSError, DataError):
        return False
    if str(path.relative_to(data_dir())) not in _records():
        _record(path)
        return True
    return _changed(path, checksum=True) is None


def _load_task(path: Path) -> dict:
    """The parsed task file at ``path``, checked against its recorded size."""
    problem = _changed(path, checksum=False)
    if problem is not None:
        raise DataError(f"{problem}; {FETCH_HINT}")
    return _check_task_json(path.read_bytes(), str(path))


# ----------------------------------------------------------------------------- BIG-bench


def bigbench_sdist(download: bool = True) -> Path:
    """The cached ``bigbench-1.0.0.tar.gz``, downloaded (and sha256-checked) if missing.

    A file with the wrong checksum (a partial or corrupt download) is replaced."""
    path = cache_dir() / "downloads" / BIGBENCH_SDIST
    if path.exists() and path.stat().st_size == BIGBENCH_SIZE and sha256(path) == BIGBENCH_SHA256:
        return path
    if not download:
        raise DataError(f"the BIG-bench sdist is not in the cache ({path}); {FETCH_HINT}")
    try:
        downloaded = pip_download("bigbench", "1.0.0", path.parent)
    except RuntimeError as err:
        raise DataError(str(err)) from err
    if (got := sha256(downloaded)) != BIGBENCH_SHA256:
        downloaded.unlink()
        raise DataError(f"downloaded {BIGBENCH_SDIST} has sha256 {got}, not {BIGBENCH_SHA256}")
    os.replace(downloaded, path)
    return path


def bigbench_cached(task_path: str) -> bool:
    """True when the task file exists, parses as a task with examples and matches the size
    and sha256 recorded when it was fetched."""
    path = bigbench_file(task_path)
    return path.exists() and _verified(path)


def extract_bigbench(task_paths: Iterable[str], sdist: Path) -> list[Path]:
    """Stream the tarball once and write the ``task.json`` of each of ``task_paths``.

    Raises :class:`DataError` if a task is not in the tarball or its file does not verify."""
    wanted = {f"{BIGBENCH_PREFIX}{t}/task.json": t for t in task_paths}
    written: list[Path] = []
    try:
        _stream_members(sdist, wanted, written)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(
            f"{sdist} is corrupt or truncated ({err}); delete it and {FETCH_HINT}"
        ) from err
    if wanted:
        raise DataError(f"{sdist.name} has no task file for {sorted(wanted.values())}")
    return written


def _stream_members(sdist: Path, wanted: dict[str, str], written: list[Path]) -> None:
    """One pass over the tarball: verify and write each wanted member, removing it from
    ``wanted``; stop as soon as all are written."""
    with (
        tarfile.open(sdist, "r|gz") as tar,
        tqdm(total=len(wanted), desc="extract BIG-bench tasks", unit="file") as bar,
    ):
        for member in tar:
            task = wanted.pop(member.name, None)
            if task is None:
                continue
            handle = tar.extractfile(member)
            if handle is None:
                raise DataError(f"{member.name} in {sdist.name} is not a regular file")
            payload = handle.read()
            _check_task_json(payload, f"{member.name} in {sdist.name}")
            with atomic_file(bigbench_file(task)) as tmp:
                tmp.write_bytes(payload)
            _record(bigbench_file(task))
            written.append(bigbench_file(task))
            bar.update(1)
            if not wanted:
                break


def fetch_bigbench(task_paths: Iterable[str], force: bool = False) -> list[Path]:
    """Make sure the given BIG-bench task files are cached (repairing corrupt ones)."""
    paths = sorted(set(task_paths))
    missing = [t for t in paths if force or not bigbench_cached(t)]
    if missing:
        extract_bigbench(missing, bigbench_sdist())
    return [bigbench_file(t) for t in paths]


def load_bigbench(task_path: str) -> dict:
    """The parsed ``task.json`` of a cached BIG-bench task; :class:`DataError` if unusable."""
    path = bigbench_file(task_path)
    if not path.exists():
        raise DataError(f"BIG-bench task {task_path!r} is not in the cache ({path}); {FETCH_HINT}")
    return _load_task(path)


# ----------------------------------------------------------------------------- reasoning-gym


def generate_gym(skill: GymSkill) -> dict:
    """Generate a skill's pool with reasoning-gym: ``{"examples": [{"input", "target"}...]}``."""
    try:
        import reasoning_gym
    except ImportError as err:
        raise DataError(
            "reasoning-gym is not installed; `pip install 'road-interp[data]'` "
            "(or `pip install reasoning-gym`) and run `road-interp fetch` again, or skip the "
            "reasoning-gym tasks with `road-interp fetch --no-gym`"
        ) from err
    dataset = reasoning_gym.create_dataset(
        skill.dataset, seed=skill.seed, size=skill.size, **dict(skill.config)
    )
    examples = [
        {"input": item["question"], "target": str(item["answer"])}
        for item in tqdm(dataset, total=skill.size, desc=f"generate {skill.name}", leave=False)
    ]
    return {
        "name": skill.name,
        "source": f"reasoning-gym {version('reasoning-gym')}: {skill.dataset}",
        "dataset": skill.dataset,
        "config": _gym_config(skill),
        "examples": examples,
    }


def fetch_gym(skills: Iterable[GymSkill], force: bool = False) -> list[Path]:
    """Generate and cache the pools of ``skills`` that are missing, corrupt or were made with
    other settings."""
    paths = []
    for skill in skills:
        path = gym_file(skill.name)
        if force or not _gym_ok(path, skill):
            payload = json.dumps(generate_gym(skill), ensure_ascii=False).encode()
            with atomic_file(path) as tmp:
                tmp.write_bytes(payload)
            _record(path)
        paths.append(path)
    return paths


def _gym_config(skill: GymSkill) -> dict:
    return dict(skill.config, seed=skill.seed, size=skill.size)


def _gym_ok(path: Path, skill: GymSkill) -> bool:
    """The cached pool is valid and was generated with the skill's current settings."""
    try:
        pool = _check_task_json(path.read_bytes(), str(path))
    except (OSError, DataError):
        return False
    same = pool.get("config") == _gym_config(skill) and pool.get("dataset") == skill.dataset
    return same and _verified(path)


def load_gym(skill: str) -> dict:
    path = gym_file(skill)
    if not path.exists():
        raise DataError(f"reasoning-gym skill {skill!r} is not in the cache ({path}); {FETCH_HINT}")
    return _load_task(path)
