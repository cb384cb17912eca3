"""Mean pooling: the head of a sentence-transformers encoder reads what the encoder was
trained to produce."""

from __future__ import annotations

import pytest
import torch

from road_interp.pooling import MeanPooler, trained_pooling, use_mean_pooling
from tests.conftest import tiny_bert, tiny_llama


def test_mean_pooled_logits_equal_the_head_on_the_masked_mean_and_ignore_padding():
    model = use_mean_pooling(tiny_bert())
    ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(logits, model.classifier(mean))
        alone = model(input_ids=ids[1:, :3]).logits  # the padded row without its padding
    torch.testing.assert_close(logits[1:], alone, rtol=1e-5, atol=1e-5)
    assert isinstance(model.bert.pooler, MeanPooler)
    assert not any("pooler" in name for name, _ in model.named_parameters())
    model.bert.pooler.detach()
    assert not model.bert._forward_pre_hooks


def test_pooling_comes_from_the_sentence_transformers_config(tmp_path):
    assert trained_pooling(tmp_path) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    assert trained_pooling(tmp_path) == "mean"
    with pytest.raises(ValueError, match="no encoder pooler"):
        use_mean_pooling(tiny_llama())


@pytest.mark.real
def test_embedded_minilm_classifies_from_mean_pooling():
    from road_interp import load_model

    assert isinstance(load_model("minilm", num_labels=2).bert.pooler, MeanPooler)
    assert not isinstance(load_model("minilm", pooling="cls").bert.pooler, MeanPooler)
    with pytest.raises(ValueError, match="unknown pooling"):
        load_model("minilm", pooling="max")
