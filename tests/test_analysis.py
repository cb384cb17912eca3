"""Analysis: statistics from adapter files (known answers, PEFT folders), drift, plane
importance, and the ``analyze`` command."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_bert, tiny_llama

from road_interp import RoadConfig, RoadModel, rotation
from road_interp.analysis import drift, importance, stats
from road_interp.cli import main
from road_interp.io import AdapterFile, read_adapter

VARIANTS = ("road_1", "road_2", "road_4")


def synthetic(variant: str, group_size: int, sites: dict[str, tuple]) -> AdapterFile:
    """An adapter file from explicit (θ, α) per site."""
    params = {
        s: (torch.as_tensor(t).float(), torch.as_tensor(a).float()) for s, (t, a) in sites.items()
    }
    config = RoadConfig(variant=variant, group_size=group_size, targets=tuple(params))
    return AdapterFile(config, {"model_type": "llama"}, params)


# -- layout and tables --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size", [2, 4, 64])
def test_entry_layout_matches_rotation_coefficients(variant, group_size):
    d = 128
    theta, alpha = rotation.random_params(variant, d, torch.Generator().manual_seed(1))
    c, s = rotation.coefficients(variant, group_size, theta, alpha)
    a, b = rotation.plane_indices(d, group_size)
    idx = rotation.Layout(variant, group_size).entry_index(d)
    entries = stats.entry_table(synthetic(variant, group_size, {"m.layers.0.q": (theta, alpha)}))
    value = torch.tensor(entries["value"].to_numpy()).reshape(-1, 4)  # (planes, 4)
    dense = torch.stack((c[a], -s[a], s[b], c[b]), dim=1).double()
    torch.testing.assert_close(value, dense, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.tensor(entries["param_index"].to_numpy()).reshape(-1, 4), idx)
    # every stored parameter is read by exactly one plane
    assert sorted(idx.unique().tolist()) == list(range(theta.numel()))


def test_road1_plane_table_known_angles():
    angles = [10.0, -20.0, 0.0, 45.0, 170.0, -5.0, 1.5, 0.5]  # degrees, 8 planes of d = 16
    magnitudes = [1.0, 0.5, 1.0, 2.0, 1.1, 0.9, 1.0, 1.25]
    adapter = synthetic(
        "road_1",
        4,
        {
            "model.layers.3.self_attn.q_proj": (np.radians(angles), magnitudes),
            "model.layers.1.mlp.up_proj": (np.radians(angles[::-1]), magnitudes[::-1]),
        },
    )
    planes = stats.plane_table(adapter, name="toy")
    assert list(planes.columns) == list(stats.PLANE_COLUMNS)
    q = planes[planes["site"] == "model.layers.3.self_attn.q_proj"]
    np.testing.assert_allclose(q["theta_deg"], angles, atol=1e-5)
    np.testing.assert_allclose(q["alpha"], magnitudes, atol=1e-6)
    np.testing.assert_allclose(q["asymmetry"], 0.0, atol=1e-12)
    assert (q["layer"] == 3).all() and (q["module_type"] == "self_attn.q_proj").all()
    # group_size 4: plane k of group G pairs coordinates 4G + k and 4G + k + 2
    assert list(zip(q["coord_a"], q["coord_b"], strict=True))[:3] == [(0, 2), (1, 3), (4, 6)]
    # rows come sorted by layer, then module order
    assert planes["layer"].tolist() == [1] * 8 + [3] * 8

    summary = stats.summarize(planes, ("layer",), threshold_deg=5.0, quantiles=(0.5,))
    row = summary[summary["layer"] == 3].iloc[0]
    abs_angles = np.abs(angles)
    assert row["n_planes"] == 8
    assert row["mean_abs_theta_deg"] == pytest.approx(abs_angles.mean(), abs=1e-5)
    assert row["q50_abs_theta_deg"] == pytest.approx(np.median(abs_angles), abs=1e-5)
    assert row["max_abs_theta_deg"] == pytest.approx(170.0, abs=1e-4)
    assert row["share_rotated"] == pytest.approx(np.mean(abs_angles > 5.0))
    assert row["mean_abs_alpha_dev"] == pytest.approx(np.mean(np.abs(np.subtract(magnitudes, 1))))
    overall = stats.summarize(planes, ())
    assert len(overall) == 1 and overall["n_planes"].iloc[0] == 16


def test_road1_negative_alpha_and_wrapping_describe_the_block():
    adapter = synthetic("road_1", 2, {"h.0.attn": ([0.3, 2 * math.pi + 0.1], [-2.0, 1.0])})
    planes = stats.plane_table(adapter)
    # α = −2 at θ = 0.3 is a rotation by 0.3 − π scaled by 2; θ = 2π + 0.1 is θ = 0.1
    np.testing.assert_allclose(planes["theta"], [0.3 - math.pi, 0.1], atol=1e-6)
    np.testing.assert_allclose(planes["alpha"], [2.0, 1.0], atol=1e-6)


def test_road2_rows_average_to_the_nearest_scaled_rotation():
    # plane (0, 1): row a rotates by 0.2, row b by 0.4 -> effective 0.3, α = cos 0.1
    # plane (2, 3): both rows 0.5 with α 1.5 -> exactly that rotation
    adapter = synthetic(
        "road_2", 2, {"enc.layer.0.query": ([0.2, 0.4, 0.5, 0.5], [1, 1, 1.5, 1.5])}
    )
    planes = stats.plane_table(adapter)
    np.testing.assert_allclose(planes["theta"], [0.3, 0.5], atol=1e-6)
    np.testing.assert_allclose(planes["alpha"], [math.cos(0.1), 1.5], atol=1e-6)
    assert planes["asymmetry"].iloc[0] > 0.05
    assert planes["asymmetry"].iloc[1] == pytest.approx(0.0, abs=1e-7)
    entries = stats.entry_table(adapter)
    first = entries[entries["plane"] == 0]
    np.testing.assert_allclose(first["theta"], [0.2, 0.2, 0.4, 0.4], atol=1e-7)
    assert first["row"].tolist() == ["a", "a", "b", "b"]


def test_parse_site_and_module_order():
    assert stats.parse_site("model.layers.12.mlp.up_proj") == (12, "mlp.up_proj")
    assert stats.parse_site("bert.encoder.layer.3.attention.self.query") == (
        3,
        "attention.self.query",
    )
    assert stats.parse_site("transformer.h.0.attn.c_attn") == (0, "attn.c_attn")
    assert stats.parse_site("bert.pooler.dense") == (None, "bert.pooler.dense")
    assert stats.parse_site("model.layers.15") == (15, "block")  # a block's own output
    order = stats.module_order(
        ["output.dense", "intermediate.dense", "attention.output.dense", "attention.self.query"]
    )
    assert order == [
        "attention.self.query",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]


def test_tables_come_in_numeric_layer_order():
    """layers.12 after layers.3 (not text order), also for block-output sites and summaries
    by site, whatever order the file lists its sites in."""
    layers = [12, 3, 0, 10, 2]
    sites = {f"model.layers.{i}": (np.full(4, 0.01 * i), np.ones(4)) for i in layers}
    sites.update({f"model.layers.{i}.mlp.up_proj": (np.zeros(4), np.ones(4)) for i in layers})
    planes = stats.plane_table(synthetic("road_1", 2, sites), name="toy")
    order = [0, 2, 3, 10, 12]
    assert planes.drop_duplicates("layer")["layer"].tolist() == order
    block = planes[planes["module_type"] == "block"]
    assert block.drop_duplicates("site")["site"].tolist() == [f"model.layers.{i}" for i in order]
    by_site = stats.summarize(planes, ("site",))
    assert by_site["site"].tolist() == [
        s for i in order for s in (f"model.layers.{i}.mlp.up_proj", f"model.layers.{i}")
    ]
    by_layer = stats.summarize(planes.iloc[::-1], ("layer",))  # any input order
    assert by_layer["layer"].tolist() == order
    np.testing.assert_allclose(
        by_layer["max_abs_theta_deg"], np.degrees([0.01 * i for i in order]), rtol=1e-5
    )
    two = stats.summarize(pd.concat([planes, planes.assign(adapter="other")]), ("layer",))
    assert two["adapter"].tolist() == ["toy"] * 5 + ["other"] * 5  # adapters stay together


# -- comparisons --------------------------------------------------------------------------------
def two_adapters():
    rng = np.random.default_rng(0)
    theta = rng.normal(0, 0.05, 32)
    a = synthetic("road_1", 4, {"m.layers.0.q_proj": (theta, np.ones(32))})
    b = synthetic("road_1", 4, {"m.layers.0.q_proj": (2 * theta, np.ones(32))})
    shuffled = synthetic("road_1", 4, {"m.layers.0.q_proj": (rng.permutation(theta), np.ones(32))})
    return (
        stats.plane_table(a, name="a"),
        stats.plane_table(b, name="b"),
        stats.plane_table(shuffled, name="c"),
    )


def test_compare_known_overlap_and_correlation():
    a, b, c = two_adapters()
    same = stats.compare(a, b, top_fraction=0.25)
    assert same["n_strong_a"].iloc[0] == 8 and same["n_strong_b"].iloc[0] == 8
    assert same["jaccard"].iloc[0] == 1.0
    assert same["theta_pearson"].iloc[0] == pytest.approx(1.0)
    assert same["abs_theta_spearman"].iloc[0] == pytest.approx(1.0)
    # a threshold: planes of a beyond 3° vs planes of b (angles doubled) beyond 3°
    by_threshold = stats.compare(a, b, threshold_deg=3.0)
    strong_a = set(np.flatnonzero(np.abs(a["theta_deg"]) > 3))
    strong_b = set(np.flatnonzero(np.abs(b["theta_deg"]) > 3))
    expected = len(strong_a & strong_b) / len(strong_a | strong_b)
    assert by_threshold["jaccard"].iloc[0] == pytest.approx(expected)
    other = stats.compare(a, c, top_fraction=0.25)
    sa = set(np.flatnonzero(stats.strong_planes(a, top_fraction=0.25)))
    sc = set(np.flatnonzero(stats.strong_planes(c, top_fraction=0.25)))
    assert other["jaccard"].iloc[0] == pytest.approx(len(sa & sc) / len(sa | sc))
    matrix = stats.similarity(pd.concat([a, b, c]), "theta_pearson")
    assert matrix.shape == (3, 3) and np.allclose(np.diag(matrix), 1.0)
    assert (
        matrix.loc["a", "b"] == pytest.approx(1.0) and matrix.loc["b", "c"] == matrix.loc["c", "b"]
    )


def test_compare_refuses_what_cannot_be_compared():
    a, b, _ = two_adapters()
    g2 = stats.plane_table(
        synthetic("road_1", 2, {"m.layers.0.q_proj": (np.zeros(32), np.ones(32))}), name="g2"
    )
    with pytest.raises(ValueError, match="pair coordinates differently"):
        stats.compare(a, g2)
    elsewhere = stats.plane_table(
        synthetic("road_1", 4, {"m.layers.1.k_proj": (np.zeros(32), np.ones(32))}), name="k"
    )
    with pytest.raises(ValueError, match="no site in common"):
        stats.compare(a, elsewhere)
    with pytest.raises(ValueError, match="distinct names"):
        stats.compare(a, a)
    with pytest.raises(ValueError, match="top_fraction"):
        stats.strong_planes(a, top_fraction=0.0)


def test_bad_tables_and_selections_give_clear_errors():
    a, _, _ = two_adapters()
    with pytest.raises(ValueError, match="table is empty"):
        stats.summarize(a.iloc[:0])
    with pytest.raises(ValueError, match="lacks"):
        stats.summarize(a.drop(columns="alpha"))
    with pytest.raises(ValueError, match=r"no layer \[7\]; it has \[0\]"):
        stats.select(a, layers=[7])
    with pytest.raises(ValueError, match="no module_type"):
        stats.select(a, module_types=["mlp.up_proj"])
    assert len(stats.select(a, layers=[0], module_types=["q_proj"])) == 32
    empty = AdapterFile(RoadConfig(), {}, {})
    with pytest.raises(ValueError, match="no sites"):
        stats.plane_table(empty)


# -- real files: ours and PEFT's ----------------------------------------------------------------
@pytest.fixture(scope="module")
def peft_folder(tmp_path_factory):
    """A PEFT RoAd adapter (random init) on a tiny Llama, saved with save_pretrained."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_llama(),
        peft.RoadConfig(
            variant="road_2",
            group_size=64,
            target_modules=["q_proj", "down_proj"],
            init_weights=False,
        ),  # fmt: skip
    )
    folder = tmp_path_factory.mktemp("peft") / "peft_road"
    model.save_pretrained(folder)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if "road_" in n}
    return folder, params


