"""Writing files so that nothing is ever left half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _make_readable(tmp)
        backup = None
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
        os.replace(tmp, target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
