"""Subspaces: named sets of RoAd planes per site, and training restricted to them.

A site of size d has P = d/2 planes, numbered in RoAd1 parameter order (group-major; see
`road_interp.rotation.plane_indices`). A `Subspace` holds, per site, a sorted set of plane
indices in [0, P). Plane numbers do not depend on ``group_size``; which two coordinates a plane
owns does (plane k of group size g is coordinates (G·g + j, G·g + j + g/2) with G = k // (g/2),
j = k mod (g/2)).

An adapter acts "on a subspace" when it is the identity (θ = 0, α = 1) on every other plane.
Which entries of θ and α belong to which plane depends on the variant; `param_mask` asks the
variant's `road_interp.rotation.Layout` (`Layout.param_planes`).

Training on a subspace (`train_on`) puts the adapter at the identity outside its planes and masks
the gradients there; with AdamW at weight decay 0 (the RoAd default) those entries then never
move. Per-example routing (`route_subspaces`) trains one adapter on several skills at once: row
r of a batch sees the adapter only on the planes of its own skill, so the gradient of every other
plane comes only from the rows of the skills that own it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from . import rotation


@dataclass(frozen=True)
class Subspace:
    """Planes per site: ``planes[site]`` is a sorted 1-D long tensor of plane indices.

    Attributes:
        sizes: site path -> site size d (the planes are indices in [0, d/2)).
        planes: site path -> plane indices. Sites missing here have no planes in the subspace.
        name: a label for reports.
    """

    sizes: Mapping[str, int]
    planes: Mapping[str, Tensor]
    name: str = ""

    def __post_init__(self) -> None:
        clean: dict[str, Tensor] = {}
        for site, idx in self.planes.items():
            if site not in self.sizes:
                raise ValueError(f"subspace {self.name!r}: site {site} has no size in `sizes`")
            n_planes = self.sizes[site] // 2
            idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
            uniq = torch.unique(idx)  # sorted
            if uniq.numel() != idx.numel():
                raise ValueError(f"subspace {self.name!r}: site {site} lists a plane twice")
            if uniq.numel() and (uniq[0] < 0 or uniq[-1] >= n_planes):
                raise ValueError(
                    f"subspace {self.name!r}: site {site} has {n_planes} planes (d = "
                    f"{self.sizes[site]}), plane indices must be in [0, {n_planes})"
                )
            clean[site] = uniq
        object.__setattr__(self, "planes", clean)
        object.__setattr__(self, "sizes", dict(self.sizes))

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def full(cls, sizes: Mapping[str, int], name: str = "all") -> Subspace:
        """Every plane of every site."""
        return cls(sizes, {s: torch.arange(d // 2) for s, d in sizes.items()}, name)

    @classmethod
    def fraction(
        cls, sizes: Mapping[str, int], start: float, stop: float, name: str = ""
    ) -> Subspace:
        """Planes [⌊start·P⌋, ⌊stop·P⌋) of each site, 0 ≤ start ≤ stop ≤ 1."""
        if not 0.0 <= start <= stop <= 1.0:
            raise ValueError(f"need 0 <= start <= stop <= 1, got start={start}, stop={stop}")
        planes = {}
        for site, d in sizes.items():
            n = d // 2
            planes[site] = torch.arange(int(start * n), int(stop * n))
        return cls(sizes, planes, name or f"range:{start:g}:{stop:g}")

    @classmethod
    def part(cls, sizes: Mapping[str, int], k: int, n: int, name: str = "") -> Subspace:
        """The k-th of n equal contiguous parts of the planes (``part(sizes, 0, 2)`` is the
        first half, as in the paper's composition experiment)."""
        if not 0 <= k < n:
            raise ValueError(f"part {k} of {n} does not exist; k must be in [0, {n})")
        return cls.fraction(sizes, k / n, (k + 1) / n, name or f"part:{k}/{n}")

    @classmethod
    def random(
        cls, sizes: Mapping[str, int], fraction: float, seed: int, name: str = ""
    ) -> Subspace:
        """A seeded random ⌊fraction·P⌋ planes of each site (sites drawn in sorted order)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        planes = {}
        for site in sorted(sizes):
            n = sizes[site] // 2
            planes[site] = torch.randperm(n, generator=gen)[: int(fraction * n)]
        return cls(sizes, planes, name or f"random:{fraction:g}:{seed}")

    @classmethod
    def random_like(cls, other: Subspace, seed: int, name: str = "") -> Subspace:
        """A null for ``other``: as many seeded random planes of each of its sites as it has
        there, drawn from all of the site's planes (sites drawn in sorted order)."""
        gen = torch.Generator().manual_seed(seed)
        planes = {}
        for site in sorted(other.planes):
            n = other.sizes[site] // 2
            planes[site] = torch.randperm(n, generator=gen)[: other.planes[site].numel()]
        return cls(other.sizes, planes, name or f"random-like:{other.name}:{seed}")

    @classmethod
    def groups(
        cls, sizes: Mapping[str, int], group_size: int, groups: Sequence[int], name: str = ""
    ) -> Subspace:
        """Whole pairing groups: group G holds planes [G·g/2, (G+1)·g/2)."""
        planes = {}
        half = group_size // 2
        for site, d in sizes.items():
            rotation.check_pairing(d, group_size)
            n_groups = d // group_size
            bad = [g for g in groups if not 0 <= g < n_groups]
            if bad:
                raise ValueError(f"site {site} has groups 0..{n_groups - 1}; no group {bad}")
            planes[site] = torch.cat(
                [torch.arange(g * half, (g + 1) * half) for g in groups]
                or [torch.zeros(0, dtype=torch.long)]
            )
        return cls(sizes, planes, name or f"groups:{','.join(map(str, groups))}")

    @classmethod
    def from_spec(cls, spec: str, sizes: Mapping[str, int], group_size: int = 2) -> Subspace:
        """Parse a command-line subspace: ``all``, ``half:K`` (K = 0 or 1), ``part:K/N``,
        ``range:START:STOP`` (fractions of the planes), ``random:FRACTION:SEED`` or
        ``groups:I,J,...`` (whole pairing groups of ``group_size``)."""
        kind, _, rest = spec.partition(":")
        fields = rest.replace("/", ":").split(":") if rest else []
        shapes = {"all": 0, "half": 1, "part": 2, "range": 2, "random": 2, "groups": 1}
        if kind not in shapes or len(fields) != shapes[kind]:
            raise ValueError(
                f"cannot read subspace {spec!r}; use all, half:K, part:K/N, range:START:STOP, "
                "random:FRACTION:SEED or groups:I,J,..."
            )
        try:
            if kind == "half":
                return cls.part(sizes, int(fields[0]), 2, spec)
            if kind == "part":
                return cls.part(sizes, int(fields[0]), int(fields[1]), spec)
            if kind == "range":
                return cls.fraction(sizes, float(fields[0]), float(fields[1]), spec)
            if kind == "random":
                return cls.random(sizes, float(fields[0]), int(fields[1]), spec)
            if kind == "groups":
                groups = [int(g) for g in fields[0].split(",")]
                return cls.groups(sizes, group_size, groups, spec)
        except ValueError as err:
            raise ValueError(f"subspace {spec!r}: {err}") from None
        return cls.full(sizes)

    # -- set algebra ------------------------------------------------------------------------
    def _combine(self, other: Subspace, keep_a: bool, keep_b: bool, both: bool) -> Subspace:
        sizes = dict(self.sizes)
        for site, d in other.sizes.items():
            if sizes.setdefault(site, d) != d:
                raise ValueError(
                    f"site {site} has size {sizes[site]} in one subspace, {d} in other"
                )
        planes = {}
        for site in sorted(set(self.planes) | set(other.planes)):
            a = self.plane_mask(site) if site in self.sizes else None
            b = other.plane_mask(site) if site in other.sizes else None
            a = a if a is not None else torch.zeros(sizes[site] // 2, dtype=torch.bool)
            b = b if b is not None else torch.zeros(sizes[site] // 2, dtype=torch.bool)
            mask = (a & ~b & keep_a) | (b & ~a & keep_b) | (a & b & both)
            planes[site] = mask.nonzero().reshape(-1)
        return Subspace(sizes, planes)

    def __or__(self, other: Subspace) -> Subspace:
        return self._combine(other, True, True, True)

    def __and__(self, other: Subspace) -> Subspace:
        return self._combine(other, False, False, True)

    def __sub__(self, other: Subspace) -> Subspace:
        return self._combine(other, True, False, False)

    def num_planes(self) -> int:
        return sum(int(p.numel()) for p in self.planes.values())

    # -- masks ------------------------------------------------------------------------------
    def plane_mask(self, site: str) -> Tensor:
        """Bool (d/2,): True on this subspace's planes of ``site``."""
        mask = torch.zeros(self.sizes[site] // 2, dtype=torch.bool)
        if site in self.planes:
            mask[self.planes[site]] = True
        return mask

    def coordinate_mask(self, site: str, group_size: int) -> Tensor:
        """Bool (d,): True on both coordinates of each plane of ``site``."""
        return coordinate_mask(self.plane_mask(site), group_size)

    def param_mask(self, site: str, variant: str, group_size: int) -> Tensor:
        """Bool (n_params,): the θ / α entries of ``variant`` that belong to these planes."""
        return param_mask(self.plane_mask(site), variant, group_size)

    def overlap(self, other: Subspace) -> pd.DataFrame:
        """Per site: planes in each subspace, shared planes and the shared share of the smaller."""
        rows = []
        for site in sorted(set(self.sizes) & set(other.sizes)):
            a, b = self.plane_mask(site), other.plane_mask(site)
            rows.append(_overlap_row(site, self.sizes[site], self.name, other.name, a, b))
        return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


OVERLAP_COLUMNS = [
    "site",
    "d",
    "first",
    "second",
    "planes_first",
    "planes_second",
    "shared",
    "shared_share",
]


def _overlap_row(site: str, d: int, first: str, second: str, a: Tensor, b: Tensor) -> list:
    na, nb, shared = int(a.sum()), int(b.sum()), int((a & b).sum())
    smaller = min(na, nb)
    return [site, d, first, second, na, nb, shared, shared / smaller if smaller else 0.0]


def coordinate_mask(plane_mask: Tensor, group_size: int) -> Tensor:
    """Bool (d,) from a plane mask (d/2,): both coordinates of each selected plane."""
    d = plane_mask.numel() * 2
    a, b = rotation.plane_indices(d, group_size)
    mask = torch.zeros(d, dtype=torch.bool)
    mask[a[plane_mask]] = True
    mask[b[plane_mask]] = True
    return mask


def param_mask(plane_mask: Tensor, variant: str, group_size: int) -> Tensor:
    """Bool (n_params,): which θ / α entries of ``variant`` belong to the selected planes
    (`road_interp.rotation.Layout.param_mask`)."""
    return rotation.Layout(variant, group_size).param_mask(plane_mask)


# -- training on subspaces --------------------------------------------------------------------
def model_sizes(model, name: str) -> dict[str, int]:
    """Site path -> d for the sites of adapter ``name`` in a `RoadModel`."""
    return {site: s.size for site, s in model.sites_of(name).items()}


@contextmanager
def train_on(model, name: str, subspace: Subspace) -> Iterator[None]:
    """Train adapter ``name`` of a `RoadModel` only on ``subspace``.

    On entry the adapter is set to the identity outside the subspace (θ = 0, α = 1); while
    inside, gradient hooks zero the gradient of every parameter entry outside it. With AdamW
    at weight decay 0 those entries stay exactly at the identity. The hooks are removed on exit,
    also after an exception. Sites of the adapter missing from ``subspace`` are frozen whole.
    """
    config = model.configs[name]
    sites = model.sites_of(name)
    unknown = sorted(set(subspace.planes) - set(sites))
    if unknown:
        raise ValueError(
            f"subspace {subspace.name!r} names sites adapter {name!r} lacks: {unknown}"
        )
    handles = []
    try:
        for site_name, site in sites.items():
            adapter = site.adapter(name)
            if site_name in subspace.sizes and subspace.sizes[site_name] != site.size:
                raise ValueError(
                    f"subspace {subspace.name!r}: site {site_name} has size "
                    f"{subspace.sizes[site_name]}, the model's has {site.size}"
                )
            plane_mask = (
                subspace.plane_mask(site_name)
                if site_name in subspace.sizes
                else torch.zeros(site.size // 2, dtype=torch.bool)
            )
            mask = param_mask(plane_mask, config.variant, config.group_size)
            mask = mask.to(adapter.theta.device)
            with torch.no_grad():
                adapter.theta.masked_fill_(~mask, 0.0)
                adapter.alpha.masked_fill_(~mask, 1.0)
            keep = mask.to(adapter.theta.dtype)
            for p in (adapter.theta, adapter.alpha):
                handles.append(p.register_hook(lambda g, keep=keep: g * keep))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def route_subspaces(
    model, name: str, subspaces: Sequence[Subspace], rows: Tensor
) -> Iterator[None]:
    """Per-example subspace routing for one forward (and its backward) of a `RoadModel`.

    ``rows`` (B,) holds each batch row's skill index k into ``subspaces``. At every site of
    adapter ``name`` the rotation of row r is the adapter on the planes of ``subspaces[rows[r]]``
    and the identity elsewhere, as per-row coefficients

        c_rows[r] = where(mask_k, c, 1),   s_rows[r] = where(mask_k, s, 0)   (B, d)

    handed to the model's one routing path (`RoadModel.route`), computed with gradients, so a
    backward through the forward run inside this context reaches θ, α only through the planes
    each row may use. Other adapters active at these sites are not applied while routing;
    other sites keep their active adapters. Routing is cleared on exit.
    """
    if rows.dim() != 1:
        raise ValueError(
            f"rows must be a 1-D tensor of skill indices, got shape {tuple(rows.shape)}"
        )
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(subspaces)):
        raise ValueError(f"rows holds skill indices outside [0, {len(subspaces)})")
    config = model.configs[name]
    coefficients = {}
    for site_name, site in model.sites_of(name).items():
        adapter = site.adapter(name)
        masks = torch.stack(
            [
                s.coordinate_mask(site_name, config.group_size)
                if site_name in s.sizes
                else torch.zeros(site.size, dtype=torch.bool)
                for s in subspaces
            ]
        ).to(adapter.theta.device)  # (K, d)
        row_masks = masks[rows.to(masks.device)]  # (B, d)
        c, s = adapter.coefficients()
        coefficients[site_name] = (
            torch.where(row_masks, c, torch.ones_like(c)),
            torch.where(row_masks, s, torch.zeros_like(s)),
        )
    with model.route(coefficients, config.group_size, exclusive=False):
        yield
