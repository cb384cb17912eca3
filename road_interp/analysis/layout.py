"""Which stored parameter feeds which entry of each plane's 2×2 block.

Every plane p of a site has the block (paper notation, `road_interp.rotation` for the layouts)

    [[ α11 cos θ11,  −α12 sin θ12 ],        entry "11" = c_a,  "12" = −s_a
     [ α21 sin θ21,   α22 cos θ22 ]]        entry "21" = s_b,  "22" = c_b

where (a, b) = `rotation.plane_indices` are the plane's two coordinates. The variants store
(θ, α) so that these four entries read their parameters at these indices:

- ``road_1`` (θ, α of shape (d/2,)): all four entries read index p.
- ``road_2`` (shape (d,)): the first row reads coordinate a, the second row coordinate b.
- ``road_4`` (shape (2d,), laid out (groups, 2, g)): coordinate i = G·g + q (group G,
  position q) reads its cosine entry at G·2g + q and its sine entry at G·2g + g + q.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import VARIANTS
from ..rotation import plane_indices

ENTRIES = ("11", "12", "21", "22")
"""Block entries in row-major order; "11", "22" are cosine entries, "12", "21" sine entries."""


def entry_param_index(variant: str, group_size: int, d: int) -> Tensor:
    """Index into θ and α of each plane's four block entries: shape (d/2, 4), columns in
    `ENTRIES` order, rows in plane order (`rotation.plane_indices`)."""
    a, b = plane_indices(d, group_size)  # (d/2,) each
    if variant == "road_1":
        p = torch.arange(d // 2)
        return torch.stack((p, p, p, p), dim=1)
    if variant == "road_2":
        return torch.stack((a, a, b, b), dim=1)
    if variant == "road_4":

        def cos_at(i: Tensor) -> Tensor:
            return (i // group_size) * 2 * group_size + i % group_size

        return torch.stack(
            (cos_at(a), cos_at(a) + group_size, cos_at(b) + group_size, cos_at(b)), 1
        )
    raise ValueError(f"unknown RoAd variant {variant!r}; choose one of {VARIANTS}")
