"""The training loop on the real embedded models and real task data: it learns, it resumes
exactly, it stops on NaN, and bad settings fail before any work."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from road_interp import RoadConfig
from road_interp.baselines import split_settings
from road_interp.cli import main
from road_interp.encoding import IGNORE_INDEX, encode_lm
from road_interp.evaluation import answer_logprobs, evaluate, pad_left
from road_interp.model import RoadModel
from road_interp.tasks import Example, get_task
from road_interp.training import (
    TrainConfig,
    TrainingDiverged,
    load_head,
    read_metrics,
    train,
    trainable_parameters,
)

pytestmark = pytest.mark.real


@pytest.fixture(autouse=True)
def _threads():
    """One thread: on a shared 2-core machine, two threads per process oversubscribe the cores
    and every step waits on the other thread (measured 10-30x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh_road(real_minilm, variant: str = "road_1") -> RoadModel:
    model = RoadModel(copy.deepcopy(real_minilm[0]))
    model.add_adapter("emo", RoadConfig(variant=variant))
    return model


TINY = dict(batch_size=4, max_length=24, eval_limit=8, progress=False, lr=1e-2)


def test_a_few_hundred_steps_beat_the_majority_baseline(real_minilm, tmp_path):
    model, tok = fresh_road(real_minilm), real_minilm[1]
    config = TrainConfig(
        lr=1e-2,
        max_steps=120,
        batch_size=8,
        max_length=32,
        eval_limit=160,
        eval_every=60,
        log_every=20,
        progress=False,
    )
    result = train(model, tok, get_task("multiemo_en"), config, tmp_path)
    final = result.final_eval
    assert final is not None and final["n"] == 160
    assert final["accuracy"] > final["majority"] + 0.1, final
    assert result.best_eval is not None and result.best_eval["value"] >= final["value"]
    metrics = read_metrics(tmp_path)
    assert list(metrics["step"].dropna().astype(int).unique())[:3] == [20, 40, 60]
    assert "eval_accuracy" in metrics
    # the final folder reloads into a fresh model with identical logits
    again = RoadModel(copy.deepcopy(real_minilm[0]))
    again.load_adapter(tmp_path / "final", "emo")
    load_head(again, tmp_path / "final")
    batch = tok(["What a lovely room.", "Dirty and loud."], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits)


def test_resume_after_interruption_ends_where_an_uninterrupted_run_does(real_minilm, tmp_path):
    task, tok = get_task("multiemo_en"), real_minilm[1]
    config = TrainConfig(max_steps=8, save_every=3, log_every=1, **TINY)
    straight = fresh_road(real_minilm)
    train(straight, tok, task, config, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop_at_5(step, record):
        if step == 5:
            raise Interrupt

    interrupted = fresh_road(real_minilm)
    with pytest.raises(Interrupt):
        train(interrupted, tok, task, config, tmp_path / "resumed", on_step_end=stop_at_5)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    resumed = fresh_road(real_minilm)  # a new process would start from a fresh model too
    train(resumed, tok, task, config, tmp_path / "resumed")
    a, b = trainable_parameters(straight), trainable_parameters(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(p, torch.ones_like(p)) for n, p in a.items() if "alpha" in n)
    losses = [read_metrics(tmp_path / d)["loss"].dropna().tolist() for d in ("straight", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    real_minilm, tmp_path
):
    model, tok = fresh_road(real_minilm), real_minilm[1]

    def poison(step, record):
        if step == 4:
            with torch.no_grad():
                next(iter(model.adapter_parameters("emo").values())).fill_(float("nan"))

    config = TrainConfig(max_steps=8, save_every=3, **TINY)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 5.*checkpoint \(step 3\)"):
        train(model, tok, get_task("multiemo_en"), config, tmp_path, on_step_end=poison)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    saved = load_file(str(tmp_path / "checkpoint" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_gradient_checkpointing_changes_no_parameter(real_minilm, tmp_path):
    """Recomputed activations (with the same dropout masks: checkpointing restores the RNG)
    give the same gradients, hence the same parameters."""
    task, tok = get_task("multiemo_en"), real_minilm[1]
    runs = {}
    for checkpointing in (False, True):
        model = fresh_road(real_minilm)
        config = TrainConfig(max_steps=3, gradient_checkpointing=checkpointing, **TINY)
        train(model, tok, task, config, tmp_path / str(checkpointing))
        runs[checkpointing] = trainable_parameters(model)
    for name, value in runs[False].items():
        torch.testing.assert_close(runs[True][name], value)


def test_bf16_runs_after_fp32_in_the_same_process(real_minilm, tmp_path):
    model, tok = fresh_road(real_minilm), real_minilm[1]
    config = TrainConfig(max_steps=3, precision="bf16", log_every=1, **TINY)
    result = train(model, tok, get_task("multiemo_en"), config, tmp_path)
    assert result.history["loss"].notna().all() and len(result.history) == 3
    alphas = [p for n, p in trainable_parameters(model).items() if n.endswith("alpha")]
    assert any(not torch.equal(a, torch.ones_like(a)) for a in alphas)


def test_causal_lm_learns_a_list_of_examples(real_smollm2, tmp_path):
    """Plain `Example` lists (no registered task) train a causal LM with prompt tokens
    masked; the loss on the examples falls and their answers become the likeliest choice."""
    model, tok = real_smollm2
    road = RoadModel(model)
    try:
        road.add_adapter("fr", RoadConfig(variant="road_1"))
        words = [("cat", "chat"), ("dog", "chien"), ("house", "maison"), ("water", "eau")]
        examples = [Example(f"English: {en}\nFrench:", (fr, "banane"), 0) for en, fr in words]
        before = evaluate(road, tok, examples, progress=False)
        config = TrainConfig(
            lr=3e-2, batch_size=4, max_steps=12, warmup_ratio=0.0, log_every=1, progress=False
        )
        result = train(road, tok, examples, config, tmp_path, eval_data=examples)
        losses = result.history["loss"].tolist()
        assert losses[-1] < 0.5 * losses[0], losses
        assert result.final_eval is not None
        assert result.final_eval["accuracy"] >= before["accuracy"]
        assert (tmp_path / "final" / "road_adapter.safetensors").exists()
    finally:
        road.remove()


@pytest.mark.parametrize("end_with_eos", [True, False])
def test_the_first_loss_is_the_answer_nll_with_or_without_eos(real_smollm2, end_with_eos):
    """``end_with_eos=False`` supervises the answer's own tokens only: the first step's loss
    is the mean over examples of the mean NLL of exactly those tokens."""
    model, tok = real_smollm2
    road = RoadModel(model)
    try:
        road.add_adapter("x", RoadConfig(variant="road_1"))
        examples = [Example("The sentiment is", ("positive",), 0), Example("2 + 2 =", ("4",), 0)]
        config = TrainConfig(
            lr=1e-3, batch_size=2, max_steps=1, log_every=1, progress=False, dropout=False,
            end_with_eos=end_with_eos,
        )  # fmt: skip
        with torch.no_grad():
            nll = []
            for e in examples:
                item = encode_lm(tok, e.text, e.answer, 64, add_eos=end_with_eos)
                logp, mask = answer_logprobs(road, pad_left([item], tok.eos_token_id))
                nll.append(-float(logp.sum()) / int(mask.sum()))
        result = train(road, tok, examples, config, None)
        assert result.history["loss"].iloc[0] == pytest.approx(np.mean(nll), rel=1e-4)
    finally:
        road.remove()


def test_left_padded_answer_scores_equal_unpadded_ones(real_smollm2):
    model, tok = real_smollm2
    items = [
        encode_lm(tok, "Question: Is the sky blue?\nAnswer:", "Yes", 64, add_eos=False),
        encode_lm(tok, "2 + 2 =", "four", 64, add_eos=True),
    ]
    assert items[0]["labels"][:-1] == [IGNORE_INDEX] * (len(items[0]["labels"]) - 1)
    with torch.no_grad():
        together, _ = answer_logprobs(model, pad_left(items, tok.pad_token_id))
        for i, item in enumerate(items):
            alone, _ = answer_logprobs(model, pad_left([item], tok.pad_token_id))
            torch.testing.assert_close(together[i].sum(), alone.sum(), atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lr": 0.0}, "lr must be in"),
        ({"lr": 5.0}, "lr must be in"),
        ({"batch_size": 0}, "batch_size must be a positive"),
        ({"batch_size": 10, "grad_accum_steps": 3}, "not divisible by grad_accum_steps"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"gradient_checkpointing": True, "dropout": False}, "needs dropout on"),
    ],
)
def test_nonsense_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_unknown_and_mistyped_settings_are_refused():
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        TrainConfig.from_dict({"batch_sise": 8})
    with pytest.raises(TypeError, match="'lr' must be float"):
        TrainConfig(lr="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown method 'road_3'"):
        split_settings({"method": "road_3"})
    spec, config = split_settings({"method": "lora", "max_steps": 5})
    assert config.lr == 3e-4 and config.max_steps == 5 and spec.method == "lora"


def test_cli_refuses_bad_settings_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-o", str(out), "--lr", "-1"]) == 2
    assert "lr must be in" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1e-3}))
    assert main(["train", "-o", str(out), "--config", str(bad)]) == 2
    assert "unknown setting 'learning_rate'" in capsys.readouterr().err
    assert main(["train", "-o", str(out), "--task", "multiemo_eng"]) == 2
    assert "multiemo_en" in capsys.readouterr().err
    assert not out.exists()
