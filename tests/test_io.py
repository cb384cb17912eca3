"""Adapter folders: round trips, a golden fixture pinning the format, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from road_interp import RoadConfig, RoadModel, read_adapter
from road_interp.io import CONFIG_FILE, WEIGHTS_FILE
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama

GOLDEN = Path(__file__).parent / "fixtures" / "golden_adapter"
GOLDEN_V1 = Path(__file__).parent / "fixtures" / "golden_adapter_v1"


def golden_model() -> RoadModel:
    model = RoadModel(tiny_llama())
    model.add_adapter(
        "golden", RoadConfig(variant="road_1", group_size=64, targets=("q_proj", "down_proj"))
    )
    with torch.no_grad():
        for i, p in enumerate(model.adapter_parameters("golden").values()):
            p.copy_(torch.linspace(-1, 1, p.numel()) * (i + 1))
    return model


def test_golden_fixture_pins_the_format(tmp_path):
    """The committed folder and a fresh save of the same adapter agree byte for byte (JSON)
    and tensor for tensor. If this fails, the format changed: bump FORMAT_VERSION."""
    golden_model().save_adapter("golden", tmp_path / "fresh")
    assert (tmp_path / "fresh" / CONFIG_FILE).read_text() == (GOLDEN / CONFIG_FILE).read_text()
    fresh, golden = load_file(tmp_path / "fresh" / WEIGHTS_FILE), load_file(GOLDEN / WEIGHTS_FILE)
    assert fresh.keys() == golden.keys()
    assert all(torch.equal(fresh[k], golden[k]) for k in golden)
    meta = json.loads((GOLDEN / CONFIG_FILE).read_text())
    assert meta["format_version"] == 2 and meta["sites"]["model.layers.0.self_attn.q_proj"] == 128
    assert meta["adapter"]["positions"] is None


def test_format_1_golden_fixture_loads_as_the_same_adapter(input_ids):
    """The same adapter written by format 1 (before placement moved into the config) loads
    unchanged and gives the same logits."""
    old, new = read_adapter(GOLDEN_V1), read_adapter(GOLDEN)
    assert old.config == new.config and old.base_model == new.base_model
    assert old.params.keys() == new.params.keys()
    assert all(torch.equal(old.params[k][i], new.params[k][i]) for k in old.params for i in (0, 1))
    model = RoadModel(tiny_llama())
    model.load_adapter(GOLDEN_V1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=input_ids).logits, golden_model()(input_ids=input_ids).logits
        )


def test_save_load_same_logits_and_overwrite_is_atomic(tmp_path, input_ids):
    model = RoadModel(tiny_gpt2())
    model.add_adapter("a", RoadConfig(variant="road_4", init="random"), seed=3)
    model.save_adapter("a", tmp_path / "a")
    model.save_adapter("a", tmp_path / "a", overwrite=True)  # leaves one complete folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
    other = RoadModel(tiny_gpt2())
    assert other.load_adapter(tmp_path / "a") == "a"
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=input_ids).logits, expected)
    assert read_adapter(tmp_path / "a").config.variant == "road_4"


def saved(tmp_path) -> Path:
    model = RoadModel(tiny_llama())
    model.add_adapter("a", RoadConfig(init="random"), seed=0)
    return model.save_adapter("a", tmp_path / "a")


def assert_untouched(model: RoadModel):
    assert model.configs == {} and model.sites == {}


def test_truncated_and_corrupt_weights(tmp_path):
    folder = saved(tmp_path)
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    model = RoadModel(tiny_llama())
    with pytest.raises(ValueError, match="truncated or corrupt"):
        model.load_adapter(folder)
    assert_untouched(model)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_adapter(folder)


def test_newer_format_and_unknown_keys(tmp_path):
    folder = saved(tmp_path)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99.*upgrade road_interp"):
        read_adapter(folder)
    meta["adapter"]["rank"] = 8
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"unknown RoadConfig keys \['rank'\]"):
        read_adapter(folder)
    with pytest.raises(ValueError, match="newer than"):
        RoadConfig.from_dict({"format_version": 3})


def test_adapter_for_another_model(tmp_path):
    folder = saved(tmp_path)
    bert = RoadModel(tiny_bert())
    with pytest.raises(ValueError, match="made for a 'llama' model"):
        bert.load_adapter(folder)
    assert_untouched(bert)
    wider = tiny_llama()
    wider.config.model_type = "llama"
    bigger = RoadModel(
        type(wider)(type(wider.config)(**{**wider.config.to_dict(), "intermediate_size": 384}))
    )
    with pytest.raises(ValueError, match="has size 256 in the adapter but 384 in this model"):
        bigger.load_adapter(folder)
    assert_untouched(bigger)


def test_not_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a RoAd adapter folder"):
        read_adapter(tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown RoAd variant 'road_3'"):
        RoadConfig(variant="road_3")
    with pytest.raises(ValueError, match="even number"):
        RoadConfig(group_size=3)
    with pytest.raises(ValueError, match="unknown init"):
        RoadConfig(init="zeros")
    assert RoadConfig.from_json(RoadConfig(targets=("q_proj",)).to_json()) == RoadConfig(
        targets=("q_proj",)
    )


def test_injection_errors_change_nothing(input_ids):
    model = RoadModel(tiny_llama())
    with pytest.raises(ValueError, match="'nope' matches no Linear/Conv1D"):
        model.add_adapter("a", RoadConfig(targets=("q_proj", "nope")))
    assert_untouched(model)
    with pytest.raises(
        ValueError, match="k_proj: a site of size 64 is not divisible by group_size 128"
    ):
        model.add_adapter("a", RoadConfig(targets="all-linear", group_size=128))
    assert_untouched(model)  # q_proj (128) was fine, but nothing changed; lm_head can be named:
    with pytest.raises(ValueError, match="lm_head: a site of size 96"):
        model.add_adapter("a", RoadConfig(targets=("lm_head",)))
    assert_untouched(model)
    with pytest.raises(ValueError, match="no default RoAd targets for model type"):
        model.model.config.model_type = "mystery"
        model.add_adapter("a", RoadConfig())
    with pytest.raises(KeyError, match="no adapter named"):
        model.set_active("missing")
