"""Training reports as it goes (a line per evaluation, even without progress bars), tests
the checkpoint it keeps and says which, and runs without a run folder."""

from __future__ import annotations

import copy
import json

import pytest

from road_interp import RoadConfig, RoadModel, TrainConfig, get_task, train
from road_interp.cli import main

SMALL = ["--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--max-length", "32"]
SMALL += ["--train-limit", "64", "--eval-limit", "16", "--test-limit", "16", "--no-progress"]


@pytest.mark.real
@pytest.mark.slow
def test_cli_train_prints_each_evaluation_and_tests_the_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "minilm", "--task", "multiemo_en", "-o", str(out), *SMALL]
    assert main(args) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("step ")]
    assert [x.split(":")[0] for x in lines] == ["step 2/4", "step 4/4"], err
    assert "validation accuracy" in lines[0] and "best" in lines[0]
    row = json.loads((out / "test_result.json").read_text())
    assert row["tested"] == "best" and row["tested_step"] in (2, 4)
    assert main(["-q", *args]) == 0  # resumes the finished run
    assert "step " not in capsys.readouterr().err  # --quiet: results only


@pytest.mark.real
def test_train_without_an_output_folder_writes_nothing(real_minilm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = RoadModel(copy.deepcopy(real_minilm[0]))
    model.add_adapter("emo", RoadConfig())
    config = TrainConfig(
        max_steps=2, eval_every=1, batch_size=4, max_length=24, eval_limit=8, progress=False
    )
    result = train(model, real_minilm[1], get_task("multiemo_en"), config, None)
    assert result.output_dir is None and result.best_step in (1, 2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="output_dir=None"):
        result.best_dir  # noqa: B018


def test_cli_version_and_choices(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and "road-interp 0." in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["train", "-o", "x", "--method", "lora_matchd"])
    assert done.value.code == 2 and "lora_matched" in capsys.readouterr().err
