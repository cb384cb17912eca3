"""`AdapterBank`: many RoAd adapters served in one batch, each request naming its own.

    bank = AdapterBank(model)                        # a RoadModel, or a plain HF model
    bank.load("adapters/sentiment")                  # ours or PEFT's RoAd folder
    bank.add("math", adapter_file)                   # an in-memory AdapterFile
    with bank.route(["sentiment", None, "math"]):    # None = the base model
        logits = model(**batch).logits               # row i sees only its own adapter
    tokens = bank.generate(["math", None], input_ids, attention_mask=mask,
                           generation_config=GenerationConfig(num_beams=4, max_new_tokens=20))

How it works. Each adapter's coefficients (c, s) are computed once when it is registered and
stacked per site into tables (K+1, d) whose row 0 is the identity (see
`road_interp.bank.tables`). A routed call turns the names into row indices (B,), gathers each
site's rows (B, d) once, and hands them to the model's one routing path (`RoadModel.route`);
every site then applies z = c_rows ⊙ h + s_rows ⊙ rot(h), one element-wise op broadcast over
the sequence for the whole batch. Adapters of either placement are served: a site on a module
output applies its rows at its token positions only. There is no loop over adapters and no gather/scatter of activations, and the
same rows serve every decode step of ``generate`` (the KV cache keeps the batch order).

``generate`` with beam search or ``num_return_sequences`` expands each request into
``repeats`` consecutive rows (Hugging Face's ``repeat_interleave``); the row indices are
expanded the same way. Beam reordering only permutes rows within a request, so rows keep
their adapter.

During a routed call each request sees exactly its routed adapter: the bank's rows override
the sites' active adapters, and sites outside the bank that have active adapters are switched
off. All names and sizes are checked before anything runs; routing state lives in a context
manager and is cleared in ``finally``. A bank built on a `RoadModel` starts with a snapshot of
the model's adapters, under their names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from transformers import GenerationConfig

from .. import rotation
from ..io import AdapterFile, read_adapter, validate
from ..layers import RoadLinear, RoadOutput, RoadSite
from ..model import RoadModel
from .tables import CoefficientTables

Route = str | None
"""An adapter name, or None for the base model."""


class AdapterBank:
    """K RoAd adapters stacked as coefficient tables over one model, for mixed batches.

    Args:
        model: a `RoadModel` (its adapters are registered under their names, as snapshots),
            or a Hugging Face model (wrapped in a new `RoadModel`, available as
            ``bank.model``). Sites are created on demand on the modules the adapters name.
    """

    def __init__(self, model: nn.Module):
        self.model = model if isinstance(model, RoadModel) else RoadModel(model)
        self.group_size: int | None = None
        """The pairing layout every adapter in this bank shares (set by the first one)."""
        self.tables = CoefficientTables()
        self._rows: dict[str, int] = {}
        self._files: dict[str, AdapterFile] = {}
        self._created_sites: set[str] = set()
        self._routing = False
        self.extra: dict[str, Tensor] = {}
        """The extra weights (a classifier's head) every adapter in the bank shares: rows
        route rotations, but the model has one head."""
        for name in self.model.configs:
            self.add(name, self.model.adapter_file(name))

    # -- registry ---------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Registered adapter names in row order (row i + 1 holds names[i])."""
        return tuple(sorted(self._rows, key=self._rows.__getitem__))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def add(self, name: str, adapter: AdapterFile) -> None:
        """Register ``adapter`` as ``name``: check it against the model, compute its
        coefficients once and append them as a new row of every site's table.

        Raises ValueError (nothing changed) for a bad or duplicate name, an adapter made for
        another model or placed where a site of another placement already is, a group_size
        other than the bank's, or non-finite parameters.
        """
        self._check_not_routing("add adapters")
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter names must be non-empty strings, got {name!r}")
        if name in self._rows:
            raise ValueError(f"the bank already has an adapter named {name!r}; remove() it first")
        validate(adapter, f"adapter {name!r}")
        self.model.check_fits(adapter, where=f"adapter {name!r}")
        self._check_shared_extra(name, adapter)
        g = adapter.config.group_size
        if self.group_size is not None and g != self.group_size:
            raise ValueError(
                f"adapter {name!r} pairs coordinates with group_size {g}, but this bank's "
                f"adapters use group_size {self.group_size}; all adapters in one bank must "
                "share a group_size (use one bank per group_size)"
            )
        rows: dict[str, tuple[Tensor, Tensor]] = {}
        for site, (theta, alpha) in adapter.params.items():
            rows[site] = rotation.coefficients(
                adapter.config.variant, g, theta.detach().float(), alpha.detach().float()
            )
        sites, created = self.model.ensure_sites(adapter.sites, adapter.config)
        self._created_sites |= created
        devices = {n: _site_device(sites[n]) for n in rows}
        self.tables.append(rows, devices)
        self._rows[name] = self.tables.num_rows - 1
        self._files[name] = adapter
        self.group_size = g
        if adapter.extra.keys() - self.extra.keys():
            self.model.copy_extra(adapter)
            self.extra.update(adapter.extra)

    def _check_shared_extra(self, name: str, adapter: AdapterFile) -> None:
        """Raise ValueError if ``adapter`` carries extra weights (a head) the model cannot
        share with the adapters already in the bank."""
        self.model.check_extra(adapter, f"adapter {name!r}")
        differ = [
            n
            for n, v in adapter.extra.items()
            if n in self.extra and not torch.equal(self.extra[n], v)
        ]
        if differ:
            raise ValueError(
                f"adapter {name!r} carries its own {differ[0]}, but the bank's adapters share "
                "the model's one head (rows route rotations only); serve adapters with "
                "different heads from separate banks, or compose them with one head"
            )

    def load(self, path: str | Path, name: str | None = None) -> str:
        """Register an adapter folder (ours or PEFT's RoAd format) as ``name`` (default: the
        folder's name). Returns the name."""
        name = name or Path(path).name
        self.add(name, read_adapter(path))
        return name

    def adapter(self, name: str) -> AdapterFile:
        """The registered `AdapterFile` of ``name`` (θ, α and extra weights as given)."""
        self._check_names([name])
        return self._files[name]

    def remove(self, name: str) -> None:
        """Unregister ``name``: drop its row; tables of sites no remaining adapter uses are
        dropped, and sites the bank created there are taken out of the model again."""
        self._check_not_routing("remove adapters")
        self._check_names([name])
        row = self._rows.pop(name)
        del self._files[name]
        keep = {site for f in self._files.values() for site in f.params}
        self.tables.drop(row, keep)
        self._rows = {n: r - 1 if r > row else r for n, r in self._rows.items()}
        sites = self.model.sites
        unused = {p for p in self._created_sites - keep if p in sites and not sites[p].adapters}
        self.model.remove_sites(unused)
        self._created_sites -= unused
        if not self._rows:
            self.group_size = None
            self.extra = {}

    # -- routing ----------------------------------------------------------------------------
    def rows_for(self, routes: Sequence[Route]) -> Tensor:
        """Table row per request (B,), int64: 0 for None (the base model), else the adapter's.

        Raises KeyError naming unknown adapters (with close matches), ValueError for an empty
        or non-list routing.
        """
        if isinstance(routes, str) or not isinstance(routes, Sequence):
            raise ValueError(
                f"routes must be a list with one adapter name (or None for the base model) per "
                f"request, got {type(routes).__name__}"
            )
        if not len(routes):
            raise ValueError("routes is empty; give one adapter name (or None) per request")
        bad = [r for r in routes if r is not None and not isinstance(r, str)]
        if bad:
            raise ValueError(
                f"routes must hold adapter names or None (the base model), got {bad[:3]}"
            )
        self._check_names([r for r in routes if r is not None])
        return torch.tensor([0 if r is None else self._rows[r] for r in routes])

    @contextmanager
    def route(self, routes: Sequence[Route], *, repeats: int = 1) -> Iterator[RoadModel]:
        """Route request i of every forward pass in this block to adapter ``routes[i]``
        (None: the base model).

        ``repeats``: rows per request, for ``model.generate`` with ``num_beams`` or
        ``num_return_sequences`` > 1 (Hugging Face expands each request into
        max(num_beams, num_return_sequences) consecutive rows); `generate` sets it for you.

        Everything is checked before any computation: names here, and each forward's batch
        size (must be len(routes) * repeats) in a pre-hook before the model runs.
        """
        self._check_not_routing("open a second route()")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        rows = self.rows_for(routes)
        if repeats > 1:
            rows = rows.repeat_interleave(repeats)
        gathered = self.tables.gather(rows)
        self._routing = True
        try:
            with self.model.route(gathered, self.group_size or 2, requests=len(routes)):
                yield self.model
        finally:
            self._routing = False

    def generate(
        self,
        routes: Sequence[Route],
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        generation_config: GenerationConfig | None = None,
    ) -> Any:
        """``model.generate`` with request i routed to ``routes[i]`` (greedy, sampling or beam
        search, as ``generation_config`` (a `transformers.GenerationConfig`) says; default: the
        model's own). Returns what Hugging Face's ``generate`` returns. Pass a left-padded batch
        (new tokens are appended on the right); `road_interp.load_tokenizer` pads causal LMs
        on the left by default."""
        rows = self.rows_for(routes)
        if input_ids.shape[0] != rows.shape[0]:
            raise ValueError(
                f"input_ids has {input_ids.shape[0]} requests but routes has {rows.shape[0]} "
                "entries; give one adapter name (or None) per request"
            )
        config: Any = generation_config or self.model.model.generation_config  # HF's own default
        repeats = max(int(config.num_beams or 1), int(config.num_return_sequences or 1))
        with self.route(routes, repeats=repeats):
            return self.model.model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
            )

    # -- reporting --------------------------------------------------------------------------
    def memory_report(self) -> pd.DataFrame:
        """Memory of the bank: one row for the identity row (the base model) and one per
        adapter. Columns: adapter, row, sites, params (θ + α as stored), table_bytes (its
        share of the coefficient tables: 2 · d · 4 bytes per site), percent_of_base
        (table_bytes as a percentage of the base model's parameter bytes: 0.1 means 0.1 %).
        There is no total row: the bank's total is the sum of each column, and
        ``table.attrs["base_bytes"]`` holds the base model's parameter bytes."""
        ours = self.model.adapter_parameter_ids()
        base_bytes = sum(
            p.numel() * p.element_size() for p in self.model.model.parameters() if id(p) not in ours
        )
        row_bytes = sum(t.nbytes // self.tables.num_rows for t in self.tables.sites.values())
        records = [("(base: identity row)", 0, len(self.tables.sites), 0, row_bytes)]
        for name in self.names:
            f = self._files[name]
            params = sum(t.numel() + a.numel() for t, a in f.params.values())
            records.append((name, self._rows[name], len(f.params), params, row_bytes))
        table = pd.DataFrame(records, columns=["adapter", "row", "sites", "params", "table_bytes"])
        table["percent_of_base"] = 100.0 * table["table_bytes"] / base_bytes
        table.attrs["base_bytes"] = base_bytes
        return table

    # -- checks -----------------------------------------------------------------------------
    def _check_names(self, names: Sequence[str]) -> None:
        unknown = sorted({n for n in names if n not in self._rows})
        if unknown:
            hints = []
            for n in unknown:
                close = difflib.get_close_matches(n, list(self._rows), n=1)
                hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise KeyError(
                f"no adapter named {', '.join(hints)} in this bank; it has {list(self.names)} "
                "(use None for the base model)"
            )

    def _check_not_routing(self, what: str) -> None:
        if self._routing:
            raise RuntimeError(f"cannot {what} inside a route() block; leave it first")


def _site_device(site: RoadSite) -> torch.device:
    """Where the site computes: its own adapters' or wrapped layer's device; for an output
    site with no adapter of its own, the device of the module it is attached to."""
    if isinstance(site, RoadLinear):
        holder: nn.Module | None = site.base_layer
    else:
        holder = site.attached_to() if isinstance(site, RoadOutput) else None
    first = next(holder.parameters(), None) if holder is not None else None
    return first.device if first is not None else torch.device("cpu")
