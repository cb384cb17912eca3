"""The composition benchmark: a store that resumes, honest verdicts, and a tiny end-to-end run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from experiments.composition import bench_report
from experiments.composition.store import ResultStore, run_cells
from road_interp import RoadModel
from road_interp.evaluation import evaluate
from road_interp.io import read_adapter


def test_store_skips_finished_cells_and_survives_a_cut_last_line(tmp_path):
    calls = []

    def cell(name):
        return name, lambda: calls.append(name) or {"value": len(calls)}

    store = ResultStore(tmp_path)
    assert not run_cells([cell("a"), cell("b")], store, log=lambda _: None, only=["b"])
    assert calls == ["b"]  # "a" is left to another process: not finished yet
    assert run_cells([cell("a"), cell("b")], ResultStore(tmp_path), log=lambda _: None)
    assert calls == ["b", "a"]
    store = ResultStore(tmp_path)
    with open(store.path, "a") as f:
        f.write('{"key": "c", "val')  # a kill while writing the third cell
    again = ResultStore(tmp_path)
    assert "a" in again and "c" not in again
    assert run_cells([cell("a"), cell("b"), cell("c")], again, log=lambda _: None)
    assert calls == ["b", "a", "c"]
    assert set(ResultStore(tmp_path).records) == {"a", "b", "c"}  # the cut line is gone
    assert not run_cells([cell("d")], again, budget_minutes=0, log=lambda _: None)
    lines = store.path.read_text().splitlines()
    store.path.write_text("\n".join(["garbage", *lines]) + "\n")
    with pytest.raises(ValueError, match="store is corrupt"):
        ResultStore(tmp_path)


def test_a_folder_continues_with_the_same_settings_or_more_methods_and_pairs():
    from experiments.composition.store import _continues

    stored = {"steps": 60, "methods": ["halves", "lora_ta"], "pairs": [["a", "b"]]}
    assert _continues(stored, dict(stored))
    assert _continues(stored, stored | {"methods": ["halves", "road_ta", "lora_ta"]})
    assert _continues(stored, stored | {"pairs": [["c", "d"], ["a", "b"]]})
    assert not _continues(stored, stored | {"pairs": [["b", "a"]]})  # a pair is ordered
    assert not _continues(stored, stored | {"methods": ["halves"]})
    assert not _continues(stored, stored | {"steps": 200})


def test_a_folder_started_before_a_setting_existed_continues_at_its_default(tmp_path):
    from experiments.composition.generation_bench import make_config
    from experiments.composition.store import open_store

    cfg = make_config("default")
    open_store(tmp_path, cfg)
    settings = json.loads((tmp_path / "config.json").read_text())
    del settings["buffer_examples"]  # written by a version without it
    (tmp_path / "config.json").write_text(json.dumps(settings))
    open_store(tmp_path, cfg)
    assert json.loads((tmp_path / "config.json").read_text())["buffer_examples"] == 300
    (tmp_path / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="other settings"):  # it ran with the default
        open_store(tmp_path, replace(cfg, buffer_examples=50))


def test_a_folder_reuses_the_cells_that_do_not_read_the_changed_setting(tmp_path):
    from experiments.composition.generation_bench import make_config
    from experiments.composition.store import ResultStore, open_store, reuse_cells

    cfg, source, out = make_config("default"), tmp_path / "source", tmp_path / "out"
    store = open_store(source, cfg)
    for key in ("seed0/base", "seed0/skill/format/buffered", "seed0/compose/buffered"):
        store.put(key, {"answers": [key]})
    for cell in ("content-routed", "format-buffered"):
        (source / "cells/seed0" / cell).mkdir(parents=True)
        (source / "cells/seed0" / cell / "adapter.bin").write_bytes(b"weights")

    bigger = replace(cfg, buffer_examples=1000)
    assert reuse_cells(source, out, bigger) == ["seed0/base"]
    assert ResultStore(out)["seed0/base"]["reused_from"] == str(source)
    assert (out / "cells/seed0/content-routed/adapter.bin").read_bytes() == b"weights"
    assert not (out / "cells/seed0/format-buffered").exists()
    assert json.loads((out / "config.json").read_text())["buffer_examples"] == 1000
    assert reuse_cells(source, out, bigger) == []  # again: nothing left to copy
    with pytest.raises(ValueError, match="differs in steps, which every cell may read"):
        reuse_cells(source, tmp_path / "other", replace(bigger, steps=61))
    with pytest.raises(ValueError, match="no config.json"):
        reuse_cells(tmp_path / "nothing", tmp_path / "other", bigger)
    assert not (tmp_path / "other").exists()  # a refusal writes nothing


def test_retained_share_and_its_verdicts():
    probe, alone = np.zeros((1, 100)), np.ones((1, 100))
    composed = np.ones((1, 100))
    composed[0, :3] = 0
    assert bench_report.share(composed, alone, probe) == pytest.approx(0.97)
    assert bench_report.kept((0.9, 0.97, 1.0)) == "met"
    assert bench_report.kept((0.8, 0.97, 1.0)) == "not established"
    assert bench_report.kept((0.5, 0.7, 0.9)) == "not met"
    assert bench_report.kept((float("nan"), 0.7, float("nan"))) == "not established"
    assert np.isnan(bench_report.share(composed, probe, probe))


@pytest.mark.real
@pytest.mark.slow
def test_a_tiny_benchmark_runs_resumes_and_reports(tmp_path):
    from experiments.composition.benchmark import make_config, run_benchmark

    cfg = make_config(
        "quick", steps=2, train_examples=32, val_examples=16, test_examples=16,
        methods=("halves", "ties", "lora_ta", "aware", "buffered", "joint"), energy_examples=8,
        buffer_examples=8,
    )  # fmt: skip
    partial = run_benchmark(cfg, tmp_path, budget_minutes=0)
    assert not partial["finished"] and not (tmp_path / "store.jsonl").exists()
    summary = run_benchmark(cfg, tmp_path)
    assert summary["finished"]
    store = ResultStore(tmp_path)
    keys = set(store.records)
    composed = {k.rsplit("/", 1)[-1] for k in keys if "/compose/" in k}
    assert composed == {"halves", "ties", "lora_ta", "aware", "buffered", "joint"}
    prefix = "which_positive_en+wordorder_en/seed0"
    for beside in ("aware", "buffered"):  # the union = the two as trained
        union = store[f"{prefix}/compose/{beside}"]["task1"]
        assert union == {s: store[f"{prefix}/skill/1/{beside}"][s] for s in ("validation", "test")}
    assert store[f"{prefix}/skill/joint/all"]["trained_steps"] == 4  # twice a skill's steps
    record = store[f"{prefix}/compose/halves"]
    assert len(record["task0"]["test"]) == 16 and set(record["task1"]["test"]) <= {0, 1}
    pair = summary["pairs"]["which_positive_en+wordorder_en"]
    assert set(pair["gate"]) == {"which_positive_en", "wordorder_en"}
    for task, (low, point, high) in pair["methods"]["halves"]["retained_share"].items():
        assert task in pair["gate"] and (low is None or low <= point <= high)
    vs_lora = pair["methods"]["halves"]["vs_lora_task_arithmetic"]
    assert set(vs_lora) == set(pair["gate"])  # a paired difference per skill
    assert json.loads((tmp_path / "summary.json").read_text())["finished"]
    assert (tmp_path / "README.md").read_text().startswith("# Composition benchmark")
    assert run_benchmark(cfg, tmp_path)["finished"]  # nothing left: every cell is skipped
    assert set(ResultStore(tmp_path).records) == keys
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(make_config("quick", steps=3), tmp_path)


@pytest.mark.real
def test_the_gate_screen_compares_the_probe_with_all_planes_and_resumes(tmp_path):
    from experiments.composition.benchmark import make_config
    from experiments.composition.gate_screen import screen

    cfg = make_config("quick", steps=2, train_examples=32, val_examples=16, test_examples=16)
    table = screen(["multiemo_en"], tmp_path, cfg)
    row = table.iloc[0]
    assert row["gain"] == pytest.approx(row["all_planes"] - row["probe"], abs=1e-3)
    assert row["could_pass"] == (row["gain"] >= cfg.gate) and row["test_items"] == 16
    keys = set(ResultStore(tmp_path).records)
    assert keys == {"seed0/probe/multiemo_en", "seed0/all/multiemo_en"}
    assert screen(["multiemo_en"], tmp_path, cfg).equals(table)  # resumed: nothing retrained
    assert set(ResultStore(tmp_path).records) == keys
    assert "| multiemo_en |" in (tmp_path / "README.md").read_text()
    more = screen(["subjectivity_en"], tmp_path, cfg)  # a later call: the table keeps both
    assert list(more["task"]) == ["multiemo_en", "subjectivity_en"] and more.iloc[:1].equals(table)
    assert "| multiemo_en |" in (tmp_path / "README.md").read_text()


@pytest.mark.real
@pytest.mark.slow
def test_a_tiny_generation_benchmark_runs_resumes_and_reports(tmp_path):
    from safetensors.torch import load_file

    from experiments.composition.generation_bench import SeedRun, make_config, run_benchmark
    from experiments.composition.store import reuse_cells

    cfg = make_config(
        "quick", steps=2, train_examples=16, val_examples=4, test_examples=6, max_new_tokens=3,
        methods=("halves", "routed", "aware", "buffered", "joint", "aware_tuned", "lora_ta"),
        scales=(1.0,), content_scales=(1.0, 2.0), format_scales=(1.0, 1.5), buffer_examples=4,
    )  # fmt: skip
    summary = run_benchmark(cfg, tmp_path)
    assert summary["finished"] and summary["seeds"] == [0]
    store = ResultStore(tmp_path)
    record = store["seed0/compose/routed"]
    assert set(record) >= {"test/content", "test/format"}
    assert len(record["test/content"]["answer"]) == 6
    assert set(record["test/content"]["joint"]) <= {0, 1}
    assert set(summary["gate"]) == {"content", "format"}
    assert set(summary["gate"]["format"]) >= {"halves_validation", "routed_validation"}
    content_gate = summary["gate"]["content"]  # on the gate's own prompts, against the majority
    assert content_gate["prompts"] == "validation/gate" and content_gate["majority_validation"] > 0
    assert len(store["seed0/gate/content/routed"]["validation/gate"]["answer"]) == 16
    assert set(store["seed0/skill/format/aware"]) == {"validation/format", "key", "seconds"}
    assert len(store["seed0/skill/format/buffered"]["buffer"]) == 4  # the content skill's answers
    tuned = store["seed0/compose/aware_tuned"]
    content_lam, format_lam = tuned["strength"]
    assert content_lam in (1.0, 2.0) and format_lam in (1.0, 1.5)
    assert len(tuned["validation/gate"]["joint"]) == 16  # picked on the gate's prompts
    joint_skill = store["seed0/skill/joint/all"]  # one adapter on both skills' data
    assert set(joint_skill) == {"validation/content", "validation/format", "key", "seconds"}
    assert set(summary["methods"]["joint"]["retained_share"]) == {"content", "format"}
    for method in ("halves", "routed", "aware", "buffered", "aware_tuned"):
        entry = summary["methods"][method]
        low, point, high = entry["joint_minus_prompted_base"]
        assert low <= point <= high
        assert "joint_vs_lora_task_arithmetic" in entry and "joint_minus_format_alone" in entry
        assert sum(entry["answers"].values()) == pytest.approx(1.0, abs=1e-3)
        assert entry["answers"]["joint success"] == pytest.approx(entry["joint_success"][1])
    assert (tmp_path / "README.md").read_text().startswith("# Generation composition")
    keys = set(store.records)
    assert run_benchmark(cfg, tmp_path)["finished"]  # every cell is skipped
    assert set(ResultStore(tmp_path).records) == keys
    more = replace(cfg, methods=(*cfg.methods, "road_ta"))  # a method added to the folder
    summary = run_benchmark(more, tmp_path)
    added = set(ResultStore(tmp_path).records) - keys  # and the all-plane skills it composes
    assert added == {f"seed0/{u}" for u in ("compose/road_ta", "skill/content/all",
                                            "skill/format/all", "gate/content/all")}  # fmt: skip
    road_ta = ResultStore(tmp_path)["seed0/compose/road_ta"]
    assert road_ta["strength"] == 1.0 and len(road_ta["test/content"]["joint"]) == 6
    assert set(summary["methods"]["road_ta"]["retained_share"]) == {"content", "format"}
    with pytest.raises(ValueError, match="other settings"):  # one taken away: refused
        run_benchmark(replace(cfg, methods=("halves",)), tmp_path)
    delta = tmp_path / "cells" / "seed0" / "lora-content" / "delta.safetensors"
    kept = load_file(str(delta))
    delta.unlink()  # a clone of the results folder: ΔW are not committed; trained again
    again = SeedRun(cfg, 0, tmp_path).lora_delta("content")
    assert again.keys() == kept.keys() and delta.exists()
    bigger, other = replace(more, buffer_examples=6), tmp_path / "bigger-buffer"
    reused = set(reuse_cells(tmp_path, other, bigger))  # only the buffered cells run again
    assert reused == set(ResultStore(tmp_path).records) - {"seed0/skill/format/buffered",
                                                           "seed0/compose/buffered"}  # fmt: skip
    summary = run_benchmark(bigger, other)
    assert len(ResultStore(other)["seed0/skill/format/buffered"]["buffer"]) == 6
    assert summary["reused_from"] == [str(tmp_path)] and "buffered" in summary["methods"]
    assert "reused from" in (other / "README.md").read_text()


def test_the_arithmetic_pair_asks_the_gym_question_and_keeps_the_format_skill():
    from pathlib import Path

    from experiments.composition.generation_bench import SeedRun, make_config

    sizes = dict(train_examples=8, val_examples=4, gate_examples=6, test_examples=6)
    sums = SeedRun(make_config("quick", pair="arithmetic", **sizes), 0, Path("unused"))
    sentiment = SeedRun(make_config("quick", **sizes), 0, Path("unused"))
    assert all("arithmetic problem" in p for p in sums.prompts["test/content"])
    assert all(g.lstrip("-").isdigit() for g in sums.golds["test/content"])
    assert all('{"answer": "<the result>"}' in p for p in sums.prompts["test/prompted"])
    assert sums.training("content")[0].target.startswith("The answer is ")
    gate, val = sums.prompts["validation/gate"], sums.prompts["validation/content"]
    assert len(gate) == 6 and not set(gate) & set(val)  # further validation prompts
    for key in ("test/format", "validation/format"):  # the same format skill in both pairs
        assert sums.prompts[key] == sentiment.prompts[key]
    assert [e.text for e in sums.format_sentences] == [e.text for e in sentiment.format_sentences]


def test_the_own_format_skill_wraps_the_base_models_finished_answers(tmp_path):
    from experiments.composition.generation_bench import SeedRun, cells, make_config, own_answer

    assert own_answer('The first word is "Hotel".\nMore') == 'The first word is "Hotel".'
    assert own_answer("The hotel is located in a total hole, the") is None  # cut: left out
    sizes = dict(train_examples=4, val_examples=2, gate_examples=2, test_examples=2)
    cfg = make_config("quick", pair="arithmetic", **sizes)
    assert cfg.answers_wrapped == "own" and cfg.new_tokens == 32
    store = ResultStore(tmp_path)
    keys = [key for key, _ in cells(cfg, store)]
    assert keys[:2] == ["seed0/base", "seed0/distill"]  # before any skill trains
    run = SeedRun(cfg, 0, tmp_path, store)
    with pytest.raises(RuntimeError, match="distill must run"):
        run.training("format")
    store.put("seed0/distill", {"answers": ["It is Hotel.", "cut", "Yes!", "No"]})
    targets = [json.loads(e.target)["answer"] for e in run.training("format")]
    assert targets == ["It is Hotel.", "Yes!"]
    assert run.training("joint") == run.training("content") + run.training("format")
    store.put("seed0/distill", {"answers": ["cut"] * 4})
    with pytest.raises(ValueError, match="raise max_new_tokens"):
        run.training("format")
    words = make_config("quick", pair="arithmetic", format_answers="words", max_new_tokens=10)
    assert [k for k, _ in cells(words, store)][1] != "seed0/distill"
    with pytest.raises(ValueError, match="format_answers"):
        make_config("quick", format_answers="sentences")
    with pytest.raises(ValueError, match="tune_prompts"):
        make_config("quick", tune_prompts="test")


def test_the_buffer_is_unlabeled_unseen_content_prompts_wrapped_by_the_format_recipe():
    from pathlib import Path

    from experiments.composition.generation_bench import SeedRun, make_config

    sizes = dict(train_examples=8, val_examples=4, gate_examples=6, test_examples=6)
    for pair in ("arithmetic", "sentiment"):
        run = SeedRun(make_config("quick", pair=pair, buffer_examples=5, **sizes), 0, Path("x"))
        buffer = run.buffer_prompts()
        assert len(buffer) == len(set(buffer)) == 5
        seen = {e.text for e in run.training("content")} | set(run.prompts["test/content"])
        assert not seen & set(buffer)
        sentences = [e.text for e in run.format_sentences]  # the sentiment pair's shared pool
        assert not any(text in prompt for text in sentences for prompt in buffer)
    said = ["The sentiment of this review is positive.", "It is hard to say", "Negative."]
    wrapped = run.wrapped(buffer[:3], said)  # words: the content in what the skill said
    assert [(e.text, e.target) for e in wrapped] == [
        (buffer[0], '{"answer": "positive"}'), (buffer[2], '{"answer": "negative"}')
    ]  # fmt: skip
    own = SeedRun(make_config("quick", pair="arithmetic", **sizes), 0, Path("x"))
    targets = [e.target for e in own.wrapped(["p", "q"], ["The answer is 7.", "The answer"])]
    assert targets == ['{"answer": "The answer is 7."}']  # own: what it said; cut: left out
    sizes = dict(train_examples=2000, buffer_examples=200)
    big = SeedRun(make_config("quick", pair="arithmetic", **sizes), 0, Path("x"))
    with pytest.raises(ValueError, match="lower buffer_examples"):  # 2,098 training items
        big.buffer_prompts()


def test_task_heads_answer_each_example_with_its_task_and_frozen_heads_stay():
    from experiments.composition.multitask import TaskHeads

    torch.manual_seed(0)
    linear = [torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)]
    heads = TaskHeads(linear, own=1, frozen=(0,))
    assert {n for n, _ in heads.named_parameters()} >= {"weight", "bias"}  # the head's names
    x = torch.randn(3, 4)
    with heads.routed([1, 0, 1]):
        logits = heads(x)
    for b, k in enumerate((1, 0, 1)):
        torch.testing.assert_close(logits[b], linear[k](x[b]))
    logits.sum().backward()
    assert linear[0].weight.grad is None and linear[1].weight.grad is not None
    with pytest.raises(RuntimeError, match="routed"):
        heads(x)  # outside routed(...): which head is unknown
    with pytest.raises(ValueError, match="same number of labels"):
        TaskHeads([torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)], own=0)


@pytest.mark.real
def test_the_buffer_is_unseen_task0_inputs_labelled_by_task0s_skill_alone(tmp_path):
    from experiments.composition.benchmark import PairRun, make_config

    cfg = make_config("quick", steps=2, train_examples=32, val_examples=8, test_examples=8,
                      buffer_examples=12)  # fmt: skip
    run = PairRun(cfg, cfg.pairs[0], 0, tmp_path, ResultStore(tmp_path))
    run.skill(0, "halves")
    buffer = run.buffer()
    seen = {(e.text, e.text_pair) for e in run.data["train"][0]}
    assert len(buffer) == 12 and not seen & {(e.text, e.text_pair) for e in buffer}
    gold = run.tasks[0].examples("train", 44, 0)[32:]
    assert [(e.text, e.text_pair) for e in buffer] == [(e.text, e.text_pair) for e in gold]
    # the skill alone, scored with the buffer's labels as gold: all correct
    model = RoadModel(run.fresh(0))
    model.load_adapter(read_adapter(run.cell("skill0-halves") / "adapter"), "alone")
    run.use_head(model.model, run.cell("skill0-halves") / "head.safetensors")
    assert evaluate(model, run.tok, buffer, max_length=cfg.max_length)["accuracy"] == 1.0