@pytest.fixture(scope="module")
def our_folders(tmp_path_factory):
    """Two of our RoAd1 adapters (random init, different seeds) on a tiny BERT."""
    root = tmp_path_factory.mktemp("ours")
    road = RoadModel(tiny_bert())
    config = RoadConfig(variant="road_1", group_size=4, init="random")
    road.add_adapter("first", config, seed=0)
    road.add_adapter("second", config, seed=1)
    return road.save_adapter("first", root / "first"), road.save_adapter("second", root / "second")


def test_plane_table_of_a_peft_folder_reads_peft_parameters(peft_folder):
    folder, params = peft_folder
    entries = stats.entry_table(folder)
    planes = stats.plane_table(folder)
    assert planes["adapter"].iloc[0] == "peft_road" and planes["variant"].iloc[0] == "road_2"
    assert set(planes["module_type"]) == {"self_attn.q_proj", "mlp.down_proj"}
    assert sorted(planes["layer"].unique()) == [0, 1]
    for name, value in params.items():
        if ".road_theta" not in name:
            continue
        site = name.removeprefix("base_model.model.").removesuffix(".road_theta.default")
        got = entries[entries["site"] == site].drop_duplicates("param_index")
        stored = value[torch.tensor(got["param_index"].to_numpy())].double().numpy()
        np.testing.assert_allclose(got["theta"], stored, rtol=0, atol=0)


