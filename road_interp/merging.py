"""Merging rules for adapters that move the same planes: TIES-merging in RoAd's space.

`road_interp.compose.union` combines adapters on disjoint planes exactly. Adapters trained
on all planes overlap everywhere; TIES-merging (Yadav et al., NeurIPS 2023) resolves that
per parameter entry. In RoAd the task vector of an adapter is its distance from the
identity in every stored entry,

    τ = (θ, log α)            (the identity is τ = 0; for RoAd1 blocks, adding τ's of two
                               adapters on a plane is exactly their block product)

and for K adapters, entry by entry:

1. **trim**: keep each adapter's ``density`` largest |τ| entries per site (the others → 0);
2. **elect**: the sign of Σ_k τ_k (the total mass wins);
3. **disjoint mean**: the mean of the kept τ_k that agree with the elected sign,

then θ = τ_θ, α = exp(τ_log α), scaled by ``lam``. The angle and the log-magnitude are merged
independently. Pure tensor work on `road_interp.io.AdapterFile`s; no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from .compose import check_composable, merge_extra
from .io import AdapterFile


def ties(
    adapters: Mapping[str, AdapterFile] | Sequence[AdapterFile],
    density: float = 0.2,
    lam: float = 1.0,
    *,
    keep_extra: str | None = None,
    drop_extra: bool = False,
) -> AdapterFile:
    """TIES-merge adapters of one variant and pairing (see the module docstring). Extra
    weights (a head) as `road_interp.compose.union` treats them (`merge_extra`)."""
    named = dict(adapters) if isinstance(adapters, Mapping) else dict(enumerate(adapters))
    check_composable({str(k): a for k, a in named.items()})
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    first = next(iter(named.values()))
    bad = [
        k for k, a in named.items() for _, alpha in a.params.values() if bool((alpha <= 0).any())
    ]
    if bad:
        raise ValueError(f"adapter {bad[0]!r} has α <= 0 somewhere; log α is undefined there")
    sites = sorted({s for a in named.values() for s in a.params})
    params: dict[str, tuple[Tensor, Tensor]] = {}
    for site in sites:
        present = [a.params[site] for a in named.values() if site in a.params]
        theta = _merge([t.double() for t, _ in present], density) * lam
        log_alpha = _merge([a.double().log() for _, a in present], density) * lam
        params[site] = (theta.float(), log_alpha.exp().float())
    config = replace(first.config, targets=tuple(params), subspace=None)
    extra = merge_extra({str(k): a for k, a in named.items()}, keep=keep_extra, drop=drop_extra)
    return AdapterFile(config, first.base_model, params, extra)


def _merge(vectors: list[Tensor], density: float) -> Tensor:
    """TIES on task vectors of one site (each (n,)): trim, elect, disjoint mean."""
    stacked = torch.stack([_trim(v, density) for v in vectors])  # (K, n)
    sign = torch.sign(stacked.sum(dim=0))  # (n,)
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (stacked * agree).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1)


def _trim(vector: Tensor, density: float) -> Tensor:
    """``vector`` with all but its ⌈density · n⌉ largest-magnitude entries set to 0."""
    keep = max(1, int(round(density * vector.numel())))
    if keep >= vector.numel():
        return vector.clone()
    threshold = vector.abs().kthvalue(vector.numel() - keep + 1).values
    return torch.where(vector.abs() >= threshold, vector, torch.zeros_like(vector))
