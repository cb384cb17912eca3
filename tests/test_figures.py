"""Figures: each function draws the table it is given (from a real adapter on the embedded
MiniLM) into a Figure with the expected axes, labels and colour bars."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from road_interp import RoadConfig, RoadModel, load_model, load_tokenizer
from road_interp.analysis import drift, figures, importance, stats

pytestmark = pytest.mark.real

TEXTS = ["A lovely, quiet hotel.", "The food was cold and the staff rude.", "It was fine."]


@pytest.fixture(scope="module")
def tables():
    """Plane tables of two random-init RoAd1 adapters on MiniLM, their summaries, comparison,
    drift and importance (small, but every table comes from the library's own functions)."""
    road = RoadModel(load_model("minilm", task="encoder"))
    config = RoadConfig(variant="road_1", group_size=64, targets="all-linear", init="random")
    road.add_adapter("sentiment", config, seed=0, activate=False)
    road.add_adapter("facts", config, seed=1, activate=False)
    a = stats.plane_table(road.adapter_file("sentiment"), name="sentiment")
    b = stats.plane_table(road.adapter_file("facts"), name="facts")
    tok = load_tokenizer("minilm")
    drifts = []
    for name in ("sentiment", "facts"):
        road.set_active(name)
        batches = drift.text_batches(tok, TEXTS)
        drifts.append(drift.representation_drift(road, batches, progress=False))
    batch = tok(TEXTS, return_tensors="pt", padding=True)

    def metric(model):  # closeness of the last hidden state to the adapted one: higher is better
        with torch.no_grad():
            return -float((model(**batch).last_hidden_state - target).abs().mean())

    with torch.no_grad():
        target = road(**batch).last_hidden_state
    groups = importance.groups_by(a[stats.strong_planes(a)], "layer")
    road.set_active("sentiment")
    imp = importance.plane_importance(road, "sentiment", groups, metric, progress=False)
    return {
        "planes": a,
        "both": pd.concat([a, b], ignore_index=True),
        "summary": stats.summarize(pd.concat([a, b], ignore_index=True)),
        "comparison": stats.compare(a, b),
        "paired": stats.paired_planes(a, b),
        "similarity": stats.similarity(pd.concat([a, b], ignore_index=True), "theta_pearson"),
        "drift": pd.concat(drifts, ignore_index=True),
        "importance": imp,
    }


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def colorbar_labels(fig: Figure) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_layer_module_heatmap_per_adapter(tables):
    fig = figures.layer_module_heatmap(tables["summary"])
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == ["sentiment", "facts"]
    for ax in panels:
        assert ax.get_xlabel() == "module type" and ax.get_ylabel() == "layer"
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks[:2] == ["attention.self.query", "attention.self.key"]
        assert [t.get_text() for t in ax.get_yticklabels()] == [
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "other",
        ]
    assert colorbar_labels(fig) == ["mean |θ| (degrees)"]
    alpha = figures.layer_module_heatmap(tables["summary"], "mean_abs_alpha_dev")
    assert colorbar_labels(alpha) == ["mean |α − 1|"]
    assert png(fig).startswith(b"\x89PNG")


def test_overlap_heatmap_from_a_comparison(tables):
    fig = figures.layer_module_heatmap(tables["comparison"], "jaccard")
    assert fig.axes[0].get_title() == "sentiment vs facts"
    assert colorbar_labels(fig) == ["Jaccard overlap of strongly rotated planes"]
    corr = figures.layer_module_heatmap(tables["comparison"], "theta_pearson")
    assert corr.axes[-1].get_ylim() == (-1.0, 1.0)  # diverging scale centred on 0


def test_angle_histogram_and_polar_view(tables):
    fig = figures.angle_histogram(tables["planes"])
    (ax,) = fig.axes
    assert ax.get_xlabel() == "θ (degrees)" and ax.get_ylabel() == "planes (log scale)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "attention.self.query (1152)" and len(legend) == 7  # 6 types + pooler
    by_adapter = figures.angle_histogram(tables["both"])
    assert [t.get_text() for t in by_adapter.axes[0].get_legend().get_texts()] == [
        "sentiment (10560)",
        "facts (10560)",
    ]
    polar = figures.polar_view(tables["planes"])
    assert polar.axes[0].name == "polar" and colorbar_labels(polar) == ["layer"]
    assert "sentiment" in polar.axes[0].get_title()
    assert png(polar).startswith(b"\x89PNG")


def test_angle_scatter_and_similarity(tables):
    fig = figures.angle_scatter(tables["paired"])
    (ax,) = fig.axes
    assert (
        ax.get_xlabel() == "θ in sentiment (degrees)" and ax.get_ylabel() == "θ in facts (degrees)"
    )
    assert ax.get_title().startswith("Angles per shared plane (Pearson r = ")
    sim = figures.similarity_heatmap(tables["similarity"], "theta_pearson")
    assert [t.get_text() for t in sim.axes[0].get_xticklabels()] == ["sentiment", "facts"]
    assert colorbar_labels(sim) == ["Pearson correlation of θ"]


def test_drift_curves(tables):
    fig = figures.drift_curves(tables["drift"])
    ax_m, ax_c = fig.axes
    assert ax_m.get_xlabel() == ax_c.get_xlabel() == "layer (0 = embeddings)"
    assert ax_m.get_ylabel().startswith("ΔM") and ax_c.get_ylabel() == "cos(x, x0)"
    assert len(ax_m.get_lines()) == 2  # one curve per adapter
    assert fig.get_suptitle() == "Representation drift per layer (3 examples)"


def test_importance_bars(tables):
    table = tables["importance"]
    fig = figures.importance_bars(table)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table["group"])
    assert ax.get_xlabel() == "metric drop when the planes are reset"
    assert ax.get_title().startswith("Plane importance (metric")


def test_figures_refuse_empty_or_wrong_tables(tables):
    with pytest.raises(ValueError, match="table is empty"):
        figures.angle_histogram(tables["planes"].iloc[:0])
    with pytest.raises(ValueError, match="lacks"):
        figures.drift_curves(tables["planes"])
    with pytest.raises(ValueError, match="at most 12"):
        figures.angle_histogram(tables["planes"], hue="site")


def test_layer_profile_lines_per_adapter_and_per_module(tables):
    per_layer = stats.summarize(tables["both"], ("layer",))
    fig = figures.layer_profile(per_layer)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() == "mean |θ| (degrees)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sentiment", "facts"]
    assert all(len(line.get_xdata()) == 6 for line in ax.get_lines())  # the pooler has no layer
    one = tables["summary"][tables["summary"]["adapter"] == "sentiment"]
    by_module = figures.layer_profile(one, "share_rotated", hue="module_type")
    assert len(by_module.axes[0].get_lines()) == 6
    with pytest.raises(ValueError, match="one row per layer"):
        figures.layer_profile(tables["summary"])  # two adapters, six modules per layer


def test_drift_curves_take_several_tables(tables):
    parts = [part for _, part in tables["drift"].groupby("adapter", sort=False)]
    fig = figures.drift_curves(parts)
    assert len(fig.axes[0].get_lines()) == 2
    with pytest.raises(ValueError, match="no drift tables"):
        figures.drift_curves([])
