"""The finetuning grid (issue 12): its phases, resuming, the chosen learning rates, the summary's
intervals and verdicts, the parameter budget, the drift study's measures and the frozen-base
step of the training benchmark. Cells are computed by fakes or on tiny models: fast."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from experiments.composition.store import ResultStore, run_cells
from experiments.finetune import budget, drift_study, summary
from experiments.finetune.grid import PRESETS, Group, Preset, cells, chosen_lr, key, only
from tests.conftest import tiny_bert, tiny_llama

matplotlib.use("Agg")
N_TEST = 2000


def preset(gate_points: float = 10.0) -> Preset:
    group = Group.from_dict(
        {
            "model": "minilm",
            "tasks": ["multiemo_en"],
            "methods": ["road_1", "lora"],
            "lrs": {"road_1": [1e-3, 1e-2], "lora": [1e-4, 1e-3]},
            "gate": {"method": "lora", "lr": 1e-3, "points": gate_points},
            "settings": {"max_steps": 5},
        }
    )
    return Preset("t", "test preset", (group,), pilot_seeds=(0, 1), seeds=(0, 1, 2))


def fake_compute(accuracy: dict[tuple[str, float], float], calls: list[str]):
    """A cell whose validation score is ``accuracy[(method, lr)]`` and whose test correctness
    is that share of N_TEST items (the first ones), the same for every seed."""

    def compute(group, settings, folder):
        method, lr, seed = settings["method"], settings.get("lr"), settings["seed"]
        calls.append(key(group.model, settings["task"], method, seed, lr))
        acc = accuracy[(method, lr)]
        correct = "".join("1" if i < acc * N_TEST else "0" for i in range(N_TEST))
        return {
            "model": group.model, "task": settings["task"], "method": method, "seed": seed,
            "lr": lr, "validation": acc, "validation_majority": 0.58, "test_correct": correct,
            "trainable_params": 100 if method == "road_1" else 1600, "trainable_pct": 0.1,
            "metric": "accuracy", "majority": 0.58, "train_seconds": 1.0, "device": "cpu",
        }  # fmt: skip

    return compute


def run_grid(p, store, accuracy, calls, budget_minutes=None):
    return run_cells(
        cells(p, store, store.folder, compute=fake_compute(accuracy, calls)),
        store,
        budget_minutes,
        log=lambda _: None,
    )


ACCURACY = {
    ("road_1", 1e-3): 0.80,
    ("road_1", 1e-2): 0.86,
    ("lora", 1e-4): 0.82,
    ("lora", 1e-3): 0.865,
}


def test_phases_in_order_sweep_reused_and_a_second_sitting_runs_nothing(tmp_path):
    p, calls = preset(), []
    store = ResultStore(tmp_path)
    assert run_grid(p, store, ACCURACY, calls)
    gate = key("minilm", "multiemo_en", "lora", 0, 1e-3)
    assert calls[0] == gate and calls.count(gate) == 1  # the gate cell is also a sweep cell
    # sweep: 2 methods x 2 lrs x 2 pilot seeds; final: seed 2 at each chosen lr
    assert len(calls) == 8 + 2
    assert chosen_lr(p.groups[0], "multiemo_en", "road_1", p.pilot_seeds, store) == 1e-2
    assert calls[-2:] == [
        key("minilm", "multiemo_en", "road_1", 2, 1e-2),
        key("minilm", "multiemo_en", "lora", 2, 1e-3),
    ]
    again = []
    assert run_grid(p, ResultStore(tmp_path), ACCURACY, again) and again == []


def test_budget_stops_between_cells_and_the_next_sitting_continues(tmp_path):
    p, calls = preset(), []
    assert not run_grid(p, ResultStore(tmp_path), ACCURACY, calls, budget_minutes=0)
    assert calls == []
    assert run_grid(p, ResultStore(tmp_path), ACCURACY, calls)
    assert len(calls) == 10


def test_prompted_bases_are_not_swept_and_few_shot_runs_at_every_seed(tmp_path):
    base = preset().groups[0]
    group = Group.from_dict(
        {"model": "smollm2", "tasks": ["multiemo_en"], "gate": base.gate,
         "methods": ["road_1", "zero_shot", "few_shot"], "lrs": {"road_1": [1e-2]}}
    )  # fmt: skip
    p, calls = Preset("t", "", (group,), pilot_seeds=(0, 1), seeds=(0, 1, 2)), []
    accuracy = {("road_1", 1e-2): 0.8, ("zero_shot", None): 0.5, ("few_shot", None): 0.6}
    accuracy[("lora", 1e-3)] = 0.8  # the gate cell
    store = ResultStore(tmp_path)
    assert run_grid(p, store, accuracy, calls)
    untrained = [c for c in calls if "shot" in c]
    assert untrained == [key("smollm2", "multiemo_en", "zero_shot", 0, None)] + [
        key("smollm2", "multiemo_en", "few_shot", s, None) for s in (0, 1, 2)
    ]
    rows = {r["method"]: r for r in summary.build(p, store)["table"]}
    assert len(rows["few_shot"]["seeds"]) == 3 and len(rows["zero_shot"]["seeds"]) == 1


def test_a_task_that_fails_its_gate_gets_no_sweep(tmp_path):
    p, calls = preset(gate_points=40), []  # 86.5 is not 40 points over 58
    store = ResultStore(tmp_path)
    assert run_grid(p, store, ACCURACY, calls)
    assert calls == [key("minilm", "multiemo_en", "lora", 0, 1e-3)]
    built = summary.build(p, store)
    assert built["gates"][0]["passed"] is False and built["table"] == []


def test_summary_intervals_and_verdicts(tmp_path):
    p = preset()
    store = ResultStore(tmp_path)
    run_grid(p, store, ACCURACY, [])
    built = summary.build(p, store)
    rows = {r["method"]: r for r in built["table"]}
    low, mean, high = rows["road_1"]["metric"]
    assert mean == pytest.approx(0.86) and low < mean < high
    assert rows["road_1"]["lr"] == 1e-2 and rows["road_1"]["seeds"] == [0, 1, 2]
    diff = next(d for d in built["differences"] if d["difference"] == "road_1 - lora")
    assert diff["value"][1] == pytest.approx(-0.005)
    assert diff["params_ratio"] == pytest.approx(100 / 1600)
    # nested correct sets: the paired interval is narrow, wholly above -1 point
    assert diff["value"][0] >= -0.01 and diff["verdict"] == "met"
    text = summary.markdown(built)
    assert "road_1 - lora" in text and "met" in text
    summary.write(p, store, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["differences"]


def test_verdict_not_met_and_not_established(tmp_path):
    worse = {**ACCURACY, ("road_1", 1e-2): 0.80, ("road_1", 1e-3): 0.79}
    store = ResultStore(tmp_path / "worse")
    run_grid(preset(), store, worse, [])
    diff = summary.build(preset(), store)["differences"][0]
    assert diff["verdict"] == "not met"
    # seeds missing: never "met", whatever the interval says
    p = preset()
    store = ResultStore(tmp_path / "partial")
    run_grid(p, store, ACCURACY, [])
    lines = store.path.read_text().splitlines()
    store.path.write_text("\n".join(line for line in lines if "seed2" not in line) + "\n")
    diff = summary.build(p, ResultStore(tmp_path / "partial"))["differences"][0]
    assert diff["verdict"] == "not established"


def test_only_cuts_the_preset_to_models_tasks_and_methods():
    full = Preset.load("full")
    cut = only(full, ["smollm2"], ["gym_chain_sum", "multiemo4_en"])
    assert [(g.model, g.tasks) for g in cut.groups] == [("smollm2", ("gym_chain_sum",))]
    assert only(full, None, None) == full
    assert [g.model for g in only(full, None, ["multiemo_en"]).groups] == ["minilm", "smollm2"]
    with pytest.raises(SystemExit, match="no group"):
        only(full, ["minilm"], ["gym_chain_sum"])
    first = only(full, ["minilm"], ["multiemo_en"], ["road_1", "lora", "zero_shot"])
    assert first.groups[0].methods == ("road_1", "lora")
    assert first.groups[0].gate == full.groups[0].gate
    with pytest.raises(SystemExit, match="methods"):
        only(full, ["minilm"], None, ["zero_shot"])
    with pytest.raises(SystemExit, match="unknown methods \\['road1'\\]"):
        only(full, None, None, ["road1", "lora"])


def test_committed_presets_are_valid():
    for path in PRESETS.glob("*.json"):
        Preset.load(path.stem).validate()


def test_budget_counts_are_exact_on_tiny_models():
    llama = tiny_llama()
    rows = budget.budget_rows("tiny", llama, {"all linear (default)": "default", "o": ("o_proj",)})
    by = {(r["targets"], r["method"]): r for r in rows}
    o_layers = [m for n, m in llama.named_modules() if n.endswith("o_proj")]
    d = sum(m.weight.shape[0] for m in o_layers)
    assert by[("o", "road_1")]["params"] == d and by[("o", "road_4")]["params"] == 4 * d
    assert by[("o", "lora r=8")]["params"] == 8 * sum(sum(m.weight.shape) for m in o_layers)
    budget.check_against_model(tiny_llama(), rows)
    bert = budget.budget_rows("bert", tiny_bert(), {"all linear (default)": "default"})
    assert {r["method"] for r in bert} >= {"road_1", "road_2", "road_4", "lora r=8"}


def test_drift_measures_per_layer():
    x0 = [torch.randn(5, 8, dtype=torch.float64) for _ in range(3)]
    same = drift_study.drift_by_layer(x0, x0)
    assert np.allclose(same[["delta_m", "delta_d", "angle_deg"]].to_numpy(), 0.0, atol=1e-6)
    scaled = drift_study.drift_by_layer([1.5 * x for x in x0], x0)
    assert np.allclose(scaled["delta_m"], 0.5) and np.allclose(scaled["delta_d"], 0.0)
    records = [
        {"method": m, "seed": s, "layers": drift_study.drift_by_layer([x * (1 + s) for x in x0], x0).to_dict("records")}
        for m in ("full", "road_1")
        for s in (1, 2)
    ]  # fmt: skip
    table = drift_study.summarize(records)
    assert len(table) == 6 and (table["seeds"] == 2).all()
    assert table["delta_m"].tolist() == pytest.approx([1.5] * 6)  # mean of 1 and 2
    fig = drift_study.drift_figure(table)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2


def test_drift_layer_states_of_a_tiny_encoder():
    model = tiny_bert()
    batch = {
        "input_ids": torch.randint(0, 50, (3, 6)),
        "attention_mask": torch.ones(3, 6, dtype=torch.long),
    }
    states = drift_study.layer_states(model, [batch], "mean")
    assert len(states) == model.config.num_hidden_layers + 1 and states[0].shape == (
        3,
        model.config.hidden_size,
    )


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_bench_frozen_base_step_runs_backward_without_weights(clock):
    pytest.importorskip("peft")
    from experiments import bench_train_step

    model = bench_train_step.build(tiny_llama(), bench_train_step.FROZEN)
    assert not any(p.requires_grad for p in model.parameters())
    batch = {
        "input_ids": torch.randint(0, 50, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
    }
    step, params = bench_train_step.step_fn(model, batch, causal=True, clock=clock)
    assert params == 0 and step() > 0


def test_summary_table_frame_is_tidy(tmp_path):
    p = preset()
    store = ResultStore(tmp_path)
    run_grid(p, store, ACCURACY, [])
    sweep = pd.DataFrame(summary.build(p, store)["sweep"])
    assert set(sweep["lr"]) == {1e-3, 1e-2, 1e-4} and (sweep["seeds"] == 2).all()


def test_seed_level_widens_the_interval_and_one_seed_is_the_item_bootstrap():
    from road_interp.intervals import paired_bootstrap

    rng = np.random.default_rng(0)
    one = (rng.random((1, 500)) < 0.8).astype(float)
    assert summary.seeds_and_items(np.mean, one) == paired_bootstrap(np.mean, one)
    steady = np.repeat(one, 4, axis=0)
    noisy = steady.copy()
    noisy[:2, :60] = 1 - noisy[:2, :60]  # two seeds of four disagree on 60 items
    width = lambda v: v[2] - v[0]  # noqa: E731
    assert width(summary.seeds_and_items(np.mean, noisy)) > width(paired_bootstrap(np.mean, noisy))
    low, point, high = summary.seeds_and_items(summary.difference, noisy, steady)
    assert point == pytest.approx(noisy.mean() - steady.mean()) and low < point < high
