"""A PEFT export loads in PEFT's AutoPeftModel… offline, on the real embedded models, once
`place_in_hf_cache` (what `road-interp fetch` does) has put them under their upstream ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from road_interp import RoadConfig, RoadModel, load_model, load_tokenizer
from road_interp.models import EMBEDDED, place_in_hf_cache

pytest.importorskip("peft")

LOAD = """
import sys, torch
from peft import {loader}
model = {loader}.from_pretrained(sys.argv[1]{kwargs}).eval()
{fix}
batch = torch.load(sys.argv[3])
with torch.no_grad():
    torch.save(model(**batch).logits, sys.argv[2])
"""


def load_in_peft(
    tmp_path, folder, loader: str, batch, fix: str = "", kwargs: str = ""
) -> torch.Tensor:
    """The logits of ``batch`` from the export loaded by PEFT in a fresh offline process."""
    script = LOAD.format(loader=loader, fix=fix, kwargs=kwargs)
    torch.save(dict(batch), tmp_path / "batch.pt")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    env.update(OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    out = tmp_path / "logits.pt"
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(out), str(tmp_path / "batch.pt")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.real
def test_minilm_export_loads_with_its_head_in_auto_peft_offline(tmp_path):
    snapshot = place_in_hf_cache("minilm", tmp_path / "hub")
    assert (snapshot / "config.json").exists()
    assert place_in_hf_cache("minilm", tmp_path / "hub") == snapshot  # placing again: the same
    model = RoadModel(load_model("minilm", task="classification", num_labels=3, seed=1))
    model.add_adapter("emo", RoadConfig(init="random"), seed=0)
    folder = model.save_pretrained(tmp_path / "export", peft=True)
    card = (folder / "README.md").read_text()
    assert EMBEDDED["minilm"].hub_id in card and "use_mean_pooling" in card
    assert "num_labels=3" in card  # what a 3-label head needs from the loader
    tok = load_tokenizer("minilm")
    batch = tok(["A lovely, quiet hotel.", "Cold food."], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model(**batch).logits
    fix = (
        "from road_interp.pooling import use_mean_pooling; use_mean_pooling(model.get_base_model())"
    )
    loader = "AutoPeftModelForSequenceClassification"
    theirs = load_in_peft(tmp_path, folder, loader, batch, fix, kwargs=", num_labels=3")
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.real
def test_smollm2_export_loads_in_auto_peft_for_causal_lm_offline(tmp_path):
    place_in_hf_cache("smollm2", tmp_path / "hub")
    model = RoadModel(load_model("smollm2"))
    model.add_adapter("x", RoadConfig(targets=("q_proj", "v_proj"), init="random"), seed=0)
    folder = model.save_pretrained(tmp_path / "export", peft=True)
    assert "Q4_1" in (folder / "README.md").read_text()
    tok = load_tokenizer("smollm2")
    batch = tok(["A lovely, quiet hotel.", "Cold food."], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model(**batch).logits
    theirs = load_in_peft(tmp_path, folder, "AutoPeftModelForCausalLM", batch)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
