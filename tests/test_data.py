"""The data cache: verified files, clear errors, repairs, nothing half-written.

Uses a temporary ROAD_INTERP_CACHE. The tarballs here are built from the real cached BIG-bench
task files (so `road-interp fetch` must have run), the reasoning-gym pool is really generated.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from road_interp import data
from road_interp.data import DataError, GymSkill
from road_interp.files import atomic_file

REAL_CACHE = data.cache_dir()
SMALL = "strategyqa"  # 0.85 MB
OTHER = "epistemic_reasoning"  # 0.7 MB


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ROAD_INTERP_CACHE", str(tmp_path))
    return tmp_path


def real_task_bytes(task: str) -> bytes:
    path = REAL_CACHE / "data" / "bigbench" / task / "task.json"
    if not path.exists():
        pytest.skip(f"{path} missing: run `road-interp fetch` first")
    return path.read_bytes()


def make_sdist(path: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz laid out like the bigbench sdist, holding ``members`` (task path -> bytes)."""
    with tarfile.open(path, "w:gz") as tar:
        for task, payload in members.items():
            info = tarfile.TarInfo(f"{data.BIGBENCH_PREFIX}{task}/task.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_atomic_file_replaces_in_one_rename_with_umask_modes(tmp_path):
    target = tmp_path / "sub" / "out.json"
    umask = os.umask(0o022)
    try:
        with atomic_file(target) as tmp:
            assert tmp.parent == target.parent and not target.exists()
            tmp.write_text("one")
    finally:
        os.umask(umask)
    assert target.read_text() == "one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "one"
    assert not leftovers(tmp_path)


def test_missing_task_says_run_fetch(cache):
    with pytest.raises(DataError, match="road-interp fetch"):
        data.load_bigbench(SMALL)
    with pytest.raises(DataError, match="road-interp fetch"):
        data.load_gym("gym_chain_sum")


def test_missing_sdist_says_run_fetch(cache):
    with pytest.raises(DataError, match="road-interp fetch"):
        data.bigbench_sdist(download=False)


def test_partial_sdist_is_not_accepted(cache):
    partial = cache / "downloads" / data.BIGBENCH_SDIST
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x1f\x8b" + b"\0" * 1000)
    with pytest.raises(DataError, match="not in the cache"):
        data.bigbench_sdist(download=False)


@pytest.mark.parametrize(
    "payload, problem",
    [
        (None, "corrupt or partial"),  # truncated real file
        (b'{"examples": []}', "no examples"),
        (b'{"examples": [{"target": "x"}]}', "without an 'input'"),
        (b"\xff\xfe not json", "corrupt or partial"),
    ],
)
def test_corrupt_task_file_is_reported_and_repaired(cache, payload, problem):
    real = real_task_bytes(SMALL)
    target = data.bigbench_file(SMALL)
    target.parent.mkdir(parents=True)
    target.write_bytes(real[: len(real) // 2] if payload is None else payload)
    with pytest.raises(DataError, match=problem) as err:
        data.load_bigbench(SMALL)
    assert "road-interp fetch" in str(err.value)
    assert not data.bigbench_cached(SMALL)

    sdist = make_sdist(cache / "bb.tar.gz", {OTHER: real_task_bytes(OTHER), SMALL: real})
    data.extract_bigbench([SMALL], sdist)
    assert target.read_bytes() == real
    assert len(data.load_bigbench(SMALL)["examples"]) == 2290
    assert not leftovers(cache)


def test_extract_streams_only_the_wanted_members(cache):
    sdist = make_sdist(
        cache / "bb.tar.gz", {OTHER: real_task_bytes(OTHER), SMALL: real_task_bytes(SMALL)}
    )
    written = data.extract_bigbench([SMALL], sdist)
    assert written == [data.bigbench_file(SMALL)]
    assert not data.bigbench_file(OTHER).exists()


def test_bad_member_writes_nothing_for_it(cache):
    """A member that does not verify raises and leaves no file (and no temp file) behind;
    members written before it are complete."""
    sdist = make_sdist(
        cache / "bb.tar.gz", {OTHER: real_task_bytes(OTHER), SMALL: b'{"examples": [{"inp'}
    )
    with pytest.raises(DataError, match="corrupt or partial"):
        data.extract_bigbench([OTHER, SMALL], sdist)
    assert not data.bigbench_file(SMALL).exists()
    assert data.bigbench_cached(OTHER)
    assert not leftovers(cache)


def test_truncated_tarball_is_a_clear_error(cache):
    full = make_sdist(cache / "full.tar.gz", {SMALL: real_task_bytes(SMALL)})
    cut = cache / "cut.tar.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        data.extract_bigbench([SMALL], cut)
    assert not data.bigbench_file(SMALL).exists()
    assert not leftovers(cache)


def test_task_missing_from_tarball(cache):
    sdist = make_sdist(cache / "bb.tar.gz", {OTHER: real_task_bytes(OTHER)})
    with pytest.raises(DataError, match="no task file for \\['strategyqa'\\]"):
        data.extract_bigbench([SMALL], sdist)


def test_fetch_keeps_valid_files_and_repairs_corrupt_ones(cache):
    """fetch_bigbench touches the sdist only for what is missing or corrupt."""
    real = real_task_bytes(SMALL)
    target = data.bigbench_file(SMALL)
    target.parent.mkdir(parents=True)
    target.write_bytes(real)
    data.fetch_bigbench([SMALL])  # valid: no sdist needed (none is in this cache)

    sdist = REAL_CACHE / "downloads" / data.BIGBENCH_SDIST
    if not sdist.exists():
        pytest.skip("the bigbench sdist is not cached: run `road-interp fetch`")
    (cache / "downloads").mkdir()
    (cache / "downloads" / data.BIGBENCH_SDIST).symlink_to(sdist)
    target.write_bytes(real[:100])
    data.fetch_bigbench([SMALL])  # corrupt: re-extracted from the (sha256-checked) sdist
    assert target.read_bytes() == real


def test_gym_pool_is_generated_deterministically_and_repaired(cache):
    pytest.importorskip("reasoning_gym")
    skill = GymSkill("tiny_chain_sum", "chain_sum", (("min_terms", 2), ("max_terms", 2)), size=40)
    (path,) = data.fetch_gym([skill])
    first = json.loads(path.read_text())
    assert len(first["examples"]) == 40
    assert all(set(e) == {"input", "target"} for e in first["examples"])
    assert first["config"] == {"min_terms": 2, "max_terms": 2, "seed": skill.seed, "size": 40}

    path.write_text('{"examples": [')  # interrupted writer
    with pytest.raises(DataError, match="road-interp fetch"):
        data.load_gym(skill.name)
    data.fetch_gym([skill])
    assert json.loads(path.read_text())["examples"] == first["examples"]

    bigger = GymSkill(skill.name, skill.dataset, skill.config, size=50)  # settings changed
    data.fetch_gym([bigger])
    assert len(data.load_gym(skill.name)["examples"]) == 50
    shutil.rmtree(path.parent)


def test_cli_fetch_data_on_a_full_cache_changes_nothing(capsys):
    from road_interp.cli import main
    from road_interp.tasks import data_sources

    with pytest.raises(SystemExit):
        main(["fetch", "--help"])
    help_text = capsys.readouterr().out
    assert "--no-data" in help_text and "--no-gym" in help_text
    paths, _ = data_sources()
    files = [data.bigbench_file(p) for p in paths]
    if not all(f.exists() for f in files):
        pytest.skip("run `road-interp fetch` first")
    before = {f: f.stat().st_mtime_ns for f in files}
    assert main(["fetch", "--models", "--no-gym"]) == 0
    assert "task files under" in capsys.readouterr().out
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_cli_reports_missing_reasoning_gym_cleanly(cache, monkeypatch, capsys):
    """Without reasoning-gym, fetching its pools is a one-line error naming the fix."""
    from road_interp.cli import main

    monkeypatch.setitem(__import__("sys").modules, "reasoning_gym", None)
    skill = GymSkill("tiny", "chain_sum", ())
    with pytest.raises(DataError, match="--no-gym"):
        data.fetch_gym([skill])
    assert main(["fetch", "--models", "--no-data"]) == 0
    assert not (cache / "data").exists()
    capsys.readouterr()
