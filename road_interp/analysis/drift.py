"""Representation drift: how much an adapter changes a model's hidden states, layer by layer.

The paper's pilot study (Liao & Monz 2024, §2): for one token's hidden state x with the
adapter and x0 without it, at every layer,

    ΔM = |‖x‖ − ‖x0‖| / ‖x0‖        (relative change of magnitude)
    cos(x, x0) = 1 − ‖u − v‖² / 2    with u = x / ‖x‖, v = x0 / ‖x0‖   (change of direction)

The cosine is computed from the unit vectors' distance (algebraically the same as
x·x0 / ‖x‖‖x0‖, and free of cancellation for small angles), in float64; so an adapter that
changes nothing gives ΔM = 0 and cos = 1 exactly. The base states come from the same
`RoadModel` inside `RoadModel.disabled()`, and the adapted ones from its active adapters.

The token is ``"cls"`` (position 0), ``"last"`` (the last position the attention mask keeps,
right or left padding alike) or ``"mean"`` (the mean over the kept positions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Sized

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..model import RoadModel
from .stats import check_table

TOKENS = ("cls", "last", "mean")


def text_batches(
    tokenizer, texts: Sequence[str], *, batch_size: int = 16, max_length: int = 128
) -> list[dict[str, Tensor]]:
    """Tokenized batches of ``texts`` (padded, truncated to ``max_length`` tokens)."""
    if not texts:
        raise ValueError("no texts given; drift needs at least one example")
    return [
        dict(
            tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
        )
        for start in range(0, len(texts), batch_size)
    ]


def pick_token(hidden: Tensor, mask: Tensor, token: str) -> Tensor:
    """One vector per example from hidden states (B, T, H) and a mask (B, T): (B, H) float64."""
    hidden = hidden.double()
    if token == "cls":
        return hidden[:, 0]
    if token == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(dim=1)  # (B,) last kept position
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if token == "mean":
        weights = mask.double().unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown token {token!r}; choose one of {TOKENS}")


def drift_measures(x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
    """(ΔM, cos) per row of x, x0 (B, H), as in the module docstring; float64 (B,) each."""
    x, x0 = x.double(), x0.double()
    norm, norm0 = x.norm(dim=-1), x0.norm(dim=-1)
    delta_m = (norm - norm0).abs() / norm0
    u = x / norm.clamp_min(1e-300).unsqueeze(-1)
    v = x0 / norm0.clamp_min(1e-300).unsqueeze(-1)
    cos = 1.0 - (u - v).pow(2).sum(-1) / 2.0
    return delta_m, cos


def _hidden_states(model: RoadModel, batch: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
    out = model(**batch, output_hidden_states=True)
    states = getattr(out, "hidden_states", None)
    if states is None:
        raise ValueError(
            f"{type(model.model).__name__} returned no hidden_states with "
            "output_hidden_states=True; drift needs a transformers model that does"
        )
    return states


@torch.no_grad()
def drift_samples(
    model: RoadModel,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    token: str = "cls",
    progress: bool = True,
) -> pd.DataFrame:
    """ΔM and cos per example and layer, between the model with its active adapters and
    without them (the tidy long table `summarize_drift` aggregates). The model runs in eval
    mode (no dropout) and is put back in its previous mode afterwards.

    Args:
        model: a `RoadModel` whose active adapters are the ones to measure.
        batches: tokenized batches (dicts of tensors with ``input_ids`` and, for padded
            batches, ``attention_mask``), e.g. from `text_batches`.
        token: ``"cls"``, ``"last"`` or ``"mean"``.

    Columns: example, layer (0 = the embeddings, i = the output of block i), delta_m, cos.
    """
    if token not in TOKENS:
        raise ValueError(f"unknown token {token!r}; choose one of {TOKENS}")
    if not model.active:
        raise ValueError("the model has no active adapter; set_active() the one to measure")
    device = next(model.parameters()).device
    frames: list[pd.DataFrame] = []
    total = len(batches) if isinstance(batches, Sized) else None
    bar = tqdm(
        batches, desc=f"drift ({token} token)", unit="batch", total=total, disable=not progress
    )
    modes = {m: m.training for m in model.modules()}  # each module's own, put back exactly
    model.eval()  # no dropout: the two runs must differ by the adapter only
    try:
        seen = 0
        for batch in bar:
            batch_frames = _batch_drift(model, batch, token, device, first_example=seen)
            frames.extend(batch_frames)
            seen += len(batch_frames[0])
    finally:
        for module, training in modes.items():
            module.training = training
    if not frames:
        raise ValueError("the batches were empty; drift needs at least one example")
    return pd.concat(frames, ignore_index=True).sort_values(["layer", "example"], kind="stable")


def _batch_drift(
    model: RoadModel,
    batch: Mapping[str, Tensor],
    token: str,
    device: torch.device,
    first_example: int,
) -> list[pd.DataFrame]:
    """One (example, layer, delta_m, cos) frame per layer for one batch."""
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(batch["input_ids"])
    adapted = _hidden_states(model, batch)
    with model.disabled():
        base = _hidden_states(model, batch)
    frames = []
    for layer, (h, h0) in enumerate(zip(adapted, base, strict=True)):
        delta_m, cos = drift_measures(pick_token(h, mask, token), pick_token(h0, mask, token))
        n = delta_m.shape[0]
        frames.append(
            pd.DataFrame(
                {
                    "example": range(first_example, first_example + n),
                    "layer": layer,
                    "delta_m": delta_m.cpu().numpy(),
                    "cos": cos.cpu().numpy(),
                }
            )
        )
    return frames


def summarize_drift(samples: pd.DataFrame, name: str = "adapter") -> pd.DataFrame:
    """Per layer: adapter (= ``name``), layer, n, delta_m_mean, delta_m_std, cos_mean, cos_std."""
    check_table(samples, ["layer", "delta_m", "cos"], "summarize_drift")
    out = (
        samples.groupby("layer")
        .agg(
            n=("delta_m", "size"),
            delta_m_mean=("delta_m", "mean"),
            delta_m_std=("delta_m", "std"),
            cos_mean=("cos", "mean"),
            cos_std=("cos", "std"),
        )
        .reset_index()
    )
    out.insert(0, "adapter", name)
    return out.fillna({"delta_m_std": 0.0, "cos_std": 0.0})


def representation_drift(
    model: RoadModel,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    token: str = "cls",
    name: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """`summarize_drift` of `drift_samples`: one row per layer (``name`` defaults to the active
    adapters joined by '+')."""
    samples = drift_samples(model, batches, token=token, progress=progress)
    return summarize_drift(samples, name or "+".join(model.active))