def test_analyze_cli_writes_tables_and_figures(our_folders, tmp_path, capsys):
    first, second = our_folders
    out = tmp_path / "report"
    assert main(["analyze", str(first), "-o", str(out), "--compare", str(second)]) == 0
    printed = capsys.readouterr().out
    assert "first: road_1, group_size 4, 12 sites" in printed and "vs second" in printed
    expected = {
        "planes.csv", "entries.csv", "summary_layer_module.csv", "summary_layer.csv",
        "summary_module.csv", "summary.csv", "theta_heatmap.png", "alpha_heatmap.png",
        "angle_histogram.png", "theta_alpha.png", "comparison.csv", "overlap.png", "angle_scatter.png",
    }  # fmt: skip
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind
    planes = pd.read_csv(out / "planes.csv")
    theta, alpha = read_adapter(first).params["bert.encoder.layer.1.attention.self.query"]
    site = planes[planes["site"] == "bert.encoder.layer.1.attention.self.query"]
    np.testing.assert_allclose(site["alpha"].abs(), alpha.abs().numpy(), rtol=1e-6)
    comparison = pd.read_csv(out / "comparison.csv")
    assert len(comparison) == 12 and comparison["jaccard"].between(0, 1).all()
    assert (out / "theta_alpha.png").read_bytes()[:4] == b"\x89PNG"


