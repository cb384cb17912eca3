"""Sites: the places a RoAd rotation acts, each holding several named adapters.

A `RoadAdapter` owns one adapter's parameters (θ, α) at one site and turns them into the
coefficients (c, s) of `road_interp.rotation` (cached while the parameters are frozen).

A `RoadSite` holds named adapters and an active set, and rotates a hidden vector h of size d
(..., d) by each active adapter in order. Mixed-adapter serving sets ``site.routing`` to per-row
coefficients (B, d) instead (see `road_interp.bank`).

The two kinds of site, one per placement (`RoadConfig.positions`):

- `RoadLinear` wraps an ``nn.Linear`` or a transformers GPT-2 ``Conv1D``: the rotation acts on
  the layer's output, bias included, at every token, so it can be merged: W' = R W, b' = R b.
- `RoadOutput` acts on any module's output (B, L, d) (or the first element of a tuple output)
  at chosen token `Positions` only, through a forward hook on that module:
  z[b, t] = R h[b, t] where the positions select token t of row b, else h[b, t]. Which tokens
  are the prompt's real tokens is read once per forward by the model's `Router`
  (`road_interp.routing`) into a shared `TokenState`.

Sites are created only by `road_interp.injection.create_site`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers.pytorch_utils import Conv1D

from . import rotation
from .config import Positions, RoadConfig


class RoadAdapter(nn.Module):
    """One adapter's (θ, α) at one site of size d; shapes follow `rotation.num_params`.

    Parameters are float32 by default whatever the base model's dtype.
    """

    def __init__(self, size: int, config: RoadConfig, generator: torch.Generator | None = None):
        super().__init__()
        rotation.check_pairing(size, config.group_size)
        self.size = size
        self.variant = config.variant
        self.group_size = config.group_size
        init = rotation.random_params if config.init == "random" else None
        theta, alpha = (
            init(self.variant, size, generator)
            if init
            else rotation.identity_params(self.variant, size)
        )
        self.theta = nn.Parameter(theta)
        self.alpha = nn.Parameter(alpha)
        self._cache: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(c, s), each (d,). Cached while no gradient can flow into θ, α; the cache key holds
        the parameters' version counters, so any in-place update (an optimizer step, a
        `load_state_dict`) invalidates it."""
        if torch.is_grad_enabled() and (self.theta.requires_grad or self.alpha.requires_grad):
            return rotation.coefficients(self.variant, self.group_size, self.theta, self.alpha)
        key = (
            self.theta._version,
            self.alpha._version,
            self.theta.data_ptr(),
            self.alpha.data_ptr(),
        )
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                coeffs = rotation.coefficients(
                    self.variant, self.group_size, self.theta, self.alpha
                )
            self._cache = (key, coeffs)
        return self._cache[1]

    def check_finite(self, where: str) -> None:
        if not (torch.isfinite(self.theta).all() and torch.isfinite(self.alpha).all()):
            raise ValueError(
                f"{where}: adapter parameters contain NaN or inf; refusing to use them"
            )

    def extra_repr(self) -> str:
        return f"size={self.size}, variant={self.variant}, group_size={self.group_size}"


class RoadSite(nn.Module):
    """Named adapters at one site of size d, applied in the order of the active set."""

    def __init__(self, size: int, name: str = ""):
        super().__init__()
        self.size = size
        self.site_name = name
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.disabled = False
        self.routing: tuple[Tensor, Tensor, int] | None = None
        """(c_rows, s_rows, group_size) with rows (B, d), set by a bank's routing context."""

    def add_adapter(
        self, name: str, config: RoadConfig, generator: torch.Generator | None = None
    ) -> RoadAdapter:
        if name in self.adapters:
            raise ValueError(f"{self.site_name}: an adapter named {name!r} already exists")
        adapter = RoadAdapter(self.size, config, generator)
        self.adapters[name] = adapter
        return adapter

    def adapter(self, name: str) -> RoadAdapter:
        return cast(RoadAdapter, self.adapters[name])

    def set_active(self, names: Iterable[str]) -> None:
        names = tuple(names)
        missing = [n for n in names if n not in self.adapters]
        if missing:
            raise KeyError(
                f"{self.site_name}: no adapter named {missing}; have {list(self.adapters)}"
            )
        self.active = names

    def rotate(self, h: Tensor) -> Tensor:
        """Apply the routed rows, or each active adapter, to h (..., d); returns h's dtype."""
        if self.disabled or (self.routing is None and not self.active):
            return h
        z = h.float()
        if self.routing is not None:
            c_rows, s_rows, group_size = self.routing  # (B, d) each
            shape = (c_rows.shape[0],) + (1,) * (h.dim() - 2) + (self.size,)
            z = rotation.apply(z, c_rows.view(shape), s_rows.view(shape), group_size)
        else:
            for name in self.active:
                adapter = self.adapter(name)
                c, s = adapter.coefficients()
                z = rotation.apply(z.to(c.dtype), c, s, adapter.group_size)
        return z.to(h.dtype)


