"""Classifier plumbing for E2: one encoder, one head per task, and pyvene inside the loop.

`MultiHead` lets the shared training loop (`road_interp.training.train`) train one encoder on
two tasks with their own heads at once; `PyveneClassifier` lets it train a pyvene intervention
(the LoReFT baseline). Both read the batch rows' task from ``rows``, which the experiment's
``forward_context`` sets for each micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from road_interp.config import Positions
from road_interp.pyvene_view import base_locations, intervenable


def use_head(model: nn.Module, head: nn.Module, num_labels: int) -> None:
    """Put ``head`` into a Hugging Face sequence classifier's ``classifier`` slot."""
    model.classifier = head  # type: ignore[assignment]
    model.config.num_labels = num_labels  # type: ignore[union-attr]
    model.num_labels = num_labels  # type: ignore[assignment]


class MultiHead(nn.Module):
    """Several tasks' heads in one classifier slot.

    Logits are (B, Σ labels): row r gets its task's head in that task's columns and −inf in
    every other column, so cross-entropy over all columns (labels offset per task) equals
    cross-entropy over the row's own head. ``rows`` (B,) holds each row's task index.
    """

    def __init__(self, heads: list[nn.Linear]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        sizes = [h.out_features for h in heads]
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        self.total = sum(sizes)
        self.rows: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.rows is None or self.rows.shape[0] != x.shape[0]:
            raise RuntimeError("MultiHead needs each row's task: set .rows for this batch")
        out = torch.full((x.shape[0], self.total), float("-inf"), device=x.device, dtype=x.dtype)
        for k, head in enumerate(self.heads):
            sel = self.rows == k
            if sel.any():
                lo = self.offsets[k]
                out[sel, lo : lo + head.out_features] = head(x[sel]).to(x.dtype)
        return out


class PyveneClassifier(nn.Module):
    """A sequence classifier whose forward runs through ``pyvene.IntervenableModel``, with
    sourceless interventions at module outputs (every token). ``get_base_model`` exposes the
    Hugging Face model, as PEFT does, so the training loop and evaluation treat it as one.

    ``rows`` (B,), when set, is passed to the interventions as pyvene ``subspaces`` (a
    LoReFT row partition per example); None means every partition acts.
    """

    def __init__(self, model: nn.Module, interventions: Mapping[str, nn.Module]):
        super().__init__()
        self.iv = intervenable(model, interventions)  # type: ignore[arg-type]
        self.n = len(interventions)
        self.rows: Tensor | None = None

    def get_base_model(self) -> nn.Module:
        return self.iv.model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ):
        base = {"input_ids": input_ids}
        if attention_mask is not None:
            base["attention_mask"] = attention_mask
        if token_type_ids is not None:
            base["token_type_ids"] = token_type_ids
        subspaces = None
        if self.rows is not None:
            subspaces = [[[int(k)] for k in self.rows]] * self.n
        _, out = self.iv(
            base, unit_locations=base_locations(base, Positions("all"), self.n), subspaces=subspaces
        )
        return out


@contextmanager
def rows_set(rows: Tensor, *holders: nn.Module) -> Iterator[None]:
    """Set ``.rows`` on each holder for one forward; cleared on exit."""
    for holder in holders:
        holder.rows = rows  # type: ignore[assignment]
    try:
        yield
    finally:
        for holder in holders:
            holder.rows = None  # type: ignore[assignment]
