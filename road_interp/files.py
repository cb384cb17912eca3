"""Writing files so that nothing is ever left half-written, and nothing is lost that the
toolkit did not write.

**Whose folder is it.** A writer may replace an existing folder only if it is one of the
toolkit's own (`is_ours`), and only when asked to (``overwrite=True``, ``--overwrite``). A
folder is the toolkit's own when it holds

- an adapter's config (``road_config.json``, or PEFT's ``adapter_config.json``);
- a run's files (``train_config.json``, ``run.json``, ``metrics.jsonl``, ``run.lock``, a
  checkpoint's ``state.json``) or a trained folder's ``trainable.safetensors`` /
  ``head.safetensors``;
- an analysis's ``planes.csv`` (`road-interp analyze`);
- or `MARKER` (``.road_interp``), which `atomic_folder` adds to any folder it writes that
  holds none of the above (an experiment's report), so that folders keep their usual files.

An empty folder holds nothing to lose and is written into freely. Anything else (a folder of
notes, a file) is refused with `OutputError`, overwrite or not: the user moves it away.

**How a folder is replaced.** `atomic_folder` writes a temporary sibling ``.NAME.tmp-*``, then
moves the old folder aside to ``.NAME.old-PID``, renames the new one into place and removes
the old one. Any failure before the last step leaves the old folder (or puts it back); a
process killed between the two renames leaves ``.NAME.old-PID``, which `recover_folder` puts
back, and stale ``.NAME.tmp-*`` folders, which it removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = ".road_interp"
"""The file `atomic_folder` adds to a folder it writes that holds none of `OWN_FILES`."""
OWN_FILES = (
    "road_config.json",
    "adapter_config.json",
    "train_config.json",
    "run.json",
    "metrics.jsonl",
    "run.lock",
    "state.json",
    "trainable.safetensors",
    "head.safetensors",
    "planes.csv",
    MARKER,
)
"""A folder holding any of these was written by road_interp (or is an adapter folder)."""


class OutputError(ValueError):
    """An output path that may not be written: a user's folder or file, or one of ours
    without ``overwrite``. The message says what to do."""


def is_ours(folder: Path) -> bool:
    """Whether ``folder`` is one of the toolkit's own folders (see the module docstring)."""
    return folder.is_dir() and any((folder / name).exists() for name in OWN_FILES)


def check_output(target: Path, *, overwrite: bool = False, ours: bool | None = None) -> None:
    """Raise `OutputError` unless ``target`` may be written as a folder: it does not exist,
    is an empty folder, or is one of ours and ``overwrite`` is set. ``ours``: None decides by
    `is_ours`; True when the caller knows the target is the toolkit's (its cache)."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise OutputError(
            f"{target} is an existing file, not a folder; choose another output path "
            "(nothing was written)"
        )
    if not any(target.iterdir()):
        return
    if not (is_ours(target) if ours is None else ours):
        raise OutputError(
            f"{target} already exists and holds files road_interp did not write; it is never "
            "replaced. Choose another output path, or move that folder away"
        )
    if not overwrite:
        raise OutputError(
            f"{target} already exists (written by road_interp); pass --overwrite (Python: "
            "overwrite=True) to replace it, or choose another output path"
        )


@contextmanager
def atomic_folder(
    target: Path, *, overwrite: bool = False, ours: bool | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename.

    ``target`` is checked first (`check_output`: a user's folder or a file is refused; one of
    ours needs ``overwrite``). On any error the old folder stays as it was.

        with atomic_folder(path, overwrite=True) as tmp:
            (tmp / "a.json").write_text(text)
    """
    target = Path(target)
    check_output(target, overwrite=overwrite, ours=ours)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if not is_ours(tmp):
            (tmp / MARKER).write_text("written by road_interp\n")
        _make_readable(tmp)
        check_output(target, overwrite=overwrite, ours=ours)  # it may have appeared meanwhile
        backup = None
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
        try:
            os.replace(tmp, target)
        except BaseException:
            if backup is not None:
                os.replace(backup, target)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_folder(target: Path) -> None:
    """Undo what a process killed inside `atomic_folder` left behind: put a moved-aside
    ``.NAME.old-*`` back when ``target`` is missing, and remove stale ``.NAME.tmp-*``
    folders and files. Call it only where no other process writes (e.g. under a run's lock)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for stale in [*olds, *target.parent.glob(f".{target.name}.tmp-*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces ``target`` in one
    rename, with the modes a plain ``open`` would give. On an error ``target`` is untouched
    and the temporary file is removed.

        with atomic_file(path) as tmp:
            tmp.write_text(text)
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes private (0600) files
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` in one rename (`atomic_file`): a reader sees the old file
    or the new one, never half of it."""
    with atomic_file(target) as tmp:
        tmp.write_text(text)


# -- verifying what was fetched -----------------------------------------------------------------
MANIFEST = "road_interp_files.json"
"""Written into a fetched folder: every file's size and sha256 at fetch time."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """What `check_record` compares later: ``{"size", "sha256"}``."""
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def check_record(path: Path, record: dict[str, Any], *, checksum: bool = True) -> str | None:
    """None if ``path`` still matches ``record`` (size, and sha256 with ``checksum``), else
    what is wrong, in words."""
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != record.get("size"):
        return f"{path} has {size} bytes, {record.get('size')} when it was fetched (cut short or changed)"
    if checksum and sha256(path) != record.get("sha256"):
        return f"{path} has changed since it was fetched (its sha256 differs)"
    return None


def write_manifest(folder: Path) -> None:
    """Record every file under ``folder`` (size and sha256) in its `MANIFEST`."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    records = {str(p.relative_to(folder)): file_record(p) for p in files}
    with atomic_file(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"files": records}, indent=1, sort_keys=True) + "\n")


def folder_problems(folder: Path, *, checksum: bool = True) -> list[str] | None:
    """What no longer matches ``folder``'s `MANIFEST` (empty: all is well), or None when the
    folder has no readable manifest."""
    try:
        records = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    problems = [check_record(folder / rel, rec, checksum=checksum) for rel, rec in records.items()]
    return [p for p in problems if p is not None]


def safetensors_complete(path: Path) -> bool:
    """Whether a safetensors file is as long as its header says (a cut file is not)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        return path.stat().st_size == 8 + length + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def _make_readable(folder: Path) -> None:
    """mkdtemp (and some writers) create private files; give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def pip_download(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps package==version`` into ``dest`` (from the package index pip is
    configured with; nothing is installed); returns the downloaded file's path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
            tmp,
            f"{package}=={version}",
        ]
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if result.returncode:
            hint = ""
            if "cannot declare direct URL dependencies" in result.stderr:
                hint = "\npip >= 26 refuses this source distribution; run `pip install 'pip<26'` and retry"
            raise RuntimeError(
                f"could not download {package}=={version} with pip:\n{result.stderr[-2000:]}{hint}"
            )
        (downloaded,) = Path(tmp).iterdir()
        final = dest / downloaded.name
        os.replace(downloaded, final)
    return final
