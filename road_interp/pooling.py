"""Sequence classifiers that pool the way their encoder was trained.

all-MiniLM-L6-v2 (the embedded ``minilm``) is a sentence-transformers model trained with
**mean pooling** (its ``1_Pooling/config.json``); BERT's own pooler (dense + tanh on [CLS]) was
never trained for it, so a head on that pooler reads a weak feature. `use_mean_pooling` swaps
the encoder's pooler for a `MeanPooler`:

    pooled[b] = Σ_t m[b, t] h[b, t] / Σ_t m[b, t]      h (B, L, d), m (B, L) the attention mask

so the Hugging Face classifier (dropout + ``classifier``) reads the mean of the real tokens'
last hidden states, as sentence-transformers plus a linear layer would. The model stays a
``…ForSequenceClassification``; nothing else changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

POOLINGS = ("cls", "mean")
"""cls: the architecture's own pooler ([CLS] through BERT's dense + tanh); mean: `MeanPooler`."""


def trained_pooling(model_dir: str | Path) -> str:
    """How the encoder in ``model_dir`` was trained to pool: ``"mean"`` for a
    sentence-transformers folder whose ``1_Pooling/config.json`` says mean tokens, else
    ``"cls"``."""
    config = Path(model_dir) / "1_Pooling" / "config.json"
    if not config.exists():
        return "cls"
    settings = json.loads(config.read_text())
    return "mean" if settings.get("pooling_mode_mean_tokens") else "cls"


class MeanPooler(nn.Module):
    """Replaces an encoder's pooler: the masked mean of the last hidden states (B, L, d) ->
    (B, d). It reads the attention mask of each forward through a pre-hook on the encoder,
    which `detach` removes."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self._mask: Tensor | None = None
        self._handle: RemovableHandle | None = encoder.register_forward_pre_hook(
            self._read_mask, with_kwargs=True
        )

    def _read_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], Tensor):
            mask = args[1]
        self._mask = mask

    def forward(self, hidden: Tensor) -> Tensor:
        mask = self._mask
        if mask is None or tuple(mask.shape) != tuple(hidden.shape[:2]):
            return hidden.mean(dim=1)  # no padding information: every token is real
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None


def use_mean_pooling(model: nn.Module) -> nn.Module:
    """Make a Hugging Face sequence classifier read the mean-pooled last hidden state (see the
    module docstring). Returns the model. Raises ValueError if its encoder has no pooler."""
    encoder = getattr(model, "base_model", None)
    if encoder is None or getattr(encoder, "pooler", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no encoder pooler to replace; mean pooling is for "
            "BERT-like sequence classifiers"
        )
    encoder.pooler = MeanPooler(encoder)
    return model
