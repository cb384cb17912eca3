"""Sites: several named adapters, active sets, disable, merge/unmerge, dtypes, caching."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from road_interp import RoadConfig, RoadModel
from road_interp.layers import RoadLinear, RoadSite
from tests.conftest import TINY, tiny_llama
from tests.reference import dense_rotation

RANDOM = RoadConfig(variant="road_2", group_size=4, init="random")


@pytest.mark.parametrize("layer", [nn.Linear(6, 8), Conv1D(8, 6)])
def test_site_equals_dense_rotation_of_output_and_merges(layer):
    torch.manual_seed(0)
    site = RoadLinear(layer, name="layer")
    adapter = site.add_adapter("a", RANDOM, torch.Generator().manual_seed(0))
    site.set_active(["a"])
    x = torch.randn(2, 3, 6)
    R = dense_rotation("road_2", 4, adapter.theta.detach(), adapter.alpha.detach())
    expected = layer(x).double() @ R.T
    torch.testing.assert_close(site(x).double(), expected, rtol=1e-5, atol=1e-5)
    site.merge()
    torch.testing.assert_close(site(x).double(), expected, rtol=1e-5, atol=1e-5)
    site.unmerge()
    torch.testing.assert_close(site(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_two_adapters_apply_in_order_and_disable(input_ids):
    model = RoadModel(tiny_llama())
    with torch.no_grad():
        base = model(input_ids=input_ids).logits
    model.add_adapter("a", RANDOM, seed=1)
    model.add_adapter("b", RANDOM, seed=2)
    # as in PEFT, a new adapter is active alone and is the only one that trains
    assert model.active == ("b",) and model.trainable_adapters() == ("b",)
    with torch.no_grad():
        only_b = model(input_ids=input_ids).logits
        model.set_active("a", "b")  # stacking is explicit
        both = model(input_ids=input_ids).logits
        assert not torch.allclose(both, only_b, atol=1e-3)
        model.set_active("a")
        only_a = model(input_ids=input_ids).logits
        with model.disabled():
            assert torch.equal(model(input_ids=input_ids).logits, base)
        model.set_active("a", "b")
        assert torch.equal(model(input_ids=input_ids).logits, both)
        model.merge()
        torch.testing.assert_close(model(input_ids=input_ids).logits, both, rtol=1e-4, atol=1e-4)
        model.unmerge()
    assert not torch.allclose(both, only_a, atol=1e-3)
    site = next(iter(model.sites.values()))
    assert site.active == ("a", "b")


def test_bf16_base_with_float32_adapters(input_ids):
    model = RoadModel(tiny_llama().to(torch.bfloat16))
    model.add_adapter("a", RANDOM, seed=0)
    adapter = next(iter(model.sites.values())).adapter("a")
    assert adapter.theta.dtype == torch.float32
    with torch.no_grad():
        out = model(input_ids=input_ids).logits
        assert out.dtype == torch.bfloat16
        model.merge()
        merged = model(input_ids=input_ids).logits
    torch.testing.assert_close(merged.float(), out.float(), rtol=0.1, atol=0.1)


def test_cached_coefficients_follow_parameter_updates():
    site = RoadLinear(nn.Linear(4, 4), name="l")
    adapter = site.add_adapter("a", RoadConfig(group_size=2))
    adapter.requires_grad_(False)
    first = adapter.coefficients()
    assert adapter.coefficients()[0] is first[0]  # cached
    with torch.no_grad():
        adapter.theta.add_(0.5)
    assert not torch.equal(adapter.coefficients()[1], first[1])  # invalidated by the update


def test_training_gradients_reach_only_adapter_parameters(input_ids):
    model = RoadModel(TINY["bert"]())
    model.add_adapter("a", RoadConfig())
    model.model.train()
    out = model(input_ids=input_ids, labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.a." in n for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)


def test_merge_refuses_nan_parameters_and_changes_nothing(input_ids):
    model = RoadModel(tiny_llama())
    model.add_adapter("a", RANDOM, seed=0)
    sites = list(model.sites.values())
    with torch.no_grad():
        sites[-1].adapter("a").theta[0] = float("nan")
    before = {n: p.clone() for n, p in model.model.named_parameters() if "base_layer" in n}
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge()
    after = dict(model.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(s.merged for s in sites)


def test_merged_model_refuses_disable_and_active_changes(input_ids):
    model = RoadModel(tiny_llama())
    model.add_adapter("a", RANDOM, seed=0)
    model.merge()
    with pytest.raises(RuntimeError, match="unmerge"), model.disabled(), torch.no_grad():
        model(input_ids=input_ids)
    with pytest.raises(RuntimeError, match="unmerge"):
        model.set_active()


def test_merge_and_unload_returns_a_clean_model_with_the_adapter_folded_in(input_ids):
    base = tiny_llama()
    base.lm_head.weight.requires_grad_(False)  # a user's own choice of what trains
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    model = RoadModel(base)
    model.add_adapter("a", RANDOM, seed=4)
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
    plain = model.merge_and_unload()
    assert plain is base and not model.sites and not model.configs
    assert not plain._forward_pre_hooks and not any(
        isinstance(m, RoadSite) for m in plain.modules()
    )
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=input_ids).logits, expected, rtol=1e-4, atol=1e-4
        )


def test_reserved_adapter_names_are_refused_before_anything_changes():
    model = RoadModel(tiny_llama())
    for name in ("train", "to", "forward", "half"):
        with pytest.raises(ValueError, match="torch Module attribute"):
            model.add_adapter(name, RANDOM)
    assert not model.sites and not model.configs


def test_nested_disabled_blocks_restore_the_outer_state(input_ids):
    model = RoadModel(tiny_llama())
    with torch.no_grad():
        base = model(input_ids=input_ids).logits
    model.add_adapter("a", RANDOM, seed=1)
    with torch.no_grad(), model.disabled():
        with model.disabled():
            pass
        assert torch.equal(model(input_ids=input_ids).logits, base)  # still the base model
    assert not any(site.disabled for site in model.sites.values())
