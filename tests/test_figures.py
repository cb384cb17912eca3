"""Figures: each function draws the values of the table it is given (checked on the artists:
image arrays, scatter offsets, line and bar data, interval widths), into its own Figure or
into an Axes the caller passes (panels compose), with readable labels and colour scales that
span the data. Tables come from real adapters on the embedded MiniLM, or are built by hand
where a known answer is needed (several seeds)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from road_interp import RoadConfig, RoadModel, load_model, load_tokenizer
from road_interp.analysis import drift, figures, importance, stats

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


def colorbars(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def colorbar_labels(fig: Figure) -> list[str]:
    return [ax.get_ylabel() for ax in colorbars(fig)]


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def image_of(ax) -> AxesImage:
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    return image


def seeded_summary() -> pd.DataFrame:
    """Per-layer summaries of one adapter trained with three seeds (known mean and spread)."""
    rows = []
    for seed, shift in zip((0, 1, 2), (-1.0, 0.0, 1.0), strict=True):
        for layer in range(4):
            rows.append(
                {
                    "adapter": "emo",
                    "seed": seed,
                    "layer": layer,
                    "module_type": "mlp.up_proj",
                    "mean_abs_theta_deg": 2.0 + layer + shift,
                }  # fmt: skip
            )
    return pd.DataFrame(rows)


# -- heatmaps -----------------------------------------------------------------------------------
@pytest.mark.real
def test_layer_module_heatmap_draws_the_summary_on_a_fitted_scale(tables):
    summary = tables["summary"]
    fig = figures.layer_module_heatmap(summary)
    assert [ax.get_title() for ax in panels(fig)] == ["sentiment", "facts"]
    for ax in panels(fig):
        assert ax.get_xlabel() == "module type" and ax.get_ylabel() == "layer"
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks[:2] == ["attention.self.query", "attention.self.key"]
        rows = [t.get_text() for t in ax.get_yticklabels()]
        assert rows == ["0", "1", "2", "3", "4", "5", "other"]
        # the drawn cell (layer 3, key) is the table's value
        part = summary[(summary["adapter"] == ax.get_title()) & (summary["layer"] == 3)]
        expected = part.loc[part["module_type"] == "attention.self.key", "mean_abs_theta_deg"]
        assert image_of(ax).get_array()[3, 1] == pytest.approx(float(expected.iloc[0]))
    low, high = image_of(panels(fig)[0]).get_clim()
    assert (low, high) == pytest.approx(
        (summary["mean_abs_theta_deg"].min(), summary["mean_abs_theta_deg"].max())
    )  # fitted to the data, not from 0
    assert low > 0
    assert colorbar_labels(fig) == ["mean |θ| (degrees)"]
    alpha = figures.layer_module_heatmap(summary, "mean_abs_alpha_dev")
    assert colorbar_labels(alpha) == ["mean |α − 1|"]
    assert png(fig).startswith(b"\x89PNG")


@pytest.mark.real
def test_overlap_heatmap_from_a_comparison(tables):
    comparison = tables["comparison"]
    fig = figures.layer_module_heatmap(comparison, "jaccard")
    assert fig.axes[0].get_title() == "sentiment vs facts"
    assert colorbar_labels(fig) == ["Jaccard overlap of strongly rotated planes"]
    corr = figures.layer_module_heatmap(comparison, "theta_pearson")
    top = comparison["theta_pearson"].abs().max()
    assert image_of(corr.axes[0]).get_clim() == pytest.approx((-top, top))  # centred on 0
    assert top < 0.5  # two random adapters: a fixed ±1 scale would wash the cells out


def test_heatmap_averages_seeds_and_draws_into_given_axes():
    table = seeded_summary()
    fig = Figure()
    ax = fig.subplots()
    assert figures.layer_module_heatmap(table, ax=ax) is fig
    np.testing.assert_allclose(image_of(ax).get_array()[:, 0], [2.0, 3.0, 4.0, 5.0])
    assert "mean of 3 seeds" in ax.get_title()
    with pytest.raises(ValueError, match="pass as many axes"):
        figures.layer_module_heatmap(table, ax=list(Figure().subplots(1, 2)))


@pytest.mark.real
def test_similarity_heatmap_leaves_the_diagonal_out_of_the_scale(tables):
    matrix = tables["similarity"]
    fig = figures.similarity_heatmap(matrix, "theta_pearson")
    (ax,) = panels(fig)
    drawn = image_of(ax).get_array()
    assert np.ma.is_masked(drawn[0, 0]) or math.isnan(drawn[0, 0])
    value = float(matrix.iloc[0, 1])
    assert drawn[0, 1] == pytest.approx(value)
    assert image_of(ax).get_clim() == pytest.approx((-abs(value), abs(value)))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sentiment", "facts"]
    assert colorbar_labels(fig) == ["Pearson correlation of θ"]


# -- lines --------------------------------------------------------------------------------------
@pytest.mark.real
def test_layer_profile_lines_per_adapter_and_per_module(tables):
    per_layer = stats.summarize(tables["both"], ("layer",))
    fig = figures.layer_profile(per_layer)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() == "mean |θ| (degrees)"
    assert legend_texts(ax) == ["sentiment", "facts"]
    assert ax.get_legend().get_title().get_text() == "adapter"
    first = per_layer[per_layer["adapter"] == "sentiment"].dropna(subset=["layer"])
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), first["layer"].astype(int))
    np.testing.assert_allclose(line.get_ydata(), first["mean_abs_theta_deg"])
    assert all(len(line.get_xdata()) == 6 for line in ax.get_lines())  # the pooler has no layer
    one = tables["summary"][tables["summary"]["adapter"] == "sentiment"]
    by_module = figures.layer_profile(one, "share_rotated", hue="module_type")
    assert len(by_module.axes[0].get_lines()) == 6
    assert by_module.axes[0].get_legend().get_title().get_text() == "module type"
    with pytest.raises(ValueError, match="one row per layer"):
        figures.layer_profile(tables["summary"])  # two adapters, six modules per layer


def test_layer_profile_shows_the_spread_of_seeds():
    fig = figures.layer_profile(seeded_summary())
    (ax,) = fig.axes
    line = ax.get_lines()[0]  # (the others are the error bars' caps)
    np.testing.assert_allclose(line.get_ydata(), [2.0, 3.0, 4.0, 5.0])  # mean of the seeds
    (bars,) = [c for c in ax.collections if c.get_segments()]
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2 dof) · sd / √n, sd = 1
    for segment in bars.get_segments():
        assert segment[1][1] - segment[0][1] == pytest.approx(2 * half, rel=1e-3)
    assert "mean of 3 seeds, bars: 95 % t-interval" in ax.get_title()


@pytest.mark.real
def test_drift_curves_draw_means_and_their_intervals(tables):
    table = tables["drift"]
    fig = figures.drift_curves(table)
    ax_m, ax_c = fig.axes
    assert ax_m.get_xlabel() == ax_c.get_xlabel() == "layer (0 = embeddings)"
    assert ax_m.get_ylabel().startswith("ΔM") and ax_c.get_ylabel() == "cos(x, x0)"
    assert len(ax_m.get_lines()) == 2  # one curve per adapter
    first = table[table["adapter"] == "sentiment"].sort_values("layer")
    np.testing.assert_allclose(ax_c.get_lines()[0].get_ydata(), first["cos_mean"])
    band = [c for c in ax_c.collections if isinstance(c, PolyCollection)][0]
    top = band.get_paths()[0].vertices[:, 1].max()
    half = first["cos_std"] * 4.303 / math.sqrt(3)  # 3 examples: t(0.975, 2 dof)
    assert top == pytest.approx(float((first["cos_mean"] + half).max()), rel=1e-6)
    assert fig.get_suptitle().startswith("Representation drift per layer (3 examples)")
    assert "95 % interval of the mean" in fig.get_suptitle()


@pytest.mark.real
def test_drift_curves_take_several_tables_and_two_axes(tables):
    parts = [part for _, part in tables["drift"].groupby("adapter", sort=False)]
    fig = figures.drift_curves(parts)
    assert len(fig.axes[0].get_lines()) == 2
    with pytest.raises(ValueError, match="no drift tables"):
        figures.drift_curves([])
    outer = Figure()
    axes = outer.subplots(1, 2)
    assert figures.drift_curves(parts, ax=axes) is outer
    with pytest.raises(ValueError, match="two panels"):
        figures.drift_curves(parts, ax=axes[0])


# -- angles -------------------------------------------------------------------------------------
@pytest.mark.real
def test_angle_histogram_counts_every_plane(tables):
    planes = tables["planes"]
    fig = figures.angle_histogram(planes)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "θ (degrees)" and ax.get_ylabel() == "planes (log scale)"
    legend = legend_texts(ax)
    assert legend[0] == "attention.self.query (1152)" and len(legend) == 7  # 6 types + pooler
    assert ax.get_legend().get_title().get_text() == "module type (planes)"
    query = planes.loc[planes["module_type"] == "attention.self.query", "theta_deg"]
    extent = planes["theta_deg"].abs().max() * 1.02  # 61 bins over ±(largest |θ|)
    counts, _ = np.histogram(query, bins=np.linspace(-extent, extent, 62))
    outline = ax.patches[0].get_xy()[:, 1]
    assert outline.max() == counts.max()
    by_adapter = figures.angle_histogram(tables["both"])
    assert legend_texts(by_adapter.axes[0]) == ["sentiment (10560)", "facts (10560)"]


@pytest.mark.real
def test_theta_alpha_scatter_draws_each_plane_on_cartesian_axes(tables):
    planes = tables["planes"]
    fig = figures.theta_alpha_scatter(planes)
    ax = panels(fig)[0]
    assert ax.name == "rectilinear"
    assert ax.get_xlabel() == "θ (degrees)" and ax.get_ylabel().startswith("α")
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    drawn = np.asarray(points.get_offsets())
    assert len(drawn) == len(planes)
    np.testing.assert_allclose(np.sort(drawn[:, 0]), np.sort(planes["theta_deg"]), rtol=1e-6)
    np.testing.assert_allclose(np.sort(drawn[:, 1]), np.sort(planes["alpha"]), rtol=1e-6)
    assert colorbar_labels(fig) == ["layer"]
    # small angles stay readable: the x axis spans the data, not a full circle
    assert ax.get_xlim()[1] < 2 * planes["theta_deg"].abs().max()
    by_module = figures.theta_alpha_scatter(planes, color="module_type")
    texts = legend_texts(by_module.axes[0])
    assert texts[0] == "attention.self.query (1152)" and len(texts) == 7
    sampled = figures.theta_alpha_scatter(planes, max_points=500)
    assert "500 of 10560 shown" in sampled.axes[0].get_title()
    assert png(fig).startswith(b"\x89PNG")


@pytest.mark.real
def test_angle_scatter_draws_every_shared_plane_without_empty_legend_entries(tables):
    paired = tables["paired"]
    fig = figures.angle_scatter(paired)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "θ in sentiment (degrees)"
    assert ax.get_ylabel() == "θ in facts (degrees)"
    assert ax.get_title().startswith("Angles per shared plane (Pearson r = ")
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn == len(paired)
    labels = legend_texts(ax)
    assert all(not label.endswith("(0)") for label in labels)
    none_strong = paired.assign(strong_a=False, strong_b=False)
    only = figures.angle_scatter(none_strong).axes[0]
    assert legend_texts(only) == [f"neither ({len(paired)})", "θ equal in both"]


# -- importance ---------------------------------------------------------------------------------
@pytest.mark.real
def test_importance_bars_draw_each_groups_value(tables):
    table = tables["importance"]
    fig = figures.importance_bars(table)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table["group"])
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    np.testing.assert_allclose([b.get_width() for b in bars], table["drop"])
    assert ax.get_xlabel() == "metric drop when the planes are reset"
    assert ax.get_title().startswith("Plane importance (metric")


def test_importance_bars_show_zeros_and_seed_intervals():
    table = pd.DataFrame(
        {
            "group": ["layer 0", "layer 1", "layer 2"] * 2,
            "seed": [0, 0, 0, 1, 1, 1],
            "drop": [0.10, 0.0, 0.02, 0.20, 0.0, 0.04],
        }  # fmt: skip
    )
    fig = figures.importance_bars(table)
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    np.testing.assert_allclose([b.get_width() for b in bars], [0.15, 0.03, 0.0])
    markers = ax.get_lines()[0]
    np.testing.assert_allclose(markers.get_xdata(), [0.15, 0.03, 0.0])  # the zero is visible
    assert [t.get_text() for t in ax.texts] == ["0.15", "0.03", "0"]
    (errors,) = [c for c in ax.collections if c.get_segments()]
    widths = [s[1][0] - s[0][0] for s in errors.get_segments()]
    half = 12.706 * np.array([0.05, 0.01, 0.0]) * math.sqrt(2) / math.sqrt(2)  # sd/√2 · t(1)
    np.testing.assert_allclose(widths, 2 * half, rtol=1e-3)
    assert "mean of 2 seeds" in ax.get_title()


# -- composing and refusing ---------------------------------------------------------------------
@pytest.mark.real
def test_every_figure_draws_into_a_given_axes(tables):
    fig = Figure(figsize=(14, 10), layout="constrained")
    grid = fig.subplots(3, 3).reshape(-1)
    one = tables["summary"][tables["summary"]["adapter"] == "sentiment"]
    calls = [
        lambda ax: figures.layer_module_heatmap(one, ax=ax),
        lambda ax: figures.similarity_heatmap(tables["similarity"], "theta_pearson", ax=ax),
        lambda ax: figures.layer_profile(stats.summarize(tables["both"], ("layer",)), ax=ax),
        lambda ax: figures.angle_histogram(tables["planes"], ax=ax),
        lambda ax: figures.theta_alpha_scatter(tables["planes"], ax=ax),
        lambda ax: figures.angle_scatter(tables["paired"], ax=ax),
        lambda ax: figures.importance_bars(tables["importance"], ax=ax),
    ]
    for ax, call in zip(grid, calls, strict=False):
        assert call(ax) is fig
        assert ax.has_data()
    figures.drift_curves(tables["drift"], ax=grid[7:9])
    assert grid[7].has_data() and grid[8].has_data()
    assert png(fig).startswith(b"\x89PNG")


@pytest.mark.real
def test_figures_refuse_empty_or_wrong_tables(tables):
    with pytest.raises(ValueError, match="table is empty"):
        figures.angle_histogram(tables["planes"].iloc[:0])
    with pytest.raises(ValueError, match="lacks"):
        figures.drift_curves(tables["planes"])
    with pytest.raises(ValueError, match="at most 12"):
        figures.angle_histogram(tables["planes"], hue="site")
    with pytest.raises(TypeError, match="matplotlib Axes"):
        figures.angle_histogram(tables["planes"], ax="left")
