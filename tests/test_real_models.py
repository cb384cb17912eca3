"""The core on the two embedded real models: identity is bit-identical, merged equals
unmerged, save -> load gives the same logits, removal restores the base bit-identically."""

from __future__ import annotations

import pytest
import torch

from road_interp import RoadConfig, RoadModel

pytestmark = pytest.mark.real
TEXTS = [
    "The staff were friendly and the room was spotless.",
    "Cold food, rude waiter, never again.",
]


@pytest.fixture(params=["real_minilm", "real_smollm2"])
def real(request):
    model, tok = request.getfixturevalue(request.param)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    return model, batch


def run(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_identity_bit_identical_and_removal_restores(real):
    model, batch = real
    base = run(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    road = RoadModel(model)
    try:
        road.add_adapter("identity", RoadConfig(variant="road_4"))
        assert torch.equal(run(road, batch), base)
        road.add_adapter("random", RoadConfig(init="random"), seed=0)
        assert not torch.allclose(run(road, batch), base, atol=1e-3)
    finally:
        restored = road.remove()
    assert restored is model
    assert torch.equal(run(model, batch), base)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def assert_close_to_scale(actual, expected, rel=1e-4):
    """Float32 rounding through a deep stack: the error is small relative to the logit scale."""
    error = (actual - expected).abs().max() / expected.abs().max()
    assert error < rel, f"max error {error:.2e} of the logit scale"


@pytest.mark.parametrize("variant", ["road_1", "road_2"])
def test_save_load_then_merged_equals_unmerged(real, variant, tmp_path):
    model, batch = real
    base = run(model, batch)
    road = RoadModel(model)
    try:
        road.add_adapter("a", RoadConfig(variant=variant, init="random"), seed=1)
        unmerged = run(road, batch)
        road.save_adapter("a", tmp_path / "a")
        road.save_adapter("a", tmp_path / "a-peft", peft=True)
        road.delete_adapter("a")
        assert torch.equal(run(road, batch), base)
        road.load_adapter(tmp_path / "a")
        assert torch.equal(run(road, batch), unmerged)
        road.delete_adapter("a")
        road.load_adapter(tmp_path / "a-peft", name="peft")
        assert torch.equal(run(road, batch), unmerged)
        road.merge()
        assert_close_to_scale(run(road, batch), unmerged)
        road.unmerge()
        assert_close_to_scale(run(road, batch), unmerged)
    finally:
        road.remove()
    assert_close_to_scale(run(model, batch), base)


def test_parameter_efficiency_matches_design(real):
    """RoAd1 trains one parameter per adapted output coordinate."""
    model, _ = real
    road = RoadModel(model)
    try:
        road.add_adapter("a", RoadConfig())
        report = road.trainable_report()
        assert "total" not in set(report["module_type"])  # one row per module type only
        assert list(report.columns) == ["module_type", "sites", "params", "percent_of_base"]
        coords = sum(site.size for site in road.sites.values())
        assert report["params"].sum() == coords
        assert report["sites"].sum() == len(road.sites)
        base = sum(p.numel() for p in model.parameters()) - coords
        assert report.attrs["base_params"] == base
        expected_pct = {"BertForSequenceClassification": 0.091, "LlamaForCausalLM": 0.116}
        percent = report["percent_of_base"].sum()
        assert percent == pytest.approx(expected_pct[type(model).__name__], abs=0.001)
        assert percent == pytest.approx(100 * coords / base)
    finally:
        road.remove()


def test_adapters_name_the_embedded_model_the_same_on_every_machine(tmp_path, real_smollm2):
    """Files record the short name, not the cache path, so adapters trained on two machines
    (two caches) compose, and the committed measured adapters match fresh ones."""
    from road_interp.io import read_adapter

    hf, _ = real_smollm2
    model = RoadModel(hf)
    try:
        model.add_adapter("a", RoadConfig(targets=("q_proj",)))
        identity = read_adapter(model.save_adapter("a", tmp_path / "a")).base_model
    finally:
        model.remove()
    assert identity == {
        "model_type": "llama",
        "architecture": "LlamaForCausalLM",
        "name_or_path": "smollm2",
    }


def test_causal_lm_tokenizers_pad_on_the_left_for_generation(real_smollm2):
    """load_tokenizer pads causal LMs on the left by default, so a padded batch goes straight
    to generate: each row continues as it does alone (and no right-padding warning)."""
    from transformers import GenerationConfig

    from road_interp import load_tokenizer

    model, tok = real_smollm2
    assert tok.padding_side == "left"
    assert load_tokenizer("minilm").padding_side == "right"  # encoders keep their own side
    assert load_tokenizer("smollm2", padding_side="right").padding_side == "right"
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer("smollm2", padding_side="middle")
    prompts = ["Paris is the capital of", "One, two,"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # the shorter prompt is padded at its start
    greedy = GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        together = model.generate(**batch, generation_config=greedy)[:, -4:]
        for row, prompt in enumerate(prompts):
            alone = model.generate(**tok([prompt], return_tensors="pt"), generation_config=greedy)
            assert torch.equal(together[row], alone[0, -4:])
