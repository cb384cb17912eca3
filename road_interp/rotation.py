"""The rotation math of RoAd as pure tensor functions (no nn.Module, no transformers).

A site vector h ∈ R^d is split into d/2 planes. With ``group_size`` g, inside each group of g
coordinates, coordinate j pairs with j + g/2 (g = 2: the paper's adjacent pairs (2k, 2k+1);
g = 64: PEFT's and vLLM's layout). Call the first coordinate of a plane ``a`` and the second
``b`` (`plane_indices`). Each plane is mapped by its own 2×2 block

    [z_a]   [ c_a   −s_a ] [h_a]
    [z_b] = [ s_b    c_b ] [h_b]

which is the element-wise form  z = c ⊙ h + s ⊙ rot(h),  rot(h)_a = −h_b, rot(h)_b = h_a.

The per-coordinate **coefficients** (c, s), two vectors of shape (d,), describe any 2×2 block
per plane, so they are closed under products and inverses; `apply`, `merge_rows`, `invert_coefficients` and
`compose_coefficients` work on them. The **parameters** (θ, α) of a variant map to coefficients
as in PEFT's RoAd (so that PEFT import/export is a copy of tensors); how each variant stores
them, and everything that depends on it, is asked of one object, `Layout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import VARIANTS, RoadConfig

PARAMS_PER_COORDINATE = {"road_1": 0.5, "road_2": 1, "road_4": 2}
"""Number of θ (and of α) values per site coordinate, by variant (`Layout` says which)."""

ENTRIES = ("11", "12", "21", "22")
"""A plane's 2×2 block entries in row-major order, the columns of `Layout.entry_index`:
"11" = c_a and "22" = c_b are cosine entries, "12" = −s_a and "21" = s_b sine entries."""


def check_pairing(d: int, group_size: int) -> None:
    """Raise a clear ValueError if a site of size ``d`` cannot be paired with ``group_size``."""
    if group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be an even number >= 2, got {group_size}")
    if d % group_size:
        raise ValueError(
            f"a site of size {d} is not divisible by group_size {group_size}; choose a "
            f"group_size that divides {d} (e.g. 2) or leave this module out of the targets"
        )


def num_params(variant: str, d: int) -> int:
    """Length of θ (and of α) for a site of size d."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown RoAd variant {variant!r}; choose one of {VARIANTS}")
    return int(PARAMS_PER_COORDINATE[variant] * d)


