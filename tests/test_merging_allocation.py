"""Composition methods beyond a plain union: TIES-merging and data-aware plane allocation."""

from __future__ import annotations

import pytest
import torch

from road_interp import RoadConfig, RoadModel
from road_interp.allocation import allocate, plane_energy
from road_interp.compose import union
from road_interp.io import AdapterFile
from road_interp.merging import ties
from tests.conftest import tiny_llama

CONFIG = RoadConfig("road_1", 4, targets=("q_proj",))
SITE = "model.layers.0.self_attn.q_proj"


def adapter(theta: list[float], alpha: list[float]) -> AdapterFile:
    base = {"model_type": "llama", "architecture": "LlamaForCausalLM", "name_or_path": None}
    return AdapterFile(CONFIG, base, {SITE: (torch.tensor(theta), torch.tensor(alpha))})


def test_ties_trims_elects_and_averages_entry_by_entry():
    a = adapter([0.4, -0.1, 0.3, 0.0], [2.0, 1.0, 1.0, 1.0])
    b = adapter([0.2, 0.5, -0.6, 0.01], [0.5, 1.0, 1.0, 1.0])
    merged = ties({"a": a, "b": b}, density=0.5).params[SITE]
    # θ: a keeps 0.4, 0.3; b keeps 0.5, -0.6. Entry 2: 0.3 vs -0.6 -> sign -, only b's
    torch.testing.assert_close(merged[0], torch.tensor([0.4, 0.5, -0.6, 0.0]))
    # log α: a keeps log 2 (and a zero), b keeps log 0.5: entry 0 sums to 0 -> no sign
    assert merged[1][0] == pytest.approx(1.0)
    # on disjoint supports TIES at density 1 is the union (each entry from its own adapter)
    c = adapter([0.0, 0.2, 0.0, 0.0], [1.0, 1.5, 1.0, 1.0])
    d = adapter([0.3, 0.0, 0.0, 0.0], [0.8, 1.0, 1.0, 1.0])
    expected = union({"c": c, "d": d}).params[SITE]
    got = ties({"c": c, "d": d}, density=1.0).params[SITE]
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    with pytest.raises(ValueError, match="α <= 0"):
        ties([a, adapter([0.0] * 4, [-1.0, 1, 1, 1])])


def test_allocation_gives_each_skill_the_planes_the_other_uses_least():
    model = tiny_llama()
    road = RoadModel(model)  # no adapter: the base model
    sites = {SITE: 128}
    gen = torch.Generator().manual_seed(0)
    batch_a = {"input_ids": torch.randint(0, 48, (4, 8), generator=gen)}
    batch_b = {"input_ids": torch.randint(48, 96, (4, 8), generator=gen)}
    batch_b["attention_mask"] = torch.ones_like(batch_b["input_ids"])
    batch_b["attention_mask"][:, :2] = 0
    energy_a = plane_energy(road, [batch_a], sites, group_size=4)
    energy_b = plane_energy(road, [batch_b], sites, group_size=4)
    # by hand: the energy of plane 0 = coordinates (0, 2) for group size 4
    out = {}
    handle = model.get_submodule(SITE).register_forward_hook(lambda m, a, o: out.update(h=o))
    with torch.no_grad():
        model(**batch_a)
    handle.remove()
    by_hand = (out["h"][..., 0] ** 2 + out["h"][..., 2] ** 2).mean()
    assert energy_a[SITE][0].item() == pytest.approx(by_hand.item(), rel=1e-5)
    a, b = allocate(energy_a, energy_b)
    assert a.num_planes() == b.num_planes() == 32 and int((a & b).num_planes()) == 0
    share_a = energy_a[SITE] / energy_a[SITE].sum()
    share_b = energy_b[SITE] / energy_b[SITE].sum()
    gap = share_a - share_b
    assert gap[a.planes[SITE]].min() >= gap[b.planes[SITE]].max()
    with pytest.raises(ValueError, match="disjoint"):
        allocate(energy_a, energy_b, fraction=0.6)
