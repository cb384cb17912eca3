"""Stacked coefficient tables: K adapters' (c, s) at each site, one row per adapter.

For a site of size d the table is a pair of tensors (K+1, d). Row 0 is the identity
(c = 1, s = 0), i.e. the base model; row k is adapter k's coefficients, or identity where
adapter k has no rotation at that site. A mixed batch of B requests with row indices
idx (B,) gathers c_rows = c[idx], s_rows = s[idx], each (B, d), once per call, and each site
then computes z = c_rows ⊙ h + s_rows ⊙ rot(h) broadcast over the sequence.

Pure tensor bookkeeping: no nn.Module, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SiteTable:
    """One site's stacked coefficients: ``c`` and ``s`` of shape (rows, d), float32."""

    c: Tensor
    s: Tensor

    @property
    def size(self) -> int:
        return int(self.c.shape[1])

    @property
    def nbytes(self) -> int:
        return self.c.numel() * self.c.element_size() + self.s.numel() * self.s.element_size()


class CoefficientTables:
    """Per-site tables sharing one row numbering; row 0 is the identity (the base model)."""

    def __init__(self) -> None:
        self.sites: dict[str, SiteTable] = {}
        self.num_rows = 1

    def append(self, rows: dict[str, tuple[Tensor, Tensor]], devices: dict[str, torch.device]):
        """Add one adapter as a new last row: ``rows`` maps site -> (c, s), each (d,).

        Sites the adapter lacks get an identity row; a site first seen here gets a new table
        with identity rows for the adapters before it. ``devices`` gives each new site's device.
        """
        for name, (c, _) in rows.items():
            if name not in self.sites:
                d = c.shape[0]
                self.sites[name] = SiteTable(
                    torch.ones(self.num_rows, d, device=devices[name]),
                    torch.zeros(self.num_rows, d, device=devices[name]),
                )
        for name, table in self.sites.items():
            if name in rows:
                c, s = rows[name]
                c_row = c.detach().to(table.c.device, torch.float32)[None]
                s_row = s.detach().to(table.s.device, torch.float32)[None]
            else:
                c_row = torch.ones_like(table.c[:1])
                s_row = torch.zeros_like(table.s[:1])
            table.c = torch.cat((table.c, c_row))
            table.s = torch.cat((table.s, s_row))
        self.num_rows += 1

    def drop(self, row: int, keep_sites: set[str]) -> None:
        """Remove ``row`` (>= 1) from every table; rows after it move up by one. Tables of
        sites outside ``keep_sites`` (no remaining adapter acts there) are dropped."""
        if not 1 <= row < self.num_rows:
            raise IndexError(f"row {row} is not an adapter row (1..{self.num_rows - 1})")
        for name in list(self.sites):
            if name not in keep_sites:
                del self.sites[name]
                continue
            table = self.sites[name]
            keep = [i for i in range(self.num_rows) if i != row]
            index = torch.tensor(keep, device=table.c.device)
            table.c = table.c.index_select(0, index)
            table.s = table.s.index_select(0, index)
        self.num_rows -= 1

    def gather(self, rows: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-site (c_rows, s_rows), each (B, d), for row indices ``rows`` (B,) (int64)."""
        out = {}
        index_on: dict[torch.device, Tensor] = {}
        for name, table in self.sites.items():
            device = table.c.device
            if device not in index_on:
                index_on[device] = rows.to(device)
            index = index_on[device]
            out[name] = (table.c.index_select(0, index), table.s.index_select(0, index))
        return out
