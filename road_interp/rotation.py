"""The rotation math of RoAd as pure tensor functions (no nn.Module, no transformers).

A site vector h ∈ R^d is split into d/2 planes. With ``group_size`` g, inside each group of g
coordinates, coordinate j pairs with j + g/2 (g = 2: the paper's adjacent pairs (2k, 2k+1);
g = 64: PEFT's and vLLM's layout). Call the first coordinate of a plane ``a`` and the second
``b``. Each plane is mapped by its own 2×2 block

    [z_a]   [ c_a   −s_a ] [h_a]
    [z_b] = [ s_b    c_b ] [h_b]

which is the element-wise form  z = c ⊙ h + s ⊙ rot(h),  rot(h)_a = −h_b, rot(h)_b = h_a.

The per-coordinate **coefficients** (c, s), two vectors of shape (d,), describe any 2×2 block
per plane, so they are closed under products and inverses; everything below works on them.
The **parameters** (θ, α) of a variant map to coefficients as in PEFT's RoAd (so that PEFT
import/export is a copy of tensors). In the paper's notation the block is
[[α11 cos θ11, −α12 sin θ12], [α21 sin θ21, α22 cos θ22]]:

- ``road_1``: θ, α of shape (d/2,), laid out (groups, g/2): one (α, θ) per plane, so
  c_a = c_b = α cos θ and s_a = s_b = α sin θ (a scaled rotation).
- ``road_2``: θ, α of shape (d,): one (α, θ) per output coordinate i, c_i = α_i cos θ_i,
  s_i = α_i sin θ_i.
- ``road_4``: θ, α of shape (2d,), laid out (groups, 2, g): per group, the first g entries give
  c = α cos θ, the next g give s = α sin θ (all four entries of the block distinct).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import VARIANTS

PARAMS_PER_COORDINATE = {"road_1": 0.5, "road_2": 1, "road_4": 2}
"""Number of θ (and of α) values per site coordinate, by variant."""


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
    """Per-coordinate coefficients (c, s), each of shape (d,), from a variant's (θ, α)."""
    g2 = group_size // 2
    if variant == "road_1":
        # (groups, g/2) -> (groups, 2, g/2): both coordinates of a plane share (α, θ)
        theta = theta.reshape(-1, 1, g2).expand(-1, 2, g2).reshape(-1)
        alpha = alpha.reshape(-1, 1, g2).expand(-1, 2, g2).reshape(-1)
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_2":
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_4":
        # (groups, 2, g): [:, 0] feeds the cosine column, [:, 1] the sine column
        theta = theta.reshape(-1, 2, group_size)
        alpha = alpha.reshape(-1, 2, group_size)
        return (alpha[:, 0] * theta[:, 0].cos()).reshape(-1), (
            alpha[:, 1] * theta[:, 1].sin()
        ).reshape(-1)
    raise ValueError(f"unknown RoAd variant {variant!r}; choose one of {VARIANTS}")


def rotate_half(h: Tensor, group_size: int) -> Tensor:
    """rot(h) along the last dim: per plane (h_a, h_b) -> (−h_b, h_a). Shape (..., d) -> (..., d)."""
    grouped = h.unflatten(-1, (-1, 2, group_size // 2))  # (..., groups, 2, g/2)
    return torch.stack((-grouped[..., 1, :], grouped[..., 0, :]), dim=-2).flatten(-3)


def partner(v: Tensor, group_size: int) -> Tensor:
    """Each coordinate's value at its plane partner: (v_a, v_b) -> (v_b, v_a). Shape (..., d)."""
    return v.unflatten(-1, (-1, 2, group_size // 2)).flip(-2).flatten(-3)


def apply(h: Tensor, c: Tensor, s: Tensor, group_size: int) -> Tensor:
    """z = c ⊙ h + s ⊙ rot(h) on the last dim of h (..., d); c, s broadcast against h."""
    return h * c + rotate_half(h, group_size) * s


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


def invert(c: Tensor, s: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
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


def compose(
    first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor], group_size: int
) -> tuple[Tensor, Tensor]:
    """Coefficients of R2 R1 (``first`` applied first), block by block.

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
