"""`RoadModel`: a Hugging Face model with RoAd sites in it, and named adapters on those sites.

    model = RoadModel(hf_model)
    model.add_adapter("sentiment", RoadConfig(variant="road_1", group_size=64))
    logits = model(**batch).logits          # the active adapters act
    with model.disabled():                  # the base model, bit-identical
        ...
    model.merge(); model.unmerge()          # fold into W, b and back, O(d·k) per layer
    base = model.remove()                   # the original modules back in place

The wrapped model keeps its own module paths: the site of ``bert.encoder.layer.0.attention.
self.query`` is found under that name in `RoadModel.sites`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import injection
from .config import RoadConfig
from .layers import RoadLinear, RoadSite
from .representation import remove_output_sites
from .rotation import check_pairing


class RoadModel(nn.Module):
    """Wraps a model; adds, activates, merges and removes RoAd adapters on its leaves."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if isinstance(model, RoadModel):
            raise TypeError("this model is already a RoadModel")
        self.model = model
        self.configs: dict[str, RoadConfig] = {}
        self._base_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self.active: tuple[str, ...] = ()

    # -- structure --------------------------------------------------------------------------
    @property
    def sites(self) -> dict[str, RoadSite]:
        """Every site, keyed by the wrapped model's own module path."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, RoadSite)}

    def linear_sites(self) -> dict[str, RoadLinear]:
        return {n: m for n, m in self.sites.items() if isinstance(m, RoadLinear)}

    @property
    def base_model_identity(self) -> dict[str, Any]:
        """What an adapter file records about the model it was made for."""
        config = getattr(self.model, "config", None)
        return {
            "model_type": getattr(config, "model_type", None),
            "architecture": type(self.model).__name__,
            "name_or_path": getattr(config, "_name_or_path", None) or None,
        }

    def sites_of(self, name: str) -> dict[str, RoadSite]:
        """The sites holding adapter ``name``."""
        self._check_names([name])
        return {n: s for n, s in self.sites.items() if name in s.adapters}

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(
        self, name: str, config: RoadConfig, *, seed: int | None = None, activate: bool = True
    ) -> None:
        """Put adapter ``name`` on every module ``config.targets`` selects.

        All targets are checked (pairing, existence) before anything changes. The base
        model's own parameters are frozen; the new adapter's parameters are trainable.
        """
        if name in self.configs:
            raise ValueError(f"an adapter named {name!r} already exists; delete_adapter() it first")
        if not name or "." in name:
            raise ValueError(f"adapter names must be non-empty and contain no '.', got {name!r}")
        targets = injection.resolve_targets(self.model, config)
        modules = dict(self.model.named_modules())
        for target in targets:
            size = injection.out_features(modules[target])
            assert size is not None  # resolve_targets returns adaptable layers only
            try:
                check_pairing(size, config.group_size)
            except ValueError as err:
                raise ValueError(f"module {target}: {err}") from None
        for p in self.model.parameters():
            p.requires_grad_(False)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for target in targets:
            site = modules[target]
            if not isinstance(site, RoadLinear):
                site = RoadLinear(modules[target], name=target)
                injection.replace_module(self.model, target, site)
            adapter = site.add_adapter(name, config, generator)
            device = site.base_layer.weight.device
            adapter.to(device)
        self.configs[name] = config
        if activate:
            self.set_active(*self.active, name)

    def delete_adapter(self, name: str) -> None:
        self._check_names([name])
        if name in self.active:
            self.set_active(*(n for n in self.active if n != name))
        for site in self.sites.values():
            if name in site.adapters:
                del site.adapters[name]
        del self.configs[name]

    def set_active(self, *names: str) -> None:
        """Activate these adapters (applied in this order at every site that has them)."""
        self._check_names(names)
        for site in self.sites.values():
            site.set_active(n for n in names if n in site.adapters)
        self.active = tuple(names)

    def _check_names(self, names) -> None:
        unknown = [n for n in names if n not in self.configs]
        if unknown:
            raise KeyError(f"no adapter named {unknown}; this model has {list(self.configs)}")

    @contextmanager
    def disabled(self) -> Iterator[RoadModel]:
        """Run the base model: every site passes its input through untouched."""
        sites = self.sites.values()
        for site in sites:
            site.disabled = True
        try:
            yield self
        finally:
            for site in sites:
                site.disabled = False

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """``{"<site>.theta": θ, "<site>.alpha": α}`` of adapter ``name``."""
        out: dict[str, nn.Parameter] = {}
        for site_name, site in self.sites_of(name).items():
            adapter = site.adapter(name)
            out[f"{site_name}.theta"] = adapter.theta
            out[f"{site_name}.alpha"] = adapter.alpha
        return out

    # -- merging and removal ----------------------------------------------------------------
    def merge(self) -> None:
        """Fold the active adapters into every Linear/Conv1D site's weights."""
        sites = self.linear_sites().values()
        for site in sites:  # check all before changing any
            for n in site.active:
                site.adapter(n).check_finite(f"{site.site_name} / adapter {n!r}")
        for site in sites:
            site.merge()

    def unmerge(self) -> None:
        for site in self.linear_sites().values():
            site.unmerge()

    def remove(self) -> nn.Module:
        """Take every site out and return the wrapped model with its original modules (bit-
        identical to before if nothing is merged; merged sites are unmerged first)."""
        self.unmerge()
        remove_output_sites(self)  # representation sites: hooks and modules
        for name, site in self.linear_sites().items():
            injection.replace_module(self.model, name, site.base_layer)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(n, p.requires_grad))
        self.configs.clear()
        self.active = ()
        return self.model

    def merge_and_unload(self) -> nn.Module:
        """Fold the active adapters in and return a plain model (no sites)."""
        if len(self.sites) != len(self.linear_sites()):
            raise ValueError(
                "representation sites (module outputs at token positions) cannot be folded into "
                "weights; save the adapter and remove() the model instead"
            )
        self.merge()
        for name, site in self.linear_sites().items():
            site.merged = ()
            injection.replace_module(self.model, name, site.base_layer)
        self.configs.clear()
        return self.model

    # -- running ----------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)  # type: ignore[operator]

    # -- reporting --------------------------------------------------------------------------
    def trainable_report(self, name: str | None = None) -> pd.DataFrame:
        """Parameters of adapter ``name`` (default: the first active) per module type.

        Columns: module_type, sites, params, pct_of_base. The last row is the total.
        """
        name = name or (self.active[0] if self.active else next(iter(self.configs), None))
        if name is None:
            raise ValueError("this model has no adapters yet")
        base = sum(p.numel() for n, p in self.model.named_parameters() if ".adapters." not in n)
        rows: dict[str, list[int]] = {}
        for site_name, site in self.sites_of(name).items():
            a = site.adapter(name)
            kind = (
                site_name.rsplit(".", 1)[-1]
                if "layer" not in site_name
                else _module_type(site_name)
            )
            rows.setdefault(kind, [0, 0])
            rows[kind][0] += 1
            rows[kind][1] += a.theta.numel() + a.alpha.numel()
        table = pd.DataFrame(
            [(k, n, p) for k, (n, p) in rows.items()], columns=["module_type", "sites", "params"]
        )
        total = pd.DataFrame(
            [("total", table["sites"].sum(), table["params"].sum())], columns=table.columns
        )
        table = pd.concat([table, total], ignore_index=True)
        table["pct_of_base"] = 100.0 * table["params"] / base
        return table


def _module_type(site_name: str) -> str:
    """The part of a module path after the block index: 'model.layers.3.mlp.up_proj' -> 'mlp.up_proj'."""
    parts = site_name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[i + 1 :])
    return parts[-1]
