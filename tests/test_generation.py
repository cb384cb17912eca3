"""Generation skills: chat examples, batched answers equal to one-by-one, checks per item."""

from __future__ import annotations

import json

import pytest

from road_interp import RoadConfig, RoadModel
from road_interp.generation import (
    answers,
    chat_examples,
    first_label,
    json_answer,
    json_check,
    json_content_check,
    json_gold_check,
    json_object,
    label_check,
    number_check,
    score,
)

LABELS = ("positive", "negative")


def test_first_label_is_the_earliest_whole_word():
    assert first_label("Negative, not positive.", LABELS) == "negative"
    assert first_label('{"answer": "positive"}', LABELS) == "positive"
    assert first_label("positively negative", LABELS) == "negative"  # whole words only
    assert first_label("no idea", LABELS) is None


def test_number_check_reads_the_first_integer():
    assert number_check("The answer is 3.", "3")
    assert number_check('{"answer": "12"}', " 12")
    assert not number_check("The letter appears 2 times in 3 words.", "3")
    assert not number_check("three", "3")
    assert not number_check("The answer is 3.", '{"answer": "It"}')  # not a number: no match


def test_json_answer_reads_the_first_line_only():
    assert json_answer('{"answer": "positive"}\nmore text') == "positive"
    assert json_answer(' {"answer": 3}') == "3"
    for bad in ('{"label": "x"}', "positive", '["answer"]', '{"answer": "x"'):
        assert json_answer(bad) is None
    assert json_object('{"label": "x"}\n') == {"label": "x"}  # JSON, another field
    assert json_object('["answer"]') is None and json_object("positive") is None
    assert json_gold_check('{"answer": " Positive "}', "positive")
    assert not json_gold_check('{"answer": "negative"}', "positive")
    assert json_check('{"answer": "negative"}', "positive")


def test_json_content_check_applies_the_content_check_to_the_field():
    joint = json_content_check(number_check)
    assert joint('{"answer": "The answer is 7."}', "7")
    assert not joint('{"answer": "The answer is 8."}', "7")
    assert not joint("The answer is 7.", "7")  # right content, not JSON
    assert not joint('{"answer": "The answer is 7.', "7")  # cut before the object closes
    assert json_content_check(label_check(LABELS))('{"answer": "It is positive."}', "positive")


def test_score_keeps_every_answer_and_a_column_per_check():
    table = score(
        ['{"answer": "positive"}', "negative", '{"answer": "negative"}'],
        ["positive", "positive", "positive"],
        {"content": label_check(LABELS), "format": json_check, "joint": json_gold_check},
    )
    assert table["content"].tolist() == [1, 0, 0]
    assert table["format"].tolist() == [1, 0, 1]
    assert table["joint"].tolist() == [1, 0, 0]
    assert table["answer"].iloc[1] == "negative"
    with pytest.raises(ValueError, match="2 answers but 1 gold"):
        score(["a", "b"], ["a"], {})


@pytest.mark.real
def test_chat_examples_train_and_batched_answers_equal_each_alone(real_smollm2):
    model, tok = real_smollm2
    examples = chat_examples(tok, [("Say it as JSON.", "yes", json.dumps({"answer": "yes"}))])
    assert examples[0].target == '{"answer": "yes"}'
    assert examples[0].text.startswith("<|im_start|>") and examples[0].text.endswith("assistant\n")
    assert "Say it as JSON.\nyes" in examples[0].text
    road = RoadModel(model)
    config = RoadConfig(
        variant="road_1", group_size=2, targets=("model.layers.3",), positions="answer",
        init="random",
    )  # fmt: skip
    road.add_adapter("x", config, seed=0)
    prompts = [e.text for e in chat_examples(tok, [("Name a colour.", "", ""), ("Hi", "a", "")])]
    road.train()
    try:
        batched = answers(road, tok, prompts, max_new_tokens=5, progress=False)
        assert road.training  # the mode is restored
        alone = [answers(road, tok, [p], max_new_tokens=5, progress=False)[0] for p in prompts]
        assert batched == alone
        with road.disabled():
            assert answers(road, tok, prompts, max_new_tokens=5, progress=False) != batched
    finally:
        road.remove()
        model.eval()
