"""One folder is one adapter: a classifier's head (extra weights) travels with its adapter
through save, load, PEFT export, composition, the bank and training's run folders."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from road_interp import AdapterBank, RoadConfig, RoadModel, read_adapter
from road_interp.checkpoints import load_head, restore_trained, save_trained
from road_interp.compose import ExtraWeightsCollide, compose_folders, union
from road_interp.io import CONFIG_FILE, PEFT_CONFIG_FILE, WEIGHTS_FILE, write_adapter, write_peft
from tests.conftest import tiny_bert, tiny_llama

HEAD = ["classifier.bias", "classifier.weight"]


def bert(head_seed: int) -> torch.nn.Module:
    """The same tiny BERT with a head that differs per seed."""
    model = tiny_bert(0)
    torch.manual_seed(100 + head_seed)
    model.classifier.reset_parameters()
    return model


def trained_bert(seed: int = 0) -> RoadModel:
    """A tiny BERT classifier with a random adapter and a head that differs per seed."""
    model = RoadModel(bert(seed))
    model.add_adapter("a", RoadConfig(init="random", targets=("query", "value")), seed=seed)
    return model


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_a_classifiers_adapter_carries_its_head_and_loads_it_in_one_call(tmp_path, input_ids):
    model = trained_bert(0)
    assert sorted(model.extras["a"]) == HEAD
    folder = model.save_adapter("a", tmp_path / "a")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["extra"] == {"classifier.bias": [3], "classifier.weight": [3, 128]}
    assert {"extra/classifier.weight", "extra/classifier.bias"} <= set(
        load_file(folder / WEIGHTS_FILE)
    )
    other = RoadModel(bert(1))  # another random head
    assert not torch.equal(logits(other, input_ids), logits(model, input_ids))
    other.load_adapter(folder)
    torch.testing.assert_close(logits(other, input_ids), logits(model, input_ids))


def test_a_head_of_another_shape_is_refused_before_the_model_changes(tmp_path):
    folder = trained_bert(0).save_adapter("a", tmp_path / "a")
    target = bert(1)
    target.classifier = torch.nn.Linear(128, 5)
    model = RoadModel(target)
    before = model.model.classifier.weight.clone()
    with pytest.raises(ValueError, match="another number of labels"):
        model.load_adapter(folder)
    assert not model.configs and not model.sites
    assert torch.equal(model.model.classifier.weight, before)


def test_saving_an_adapter_whose_head_another_load_replaced_is_refused(tmp_path):
    trained_bert(1).save_adapter("a", tmp_path / "b")
    model = trained_bert(0)
    model.load_adapter(tmp_path / "b")
    with pytest.raises(ValueError, match="now holds the values of adapter 'b'"):
        model.save_adapter("a", tmp_path / "a")
    model.save_adapter("b", tmp_path / "b-again")  # b's own head is what the model holds


def test_models_without_a_head_write_the_format_unchanged(tmp_path):
    model = RoadModel(tiny_llama())
    model.add_adapter("x", RoadConfig())
    assert model.extras["x"] == ()
    meta = json.loads((model.save_adapter("x", tmp_path / "x") / CONFIG_FILE).read_text())
    assert "extra" not in meta


def test_folders_from_before_read_head_safetensors_beside_the_adapter(tmp_path, input_ids):
    model = trained_bert(0)
    adapter = model.adapter_file("a")
    write_adapter(replace(adapter, extra={}), tmp_path / "old")
    save_file(
        {k: v.contiguous() for k, v in adapter.extra.items()}, tmp_path / "old" / "head.safetensors"
    )
    assert sorted(read_adapter(tmp_path / "old").extra) == HEAD
    other = RoadModel(bert(1))
    other.load_adapter(tmp_path / "old")
    torch.testing.assert_close(logits(other, input_ids), logits(model, input_ids))


def test_peft_export_holds_the_head_task_type_and_a_card(tmp_path, input_ids):
    model = trained_bert(0)
    folder = model.save_adapter("a", tmp_path / "peft", peft=True)
    meta = json.loads((folder / PEFT_CONFIG_FILE).read_text())
    assert meta["task_type"] == "SEQ_CLS" and meta["modules_to_save"] == ["classifier"]
    assert "AutoPeftModelForSequenceClassification" in (folder / "README.md").read_text()
    back = read_adapter(folder)
    assert all(torch.equal(back.extra[n], model.adapter_file("a").extra[n]) for n in HEAD)
    peft = pytest.importorskip("peft")
    theirs = peft.PeftModel.from_pretrained(bert(1), str(folder)).eval()
    torch.testing.assert_close(logits(theirs, input_ids), logits(model, input_ids))


def test_peft_export_names_embedded_models_by_their_upstream_ids(tmp_path):
    model = RoadModel(tiny_llama())
    model.add_adapter("x", RoadConfig())
    file = model.adapter_file("x")
    base = {**file.base_model, "name_or_path": "smollm2"}
    folder = write_peft(replace(file, base_model=base), tmp_path / "x")
    meta = json.loads((folder / PEFT_CONFIG_FILE).read_text())
    assert meta["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["task_type"] == "CAUSAL_LM" and meta["modules_to_save"] is None
    assert "Q4_1" in (folder / "README.md").read_text()


def test_composition_keeps_heads_that_agree_and_asks_when_they_differ(tmp_path):
    a, b = trained_bert(0), trained_bert(1)
    fa, fb = a.save_adapter("a", tmp_path / "a"), b.save_adapter("a", tmp_path / "b")
    with pytest.raises(ExtraWeightsCollide, match="--keep-extra"):
        compose_folders([fa, fb], tmp_path / "ab", on_overlap="product")
    compose_folders([fa, fb], tmp_path / "ab", on_overlap="product", keep_extra=1)
    kept = read_adapter(tmp_path / "ab").extra
    assert torch.equal(kept["classifier.weight"], read_adapter(fb).extra["classifier.weight"])
    compose_folders([fa, fb], tmp_path / "none", on_overlap="product", drop_extra=True)
    assert read_adapter(tmp_path / "none").extra == {}
    same = union([read_adapter(fa), read_adapter(fa)], on_overlap="product")
    assert sorted(same.extra) == HEAD


def test_a_bank_shares_one_head_and_refuses_adapters_with_another(tmp_path):
    fa = trained_bert(0).save_adapter("a", tmp_path / "a")
    fb = trained_bert(1).save_adapter("a", tmp_path / "b")
    bank = AdapterBank(bert(2))
    bank.load(fa)
    assert torch.equal(
        bank.model.model.classifier.weight, read_adapter(fa).extra["classifier.weight"]
    )
    assert sorted(bank.adapter("a").extra) == HEAD
    with pytest.raises(ValueError, match="separate banks"):
        bank.load(fb)
    assert bank.names == ("a",)


def test_run_folders_are_adapters_with_their_head_and_restore_into_the_model(tmp_path, input_ids):
    model = trained_bert(0)
    for p in model.model.classifier.parameters():
        p.requires_grad_(True)
    save_trained(model, tmp_path / "best")
    assert not (tmp_path / "best" / "head.safetensors").exists()
    expected = logits(model, input_ids)
    with torch.no_grad():
        for p in [*model.adapter_parameters("a").values(), *model.model.classifier.parameters()]:
            p.add_(0.5)
    restore_trained(model, tmp_path / "best")
    torch.testing.assert_close(logits(model, input_ids), expected)
    other = RoadModel(bert(1))
    other.load_adapter(tmp_path / "best")
    torch.testing.assert_close(logits(other, input_ids), expected)
    head_only = bert(3)
    load_head(head_only, tmp_path / "best")
    assert torch.equal(head_only.classifier.weight, model.model.classifier.weight)


def test_save_pretrained_and_from_pretrained_round_trip(tmp_path, input_ids):
    model = trained_bert(0)
    model.save_pretrained(tmp_path / "a")
    again = RoadModel.from_pretrained(tmp_path / "a", bert(1))
    assert again.active == ("a",)
    torch.testing.assert_close(logits(again, input_ids), logits(model, input_ids))
    model.add_adapter("b", RoadConfig(targets=("query",)), activate=False)
    model.set_active("a", "b")
    with pytest.raises(ValueError, match="say which"):
        model.save_pretrained(tmp_path / "x")


def test_the_newest_adapter_holds_a_shared_head_and_remove_restores_the_models_own(input_ids):
    """Review findings: two adapters added on one classifier share its one head (the newer
    one holds it: saving the older would write the newer's head); a loaded head is taken
    out again by remove()."""
    model = RoadModel(tiny_bert())
    model.add_adapter("a", RoadConfig(group_size=4))
    model.add_adapter("b", RoadConfig(group_size=4))
    model.adapter_file("a")  # the head is still what "a" had: saving it is fine
    with torch.no_grad():
        model.model.classifier.weight.add_(0.5)  # as training "b" would
    with pytest.raises(ValueError, match="holds the values of adapter 'b'"):
        model.adapter_file("a")
    trained = model.adapter_file("b")
    trained.extra["classifier.weight"].add_(1.0)  # a head another run trained
    other = RoadModel(tiny_bert())
    with torch.no_grad():
        before = other(input_ids=input_ids).logits
    other.load_adapter(trained, "b")
    restored = other.remove()
    with torch.no_grad():
        assert torch.equal(restored(input_ids=input_ids).logits, before)
