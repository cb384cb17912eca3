"""Composition algebra on adapters (`AdapterFile`) and on adapter folders.

Every operation works site by site and plane by plane; nothing needs a model.

- `restrict(A, S)`: A on the planes of subspace S, the identity (θ = 0, α = 1) elsewhere.
- `union(A, B, ...)`: each plane takes the parameters of the one adapter that moves it (its
  *support*, `support`). On disjoint supports this is exact (a copy of parameters) and equals
  applying each adapter on its own planes. Planes moved by two adapters are an overlap: by
  default an `OverlapError` carrying the overlap report (a DataFrame); with
  ``on_overlap="product"`` they get the block product, explicitly.
- `product(A, B)`: the block product R_B R_A on every plane (A applied first). For RoAd1 it is
  exact in parameter space (angles add, magnitudes multiply; rotations in one plane commute).
- `scale(A, λ)`: in **parameter space**, θ → λθ, α → α^λ. For RoAd1 this is the matrix power
  R^λ of each scaled rotation (λ = 0: identity, λ = 1: A, λ = −1: A⁻¹, λ = 2: A applied twice).
  For RoAd2 and RoAd4 it interpolates each (α, θ) pair from the identity (λ = 0) to A
  (λ = 1), which is not a matrix power of the block. Non-integer λ needs α > 0.
- `invert(A)`: the inverse. RoAd1: θ → −θ, α → 1/α. RoAd2 and RoAd4 can represent any 2×2
  block, so their inverse is the closed-form block inverse converted back to parameters
  (`road_interp.rotation.Layout.params_from_coefficients`). A zero magnitude (a singular block)
  is an error.

The per-site math of `product`, `invert`, `support` and `restrict` is the variant's
`road_interp.rotation.Layout`; this module applies it site by site, in float64.

**Extra weights** (a classifier's head, `AdapterFile.extra`) travel with their adapter: the
unary operations keep them, and `union` and `product` keep every input's, so long as no two
inputs carry the same weight with different values. When they do (two skills' heads), they
refuse with an `ExtraWeightsCollide` naming the weights, unless told which input's to keep
(``keep_extra``) or to drop them all (``drop_extra``; give each task its head at evaluation).

Adapters combine only if they share variant and group size, were made for the same base model,
agree on the size of every shared site and (representation adapters) act at the same token
positions; otherwise a ValueError names the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from . import rotation
from .io import AdapterFile, read_adapter, write_adapter, write_peft
from .rotation import Layout
from .subspaces import OVERLAP_COLUMNS, Subspace, _overlap_row


class OverlapError(ValueError):
    """Adapters in a union move the same planes. ``report`` is the overlap DataFrame."""

    def __init__(self, message: str, report: pd.DataFrame):
        super().__init__(message)
        self.report = report


class ExtraWeightsCollide(ValueError):
    """Inputs carry the same extra weight (a head) with different values."""


Params = tuple[Tensor, Tensor]


def merge_extra(
    adapters: Mapping[str, AdapterFile], *, keep: str | None = None, drop: bool = False
) -> dict[str, Tensor]:
    """The extra weights of a composition: every input's, where no two inputs disagree on a
    weight. ``keep``: the input whose values win where they do; ``drop``: none at all.
    Raises `ExtraWeightsCollide` on a disagreement that neither settles."""
    if drop:
        return {}
    if keep is not None and keep not in adapters:
        raise ValueError(f"keep_extra={keep!r} names no input; the inputs are {list(adapters)}")
    carriers: dict[str, dict[str, Tensor]] = {}  # weight -> input -> value
    for name, adapter in adapters.items():
        for weight, value in adapter.extra.items():
            carriers.setdefault(weight, {})[name] = value
    merged: dict[str, Tensor] = {}
    for weight, values in carriers.items():
        first_name, first = next(iter(values.items()))
        if keep in values:
            merged[weight] = values[keep]
        elif all(torch.equal(first, v) for v in values.values()):
            merged[weight] = first
        else:
            other = next(n for n, v in values.items() if not torch.equal(first, v))
            raise ExtraWeightsCollide(
                f"inputs {first_name!r} and {other!r} both carry {weight} with different "
                "values (each its own head); choose one input's extra weights to keep "
                "(keep_extra=, road-interp compose --keep-extra N) or drop them all "
                "(drop_extra=True, --drop-extra) and give each task its own head when "
                "evaluating (road-interp evaluate --head RUN/best)"
            )
    return merged


# -- checks -------------------------------------------------------------------------------------
def check_composable(adapters: Mapping[str, AdapterFile]) -> None:
    """Raise ValueError unless all adapters share variant, group size, base model and the size
    of every shared site."""
    items = list(adapters.items())
    if not items:
        raise ValueError("nothing to compose: give at least one adapter")
    first_name, first = items[0]
    sizes = dict(first.sites)
    for name, other in items[1:]:
        if first.positions != other.positions:
            raise ValueError(
                f"cannot compose {first_name!r} (positions {first.positions}) with {name!r} "
                f"(positions {other.positions}); adapters must act at the same token positions"
            )
        for field in ("variant", "group_size"):
            a, b = getattr(first.config, field), getattr(other.config, field)
            if a != b:
                raise ValueError(
                    f"cannot compose {first_name!r} ({field} {a}) with {name!r} ({field} {b}); "
                    f"adapters must share variant and group_size"
                )
        for key in ("model_type", "architecture", "name_or_path"):
            a, b = first.base_model.get(key), other.base_model.get(key)
            if a and b and a != b:
                raise ValueError(
                    f"cannot compose {first_name!r} and {name!r}: they were made for different "
                    f"base models ({key} {a!r} vs {b!r})"
                )
        for site, d in other.sites.items():
            if sizes.setdefault(site, d) != d:
                raise ValueError(
                    f"cannot compose: site {site} has size {sizes[site]} in {first_name!r} "
                    f"but {d} in {name!r}"
                )


def _named(adapters: Mapping[str, AdapterFile] | Sequence[AdapterFile]) -> dict[str, AdapterFile]:
    if isinstance(adapters, Mapping):
        return dict(adapters)
    return {f"adapter{i}": a for i, a in enumerate(adapters)}


def _with_params(
    like: AdapterFile, params: dict[str, Params], *, keeps_planes: bool = True
) -> AdapterFile:
    """``like`` with new parameters on the sites of ``params``. ``keeps_planes``: the result
    moves no plane ``like`` did not (scale, invert), so ``like``'s recorded subspace holds;
    otherwise (union, product, restrict) none is recorded: `support` tells the planes."""
    subspace = like.config.subspace if keeps_planes else None
    config = replace(like.config, targets=tuple(params), subspace=subspace)
    return replace(like, config=config, params=params)


# -- parameters per site ------------------------------------------------------------------------
def _identity(adapter: AdapterFile, d: int) -> Params:
    return rotation.identity_params(adapter.config.variant, d, dtype=torch.float64)


def _site_params(adapter: AdapterFile, site: str, d: int) -> Params:
    if site in adapter.params:
        theta, alpha = adapter.params[site]
        return theta.double(), alpha.double()
    return _identity(adapter, d)


def _float32(params: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Params]:
    return {site: (t.float(), a.float()) for site, (t, a) in params.items()}


# -- operations ---------------------------------------------------------------------------------
def support(adapter: AdapterFile, name: str = "") -> Subspace:
    """The planes on which ``adapter`` is not exactly the identity."""
    layout = Layout.of(adapter.config)
    planes = {
        site: layout.plane_support(theta, alpha).nonzero().reshape(-1)
        for site, (theta, alpha) in adapter.params.items()
    }
    return Subspace(adapter.sites, planes, name)


def restrict(adapter: AdapterFile, subspace: Subspace) -> AdapterFile:
    """``adapter`` on the planes of ``subspace``, the identity on every other plane (sites the
    subspace does not name become the identity)."""
    layout = Layout.of(adapter.config)
    params = {}
    for site, (theta, alpha) in adapter.params.items():
        if site in subspace.sizes and subspace.sizes[site] != adapter.sites[site]:
            raise ValueError(
                f"subspace {subspace.name!r}: site {site} has size {subspace.sizes[site]}, "
                f"the adapter's has {adapter.sites[site]}"
            )
        planes = (
            subspace.plane_mask(site)
            if site in subspace.sizes
            else torch.zeros(adapter.sites[site] // 2, dtype=torch.bool)
        )
        keep = layout.param_mask(planes)
        params[site] = (
            torch.where(keep, theta, torch.zeros_like(theta)),
            torch.where(keep, alpha, torch.ones_like(alpha)),
        )
    return _with_params(adapter, params, keeps_planes=False)


def overlap_report(adapters: Mapping[str, AdapterFile] | Sequence[AdapterFile]) -> pd.DataFrame:
    """One row per site and pair of adapters: planes each moves, planes both move, and the
    shared share of the smaller support. Columns: site, d, first, second, planes_first,
    planes_second, shared, shared_share."""
    named = _named(adapters)
    check_composable(named)
    supports = {n: support(a, n) for n, a in named.items()}
    names = list(named)
    rows = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            s1, s2 = supports[first], supports[second]
            for site in sorted(set(s1.sizes) & set(s2.sizes)):
                rows.append(
                    _overlap_row(
                        site,
                        s1.sizes[site],
                        first,
                        second,
                        s1.plane_mask(site),
                        s2.plane_mask(site),
                    )
                )
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def union(
    adapters: Mapping[str, AdapterFile] | Sequence[AdapterFile],
    on_overlap: str = "error",
    *,
    keep_extra: str | None = None,
    drop_extra: bool = False,
) -> AdapterFile:
    """Each plane from the adapter that moves it; planes several adapters move raise an
    `OverlapError` (``on_overlap="error"``) or get their block product in the given order
    (``on_overlap="product"``). Exact (a parameter copy) where supports are disjoint. Extra
    weights: `merge_extra` (``keep_extra`` names an input, as a key of ``adapters``)."""
    if on_overlap not in ("error", "product"):
        raise ValueError(f"on_overlap must be 'error' or 'product', got {on_overlap!r}")
    named = _named(adapters)
    check_composable(named)
    extra = merge_extra(named, keep=keep_extra, drop=drop_extra)
    if on_overlap == "error" and len(named) > 1:
        report = overlap_report(named)
        shared = report[report["shared"] > 0]
        if len(shared):
            raise OverlapError(
                f"{int(shared['shared'].sum())} planes are moved by more than one adapter, at "
                f"{shared['site'].nunique()} sites; union never sums them silently. Restrict the "
                f"adapters to disjoint subspaces or pass on_overlap='product'.\n"
                + shared.head(10).to_string(index=False),
                report,
            )
    first = next(iter(named.values()))
    layout = Layout.of(first.config)
    sizes: dict[str, int] = {}
    for each in named.values():
        sizes.update(each.sites)
    params: dict[str, tuple[Tensor, Tensor]] = {}
    for site, d in sizes.items():
        theta, alpha = _identity(first, d)
        moved = torch.zeros(d // 2, dtype=torch.bool)
        for adapter in named.values():
            if site not in adapter.params:
                continue
            t, a = _site_params(adapter, site, d)
            own = layout.plane_support(t, a)
            only = layout.param_mask(own & ~moved)
            both = layout.param_mask(own & moved)
            theta, alpha = torch.where(only, t, theta), torch.where(only, a, alpha)
            if both.any():
                pt, pa = layout.product((theta, alpha), (t, a))
                theta, alpha = torch.where(both, pt, theta), torch.where(both, pa, alpha)
            moved |= own
        params[site] = (theta, alpha)
    return replace(_with_params(first, _float32(params), keeps_planes=False), extra=extra)


def product(first: AdapterFile, second: AdapterFile) -> AdapterFile:
    """R_second R_first on every plane (``first`` applied first), over the union of sites."""
    named = {"first": first, "second": second}
    check_composable(named)
    extra = merge_extra(named)
    layout = Layout.of(first.config)
    sizes = {**first.sites, **second.sites}
    params = {
        site: layout.product(_site_params(first, site, d), _site_params(second, site, d))
        for site, d in sizes.items()
    }
    return replace(_with_params(first, _float32(params), keeps_planes=False), extra=extra)


def scale(adapter: AdapterFile, lam: float) -> AdapterFile:
    """θ → λθ, α → α^λ (see the module docstring for what that means per variant)."""
    if not math.isfinite(lam):
        raise ValueError(f"the scale must be a finite number, got {lam}")
    params = {}
    for site, (theta, alpha) in adapter.params.items():
        alpha = alpha.double()
        if not float(lam).is_integer() and bool((alpha <= 0).any()):
            raise ValueError(
                f"site {site}: α ≤ 0 somewhere, so α^{lam} is undefined; only integer scales "
                "work for this adapter"
            )
        if lam < 0 and bool((alpha == 0).any()):
            raise ValueError(f"site {site}: α = 0 somewhere, so a negative scale is undefined")
        params[site] = (theta.double() * lam, alpha.pow(lam))
    return _with_params(adapter, _float32(params))


def invert(adapter: AdapterFile) -> AdapterFile:
    """The adapter whose rotation is the inverse of ``adapter``'s at every site."""
    layout = Layout.of(adapter.config)
    params = {}
    for site, (theta, alpha) in adapter.params.items():
        try:
            params[site] = layout.inverse(theta.double(), alpha.double())
        except ValueError as err:
            raise ValueError(f"site {site}: {err}") from None
    return _with_params(adapter, _float32(params))


