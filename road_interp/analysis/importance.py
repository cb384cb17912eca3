"""Plane importance: reset groups of planes to the identity and measure what the task loses.

For an adapter and a group of planes (a layer, a module type, a site, any subspace: a
mapping site -> plane indices), the group's blocks are set to the identity (θ = 0, α = 1 in
every entry that `road_interp.rotation.Layout.entry_index` says the plane reads), the user's
metric is measured, and the parameters are restored exactly, also when the metric raises. With

    baseline = metric(adapter intact),   none = metric(every plane of the adapter reset)

each group gets ``drop = baseline − metric`` and ``share_of_gain = drop / (baseline − none)``,
the share of the adapter's gain over the base model that the group carries.

The metric is any callable ``metric(model) -> float`` (higher is better); `task_metric` makes
one from a registered task and `road_interp.evaluation.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..evaluation import evaluate
from ..layers import RoadLinear, RoadSite
from ..model import RoadModel
from ..rotation import Layout
from ..subspaces import Subspace
from .stats import check_table

PlaneSet = Subspace | Mapping[str, Sequence[int] | Tensor]
"""Planes per site: a `road_interp.subspaces.Subspace`, or a mapping site path -> plane
indices (both in `rotation.plane_indices` order)."""

Metric = Callable[[RoadModel], float]

BY = ("layer", "module_type", "site")

if TYPE_CHECKING:
    from ..tasks import Example, Task


def task_metric(
    tokenizer: Any,
    task: Task | Sequence[Example],
    split: str = "validation",
    limit: int | None = None,
    *,
    batch_size: int = 32,
) -> Metric:
    """``metric(model)``: the task's own metric (accuracy, exact match) on ``split``, at most
    ``limit`` examples, via `road_interp.evaluation.evaluate`."""

    def metric(model: RoadModel) -> float:
        result = evaluate(
            model, tokenizer, task, split, limit, batch_size=batch_size, progress=False
        )
        return float(result["value"])

    return metric


def groups_by(planes: pd.DataFrame, by: str = "layer") -> dict[str, dict[str, list[int]]]:
    """Subspaces from a plane table (`stats.plane_table`, or any subset of its rows, e.g. only
    the strongly rotated planes): one group per layer, module type or site, named by its value
    (``layer 3``, ``attention.self.query``, or the site path)."""
    if by not in BY:
        raise ValueError(f"group planes by one of {BY}, not {by!r}")
    check_table(planes, ["site", "plane", by], "groups_by")
    if "adapter" in planes and planes["adapter"].nunique() > 1:
        raise ValueError("groups_by takes the plane table of one adapter; select one first")
    groups: dict[str, dict[str, list[int]]] = {}
    for key, rows in planes.groupby(by, sort=False, dropna=False):
        label = _group_label(by, key)
        groups[label] = {
            str(site): sorted(int(p) for p in part["plane"])
            for site, part in rows.groupby("site", sort=False)
        }
    return groups


def _group_label(by: str, key: object) -> str:
    if by != "layer":
        return str(key)
    return "no layer" if pd.isna(key) else f"layer {key}"  # type: ignore[call-overload]


def _adapter_sites(model: RoadModel, adapter: str) -> dict[str, RoadSite]:
    sites = model.sites_of(adapter)
    merged = [n for n, s in sites.items() if isinstance(s, RoadLinear) and s.merged]
    if merged:
        raise RuntimeError(
            f"adapter {adapter!r} is merged into {merged[0]} (and {len(merged) - 1} more); "
            "unmerge() the model before resetting planes"
        )
    return sites


def _planes(subspace: PlaneSet) -> dict[str, Tensor]:
    """site -> distinct plane indices (long)."""
    planes = subspace.planes if isinstance(subspace, Subspace) else subspace
    out = {
        site: torch.as_tensor(p, dtype=torch.long).reshape(-1).unique()
        for site, p in planes.items()
    }
    return {site: p for site, p in out.items() if p.numel()}


def _indices(model: RoadModel, adapter: str, subspace: PlaneSet) -> dict[str, Tensor]:
    """Parameter indices per site that the subspace's planes read; validates it first."""
    sites = _adapter_sites(model, adapter)
    planes = _planes(subspace)
    if not planes:
        raise ValueError("the subspace is empty; name at least one site and plane")
    config = model.configs[adapter]
    out = {}
    for site, index in planes.items():
        if site not in sites:
            shown = ", ".join(list(sites)[:4])
            raise ValueError(
                f"adapter {adapter!r} has no site {site!r}; its sites are like {shown}"
            )
        size = sites[site].size
        if index.min() < 0 or index.max() >= size // 2:
            raise ValueError(
                f"site {site!r} has planes 0..{size // 2 - 1}; asked for plane "
                f"{int(index.max()) if index.max() >= size // 2 else int(index.min())}"
            )
        table = Layout.of(config).entry_index(size)  # (d/2, 4)
        out[site] = table[index].reshape(-1).unique()
    return out


