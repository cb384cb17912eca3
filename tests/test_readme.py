"""The README runs as written: every ```python block is executed (each in a fresh namespace,
in order, in one temporary working directory, so the README's relative paths such as
``adapters/...`` land there and later blocks find what earlier ones saved; the repository's
``experiments/`` is linked in, for blocks that read committed results), and every command
of its ```bash blocks is either run (the cheap ones, with the small settings the README shows)
or listed below with the reason it is not (long runs say their duration in the README)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"

NOT_RUN = {
    "make demo": "sets up a venv and runs the generation benchmark's quick preset (minutes)",
    "make test": "the whole test suite",
    "road-interp train --model minilm --task multiemo_en --method road_1 -o runs/emo": (
        "the full run (the README says: about 47 min); its small version is run"
    ),
    "road-interp train --config my_run.json": "needs the user's JSON file",
    "accelerate launch": "DDP over two processes (tests/test_ddp.py covers it)",
    "road-interp compose": "needs a second trained skill or placeholder folders (A/, B/)",
    "road-interp train --model minilm --task multiemo_en --subspace": "composition walkthrough "
    "(about a minute per skill; the compose and training tests cover it)",
    "road-interp train --model minilm --task subjectivity_en --subspace": "as above",
    "road-interp evaluate --task": "evaluates the composition walkthrough's adapters",
    "road-interp analyze adapters/sentiment -o analysis/sentiment --compare adapters/vitaminc": (
        "needs a trained VitaminC adapter; analyze runs without --compare below"
    ),
}
"""README commands the test does not run (a prefix of the command) and why."""


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        command = line.split("  #")[0].split(" # ")[0].strip()
        if command and not command.startswith("#"):
            out.append(" ".join(command.split()))
    return out


def skipped(command: str) -> bool:
    return any(command.startswith(prefix) for prefix in NOT_RUN)


def test_readme_has_the_blocks_this_test_runs():
    assert len(blocks("python")) >= 3
    assert any(c.startswith("road-interp train") and not skipped(c) for b in blocks("bash")
               for c in commands(b))  # fmt: skip


def test_long_commands_say_how_long_they_take():
    text = README.read_text()
    line = next(
        x for x in text.splitlines() if x.startswith("road-interp train") and "runs/emo " in x
    )
    assert re.search(r"about \d+ min", line), line
    small = next(x for x in text.splitlines() if "runs/emo-small" in x and "#" in x)
    assert re.search(r"about \d+ s", small), small


@pytest.mark.real
@pytest.mark.slow
def test_readme_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the README is read from the repository root: blocks may read its committed results
    (tmp_path / "experiments").symlink_to(README.parent / "experiments")
    for i, code in enumerate(blocks("python")):
        namespace: dict = {"__name__": f"readme_block_{i}"}
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as err:  # name the block, then fail with the original error
            raise AssertionError(f"README python block {i + 1} fails:\n{code}") from err
    assert (tmp_path / "adapters" / "sentiment" / "road_config.json").exists()
    assert (tmp_path / "sentiment_theta.png").exists()

    root = str(README.parent)  # the commands run this checkout's package
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    cli = [sys.executable, "-m", "road_interp.cli"]
    ran = []
    for block in blocks("bash"):
        for command in commands(block):
            if skipped(command):
                continue
            argv = shlex.split(command)
            assert argv[0] == "road-interp", f"the test knows no cheap way to run {command!r}"
            done = subprocess.run(cli + argv[1:], env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            ran.append(argv[1])
    assert ran[:2] == ["train", "evaluate"] and "export" in ran
    analyze = cli + ["analyze", "adapters/sentiment", "-o", "analysis/sentiment"]
    done = subprocess.run(analyze, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
