"""One routing path: what every forward pass of a `RoadModel` tells its sites.

A `Router` belongs to one `RoadModel` and owns the only hook on the wrapped model: a forward
pre-hook that runs before every forward call (``generate``'s decode steps included) and

- reads the inputs' token axis into the sites' shared `TokenState`: the real prompt tokens
  (B, L) from ``attention_mask`` (all tokens when there is none), or, inside
  `Router.prompt_tokens`, the given prompt mask (teacher forcing: prompt + answer in one
  pass), and whether this is a decode step (a non-empty KV cache);
- inside `Router.route`, refuses a batch whose size differs from the routing's before
  anything runs.

`Router.route` is the one way to give each batch row its own rotation: it sets per-row
coefficients (c_rows, s_rows), each (B, d), on the given sites and clears them in
``finally``. Mixed-adapter serving (`road_interp.bank`, rows gathered from coefficient
tables) and per-example subspace training (`road_interp.subspaces.route_subspaces`, rows
computed with gradients) both go through it; each site then applies
z = c_rows ⊙ h + s_rows ⊙ rot(h), broadcast over the sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .layers import RoadLinear, RoadSite, TokenState

RowCoefficients = Mapping[str, tuple[Tensor, Tensor]]
"""site path -> (c_rows, s_rows), each (B, d): one rotation per batch row."""


class Router:
    """The forward pre-hook and routing state of one wrapped model (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.tokens = TokenState()
        self._prompt: Tensor | None = None
        self._rows: int | None = None
        self._requests: int | None = None
        self._handle: RemovableHandle | None = model.register_forward_pre_hook(
            self._read_inputs, with_kwargs=True
        )

    def close(self) -> None:
        """Remove the hook (safe to call twice)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self.tokens.prompt = None

    @property
    def routing(self) -> bool:
        return self._rows is not None

    # -- contexts ---------------------------------------------------------------------------
    @contextmanager
    def prompt_tokens(self, mask: Tensor) -> Iterator[None]:
        """Inside, sites take the prompt of each row to be its tokens where the bool ``mask``
        (B, L) is True (rather than every real token), for inputs of that shape."""
        previous, self._prompt = self._prompt, mask.bool()
        try:
            yield
        finally:
            self._prompt = previous

    @contextmanager
    def route(
        self,
        sites: Mapping[str, RoadSite],
        rows: RowCoefficients,
        group_size: int,
        *,
        requests: int | None = None,
        exclusive: bool = True,
    ) -> Iterator[None]:
        """Give batch row r of every forward pass inside the rotation (c_rows[r], s_rows[r])
        at each site of ``rows`` (instead of the site's active adapters). ``exclusive``: the
        other sites in ``sites`` act as the base model (their active adapters are switched
        off) for the duration, so each row sees exactly its routed rotation.

        ``requests``: the number of requests the rows were expanded from (for the batch-size
        message of beam search); default B. Everything is checked before anything changes.
        """
        if self.routing:
            raise RuntimeError("this model is already routed; nested routing is not allowed")
        sizes = {int(c.shape[0]) for c, _ in rows.values()}
        if len(sizes) > 1:
            raise ValueError(f"routing rows of different batch sizes {sorted(sizes)}")
        blocked = [
            n
            for n, s in sites.items()
            if s.disabled or s.routing is not None or (isinstance(s, RoadLinear) and s.merged)
        ]
        if blocked:
            raise RuntimeError(
                f"routing needs unmerged, enabled, unrouted sites; {blocked[0]} (and "
                f"{len(blocked) - 1} more) is merged or inside model.disabled(): unmerge() or "
                "leave that context first"
            )
        silenced = [s for n, s in sites.items() if exclusive and n not in rows and s.active]
        self._rows = sizes.pop() if sizes else None
        self._requests = requests or self._rows
        try:
            for site in silenced:
                site.disabled = True
            for name, (c_rows, s_rows) in rows.items():
                sites[name].routing = (c_rows, s_rows, group_size)
            yield
        finally:
            for name in rows:
                sites[name].routing = None
            for site in silenced:
                site.disabled = False
            self._rows = self._requests = None

    # -- the hook ---------------------------------------------------------------------------
    def _read_inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        length = getattr(cache, "get_seq_length", None)
        self.tokens.decoding = bool(cache is not None and length is not None and length() > 0)
        tokens = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None:
            self.tokens.prompt = None
            return
        self._check_batch(int(tokens.shape[0]))
        shape = tuple(tokens.shape[:2])
        mask = kwargs.get("attention_mask")
        if self._prompt is not None and tuple(self._prompt.shape) == shape:
            mask = self._prompt
        elif mask is None or tuple(mask.shape) != shape:  # no padding information
            mask = torch.ones(shape, dtype=torch.bool, device=tokens.device)
        self.tokens.prompt = mask.bool()

    def _check_batch(self, batch: int) -> None:
        if self._rows is None or batch == self._rows:
            return
        requests = self._requests or self._rows
        hint = ""
        if batch % requests == 0 and batch != requests:
            hint = (
                f"; generate() with num_beams or num_return_sequences = {batch // requests} "
                f"expands each request: use bank.generate(...) or route(..., "
                f"repeats={batch // requests})"
            )
        raise ValueError(
            f"this batch has {batch} rows but the routing expects {self._rows} "
            f"({requests} routes, one per request){hint}"
        )
