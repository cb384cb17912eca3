"""Per-example predictions: every reported number can be recomputed from them."""

from __future__ import annotations

import pytest
import torch

from road_interp.evaluation import evaluate
from road_interp.tasks import get_task


@pytest.mark.real
def test_predictions_recompute_the_accuracy(real_minilm):
    model, tok = real_minilm
    examples = get_task("multiemo_en").examples("test", 24)
    result = evaluate(model, tok, examples, batch_size=8, progress=False, predictions=True)
    assert len(result["predictions"]) == len(result["correct"]) == result["n"] == 24
    assert sum(result["correct"]) / 24 == result["accuracy"]
    with torch.no_grad():
        first = tok([examples[0].text], return_tensors="pt")
        assert result["predictions"][0] == int(model(**first).logits.argmax())
    assert "predictions" not in evaluate(model, tok, examples[:4], progress=False)


def test_a_generation_task_reports_the_constant_answer_as_its_majority():
    from collections import Counter

    from road_interp.encoding import example_set
    from road_interp.evaluation import majority_baseline

    task = get_task("gym_letter_counting")
    examples = task.examples("validation", 100)
    most = Counter(e.answer for e in examples).most_common(1)[0][1]
    assert majority_baseline(example_set(task, "validation", 100)) == most / 100 > 0.3  # "1"