@contextmanager
def planes_reset(model: RoadModel, adapter: str, subspace: PlaneSet) -> Iterator[RoadModel]:
    """Within the block, the subspace's planes of ``adapter`` are the identity; afterwards the
    parameters are exactly what they were (also after an exception)."""
    indices = _indices(model, adapter, subspace)
    sites = model.sites_of(adapter)
    saved = {}
    try:
        with torch.no_grad():
            for site, index in indices.items():
                params = sites[site].adapter(adapter)
                saved[site] = (params.theta[index].clone(), params.alpha[index].clone())
                params.theta[index] = 0.0
                params.alpha[index] = 1.0
        yield model
    finally:
        with torch.no_grad():
            for site, (theta, alpha) in saved.items():
                params = sites[site].adapter(adapter)
                params.theta[indices[site]] = theta
                params.alpha[indices[site]] = alpha


def all_planes(model: RoadModel, adapter: str) -> dict[str, list[int]]:
    """The subspace of every plane of ``adapter``."""
    return {n: list(range(s.size // 2)) for n, s in _adapter_sites(model, adapter).items()}


def plane_importance(
    model: RoadModel,
    adapter: str,
    groups: Mapping[str, PlaneSet],
    metric: Metric,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Reset each group of planes in turn and measure ``metric`` (see the module docstring).

    Args:
        model: a `RoadModel` holding ``adapter`` (active, not merged).
        adapter: the adapter whose planes are reset.
        groups: group name -> planes (a `Subspace` or a mapping site -> plane indices), e.g.
            `groups_by` of a plane table.
        metric: ``metric(model) -> float``, higher is better, deterministic.

    Returns a table with columns group, n_sites, n_planes, metric, baseline, none, drop,
    share_of_gain (NaN if the adapter has no gain), sorted by drop, largest first.
    """
    if not groups:
        raise ValueError("no groups given; pass e.g. groups_by(plane_table(...), 'layer')")
    if adapter not in model.active:
        raise ValueError(
            f"adapter {adapter!r} is not active (active: {list(model.active)}); "
            "set_active() it so that resetting its planes changes the model"
        )
    checked = {name: _indices(model, adapter, subspace) for name, subspace in groups.items()}
    baseline = float(metric(model))
    with planes_reset(model, adapter, all_planes(model, adapter)):
        none = float(metric(model))
    gain = baseline - none
    rows = []
    for name, subspace in tqdm(groups.items(), desc="plane importance", disable=not progress):
        with planes_reset(model, adapter, subspace):
            value = float(metric(model))
        rows.append(
            {
                "group": name,
                "n_sites": len(checked[name]),
                "n_planes": sum(p.numel() for p in _planes(subspace).values()),
                "metric": value,
                "baseline": baseline,
                "none": none,
                "drop": baseline - value,
                "share_of_gain": (baseline - value) / gain if gain else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    return table.sort_values("drop", ascending=False, kind="stable").reset_index(drop=True)