def test_analyze_cli_on_a_peft_folder(peft_folder, tmp_path, capsys):
    folder, _ = peft_folder
    assert main(["analyze", str(folder), "-o", str(tmp_path / "r"), "--layers", "1"]) == 0
    assert "peft_road: road_2, group_size 64, 2 sites" in capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "r" / "planes.csv")["layer"]) == {1}


def test_analyze_cli_bad_input(our_folders, tmp_path, capsys):
    first, _ = our_folders
    (tmp_path / "not_an_adapter").mkdir()
    assert main(["analyze", str(tmp_path / "not_an_adapter"), "-o", str(tmp_path / "o")]) == 1
    assert "is not a RoAd adapter folder" in capsys.readouterr().err
    assert main(["analyze", str(first), "-o", str(tmp_path / "o"), "--layers", "9"]) == 1
    assert "has no layer [9]" in capsys.readouterr().err
    assert main(["analyze", str(first), "-o", str(tmp_path / "o"), "--modules", "q_proj"]) == 1
    assert "has no module_type ['q_proj']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- drift --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from road_interp import load_model, load_tokenizer

    return RoadModel(load_model("minilm", task="encoder")), load_tokenizer("minilm")


TEXTS = [
    "The hotel was lovely and the staff were kind.",
    "The food was cold, the room smelled and nobody cared.",
    "Average stay.",
    "I would come back any time, the view from the balcony is stunning.",
    "Terrible service.",
]


