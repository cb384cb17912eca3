"""The README's train -> compose -> evaluate sequence, from the command line, at small size."""

from __future__ import annotations

import json

import pytest

from road_interp.cli import main
from road_interp.compose import support
from road_interp.io import read_adapter

SMALL = ["--max-steps", "4", "--batch-size", "8", "--max-length", "32", "--train-limit", "64"]
SMALL += ["--eval-limit", "16", "--test-limit", "16", "--no-progress"]


@pytest.mark.real
@pytest.mark.slow
def test_train_two_skills_on_disjoint_halves_compose_and_evaluate(tmp_path, capsys):
    runs = {"multiemo_en": "half:0", "subjectivity_en": "half:1"}
    for task, half in runs.items():
        out = tmp_path / "runs" / task
        args = ["train", "--model", "minilm", "--task", task, "--subspace", half, "-o", str(out)]
        assert main(args + SMALL) == 0
        adapter = read_adapter(out / "best")
        assert adapter.config.subspace == half
    both = tmp_path / "adapters" / "both"
    folders = [str(tmp_path / "runs" / t / "best") for t in runs]
    assert main(["compose", *folders, "-o", str(both)]) == 1  # two heads: which to keep?
    assert "--drop-extra" in capsys.readouterr().err
    assert main(["compose", *folders, "--drop-extra", "-o", str(both)]) == 0
    composed = read_adapter(both)
    halves = [support(read_adapter(f)) for f in folders]
    assert support(composed).num_planes() == sum(h.num_planes() for h in halves)
    capsys.readouterr()
    for task in runs:
        head = str(tmp_path / "runs" / task / "best")
        args = ["evaluate", "--task", task, "--adapter", str(both), "--head", head]
        assert main(args + ["--limit", "16", "-o", str(tmp_path / f"{task}.json")]) == 0
        result = json.loads((tmp_path / f"{task}.json").read_text())
        assert result["task"] == task and result["n"] == 16
