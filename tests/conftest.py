"""Shared fixtures: tiny models built from configs (unit tier) and the embedded real models
(integration tier; `make setup` / `road-interp fetch` puts them in the cache)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=96,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=96, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


TINY = {"llama": tiny_llama, "bert": tiny_bert, "gpt2": tiny_gpt2}


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 96, (3, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def real_minilm():
    """The embedded MiniLM as a 2-label classifier (fresh head, seed 0), loaded once."""
    from road_interp import load_model, load_tokenizer

    return load_model("minilm", task="classification", num_labels=2), load_tokenizer("minilm")


@pytest.fixture(scope="session")
def real_smollm2():
    """The embedded SmolLM2-135M-Instruct (float32), loaded once."""
    from road_interp import load_model, load_tokenizer

    return load_model("smollm2", task="causal-lm"), load_tokenizer("smollm2")
