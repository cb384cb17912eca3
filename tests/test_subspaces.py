"""Subspaces: plane sets, masks per variant, training restricted to them, per-example routing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from road_interp import RoadConfig, RoadModel, rotation
from road_interp.compose import restrict
from road_interp.rotation import Layout
from road_interp.subspaces import Subspace, model_sizes, route_subspaces, train_on
from tests.conftest import tiny_llama

SIZES = {"x": 128, "y": 64}
VARIANTS = ["road_1", "road_2", "road_4"]


def test_constructors_and_set_algebra():
    first, second = Subspace.part(SIZES, 0, 2), Subspace.part(SIZES, 1, 2)
    assert torch.equal(first.planes["x"], torch.arange(32))
    assert (first & second).num_planes() == 0
    assert (first | second).num_planes() == Subspace.full(SIZES).num_planes() == 96
    assert (Subspace.full(SIZES) - first).num_planes() == second.num_planes()
    r1, r2 = Subspace.random(SIZES, 0.25, seed=3), Subspace.random(SIZES, 0.25, seed=3)
    assert torch.equal(r1.planes["x"], r2.planes["x"]) and r1.planes["x"].numel() == 16
    g = Subspace.groups(SIZES, 16, [1])
    assert torch.equal(g.planes["y"], torch.arange(8, 16))
    assert torch.equal(Subspace.from_spec("groups:1", SIZES, 16).planes["x"], g.planes["x"])
    assert Subspace.from_spec("range:0.25:0.5", SIZES).planes["x"].tolist() == list(range(16, 32))
    assert Subspace.from_spec("half:1", SIZES).num_planes() == 48
    report = first.overlap(Subspace.fraction(SIZES, 0.25, 0.75))
    assert report.set_index("site").loc["x", "shared"] == 16


def test_bad_subspaces_give_clear_errors():
    with pytest.raises(ValueError, match="cannot read subspace"):
        Subspace.from_spec("halves", SIZES)
    with pytest.raises(ValueError, match="part 2 of 2"):
        Subspace.from_spec("half:2", SIZES)
    with pytest.raises(ValueError, match=r"must be in \[0, 32\)"):
        Subspace(SIZES, {"y": torch.tensor([40])})
    with pytest.raises(ValueError, match="twice"):
        Subspace(SIZES, {"y": torch.tensor([1, 1])})
    with pytest.raises(ValueError, match="no group"):
        Subspace.groups(SIZES, 64, [1])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size", [2, 8, 64])
def test_param_mask_moves_exactly_the_planes_coordinates(variant, group_size):
    """Changing only the entries of param_mask(S) changes the coefficients only on S's
    coordinates, and plane_support finds exactly S's planes."""
    d = 128
    sub = Subspace.random({"x": d}, 0.3, seed=1)
    mask = sub.param_mask("x", variant, group_size)
    theta, alpha = rotation.identity_params(variant, d)
    gen = torch.Generator().manual_seed(0)
    new_theta = torch.where(mask, torch.rand(theta.shape, generator=gen) + 0.1, theta)
    new_alpha = torch.where(mask, torch.rand(alpha.shape, generator=gen) + 1.5, alpha)
    c, s = rotation.coefficients(variant, group_size, new_theta, new_alpha)
    coords = sub.coordinate_mask("x", group_size)
    assert torch.all(c[~coords] == 1) and torch.all(s[~coords] == 0)
    assert torch.all((c[coords] != 1) | (s[coords] != 0))
    got = Layout(variant, group_size).plane_support(new_theta, new_alpha)
    assert torch.equal(got, sub.plane_mask("x"))


def _model(variant="road_1", group_size=64):
    model = RoadModel(tiny_llama())
    model.add_adapter(
        "skills",
        RoadConfig(variant=variant, group_size=group_size, targets=("q_proj", "down_proj")),
    )
    return model


def _loss(model, ids):
    """Sum over rows of each row's mean next-token loss, so rows contribute separately."""
    logits = model(ids).logits[:, :-1]
    per_token = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), ids[:, 1:], reduction="none"
    )
    return per_token.mean(dim=1).sum()


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_on_leaves_other_planes_exactly_at_identity(variant, input_ids):
    model = _model(variant)
    sub = Subspace.part(model_sizes(model, "skills"), 0, 2, name="first")
    params = list(model.adapter_parameters("skills").values())
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    with train_on(model, "skills", sub):
        for _ in range(3):
            opt.zero_grad()
            _loss(model, input_ids).backward()
            opt.step()
    trained = model.adapter_file("skills")
    for site, (theta, alpha) in trained.params.items():
        moved = Layout(variant, 64).plane_support(theta, alpha)
        assert not moved[~sub.plane_mask(site)].any()
        assert moved[sub.plane_mask(site)].any()
    # hooks are gone: a plain backward now reaches every plane
    opt.zero_grad()
    _loss(model, input_ids).backward()
    assert all(bool((p.grad != 0).any()) for p in params)


def test_train_on_removes_hooks_after_an_error(input_ids):
    model = _model()
    sub = Subspace.part(model_sizes(model, "skills"), 0, 2)
    with pytest.raises(RuntimeError, match="boom"), train_on(model, "skills", sub):
        raise RuntimeError("boom")
    _loss(model, input_ids).backward()
    theta = next(iter(model.adapter_parameters("skills").values()))
    assert bool((theta.grad[32:] != 0).any())