@pytest.mark.real
@pytest.mark.parametrize("token", drift.TOKENS)
def test_drift_of_an_identity_adapter_is_exactly_zero(minilm, token):
    road, tok = minilm
    road.add_adapter("identity", RoadConfig(targets="all-linear"))
    try:
        samples = drift.drift_samples(road, drift.text_batches(tok, TEXTS, batch_size=2),
                                      token=token, progress=False)  # fmt: skip
    finally:
        road.delete_adapter("identity")
    assert len(samples) == len(TEXTS) * 7  # embeddings + 6 blocks
    assert (samples["delta_m"] == 0.0).all() and (samples["cos"] == 1.0).all()


@pytest.mark.real
def test_drift_runs_without_dropout_and_restores_the_mode(minilm):
    road, tok = minilm
    road.add_adapter("identity", RoadConfig(targets="all-linear"))
    road.train()  # as after training: dropout would make the two runs differ
    try:
        samples = drift.drift_samples(road, drift.text_batches(tok, TEXTS), progress=False)
        assert road.training
    finally:
        road.eval()
        road.delete_adapter("identity")
    assert (samples["delta_m"] == 0.0).all() and (samples["cos"] == 1.0).all()


@pytest.mark.real
def test_drift_matches_a_direct_computation(minilm):
    road, tok = minilm
    road.add_adapter("rand", RoadConfig(targets="all-linear", init="random"), seed=0)
    try:
        table = drift.representation_drift(
            road, drift.text_batches(tok, TEXTS, batch_size=8), token="last", progress=False
        )
        batch = tok(TEXTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            x = road(**batch, output_hidden_states=True).hidden_states[3]
            with road.disabled():
                x0 = road(**batch, output_hidden_states=True).hidden_states[3]
    finally:
        road.delete_adapter("rand")
    last = batch["attention_mask"].sum(1) - 1  # right padding
    x, x0 = x[torch.arange(len(TEXTS)), last].double(), x0[torch.arange(len(TEXTS)), last].double()
    delta_m = ((x.norm(dim=1) - x0.norm(dim=1)).abs() / x0.norm(dim=1)).mean()
    cos = torch.nn.functional.cosine_similarity(x, x0, dim=1).mean()
    row = table[table["layer"] == 3].iloc[0]
    assert row["adapter"] == "rand" and row["n"] == len(TEXTS)
    assert row["delta_m_mean"] == pytest.approx(float(delta_m), rel=1e-9)
    assert row["cos_mean"] == pytest.approx(float(cos), abs=1e-9)
    assert table["delta_m_mean"].iloc[0] == 0.0  # the embeddings are not adapted
    assert table["cos_mean"].iloc[-1] < 0.999


def test_drift_bad_input():
    road = RoadModel(tiny_bert())
    with pytest.raises(ValueError, match="no active adapter"):
        drift.drift_samples(road, [], progress=False)
    road.add_adapter("a", RoadConfig(targets="all-linear"))
    with pytest.raises(ValueError, match="unknown token"):
        drift.drift_samples(road, [], token="first", progress=False)
    with pytest.raises(ValueError, match="batches were empty"):
        drift.drift_samples(road, [], progress=False)


# -- importance ---------------------------------------------------------------------------------
@pytest.fixture
def random_bert():
    road = RoadModel(tiny_bert())
    road.add_adapter("skill", RoadConfig(group_size=4, init="random", targets="all-linear"), seed=0)
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(0))
    return road, ids


