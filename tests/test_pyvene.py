"""The pyvene view against our own sites and PEFT's RoAd; LoReFT; plane interchanges."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from road_interp import Positions, RoadConfig, RoadModel, write_peft
from road_interp.pyvene_view import (
    LoreftIntervention,
    RoadIntervention,
    base_locations,
    interchange,
    interchange_score,
    intervenable,
    to_pyvene,
)
from road_interp.subspaces import Subspace
from tests.conftest import tiny_bert, tiny_llama

pv = pytest.importorskip("pyvene")


def left_padded():
    ids = torch.randint(1, 96, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_pyvene_ours_and_peft_give_the_same_logits_on_linear_outputs(variant, tmp_path):
    batch = left_padded()
    config = RoadConfig(variant=variant, group_size=64, targets=("q_proj", "v_proj"), init="random")
    ours = RoadModel(tiny_llama())
    ours.add_adapter("x", config, seed=2)
    adapter = ours.adapter_file("x")
    with torch.no_grad():
        expected = ours(**batch).logits
    # PEFT's RoAd tuner with the same parameters
    write_peft(adapter, tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(tiny_llama(), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, expected, rtol=1e-5, atol=1e-5)
    # pyvene: the same rotations as RoadInterventions on every token of the Linear outputs
    iv = to_pyvene(tiny_llama(), adapter)
    with torch.no_grad():
        _, out = iv(
            batch, unit_locations=base_locations(batch, Positions("all"), len(adapter.params))
        )
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)


def test_pyvene_and_representation_site_agree_at_the_last_prompt_token_and_in_generate(tmp_path):
    batch = left_padded()
    config = RoadConfig("road_1", 2, ("model.layers.1",), "random", positions="last")
    ours = RoadModel(tiny_llama())
    ours.add_adapter("x", config, seed=4)
    adapter = ours.adapter_file("x")
    iv = to_pyvene(tiny_llama(), adapter)
    assert adapter.positions is not None
    locations = base_locations(batch, adapter.positions, 1)
    with torch.no_grad():
        expected = ours(**batch).logits
        _, out = iv(batch, unit_locations=locations)
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    ours_tokens = ours.generate(**batch, **gen)
    _, pv_tokens = iv.generate(batch, unit_locations=locations, intervene_on_prompt=True, **gen)
    assert torch.equal(ours_tokens, pv_tokens)
    # pyvene's own save / load rebuilds the RoadIntervention with its variant and shapes
    iv.save(str(tmp_path / "iv"))
    loaded = pv.IntervenableModel.load(str(tmp_path / "iv"), tiny_llama())
    with torch.no_grad():
        _, again = loaded(batch, unit_locations=locations)
    assert torch.equal(again.logits, out.logits)


def test_road_intervention_trains_inside_pyvene():
    batch = left_padded()
    intervention = RoadIntervention(128, "road_2", 8)
    iv = intervenable(tiny_llama(), {"model.layers.0": intervention})
    params = [p for p in intervention.parameters() if p.requires_grad]
    assert {tuple(p.shape) for p in params} == {(128,)}
    opt = torch.optim.AdamW(params, lr=5e-2, weight_decay=0.0)
    locations = base_locations(batch, Positions("last"), 1)
    target = torch.tensor([5, 6, 7])

    def loss():
        _, out = iv(batch, unit_locations=locations)
        return torch.nn.functional.cross_entropy(out.logits[:, -1], target)

    first = loss().item()
    for _ in range(10):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < first
    assert not any(p.requires_grad for p in iv.model.parameters())


def test_loreft_is_orthonormal_and_routes_examples_to_their_rows():
    torch.manual_seed(0)
    lo = LoreftIntervention(embed_dim=16, low_rank_dimension=4, partitions=((0, 2), (2, 4)))
    R = lo.rotate.weight
    torch.testing.assert_close(R @ R.T, torch.eye(4), rtol=1e-5, atol=1e-5)
    h = torch.randn(2, 3, 16)
    # it starts with W = R and b = 0: the identity
    torch.testing.assert_close(lo(h), h, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        lo.learned.bias.normal_()
    # example 0 uses rows 0-1 only: rows 2-3 of W and b get exactly zero gradient from it
    lo(h[:1], subspaces=[[0]]).sum().backward()
    assert torch.all(lo.learned.bias.grad[2:] == 0) and bool((lo.learned.bias.grad[:2] != 0).any())
    # all rows = both partitions: the composed edit
    out_all = lo(h)
    out_both = lo(h, subspaces=[[0, 1], [0, 1]])
    torch.testing.assert_close(out_all, out_both)
    # the edit lies in the row space of R
    delta = (out_all - h).reshape(-1, 16)
    torch.testing.assert_close(delta @ R.T @ R, delta, rtol=1e-4, atol=1e-5)


def test_loreft_runs_in_pyvene_on_block_outputs():
    batch = left_padded()
    lo = LoreftIntervention(embed_dim=128, low_rank_dimension=4)
    iv = intervenable(tiny_llama(), {"model.layers.1": lo})
    _, out = iv(batch, unit_locations=base_locations(batch, Positions("last"), 1))
    out.logits.sum().backward()
    assert lo.learned.weight.grad is not None


def test_plane_interchange_all_planes_gives_the_source_and_none_the_base():
    model = RoadModel(tiny_bert())
    model.add_adapter("x", RoadConfig(group_size=2, init="random"), seed=0)
    ids = torch.randint(1, 96, (4, 6), generator=torch.Generator().manual_seed(1))
    base, source = {"input_ids": ids}, {"input_ids": ids.flip(0)}
    layers = [f"bert.encoder.layer.{i}" for i in range(2)]
    sizes = dict.fromkeys(layers, 128)
    first = Positions("first")  # the [CLS] token the classifier reads
    with torch.no_grad():
        expected_src = model(**source).logits
        expected_base = model(**base).logits
    every = {p: Subspace.full(sizes).coordinate_mask(p, 2) for p in layers}
    out = interchange(model.model, every, base, source, first)
    torch.testing.assert_close(out.logits, expected_src, rtol=1e-5, atol=1e-5)
    none = {p: torch.zeros(128, dtype=torch.bool) for p in layers}
    torch.testing.assert_close(
        interchange(model.model, none, base, source, first).logits, expected_base
    )
    table, score = interchange_score(model.model, every, base, source, first)
    assert list(table.columns) == [
        "pred_base",
        "pred_source",
        "pred_interchanged",
        "source_logit_change",
    ]
    assert score == 1.0 or table["pred_base"].eq(table["pred_source"]).all()
    # the adapter's parameters stay trainable after pyvene wrapped the model
    assert all(p.requires_grad for p in model.adapter_parameters("x").values())


def test_loreft_seeds_its_own_init_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = LoreftIntervention(embed_dim=16, low_rank_dimension=4, seed=7)
    assert torch.equal(torch.rand(3), expected)
    second = LoreftIntervention(embed_dim=16, low_rank_dimension=4, seed=7)
    assert torch.equal(first.learned.weight, second.learned.weight)
