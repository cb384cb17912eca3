"""Composition algebra against the dense 2x2-block reference, on files, folders and models."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from road_interp import Positions, RoadConfig, RoadModel, read_adapter, rotation, write_adapter
from road_interp.cli import main as cli_main
from road_interp.compose import (
    OverlapError,
    check_composable,
    invert,
    overlap_report,
    product,
    restrict,
    scale,
    support,
    union,
)
from road_interp.io import AdapterFile
from road_interp.subspaces import Subspace
from tests.conftest import tiny_llama
from tests.reference import dense_rotation

VARIANTS = ["road_1", "road_2", "road_4"]
BASE = {"model_type": "llama", "architecture": "LlamaForCausalLM", "name_or_path": None}
SITES = {"a.q_proj": 128, "b.o_proj": 64}


def make(variant="road_1", group_size=4, seed=0, sites=SITES, positive=False, base=BASE):
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for site, d in sites.items():
        theta, alpha = rotation.random_params(variant, d, gen)
        if positive:
            alpha = alpha.abs() + 0.1
        params[site] = (theta, alpha)
    config = RoadConfig(variant=variant, group_size=group_size, targets=tuple(sites))
    return AdapterFile(config, dict(base), params)


def dense(adapter: AdapterFile, site: str) -> torch.Tensor:
    theta, alpha = adapter.params[site]
    return dense_rotation(adapter.config.variant, adapter.config.group_size, theta, alpha)


def halves(adapter, k):
    return restrict(adapter, Subspace.part(adapter.sites, k, 2))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size", [2, 4, 64])
def test_disjoint_union_equals_each_on_its_own_planes_exactly(variant, group_size):
    a = halves(make(variant, group_size, seed=1), 0)
    b = halves(make(variant, group_size, seed=2), 1)
    u = union({"a": a, "b": b})
    h = torch.randn(5, 128, generator=torch.Generator().manual_seed(3))
    site = "a.q_proj"

    def run(adapter, x):
        c, s = rotation.coefficients(variant, group_size, *adapter.params[site])
        return rotation.apply(x, c, s, group_size)

    assert torch.equal(run(u, h), run(b, run(a, h)))
    assert torch.equal(run(u, h), run(a, run(b, h)))
    # and it is a copy of parameters, so the supports are exactly the two halves
    assert torch.equal(support(u).plane_mask(site), torch.ones(64, dtype=torch.bool))


def test_disjoint_union_on_a_model_equals_both_adapters_active(input_ids):
    targets = ("q_proj", "down_proj")
    model = RoadModel(tiny_llama())
    config = RoadConfig(variant="road_1", group_size=64, targets=targets, init="random")
    model.add_adapter("a", config, seed=1)
    model.add_adapter("b", config, seed=2)

    a = halves(model.adapter_file("a"), 0)
    b = halves(model.adapter_file("b"), 1)
    model.delete_adapter("a")
    model.delete_adapter("b")
    model.load_adapter(a, "a")
    model.load_adapter(b, "b")
    model.set_active("a", "b")
    with torch.no_grad():
        both = model(input_ids).logits
        model.load_adapter(union([a, b]), "ab", activate=False)
        model.set_active("ab")
        composed = model(input_ids).logits
        model.set_active("a")
        only_a = model(input_ids).logits
    assert torch.equal(both, composed)
    assert not torch.allclose(only_a, composed)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size", [2, 64])
def test_product_matches_dense(variant, group_size):
    a, b = make(variant, group_size, seed=1), make(variant, group_size, seed=2)
    p = product(a, b)
    for site in SITES:
        torch.testing.assert_close(
            dense(p, site), dense(b, site) @ dense(a, site), rtol=1e-5, atol=1e-5
        )


def test_road1_product_adds_angles_and_commutes():
    a, b = make("road_1", seed=1), make("road_1", seed=2)
    p, q = product(a, b), product(b, a)
    theta_a, alpha_a = a.params["a.q_proj"]
    theta_b, alpha_b = b.params["a.q_proj"]
    assert torch.equal(p.params["a.q_proj"][0], theta_a + theta_b)
    torch.testing.assert_close(p.params["a.q_proj"][1], alpha_a * alpha_b)
    torch.testing.assert_close(dense(p, "a.q_proj"), dense(q, "a.q_proj"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size", [2, 4, 64])
def test_inverse_matches_dense_and_undoes_the_adapter(variant, group_size):
    a = make(variant, group_size, seed=4)
    inv = invert(a)
    for site, d in SITES.items():
        eye = torch.eye(d, dtype=torch.float64)
        torch.testing.assert_close(
            dense(inv, site), torch.linalg.inv(dense(a, site)), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(dense(product(a, inv), site), eye, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dense(product(inv, a), site), eye, rtol=1e-4, atol=1e-4)


def test_inverse_of_singular_block_is_an_error():
    a = make("road_2", seed=0)
    theta, alpha = a.params["a.q_proj"]
    alpha = alpha.clone()
    alpha[[0, 2]] = 0.0  # coordinates 0 and 2 are one plane at group size 4: a zero block row pair
    bad = AdapterFile(a.config, a.base_model, {"a.q_proj": (theta, alpha)})
    with pytest.raises(ValueError, match="singular"):
        invert(bad)


def test_road1_scale_is_the_matrix_power():
    a = make("road_1", seed=5, positive=True)
    for site in SITES:
        R = dense(a, site)
        torch.testing.assert_close(dense(scale(a, 2.0), site), R @ R, rtol=1e-5, atol=1e-5)
        half = dense(scale(a, 0.5), site)
        torch.testing.assert_close(half @ half, R, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            dense(scale(a, -1.0), site), dense(invert(a), site), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            dense(scale(a, 0.0), site), torch.eye(R.shape[0], dtype=torch.float64)
        )


@pytest.mark.parametrize("variant", ["road_2", "road_4"])
def test_scale_of_general_variants_interpolates_parameters(variant):
    a = make(variant, seed=6, positive=True)
    s = scale(a, 0.3)
    theta, alpha = a.params["a.q_proj"]
    torch.testing.assert_close(s.params["a.q_proj"][0], theta * 0.3)
    torch.testing.assert_close(s.params["a.q_proj"][1], alpha.pow(0.3))
    eye = torch.eye(128, dtype=torch.float64)
    torch.testing.assert_close(dense(scale(a, 0.0), "a.q_proj"), eye)
    torch.testing.assert_close(dense(scale(a, 1.0), "a.q_proj"), dense(a, "a.q_proj"))


def test_fractional_scale_of_negative_magnitude_is_an_error():
    a = make("road_1", seed=0)
    assert bool((a.params["a.q_proj"][1] < 0).any())  # N(1, 0.5) draws some
    with pytest.raises(ValueError, match="only integer scales"):
        scale(a, 0.5)
    scale(a, 2.0)  # integer powers are fine


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_from_coefficients_round_trip(variant):
    a = make(variant, group_size=4, seed=7)
    theta, alpha = a.params["a.q_proj"]
    layout = rotation.Layout(variant, 4)
    c, s = layout.coefficients(theta.double(), alpha.double())
    t2, a2 = layout.params_from_coefficients(c, s)
    c2, s2 = layout.coefficients(t2, a2)
    torch.testing.assert_close((c2, s2), (c, s))


def test_road1_cannot_represent_a_general_block():
    c = torch.tensor([1.0, 0.5, 2.0, 0.5])  # plane (0, 1) at group size 2: c_a != c_b
    s = torch.zeros(4)
    with pytest.raises(ValueError, match="road_1 cannot represent"):
        rotation.Layout("road_1", 2).params_from_coefficients(c, s)


@pytest.mark.parametrize("variant", VARIANTS)
def test_overlapping_union_is_reported_never_summed(variant):
    a = restrict(make(variant, seed=1), Subspace.fraction(SITES, 0.0, 0.75))
    b = restrict(make(variant, seed=2), Subspace.fraction(SITES, 0.5, 1.0))
    report = overlap_report({"a": a, "b": b})
    row = report.set_index("site").loc["a.q_proj"]
    assert (row["planes_first"], row["planes_second"], row["shared"]) == (48, 32, 16)
    with pytest.raises(OverlapError, match="more than one adapter") as err:
        union({"a": a, "b": b})
    assert int(err.value.report["shared"].sum()) == 16 + 8
    # explicit product on the shared planes: exactly the dense product R_b R_a everywhere
    u = union({"a": a, "b": b}, on_overlap="product")
    for site in SITES:
        torch.testing.assert_close(
            dense(u, site), dense(b, site) @ dense(a, site), rtol=1e-5, atol=1e-5
        )


def test_restrict_keeps_planes_and_is_identity_elsewhere():
    a = make("road_4", group_size=4, seed=3)
    sub = Subspace.random(a.sites, 0.25, seed=0)
    r = restrict(a, sub)
    got = support(r)
    for site in SITES:
        assert torch.equal(got.plane_mask(site), sub.plane_mask(site))
        keep = sub.coordinate_mask(site, 4)
        R, full = dense(r, site), dense(a, site)
        torch.testing.assert_close(R[keep][:, keep], full[keep][:, keep])
        torch.testing.assert_close(
            R[~keep][:, ~keep], torch.eye(int((~keep).sum()), dtype=torch.float64)
        )


def test_incompatible_adapters_give_clear_errors():
    a = make("road_1", 4)
    with pytest.raises(ValueError, match="variant"):
        union([a, make("road_2", 4)])
    with pytest.raises(ValueError, match="group_size"):
        product(a, make("road_1", 2))
    with pytest.raises(ValueError, match="different base models"):
        check_composable({"a": a, "b": make(base={**BASE, "model_type": "bert"})})
    with pytest.raises(ValueError, match="site a.q_proj has size"):
        union([a, make(sites={"a.q_proj": 64})])


def test_cli_compose_union_scale_invert_and_overlap(tmp_path, capsys):
    a = halves(make("road_1", seed=1, positive=True), 0)
    b = halves(make("road_1", seed=2, positive=True), 1)
    write_adapter(a, tmp_path / "A")
    write_adapter(b, tmp_path / "B")
    assert (
        cli_main(["compose", str(tmp_path / "A"), str(tmp_path / "B"), "-o", str(tmp_path / "AB")])
        == 0
    )
    ab = read_adapter(tmp_path / "AB")
    expected = union([a, b])
    for site in SITES:
        assert all(
            torch.equal(x, y) for x, y in zip(ab.params[site], expected.params[site], strict=True)
        )
    # remove B again: product with its inverse on the shared planes
    code = cli_main(
        [
            "compose",
            str(tmp_path / "AB"),
            str(tmp_path / "B"),
            "--invert",
            "2",
            "--on-overlap",
            "product",
            "-o",
            str(tmp_path / "A2"),
        ]
    )
    assert code == 0
    a2 = read_adapter(tmp_path / "A2")
    for site in SITES:
        torch.testing.assert_close(dense(a2, site), dense(a, site), rtol=1e-5, atol=1e-5)
    # scale and restrict options
    assert (
        cli_main(
            [
                "compose",
                str(tmp_path / "A"),
                "--scale",
                "0.5",
                "--restrict",
                "part:0/4",
                "-o",
                str(tmp_path / "Aq"),
            ]
        )
        == 0
    )
    aq = read_adapter(tmp_path / "Aq")
    assert int(support(aq).plane_mask("a.q_proj").sum()) == 16
    # overlapping inputs: exit code 1, report printed, nothing written
    capsys.readouterr()
    assert (
        cli_main(["compose", str(tmp_path / "A"), str(tmp_path / "A"), "-o", str(tmp_path / "X")])
        == 1
    )
    out = capsys.readouterr()
    assert "shared" in out.out and "more than one adapter" in out.err
    assert not (tmp_path / "X").exists()


def test_cli_compose_ties_merges_adapters_on_the_same_planes(tmp_path):
    from road_interp.merging import ties

    a, b = make("road_1", seed=1, positive=True), make("road_1", seed=2, positive=True)
    write_adapter(a, tmp_path / "A")
    write_adapter(b, tmp_path / "B")
    folders = [str(tmp_path / "A"), str(tmp_path / "B")]
    assert cli_main(["compose", *folders, "--ties", "0.3", "-o", str(tmp_path / "T")]) == 0
    merged, expected = read_adapter(tmp_path / "T"), ties([a, b], density=0.3)
    for site in SITES:
        for got, want in zip(merged.params[site], expected.params[site], strict=True):
            torch.testing.assert_close(got, want)
    assert cli_main(["compose", *folders, "--ties", "0", "-o", str(tmp_path / "Z")]) == 1
    assert not (tmp_path / "Z").exists()  # density must be in (0, 1]: nothing written


# -- the composition experiments' plumbing --------------------------------------------------
def test_multihead_cross_entropy_equals_each_rows_own_head():
    from experiments.composition.heads import MultiHead, rows_set

    torch.manual_seed(0)
    heads = [torch.nn.Linear(8, 2), torch.nn.Linear(8, 3)]
    multi = MultiHead(heads)
    x = torch.randn(4, 8)
    rows = torch.tensor([0, 1, 1, 0])
    labels = torch.tensor([1, 2 + 0, 2 + 2, 0])  # task B's labels are offset by 2
    with rows_set(rows, multi):
        loss = torch.nn.functional.cross_entropy(multi(x), labels, reduction="none")
    assert multi.rows is None
    for r in range(4):
        own = heads[int(rows[r])](x[r : r + 1])
        target = labels[r : r + 1] - (2 if rows[r] else 0)
        torch.testing.assert_close(
            loss[r : r + 1], torch.nn.functional.cross_entropy(own, target, reduction="none")
        )
    with pytest.raises(RuntimeError, match="each row's task"):
        multi(x)


def test_e1_answer_parsing():
    from experiments.composition.e1 import is_french, score_answers, sentiment_of

    assert sentiment_of("The sentiment is positive.") == "positive"
    assert sentiment_of("Négatif, pas positif") == "negative"
    assert sentiment_of("I cannot tell") is None
    assert is_french("négatif") and is_french("La phrase est très positive")
    assert not is_french("positive") and not is_french("The sentence is negative")
    scores = score_answers(
        ["positif", "negative", "positive", "hmm"], ["positive", "negative", "negative", "positive"]
    )
    assert scores == {
        "sentiment_accuracy": 0.5,
        "french_share": 0.25,
        "joint_success": 0.25,
        "n": 4,
    }


def test_experiment_presets_resolve_and_bad_names_are_clear():
    from experiments.composition.config import E1Config, E2Config, make_config

    quick = make_config("e2", "quick")
    assert isinstance(quick, E2Config) and quick.overlaps[0] == 0.0
    assert isinstance(make_config("e1", "default"), E1Config)
    with pytest.raises(ValueError, match="unknown experiment"):
        make_config("e3", "quick")
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("e2", "huge")


def test_e1_report_states_whether_the_target_is_met():
    import pandas as pd

    from experiments.composition.config import make_config
    from experiments.composition.run import _e1_readme

    conditions = ["base", "skill A (French)", "skill B (sentiment)", "composed A+B", "joint A+B"]

    def readme(composed: float) -> str:
        joint = [0.0, 0.1, 0.2, composed, 0.3]
        results = pd.DataFrame(
            {"condition": conditions, "sentiment_accuracy": 0.5, "french_share": 0.5}
            | {"joint_success": joint, "n": 10}
        )
        samples = pd.DataFrame({"sentence": ["s"], "gold": ["positive"]})
        skill_a = pd.DataFrame({"message": ["Repeat this:\nHi"]} | {c: ["x"] for c in conditions})
        tables = {"results": results, "samples": samples, "skill_a_answers": skill_a}
        return _e1_readme(make_config("e1", "quick"), "quick", tables)

    assert "composed A+B 0.400 vs the better single skill 0.200" in readme(0.4)
    assert "composed beats both: met" in readme(0.4)
    assert "composed beats both: NOT met" in readme(0.2)


def test_probe_overrides_and_a_one_step_probe_run(capsys):
    from experiments.composition.config import make_config
    from experiments.composition.probe import main, with_overrides

    cfg = with_overrides(make_config("e1", "quick"), ["lr=0.05", "layers=(3, 6)", "positions=last"])
    assert (cfg.lr, cfg.layers, cfg.positions) == (0.05, (3, 6), "last")
    with pytest.raises(SystemExit, match="key one of"):
        with_overrides(cfg, ["learning_rate=1"])
    settings = ["steps=1", "train_examples=8", "eval_examples=6", "batch_size=4"]
    assert main(["e2", "B", "--preset", "quick", "--set", *settings, "--planes", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 < result["majority"] <= 1.0


def test_e2_report_verdict_covers_missed_undefined_and_met_targets():
    import pandas as pd

    from experiments.composition.config import make_config
    from experiments.composition.run import _e2_readme

    def readme(share_a: float, share_b: float) -> str:
        rows = [
            {"condition": c, "overlap": 0.0, "task": t, "accuracy": 0.7, "task_name": n}
            | {"base_accuracy": 0.5, "skill_accuracy": 0.8, "retained_share": share}
            for c in ("skill", "composed", "joint")
            for t, n, share in (("A", "multiemo_en", share_a), ("B", "vitaminc", share_b))
        ]
        tables = {
            "results": pd.DataFrame(rows),
            "interchange": pd.DataFrame(),
            "params": pd.DataFrame(),
        }
        return _e2_readme(make_config("e2", "quick"), "quick", tables)

    assert "target: >= 95% each: met" in readme(0.97, 1.0)
    assert "target: >= 95% each: NOT met" in readme(0.905, float("nan"))
    text = readme(0.99, float("nan"))
    assert "not established" in text and "vitaminc undefined (no gain over base)" in text


def test_strength_sweep_at_one_is_the_runs_composed_adapter(tmp_path, capsys):
    """The committed E1 run: union of its saved skills at λ = 1 is its saved composed adapter
    exactly; a one-prompt sweep runs end to end; bad scales are clear errors."""
    from experiments.composition import strength

    run = Path(__file__).parents[1] / "experiments/composition/measured/e1-default"
    skills = {k: read_adapter(run / "adapters" / f) for k, f in strength.SKILL_FOLDERS.items()}
    composed = read_adapter(run / "adapters" / "composed_a_b")
    rebuilt = union({k: scale(a, 1.0) for k, a in skills.items()})
    assert rebuilt.positions == composed.positions == Positions("all")
    for site, (theta, alpha) in composed.params.items():
        assert torch.equal(rebuilt.params[site][0], theta)
        assert torch.equal(rebuilt.params[site][1], alpha)
    small = tmp_path / "run"
    small.mkdir()
    (small / "adapters").symlink_to((run / "adapters").resolve())
    settings = json.loads((run / "config.json").read_text())
    settings |= {"eval_examples": 2, "skill_a_eval": 1, "max_new_tokens": 2}
    (small / "config.json").write_text(json.dumps(settings))
    assert strength.main([str(small), "--scales", "2:0.5", "-o", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "strength.csv")
    assert table[["lambda_A", "lambda_B", "n"]].values.tolist() == [[2.0, 0.5, 2]]
    with pytest.raises(SystemExit, match="'a:b'"):
        strength.parse_scales(["2"])