def agreement_metric(ids):
    """How close the logits are to the base model's, as a deterministic score."""

    def metric(model):
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            with model.disabled():
                base = model(input_ids=ids).logits
        return -float((logits - base).abs().mean())

    return metric


@pytest.mark.parametrize("variant", VARIANTS)
def test_resetting_every_plane_is_the_base_model_and_restores_exactly(variant):
    road = RoadModel(tiny_bert())
    road.add_adapter("v", RoadConfig(variant=variant, group_size=4, init="random",
                                     targets="all-linear"), seed=0)  # fmt: skip
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(1))
    before = {k: p.detach().clone() for k, p in road.adapter_parameters("v").items()}
    with torch.no_grad():
        with road.disabled():
            base = road(input_ids=ids).logits
        with importance.planes_reset(road, "v", importance.all_planes(road, "v")):
            reset = road(input_ids=ids).logits
        adapted = road(input_ids=ids).logits
    assert torch.equal(reset, base)
    assert not torch.allclose(adapted, base)
    for k, p in road.adapter_parameters("v").items():
        assert torch.equal(p, before[k])


def test_reset_subspace_equals_an_adapter_with_those_planes_at_identity(random_bert, tmp_path):
    road, ids = random_bert
    planes = stats.plane_table(road.save_adapter("skill", tmp_path / "skill"))
    strong = planes[stats.strong_planes(planes, top_fraction=0.25)]
    groups = importance.groups_by(strong, "layer")
    assert set(groups) == {"layer 0", "layer 1", "no layer"}  # "no layer": the pooler
    with torch.no_grad(), importance.planes_reset(road, "skill", groups["layer 1"]):
        reset = road(input_ids=ids).logits
    # the same by hand: set those planes' parameters in a copy of the file
    file = read_adapter(tmp_path / "skill")
    for site, plane_ids in groups["layer 1"].items():
        theta, alpha = file.params[site]
        theta[torch.as_tensor(plane_ids)] = 0.0
        alpha[torch.as_tensor(plane_ids)] = 1.0
    road.load_adapter(file, "by_hand", activate=False)
    road.set_active("by_hand")
    with torch.no_grad():
        by_hand = road(input_ids=ids).logits
    road.set_active("skill")
    assert torch.equal(reset, by_hand)


def test_plane_importance_table(random_bert):
    road, ids = random_bert
    planes = stats.plane_table(road.adapter_file("skill"))
    table = importance.plane_importance(
        road, "skill", importance.groups_by(planes, "module_type"), agreement_metric(ids),
        progress=False,
    )  # fmt: skip
    assert len(table) == 7  # six module types and the pooler
    assert (table["none"] == 0.0).all()  # every plane reset is the base model: no distance
    assert (table["drop"].diff().dropna() <= 0).all()  # sorted, largest drop first
    baseline = table["baseline"].iloc[0]
    np.testing.assert_allclose(table["share_of_gain"], table["drop"] / baseline)
    row = table[table["group"] == "intermediate.dense"].iloc[0]
    assert row["n_sites"] == 2 and row["n_planes"] == 2 * 128
    subspace = importance.groups_by(planes, "module_type")["intermediate.dense"]
    with importance.planes_reset(road, "skill", subspace):
        assert agreement_metric(ids)(road) == row["metric"]