class RoadLinear(RoadSite):
    """A Linear or Conv1D whose output (bias included) is rotated: y = R (W x + b).

    ``merge()`` folds the active adapters into W and b row-wise (O(d·k)); ``unmerge()`` undoes
    it with the closed-form block inverse. While merged, the forward is the base layer's.
    """

    def __init__(self, base_layer: nn.Module, name: str = ""):
        if isinstance(base_layer, nn.Linear):
            size = base_layer.out_features
        elif isinstance(base_layer, Conv1D):
            size = base_layer.nf
        else:
            raise TypeError(
                f"{name}: RoAd wraps nn.Linear or Conv1D, not {type(base_layer).__name__}"
            )
        super().__init__(size, name)
        self.base_layer = base_layer
        self.merged: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if self.merged:
            if self.disabled or self.routing is not None:
                raise RuntimeError(
                    f"{self.site_name}: adapters {self.merged} are merged into the weights; "
                    "unmerge() before disabling adapters or routing a mixed batch"
                )
            return y
        return self.rotate(y)

    def set_active(self, names: Iterable[str]) -> None:
        if self.merged:
            raise RuntimeError(f"{self.site_name}: unmerge() before changing the active adapters")
        super().set_active(names)

    def _fold(self, c: Tensor, s: Tensor, group_size: int) -> None:
        """W <- R W, b <- R b in place (O(d·k)), computed in float32, stored in the base dtype."""
        # nn.Linear stores W as (out, in): rotate rows; Conv1D as (in, out): rotate columns
        dim = -1 if isinstance(self.base_layer, Conv1D) else 0
        for param, along in ((self.base_layer.weight, dim), (self.base_layer.bias, -1)):
            if param is None:
                continue
            with torch.no_grad():
                if param.dtype == torch.float32:
                    rotation.apply_(param.data, c, s, group_size, dim=along)
                else:
                    param.copy_(rotation.apply_(param.float(), c, s, group_size, dim=along))

    def merge(self) -> None:
        """Fold the active adapters into the base layer."""
        if self.merged:
            raise RuntimeError(f"{self.site_name}: adapters {self.merged} are already merged")
        for name in self.active:
            self.adapter(name).check_finite(f"{self.site_name} / adapter {name!r}")
        for name in self.active:
            adapter = self.adapter(name)
            with torch.no_grad():
                c, s = rotation.coefficients(
                    adapter.variant, adapter.group_size, adapter.theta, adapter.alpha
                )
            self._fold(c.float(), s.float(), adapter.group_size)
        self.merged = self.active

    def unmerge(self) -> None:
        """Undo `merge` exactly up to float rounding, with each block's closed-form inverse."""
        for name in reversed(self.merged):
            adapter = self.adapter(name)
            with torch.no_grad():
                c, s = rotation.coefficients(
                    adapter.variant, adapter.group_size, adapter.theta, adapter.alpha
                )
                c_inv, s_inv = rotation.invert_coefficients(
                    c.float(), s.float(), adapter.group_size
                )
            self._fold(c_inv, s_inv, adapter.group_size)
        self.merged = ()


@dataclass
class TokenState:
    """What the current forward pass's inputs say about tokens, shared by a model's sites.

    Set by the model's `road_interp.routing.Router` before each forward:
    ``prompt`` (B, L) bool marks each row's real prompt tokens (under teacher forcing, the
    prompt part of prompt + answer), None when the input had no token axis; ``decoding`` is
    True for the decode steps of ``generate`` (a non-empty KV cache)."""

    prompt: Tensor | None = None
    decoding: bool = False


SITE_ATTR = "road_output"
"""Name under which a `RoadOutput` sits inside its target module (so that its parameters are
part of the model); adapter files key it by the target module's own path."""


class RoadOutput(RoadSite):
    """A site on a module's output, acting at `Positions`; see the module docstring.

    During ``generate`` the decode steps (a non-empty cache) are rotated only for
    ``Positions("all")`` and ``Positions("answer")``; the others act on prompt positions,
    and through the cache on what follows, as in pyvene's ``intervene_on_prompt``.
    """

    def __init__(self, size: int, name: str, positions: Positions, tokens: TokenState):
        super().__init__(size, name)
        self.positions = positions
        self.tokens = tokens
        self._handle: RemovableHandle | None = None
        # the target module, held weakly: as a registered submodule it would make a cycle
        self._parent: weakref.ref[nn.Module] | None = None

    def attach(self, target: nn.Module) -> None:
        """Hook into ``target``'s output and sit inside it as its child ``road_output``."""
        if self._handle is not None:
            raise RuntimeError(f"{self.site_name} is already attached")
        if hasattr(target, SITE_ATTR):
            raise ValueError(f"{self.site_name}: the module already has an output site")
        target.add_module(SITE_ATTR, self)
        self._parent = weakref.ref(target)
        self._handle = target.register_forward_hook(self._rotate_output)

    def attached_to(self) -> nn.Module | None:
        """The module whose output this site rotates (None once detached)."""
        return self._parent() if self._parent is not None else None

    def detach(self) -> None:
        """Remove the hook and take the site out of its module (safe to call twice)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        parent = self._parent() if self._parent is not None else None
        if parent is not None and getattr(parent, SITE_ATTR, None) is self:
            delattr(parent, SITE_ATTR)
        self._parent = None

    def _rotate_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        if h.shape[-1] != self.size:
            raise ValueError(
                f"{self.site_name}: the site has size {self.size} but the module's output has "
                f"last dimension {h.shape[-1]}; the adapter was made for a model of another "
                f"width, or add it with size={h.shape[-1]}"
            )
        if self.positions.kind == "all":
            z = self.rotate(h)
        elif self.tokens.decoding:
            if not self.positions.on_decode_steps:
                return output
            z = self.rotate(h)
        else:
            prompt = self.tokens.prompt
            if prompt is None or h.dim() != 3 or tuple(prompt.shape) != tuple(h.shape[:2]):
                raise ValueError(
                    f"{self.site_name}: positions {self.positions} need the (batch, tokens) of "
                    f"the model inputs, but the module's output is {tuple(h.shape)}; use "
                    "Positions('all') for outputs without a token axis"
                )
            mask = self.positions.mask(prompt).unsqueeze(-1).to(h.device)  # (B, L, 1)
            z = torch.where(mask, self.rotate(h), h)
        return (z, *output[1:]) if isinstance(output, tuple) else z

    def extra_repr(self) -> str:
        return f"size={self.size}, positions={self.positions}"
