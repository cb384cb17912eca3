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


@pytest.mark.real
@pytest.mark.slow
def test_position_routed_skill_trains_beside_a_frozen_one_from_the_cli(tmp_path, capsys):
    """Position routing and interference-aware training from the command line: skill A on
    the prompt tokens of block 3, skill B on the answer tokens of block 6 trained with A
    loaded, active and frozen; B's run saves B alone, and A's file is untouched."""
    common = ["--model", "smollm2", "--task", "multiemo_en", "--lr", "1e-2", *SMALL]
    a_run, b_run = tmp_path / "a", tmp_path / "b"
    a_args = ["--targets", "model.layers.3", "--positions", "prompt", "-o", str(a_run)]
    assert main(["train", *common, *a_args]) == 0
    a_before = (a_run / "best" / "road_adapter.safetensors").read_bytes()
    b_args = ["--targets", "model.layers.6", "--positions", "answer", "-o", str(b_run)]
    assert main(["train", *common, *b_args, "--alongside", str(a_run / "best")]) == 0
    b = read_adapter(b_run / "best")
    assert list(b.params) == ["model.layers.6"] and str(b.config.positions) == "answer"
    assert (a_run / "best" / "road_adapter.safetensors").read_bytes() == a_before
    a = read_adapter(a_run / "best")
    assert list(a.params) == ["model.layers.3"] and str(a.config.positions) == "prompt"
    assert not all(float(t.abs().max()) == 0 for t, _ in b.params.values())  # B moved
    lora = ["--method", "lora", "--targets", "model.layers.6", "--positions", "answer"]
    capsys.readouterr()
    assert main(["train", *common, *lora, "-o", str(tmp_path / "x")]) == 2
    assert "is for RoAd methods" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any work