def test_plane_importance_bad_input(random_bert):
    road, ids = random_bert
    metric = agreement_metric(ids)
    site = "bert.encoder.layer.0.attention.self.query"
    with pytest.raises(ValueError, match="has no site 'model.layers.0.q_proj'"):
        importance.plane_importance(road, "skill", {"g": {"model.layers.0.q_proj": [0]}}, metric)
    with pytest.raises(ValueError, match="has planes 0..63; asked for plane 64"):
        importance.plane_importance(road, "skill", {"g": {site: [1, 64]}}, metric)
    with pytest.raises(ValueError, match="no groups"):
        importance.plane_importance(road, "skill", {}, metric)
    before = {k: p.detach().clone() for k, p in road.adapter_parameters("skill").items()}

    def failing(model):
        raise RuntimeError("metric broke")

    with (
        pytest.raises(RuntimeError, match="metric broke"),
        importance.planes_reset(road, "skill", {site: [0, 1, 2]}),
    ):
        failing(road)
    for k, p in road.adapter_parameters("skill").items():
        assert torch.equal(p, before[k])
    road.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        importance.plane_importance(road, "skill", {"g": {site: [0]}}, metric)
    road.unmerge()


@pytest.mark.parametrize("variant", VARIANTS)
def test_reset_of_a_subspace_equals_compose_restrict_to_the_rest(variant):
    from road_interp.compose import restrict
    from road_interp.subspaces import Subspace

    road = RoadModel(tiny_bert())
    config = RoadConfig(variant=variant, group_size=4, init="random", targets="all-linear")
    road.add_adapter("skill", config, seed=2)
    file = road.adapter_file("skill")
    first_half = Subspace.part(file.sites, 0, 2, "first half")
    second_half = Subspace.full(file.sites) - first_half
    road.load_adapter(restrict(file, first_half), "restricted", activate=False)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with importance.planes_reset(road, "skill", second_half):
            reset = road(input_ids=ids).logits
        road.set_active("restricted")
        restricted = road(input_ids=ids).logits
    torch.testing.assert_close(reset, restricted, rtol=0, atol=0)


def test_plane_tables_concatenate_and_name_run_folders(tmp_path):
    from road_interp.io import write_adapter

    a = synthetic("road_1", 4, {"m.layers.0.q_proj": (np.zeros(4), np.ones(4))})
    folder = write_adapter(a, tmp_path / "run7" / "final")
    both = stats.plane_tables({"in memory": a, "on disk": folder})
    assert both["adapter"].tolist() == ["in memory"] * 4 + ["on disk"] * 4  # 4 planes each
    assert stats.plane_table(folder)["adapter"].iloc[0] == "run7/final"
    with pytest.raises(ValueError, match="no adapters given"):
        stats.plane_tables({})


@pytest.mark.real
def test_plane_importance_with_a_task_metric_on_real_data():
    from road_interp import load_model, load_tokenizer
    from road_interp.evaluation import evaluate
    from road_interp.tasks import get_task

    task = get_task("multiemo_en")
    examples = task.examples("validation", limit=24)
    tok = load_tokenizer("minilm")
    road = RoadModel(load_model("minilm", task="classification", num_labels=2))
    road.add_adapter("s", RoadConfig(targets="all-linear", init="random"), seed=0)
    metric = importance.task_metric(tok, examples)
    planes = stats.plane_table(road.adapter_file("s"))
    groups = importance.groups_by(stats.select(planes, layers=[0, 5]), "layer")
    table = importance.plane_importance(road, "s", groups, metric, progress=False)
    with torch.no_grad(), road.disabled():
        base = evaluate(road, tok, examples, progress=False)["accuracy"]
    assert set(table["group"]) == {"layer 0", "layer 5"}
    assert table["none"].iloc[0] == base  # every plane reset = the base model
    assert table["baseline"].iloc[0] == evaluate(road, tok, examples, progress=False)["accuracy"]