@pytest.mark.parametrize("variant", VARIANTS)
def test_per_example_routing_trains_each_skill_only_on_its_planes(variant, input_ids):
    model = _model(variant)
    sizes = model_sizes(model, "skills")
    skills = [Subspace.part(sizes, 0, 2, "A"), Subspace.part(sizes, 1, 2, "B")]
    with torch.no_grad():  # a non-identity starting point, so every plane has a gradient
        for p in model.adapter_parameters("skills").values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    params = model.adapter_parameters("skills")
    rows = torch.tensor([0, 1, 0])

    def grads(ids, which):
        for p in params.values():
            p.grad = None
        with route_subspaces(model, "skills", skills, which):
            _loss(model, ids).backward()
        return {k: p.grad.clone() for k, p in params.items()}

    only_a = grads(input_ids[rows == 0], rows[rows == 0])
    only_b = grads(input_ids[rows == 1], rows[rows == 1])
    mixed = grads(input_ids, rows)
    for key, g in mixed.items():
        site = key.rsplit(".", 1)[0]
        mask_a = skills[0].param_mask(site, variant, 64)
        mask_b = skills[1].param_mask(site, variant, 64)
        # skill A's rows give exactly zero gradient on B's planes, and vice versa
        assert torch.all(only_a[key][mask_b] == 0) and torch.all(only_b[key][mask_a] == 0)
        assert bool((only_a[key][mask_a] != 0).any())
        # the mixed batch's gradient on A's planes is A's rows' alone (and so for B)
        torch.testing.assert_close(g[mask_a], only_a[key][mask_a], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g[mask_b], only_b[key][mask_b], rtol=1e-4, atol=1e-6)
    assert all(site.routing is None for site in model.sites.values())


def test_routed_rows_equal_the_restricted_adapter(input_ids):
    """Routing row r to skill k gives the same logits as the adapter restricted to k's planes."""
    model = _model("road_2", 8)
    with torch.no_grad():
        for p in model.adapter_parameters("skills").values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    sizes = model_sizes(model, "skills")
    skills = [Subspace.random(sizes, 0.5, seed=0), Subspace.random(sizes, 0.5, seed=1)]
    rows = torch.tensor([1, 0, 1])
    full = model.adapter_file("skills")
    with torch.no_grad(), route_subspaces(model, "skills", skills, rows):
        routed = model(input_ids).logits
    for k, sub in enumerate(skills):
        model.load_adapter(restrict(full, sub), f"only{k}")
    model.set_active("only1")
    with torch.no_grad():
        expected_1 = model(input_ids).logits
    model.set_active("only0")
    with torch.no_grad():
        expected_0 = model(input_ids).logits
    torch.testing.assert_close(routed[rows == 1], expected_1[rows == 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed[rows == 0], expected_0[rows == 0], rtol=1e-5, atol=1e-5)


def test_routing_rejects_bad_rows(input_ids):
    model = _model()
    skills = [Subspace.full(model_sizes(model, "skills"))]
    with (
        pytest.raises(ValueError, match="outside"),
        route_subspaces(model, "skills", skills, torch.tensor([0, 1, 0])),
    ):
        pass


def test_a_configs_subspace_restricts_training_and_travels_with_the_adapter(tmp_path, input_ids):
    from road_interp.compose import support, union
    from road_interp.io import read_adapter

    adapters = {}
    for half in (0, 1):
        model = RoadModel(tiny_llama())
        config = RoadConfig("road_2", 4, targets=("q_proj", "o_proj"), init="random")
        model.add_adapter("a", replace(config, subspace=f"half:{half}"), seed=half)
        opt = torch.optim.AdamW(model.adapter_parameters("a").values(), lr=0.1, weight_decay=0)
        with model.restricted():  # what training.train enters
            for _ in range(3):
                opt.zero_grad()
                model(input_ids).logits.square().mean().backward()
                opt.step()
        planes = model.subspace_of("a")
        moved = support(model.adapter_file("a"))
        assert planes is not None and moved.planes.keys() == planes.planes.keys()
        assert all(torch.equal(moved.planes[s], planes.planes[s]) for s in planes.planes)
        model.save_adapter("a", tmp_path / f"half{half}")
        adapters[half] = read_adapter(tmp_path / f"half{half}")
        assert adapters[half].config.subspace == f"half:{half}"
    both = union(adapters)  # disjoint by construction: no overlap error
    assert both.config.subspace is None
    model = RoadModel(tiny_llama())
    with pytest.raises(ValueError, match="subspace 'half:2'"):
        model.add_adapter("b", RoadConfig(group_size=4, subspace="half:2"))
    assert not model.configs and not model.sites


def test_weight_decay_with_a_subspace_is_refused_before_training():
    from road_interp.training import TrainConfig, _check_subspace_decay

    model = RoadModel(tiny_llama())
    model.add_adapter("a", RoadConfig(group_size=4, subspace="half:0"))
    _check_subspace_decay(model, TrainConfig())  # no decay: fine
    with pytest.raises(ValueError, match="weight_decay=0"):
        _check_subspace_decay(model, TrainConfig(weight_decay=0.01))
