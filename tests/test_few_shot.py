"""The few-shot prompted base: solved training examples before each question."""

from __future__ import annotations

import pytest

from road_interp.baselines import RunSpec, run
from road_interp.evaluation import evaluate
from road_interp.tasks import FewShot, get_task
from road_interp.training import TrainConfig


def test_the_shots_come_first_each_with_its_answer_and_hold_both_labels():
    task = get_task("multiemo_en")
    asked = FewShot.of(task, shots=4, seed=1)
    question = task.examples("test", 1)[0]
    parts = asked.prompt(question).split("\n\n")
    assert parts[-1] == task.prompt(question) and len(parts) == 5
    for part, shot in zip(parts, asked.shots, strict=False):
        assert part == f"{task.prompt(shot)} {shot.answer}"
    assert {s.answer for s in asked.shots} == set(task.labels)  # label-stratified
    assert asked.examples("test", 3) == task.examples("test", 3)
    assert asked.shots != FewShot.of(task, shots=4, seed=2).shots  # the seed picks them
    with pytest.raises(ValueError, match="at least one shot"):
        FewShot.of(task, shots=0)


def test_shots_belong_to_the_few_shot_method():
    with pytest.raises(ValueError, match="shots is for method 'few_shot'"):
        RunSpec(model="smollm2", method="zero_shot", shots=2)
    with pytest.raises(ValueError, match="shots must be >= 1"):
        RunSpec(model="smollm2", method="few_shot", shots=0)


@pytest.mark.real
def test_a_few_shot_run_scores_the_few_shot_prompts(real_smollm2, tmp_path):
    model, tok = real_smollm2
    spec = RunSpec(model="smollm2", task="multiemo_en", method="few_shot", shots=2)
    config = TrainConfig(seed=3, eval_limit=4, eval_batch_size=4, max_length=96, progress=False)
    row = run(spec, config, tmp_path, test_limit=6, detail=True)
    assert row["method"] == "few_shot" and row["lr"] is None and row["tested"] == "base"
    assert row["trainable_params"] == 0
    asked = FewShot.of(get_task("multiemo_en"), shots=2, seed=3)
    direct = evaluate(model, tok, asked, "test", 6, max_length=96 * 3, progress=False,
                      predictions=True)  # fmt: skip
    assert row["test_correct"] == direct["correct"]
