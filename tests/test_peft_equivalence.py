"""Our RoAd layers against PEFT's RoAd tuner: same parameters, same logits; and the file
formats round-trip through PEFT (export -> PeftModel.from_pretrained, save_pretrained -> import)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft import RoadConfig as PeftRoadConfig
from torch import nn
from transformers.pytorch_utils import Conv1D

from road_interp import RoadConfig, RoadModel
from road_interp.injection import resolve_targets
from tests.conftest import TINY


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """GPT-2's Conv1D layers as the equivalent nn.Linear (weight transposed), since PEFT's
    RoAd wraps only nn.Linear. The two models compute the same function."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.weight.shape[0], module.nf)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_same_logits_as_peft(arch, variant, input_ids, tmp_path):
    ours = RoadModel(TINY[arch]())
    ours.add_adapter("a", RoadConfig(variant=variant, group_size=64, init="random"), seed=1)
    targets = [n for n in ours.sites]
    peft_base = TINY[arch]()
    if arch == "gpt2":
        peft_base = conv1d_to_linear(peft_base)
    peft_model = get_peft_model(
        peft_base,
        PeftRoadConfig(variant=variant, group_size=64, target_modules=targets, init_weights=True),
    )
    with torch.no_grad():  # same parameters
        for name, p in peft_model.named_parameters():
            if ".road_" in name:
                site = name.removeprefix("base_model.model.").split(".road_")[0]
                param = "theta" if ".road_theta" in name else "alpha"
                p.copy_(ours.adapter_parameters("a")[f"{site}.{param}"])
    expected = logits(peft_model, input_ids)
    torch.testing.assert_close(logits(ours, input_ids), expected, rtol=1e-5, atol=1e-5)

    # export -> PEFT load
    ours.save_adapter("a", tmp_path / "exported", peft=True)
    reloaded_base = TINY[arch]()
    if arch == "gpt2":
        reloaded_base = conv1d_to_linear(reloaded_base)
    reloaded = PeftModel.from_pretrained(reloaded_base, tmp_path / "exported")
    torch.testing.assert_close(logits(reloaded, input_ids), expected, rtol=1e-5, atol=1e-5)

    # PEFT save -> import
    peft_model.save_pretrained(tmp_path / "from_peft")
    again = RoadModel(TINY[arch]())
    again.load_adapter(tmp_path / "from_peft", name="imported")
    torch.testing.assert_close(logits(again, input_ids), expected, rtol=1e-5, atol=1e-5)


def test_random_adapter_changes_the_output(input_ids):
    base = logits(TINY["llama"](), input_ids)
    ours = RoadModel(TINY["llama"]())
    ours.add_adapter("a", RoadConfig(init="random"), seed=0)
    assert not torch.allclose(logits(ours, input_ids), base, atol=1e-3)


def test_default_targets_cover_every_block_linear():
    for arch, expected in [("llama", 14), ("bert", 12), ("gpt2", 8)]:
        names = resolve_targets(TINY[arch](), RoadConfig())
        assert len(names) == expected, (arch, names)
        assert not any("classifier" in n or "lm_head" in n or "pooler" in n for n in names)