def identity_params(
    variant: str, d: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """(θ, α) = (0, 1): the adapter that changes nothing."""
    n = num_params(variant, d)
    return torch.zeros(n, dtype=dtype), torch.ones(n, dtype=dtype)


def random_params(
    variant: str,
    d: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """θ ~ N(0, 0.5), α ~ N(1, 0.5), as PEFT's ``init_weights=False``."""
    n = num_params(variant, d)
    theta = torch.randn(n, generator=generator, dtype=dtype) * 0.5
    alpha = 1.0 + torch.randn(n, generator=generator, dtype=dtype) * 0.5
    return theta, alpha


def coefficients(
    variant: str, group_size: int, theta: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-coordinate coefficients (c, s), each of shape (d,), from a variant's (θ, α)
    (`Layout.coefficients`)."""
    return Layout(variant, group_size).coefficients(theta, alpha)


def rotate_half(h: Tensor, group_size: int) -> Tensor:
    """rot(h) along the last dim: per plane (h_a, h_b) -> (−h_b, h_a). Shape (..., d) -> (..., d)."""
    grouped = h.unflatten(-1, (-1, 2, group_size // 2))  # (..., groups, 2, g/2)
    return torch.stack((-grouped[..., 1, :], grouped[..., 0, :]), dim=-2).flatten(-3)


def partner(v: Tensor, group_size: int) -> Tensor:
    """Each coordinate's value at its plane partner: (v_a, v_b) -> (v_b, v_a). Shape (..., d)."""
    return v.unflatten(-1, (-1, 2, group_size // 2)).flip(-2).flatten(-3)


def apply(h: Tensor, c: Tensor, s: Tensor, group_size: int) -> Tensor:
    """z = c ⊙ h + s ⊙ rot(h) on the last dim of h (..., d); c, s broadcast against h.

    Runs as three element-wise passes into one new tensor, without materializing rot(h):
    z = c ⊙ h, then on the two halves of each group (views, no copies)
    z_a −= s_a ⊙ h_b and z_b += s_b ⊙ h_a. Writing out rot(h) as above costs five passes and
    four temporaries (neg, stack, two products, a sum), which made a routed batch's prefill
    ~15-25% slower than the base model's on CPU; this form keeps it within the ~5% that one
    read of h and one write of z cost. h, c and s are never written. When a gradient is
    wanted, `_Rotate` runs the same passes and its own backward (autograd's, through the
    in-place updates of views, copies the whole gradient per update).
    """
    if not _broadcasts_into(s, h) or not _broadcasts_into(c, h):
        # s or c broadcasts beyond h, or would promote its dtype
        return h * c + rotate_half(h, group_size) * s
    if torch.is_grad_enabled() and (h.requires_grad or c.requires_grad or s.requires_grad):
        return _Rotate.apply(h, c, s, group_size)
    return _rotate_into(h * c, h, s, group_size, sign=1)


def _rotate_into(z: Tensor, h: Tensor, s: Tensor, group_size: int, sign: int) -> Tensor:
    """z_a −= sign · s_a ⊙ h_b and z_b += sign · s_b ⊙ h_a, in place on z (..., d); returns z.
    With sign −1 and (s_a, s_b) swapped this is the transpose: rot(·)ᵀ."""
    planes = (-1, 2, group_size // 2)  # (..., groups, 2, g/2): [..., 0, :] = a, [..., 1, :] = b
    z_ab, h_ab, s_ab = z.unflatten(-1, planes), h.unflatten(-1, planes), s.unflatten(-1, planes)
    z_ab.select(-2, 0).addcmul_(h_ab.select(-2, 1), s_ab.select(-2, 0), value=-sign)
    z_ab.select(-2, 1).addcmul_(h_ab.select(-2, 0), s_ab.select(-2, 1), value=sign)
    return z


class _Rotate(torch.autograd.Function):
    """`apply` with a backward of its own: for g = ∂L/∂z (..., d),

        ∂L/∂h_a = c_a g_a + s_b g_b,  ∂L/∂h_b = c_b g_b − s_a g_a,
        ∂L/∂c = Σ g ⊙ h,  ∂L/∂s = Σ g ⊙ rot(h)   (sums over the dims c and s broadcast on).

    Saves only h, c and s (as autograd's form did, which needs h for ∂c too)."""

    @staticmethod
    def forward(ctx, h: Tensor, c: Tensor, s: Tensor, group_size: int) -> Tensor:
        ctx.save_for_backward(h, c, s)
        ctx.group_size = group_size
        return _rotate_into(h * c, h, s, group_size, sign=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, c, s = ctx.saved_tensors
        g = ctx.group_size
        grad_h = grad_c = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_h = _rotate_into(grad * c, grad, partner(s, g), g, sign=-1)
        if ctx.needs_input_grad[1]:
            grad_c = (grad * h).sum_to_size(c.shape)
        if ctx.needs_input_grad[2]:  # rot(h) by halves, never written out
            planes = (-1, 2, g // 2)
            grad_ab, h_ab = grad.unflatten(-1, planes), h.unflatten(-1, planes)
            half = s.unflatten(-1, planes).select(-2, 0).shape
            grad_s = torch.stack(
                (
                    -(grad_ab.select(-2, 0) * h_ab.select(-2, 1)).sum_to_size(half),
                    (grad_ab.select(-2, 1) * h_ab.select(-2, 0)).sum_to_size(half),
                ),
                dim=-2,
            ).flatten(-3)
        return grad_h, grad_c, grad_s, None


def _broadcasts_into(x: Tensor, out: Tensor) -> bool:
    """Whether ``out += x ⊙ ...`` in place keeps out's shape and dtype."""
    if x.dim() > out.dim() or torch.promote_types(x.dtype, out.dtype) != out.dtype:
        return False
    trailing = out.shape[out.dim() - x.dim() :]
    return all(n in (1, m) for n, m in zip(x.shape, trailing, strict=True))


def merge_rows(weight: Tensor, c: Tensor, s: Tensor, group_size: int) -> Tensor:
    """R @ W for W of shape (d, k), row-wise in O(d·k): row a -> c_a W_a − s_a W_b, etc."""
    return apply_(weight.clone(), c, s, group_size, dim=0)


def apply_(x: Tensor, c: Tensor, s: Tensor, group_size: int, dim: int = -1) -> Tensor:
    """In place, x <- R x along ``dim`` (where x has size d); returns x.

    Used to merge into weights: O(d·k) work and one half-size temporary, no d×d matrix.
    z_a = c_a h_a − s_a h_b and z_b = s_b h_a + c_b h_b, plane by plane.
    """
    dim = dim % x.dim()
    g2 = group_size // 2
    trailing = (1,) * (x.dim() - dim - 1)
    planes = x.view(x.shape[:dim] + (-1, 2, g2) + x.shape[dim + 1 :])  # (..., G, 2, g/2, ...)
    c = c.view((-1, 2, g2) + trailing)
    s = s.view((-1, 2, g2) + trailing)
    h_a, h_b = planes.select(dim + 1, 0), planes.select(dim + 1, 1)
    old_a = h_a.clone()
    h_a.mul_(c[:, 0]).addcmul_(h_b, s[:, 0], value=-1)
    h_b.mul_(c[:, 1]).addcmul_(old_a, s[:, 1])
    return x


def invert_coefficients(c: Tensor, s: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Coefficients of R⁻¹, block by block in closed form.

    [[c_a, −s_a], [s_b, c_b]]⁻¹ = [[c_b, s_a], [−s_b, c_a]] / (c_a c_b + s_a s_b), i.e.
    c' = partner(c) / det and s' = −s / det with det = c·partner(c) + s·partner(s).
    Raises ValueError if a block is singular (e.g. α = 0).
    """
    det = c * partner(c, group_size) + s * partner(s, group_size)
    if not torch.all(det.abs() > torch.finfo(det.dtype).tiny):
        raise ValueError(
            "this rotation has a singular 2x2 block (a zero magnitude); it has no inverse"
        )
    return partner(c, group_size) / det, -s / det


def compose_coefficients(
    first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor], group_size: int
) -> tuple[Tensor, Tensor]:
    """Coefficients of the product R2 R1 (``first`` applied first), block by block.

    With M = [[c_a, −s_a], [s_b, c_b]], the product M2 M1 is again of that form with
    c = c2 c1 − s2 partner(s1) and s = c2 s1 + s2 partner(c1) at every coordinate.
    For RoAd1 blocks this adds angles and multiplies magnitudes.
    """
    c1, s1 = first
    c2, s2 = second
    return c2 * c1 - s2 * partner(s1, group_size), c2 * s1 + s2 * partner(c1, group_size)


def plane_indices(d: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Indices (a, b) of the two coordinates of each plane, each of shape (d/2,), plane order
    = RoAd1 parameter order (group-major)."""
    check_pairing(d, group_size)
    idx = torch.arange(d).reshape(-1, 2, group_size // 2)
    return idx[:, 0].reshape(-1), idx[:, 1].reshape(-1)


@dataclass(frozen=True)
class Layout:
    """How a variant stores (θ, α) for a site of size d with pairing ``group_size`` g.

    In the paper's notation each plane (a, b) has the block

        [[ α11 cos θ11,  −α12 sin θ12 ],        "11" = c_a,   "12" = −s_a
         [ α21 sin θ21,   α22 cos θ22 ]]        "21" = s_b,   "22" = c_b

    and a variant says which stored entry of θ and α (each of shape (n,)) every (α, θ) pair
    reads. That is one map, `per_coordinate`: x (n,) -> (x_c, x_s), each (d,), where x_c[i]
    feeds the cosine coefficient c_i = α_c[i] cos θ_c[i] and x_s[i] the sine coefficient
    s_i = α_s[i] sin θ_s[i]:

    - ``road_1``: n = d/2, laid out (groups, g/2): entry p belongs to plane p (the order of
      `plane_indices`) and all four block entries read it, so every block is a scaled
      rotation α·R(θ): c_a = c_b = α cos θ, s_a = s_b = α sin θ.
    - ``road_2``: n = d, one (θ, α) per coordinate i, read by both c_i and s_i: the block's
      first row reads coordinate a, its second row coordinate b.
    - ``road_4``: n = 2d, laid out (groups, 2, g): coordinate i = G·g + q (group G, position q)
      reads its cosine entry at G·2g + q and its sine entry at G·2g + g + q, so all four
      block entries are distinct. This is PEFT's storage order (the paper fixes none).

    Everything else here (coefficients, the parameters of given coefficients, products,
    inverses, which plane owns which entry) is derived from `per_coordinate` and
    `PARAMS_PER_COORDINATE`, so a new layout is one branch there and one entry in that table.
    Every layout keeps two invariants: each stored entry is read by at least one block entry,
    and all its readers lie in one plane.
    """

    variant: str
    group_size: int

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown RoAd variant {self.variant!r}; choose one of {VARIANTS}")
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"group_size must be an even number >= 2, got {self.group_size}")

    @classmethod
    def of(cls, config: RoadConfig) -> Layout:
        """The layout of an adapter config (its ``variant`` and ``group_size``)."""
        return cls(config.variant, config.group_size)

    # -- the layout itself ----------------------------------------------------------------------
    def per_coordinate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """A stored vector x (n,) as (x_c, x_s), each (d,): the entries that feed the cosine
        and the sine coefficient of each coordinate (see the class docstring).

        Works on values (with gradients) and on indices: ``per_coordinate(torch.arange(n))``
        gives, per coordinate, the index of the stored entry its c and its s read.
        """
        g = self.group_size
        if self.variant == "road_1":
            # (groups, g/2) -> (groups, 2, g/2): both coordinates of a plane read its entry
            x = x.reshape(-1, 1, g // 2).expand(-1, 2, g // 2).reshape(-1)
            return x, x
        if self.variant == "road_2":
            return x, x
        # road_4, (groups, 2, g): [:, 0] feeds the cosine coefficients, [:, 1] the sine ones
        x = x.reshape(-1, 2, g)
        return x[:, 0].reshape(-1), x[:, 1].reshape(-1)

    def num_params(self, d: int) -> int:
        """n, the length of θ (and of α) for a site of size d."""
        return num_params(self.variant, d)

    def site_size(self, n: int) -> int:
        """d, the size of the site whose θ (and α) has n entries."""
        return int(n / PARAMS_PER_COORDINATE[self.variant])

    def entry_index(self, d: int) -> Tensor:
        """Index into θ and α of each plane's four block entries: LongTensor (d/2, 4), rows in
        plane order (`plane_indices`), columns in `ENTRIES` order (c_a, −s_a, s_b, c_b)."""
        check_pairing(d, self.group_size)
        cos_index, sin_index = self.per_coordinate(torch.arange(self.num_params(d)))  # (d,)
        a, b = plane_indices(d, self.group_size)  # (d/2,) each
        return torch.stack((cos_index[a], sin_index[a], sin_index[b], cos_index[b]), dim=1)

    def param_planes(self, d: int) -> Tensor:
        """The plane owning each stored entry of θ and α: LongTensor (n,) of values in
        [0, d/2)."""
        index = self.entry_index(d)  # (d/2, 4)
        planes = torch.empty(self.num_params(d), dtype=torch.long)
        planes[index.reshape(-1)] = torch.arange(d // 2).repeat_interleave(4)
        return planes

    @property
    def scaled_rotation(self) -> bool:
        """True when all four entries of a block read one stored (θ, α) (RoAd1): then every
        block is α·R(θ), and products add angles and multiply magnitudes exactly."""
        index = self.entry_index(self.group_size)  # (g/2, 4)
        return bool((index == index[:, :1]).all())

    # -- parameters <-> coefficients ------------------------------------------------------------
    def coefficients(self, theta: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """Per-coordinate coefficients (c, s), each (d,), from (θ, α), each (n,):
        c = α_c cos θ_c, s = α_s sin θ_s with (θ_c, θ_s) = `per_coordinate` (θ)."""
        theta_c, theta_s = self.per_coordinate(theta)
        alpha_c, alpha_s = self.per_coordinate(alpha)
        return alpha_c * theta_c.cos(), alpha_s * theta_s.sin()

    def params_from_coefficients(self, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """(θ, α), each (n,), whose coefficients are (c, s), each (d,).

        An entry read by a cosine and a sine coefficient (RoAd1, RoAd2) gets θ = atan2(s, c),
        α = |(c, s)|; one read by cosine coefficients only (RoAd4) α = |c|, θ ∈ {0, π}; one
        read by sine coefficients only α = |s|, θ = ±π/2, or the identity's (0, 1) where
        s = 0. An entry with several readers takes its value from the first (coordinate order,
        cosine first). If the others disagree, the block cannot be stored in this variant
        (RoAd1 stores only scaled rotations, c_a = c_b and s_a = s_b): ValueError.
        """
        d = c.numel()
        n = self.num_params(d)
        cos_index, sin_index = self.per_coordinate(torch.arange(n, device=c.device))  # (d,)
        readers = torch.cat((cos_index, sin_index))  # (2d,): entry read by [c_0..c_d; s_0..s_d]
        first = torch.full((n,), 2 * d, device=c.device).scatter_reduce_(
            0, readers, torch.arange(2 * d, device=c.device), "amin"
        )  # (n,): each entry's first reader
        c_at, s_at = c[first % d], s[first % d]  # (n,): coefficients at its coordinate
        by_cos = torch.zeros(n, dtype=torch.bool, device=c.device).index_fill_(0, cos_index, True)
        by_sin = torch.zeros_like(by_cos).index_fill_(0, sin_index, True)
        both = by_cos & by_sin
        cos_theta = torch.where(c_at < 0, torch.full_like(c_at, math.pi), torch.zeros_like(c_at))
        sin_theta = torch.sign(s_at) * (math.pi / 2)
        sin_alpha = torch.where(s_at == 0, torch.ones_like(s_at), s_at.abs())
        theta = torch.where(
            both, torch.atan2(s_at, c_at), torch.where(by_cos, cos_theta, sin_theta)
        )
        alpha = torch.where(
            both, torch.hypot(c_at, s_at), torch.where(by_cos, c_at.abs(), sin_alpha)
        )
        if d:
            c_back, s_back = self.coefficients(theta, alpha)
            tol = 1e-5 * max(1.0, float(c.abs().max()), float(s.abs().max()))
            if (c_back - c).abs().max() > tol or (s_back - s).abs().max() > tol:
                raise ValueError(
                    f"the result has a block that {self.variant} cannot represent (road_1 "
                    "stores only a scaled rotation in every plane); use road_2 or road_4 "
                    "adapters for this operation"
                )
        return theta, alpha

    # -- algebra on parameters ------------------------------------------------------------------
    def product(
        self, first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """(θ, α) of R_second R_first (``first`` applied first). For scaled rotations (RoAd1)
        θ1 + θ2, α1·α2 exactly; otherwise the block product of the coefficients
        (`compose_coefficients`), stored back by `params_from_coefficients`."""
        if self.scaled_rotation:
            return first[0] + second[0], first[1] * second[1]
        c, s = compose_coefficients(
            self.coefficients(*first), self.coefficients(*second), self.group_size
        )
        return self.params_from_coefficients(c, s)

    def inverse(self, theta: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """(θ, α) of R⁻¹. For scaled rotations (RoAd1) −θ, 1/α exactly; otherwise the
        closed-form block inverse (`invert_coefficients`) stored back by `params_from_coefficients`.
        ValueError if a block is singular (a zero magnitude)."""
        if self.scaled_rotation:
            if bool((alpha == 0).any()):
                raise ValueError("a plane has α = 0 (singular); it has no inverse")
            return -theta, 1.0 / alpha
        c, s = invert_coefficients(*self.coefficients(theta, alpha), self.group_size)
        return self.params_from_coefficients(c, s)

    # -- planes of stored entries ---------------------------------------------------------------
    def param_mask(self, plane_mask: Tensor) -> Tensor:
        """Bool (n,): the stored entries of θ and α that belong to the planes selected by
        ``plane_mask``, Bool (d/2,)."""
        return plane_mask[self.param_planes(2 * plane_mask.numel())]

    def plane_support(self, theta: Tensor, alpha: Tensor) -> Tensor:
        """Bool (d/2,): the planes on which (θ, α), each (n,), is not exactly the identity
        (some entry of the plane has θ ≠ 0 or α ≠ 1)."""
        d = self.site_size(theta.numel())
        moved = (theta != 0) | (alpha != 1)  # (n,)
        planes = self.param_planes(d).to(moved.device)  # (n,)
        return torch.bincount(planes[moved], minlength=d // 2) > 0