# -- folders ------------------------------------------------------------------------------------
def compose_folders(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    on_overlap: str = "error",
    scales: Sequence[float] | None = None,
    inverted: Sequence[int] = (),
    restrictions: Sequence[str] | None = None,
    peft: bool = False,
    overwrite: bool = False,
    keep_extra: int | None = None,
    drop_extra: bool = False,
    ties_density: float | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Read adapter folders, transform each (restrict to a subspace spec, scale, invert, in
    that order), take their `union` (or, with ``ties_density``, their TIES merge,
    `road_interp.merging.ties`) and write it atomically, validated (a scale that overflows
    to inf is refused); an adapter folder already at ``output`` is replaced only with
    ``overwrite``. ``inverted`` and ``keep_extra`` (the input whose extra weights win where
    inputs disagree, `merge_extra`) hold 0-based input positions. Returns the output folder
    and the overlap report of the transformed inputs."""
    n = len(inputs)
    scales = list(scales) if scales is not None else [1.0] * n
    restrictions = list(restrictions) if restrictions is not None else ["all"] * n
    if len(scales) == 1 and n > 1:
        scales *= n
    if len(restrictions) == 1 and n > 1:
        restrictions *= n
    if len(scales) != n or len(restrictions) != n:
        raise ValueError(f"give one scale and one subspace per input adapter ({n}), or one for all")
    if keep_extra is not None and not 0 <= keep_extra < n:
        raise ValueError(
            f"cannot keep input {keep_extra + 1}'s extra weights: there are {n} inputs"
        )
    bad = [i for i in inverted if not 0 <= i < n]
    if bad:
        raise ValueError(f"cannot invert input(s) {[i + 1 for i in bad]}: there are {n} inputs")
    adapters: dict[str, AdapterFile] = {}
    for i, path in enumerate(inputs):
        adapter = read_adapter(path)
        key = f"{i + 1}:{Path(path).name}"
        if restrictions[i] != "all":
            spec = Subspace.from_spec(restrictions[i], adapter.sites, adapter.config.group_size)
            adapter = restrict(adapter, spec)
        if scales[i] != 1.0:
            adapter = scale(adapter, scales[i])
        if i in inverted:
            adapter = invert(adapter)
        adapters[key] = adapter
    check_composable(adapters)
    report = overlap_report(adapters) if n > 1 else pd.DataFrame(columns=OVERLAP_COLUMNS)
    keep = list(adapters)[keep_extra] if keep_extra is not None else None
    if ties_density is None:
        result = union(adapters, on_overlap=on_overlap, keep_extra=keep, drop_extra=drop_extra)
    else:
        from .merging import ties  # merging builds on this module

        result = ties(adapters, ties_density, keep_extra=keep, drop_extra=drop_extra)
    written = (write_peft if peft else write_adapter)(result, output, overwrite=overwrite)
    return written, report
