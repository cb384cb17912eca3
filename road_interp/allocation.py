"""Data-aware plane allocation: give each skill the planes the other skill's data uses least.

Adapters on disjoint planes combine exactly site by site, but every later layer reads every
plane, so skill A's rotation also acts on skill B's data (DESIGN §1). The interference of A
on B's data is smallest where B's data puts little energy: a rotation of a plane that B's
hidden vectors barely occupy changes them barely. So, per site, with the base model:

    energy_k[p] = E_{tokens of skill k's data} [ h_a² + h_b² ]        (plane p = (a, b))
    share_k[p]  = energy_k[p] / Σ_q energy_k[q]                       (comparable across skills)
    A gets the planes with the largest share_A − share_B, B the rest (``fraction`` of them each)

`plane_energy` measures the first line through forward hooks on the site modules' outputs
(real tokens only, from the attention mask); `allocate` does the rest and returns two
`road_interp.subspaces.Subspace` s to train each skill on (`road_interp.subspaces.train_on`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import rotation
from .model import RoadModel
from .subspaces import Subspace


def plane_energy(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    sites: Mapping[str, int],
    group_size: int,
) -> dict[str, Tensor]:
    """Mean energy h_a² + h_b² of each plane (d/2,) at each site's output, over the real
    tokens of ``batches`` (tokenized inputs with ``attention_mask``) run through ``model``
    as it is (use the base model: no adapter active; a `RoadModel` or the Hugging Face model
    itself). ``sites``: module path -> size d."""
    root = model.model if isinstance(model, RoadModel) else model  # site paths are the HF model's
    modules = dict(root.named_modules())
    missing = sorted(set(sites) - set(modules))
    if missing:
        raise ValueError(f"the model has no modules {missing[:3]}; sites must be module paths")
    totals = {s: torch.zeros(d // 2, dtype=torch.float64) for s, d in sites.items()}
    count = torch.zeros((), dtype=torch.float64)
    mask: dict[str, Tensor] = {}

    def hook(path: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            h = (output[0] if isinstance(output, tuple) else output).detach().double()
            a, b = rotation.plane_indices(h.shape[-1], group_size)
            energy = h[..., a] ** 2 + h[..., b] ** 2  # (B, L, d/2)
            weights = mask["m"].to(energy.dtype).unsqueeze(-1)  # (B, L, 1)
            totals[path] += (energy * weights).sum(dim=(0, 1)).cpu()

        return record

    handles = [modules[path].register_forward_hook(hook(path)) for path in sites]
    try:
        with torch.no_grad():
            for batch in batches:
                ids = batch["input_ids"]
                mask["m"] = batch.get("attention_mask", torch.ones_like(ids))
                count += mask["m"].sum()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ValueError("no tokens: give at least one non-empty batch")
    return {s: t / count for s, t in totals.items()}


def allocate(
    energy_a: Mapping[str, Tensor],
    energy_b: Mapping[str, Tensor],
    fraction: float = 0.5,
    names: tuple[str, str] = ("A", "B"),
) -> tuple[Subspace, Subspace]:
    """Two disjoint plane sets, ``fraction`` of each site's planes each (see the module
    docstring): A's are the planes with the largest share_A − share_B, B's the smallest."""
    if not 0 < fraction <= 0.5:
        raise ValueError(
            f"fraction must be in (0, 0.5] so the two sets are disjoint, got {fraction}"
        )
    if set(energy_a) != set(energy_b):
        raise ValueError("the two skills' energies must cover the same sites")
    sizes, planes_a, planes_b = {}, {}, {}
    for site, ea in energy_a.items():
        eb = energy_b[site]
        preference = ea / ea.sum().clamp(min=1e-30) - eb / eb.sum().clamp(min=1e-30)
        order = torch.argsort(preference, descending=True, stable=True)
        k = int(fraction * order.numel())
        sizes[site] = 2 * order.numel()
        planes_a[site], planes_b[site] = order[:k], order[order.numel() - k :]
    return Subspace(sizes, planes_a, names[0]), Subspace(sizes, planes_b, names[1])
