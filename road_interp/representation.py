"""Representation sites: RoAd on any module's output, at chosen token positions.

The paper's composition experiment puts RoAd1 on the output of a transformer block (the
residual stream) at the last prompt token only: a distributed interchange intervention's
placement. A `RoadOutput` site does that for any module whose output is (B, L, d), or a tuple
whose first element is:

    z[b, t] = R h[b, t]   if positions selects token t of row b,   else h[b, t]

It is attached with two hooks, both owned by the site and removed by `RoadOutput.detach` (which
`RoadModel.remove` calls):

- a forward pre-hook on the wrapped model that reads ``attention_mask`` (or assumes no padding)
  and the KV cache, and computes the (B, L) position mask of the prompt;
- a forward hook on the target module that rotates the selected tokens.

`Positions`: ``all`` (every token, generated ones included), ``first`` (first k real prompt
tokens) or ``last`` (last k real prompt tokens; k = 1 is the last prompt token). Real tokens
are those with attention_mask = 1, so left and right padding both work. During generation the
decode steps (a non-empty cache) are rotated only for ``all``; prompt positions act through
the cache, as in pyvene's ``intervene_on_prompt``.

Under teacher forcing (training, log-likelihood scoring) the input is prompt + answer, so the
attention mask alone would put "the last prompt token" at the end of the answer. Inside
`prompt_tokens(mask)` the sites take the prompt to be the tokens where ``mask`` (B, L) is True;
`road_interp.evaluation.answer_logprobs` (and so the training loop) sets it from the labels
(prompt = real tokens whose label is -100). A site therefore rotates the same token in
training as in generation.

The site sits in the target module as the child ``road_output``, so its path is
``<module path>.road_output`` (e.g. ``model.layers.15.road_output``); adapter files use that
path and store the positions (``"positions": "last:1"``), which `load_output_adapter` reads.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .config import RoadConfig
from .injection import pattern_matches
from .io import read_adapter
from .layers import RoadSite
from .rotation import check_pairing

SITE_ATTR = "road_output"
"""Name of the site inside its target module."""

POSITION_KINDS = ("all", "first", "last")


@dataclass(frozen=True)
class Positions:
    """Which tokens a representation site rotates: ``all``, or the ``first`` / ``last`` k real
    tokens of the prompt (``Positions("last")`` is the last prompt token)."""

    kind: str = "all"
    k: int = 1

    def __post_init__(self) -> None:
        if self.kind not in POSITION_KINDS:
            raise ValueError(f"unknown positions {self.kind!r}; choose one of {POSITION_KINDS}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")

    def mask(self, attention_mask: Tensor) -> Tensor:
        """Bool (B, L) from an attention mask (B, L) of 1 = real token, 0 = padding."""
        real = attention_mask.bool()
        if self.kind == "all":
            return real
        rank = real.long().cumsum(dim=1)  # 1-based index among real tokens
        if self.kind == "first":
            return real & (rank <= self.k)
        count = real.long().sum(dim=1, keepdim=True)
        return real & (rank > count - self.k)

    def __str__(self) -> str:
        return self.kind if self.kind == "all" else f"{self.kind}:{self.k}"

    @classmethod
    def parse(cls, text: str) -> Positions:
        """Inverse of ``str``: ``"all"``, ``"last"`` (k = 1), ``"last:3"``, ``"first:2"``."""
        kind, _, k = text.partition(":")
        try:
            return cls(kind, int(k) if k else 1)
        except ValueError as err:
            raise ValueError(f"cannot read positions {text!r}: {err}") from None


_PROMPT: ContextVar[Tensor | None] = ContextVar("road_interp_prompt", default=None)


@contextmanager
def prompt_tokens(mask: Tensor) -> Iterator[None]:
    """Inside, representation sites take the prompt of each row to be its tokens where the
    bool ``mask`` (B, L) is True (rather than every real token), for inputs of that shape.
    For teacher forcing: prompt + answer in one forward pass."""
    token = _PROMPT.set(mask.bool())
    try:
        yield
    finally:
        _PROMPT.reset(token)


class RoadOutput(RoadSite):
    """A site on a module's output, acting at `Positions`; see the module docstring."""

    def __init__(self, size: int, name: str, positions: Positions):
        super().__init__(size, name)
        self.positions = positions
        self._handles: list[RemovableHandle] = []
        self._mask: Tensor | None = None
        self._decoding = False
        # the target module, held weakly: as a registered submodule it would make a cycle
        self._parent: weakref.ref[nn.Module] | None = None

    # -- attaching --------------------------------------------------------------------------
    def attach(self, root: nn.Module, target: nn.Module) -> None:
        """Hook into ``target``'s output; ``root`` is the model that receives the inputs."""
        if self._handles:
            raise RuntimeError(f"{self.site_name} is already attached")
        if hasattr(target, SITE_ATTR):
            raise ValueError(f"{self.site_name}: the module already has a representation site")
        target.add_module(SITE_ATTR, self)
        self._parent = weakref.ref(target)
        self._handles = [
            root.register_forward_pre_hook(self._read_inputs, with_kwargs=True),
            target.register_forward_hook(self._rotate_output),
        ]

    def detach(self) -> None:
        """Remove both hooks and take the site out of its module (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        parent = self._parent() if self._parent is not None else None
        if parent is not None and getattr(parent, SITE_ATTR, None) is self:
            delattr(parent, SITE_ATTR)
        self._parent = None
        self._mask = None

    # -- hooks ------------------------------------------------------------------------------
    def _read_inputs(self, root: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        length = getattr(cache, "get_seq_length", None)
        self._decoding = bool(cache is not None and length is not None and length() > 0)
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        if tokens is None:
            self._mask = None
            return
        shape = tuple(tokens.shape[:2])
        prompt = _PROMPT.get()
        if prompt is not None and tuple(prompt.shape) == shape:
            mask = prompt
        elif mask is None or tuple(mask.shape) != shape:  # no padding information
            mask = torch.ones(shape, dtype=torch.bool, device=tokens.device)
        self._mask = self.positions.mask(mask)

    def _rotate_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        if h.shape[-1] != self.size:
            raise ValueError(
                f"{self.site_name}: the site has size {self.size} but the module's output has "
                f"last dimension {h.shape[-1]}; pass size={h.shape[-1]} when adding the adapter"
            )
        if self.positions.kind == "all":
            z = self.rotate(h)
        elif self._decoding:
            return output
        else:
            mask = self._mask
            if mask is None or tuple(mask.shape) != tuple(h.shape[:2]):
                raise ValueError(
                    f"{self.site_name}: positions {self.positions} need the (batch, tokens) of "
                    f"the model inputs, but the module's output is {tuple(h.shape)}; use "
                    "Positions('all') for outputs without a token axis"
                )
            z = torch.where(mask.unsqueeze(-1).to(h.device), self.rotate(h), h)
        return (z, *output[1:]) if isinstance(output, tuple) else z

    def extra_repr(self) -> str:
        return f"size={self.size}, positions={self.positions}"


# -- RoadModel integration ----------------------------------------------------------------------
def output_sites(model) -> dict[str, RoadOutput]:
    """The representation sites of a `RoadModel`, by site path."""
    return {n: s for n, s in model.sites.items() if isinstance(s, RoadOutput)}


def resolve_modules(model, config: RoadConfig) -> list[str]:
    """Module paths of ``model.model`` that ``config.targets`` (patterns) selects."""
    if isinstance(config.targets, str):
        raise ValueError(
            f"representation sites need explicit module patterns as targets (e.g. "
            f"'model.layers.15'), not the preset {config.targets!r}"
        )
    names = [
        n
        for n, m in model.model.named_modules()
        if n and not isinstance(m, RoadSite) and f".{SITE_ATTR}." not in f".{n}."
    ]
    chosen = []
    for pattern in config.targets:
        hits = [n for n in names if pattern_matches(pattern, n)]
        if not hits:
            blocks = [n for n in names if n.split(".")[-1].isdigit()][:4]
            raise ValueError(
                f"target pattern {pattern!r} matches no module of this model; blocks are named "
                f"like: {', '.join(blocks)}"
            )
        chosen.extend(hits)
    return list(dict.fromkeys(chosen))


def add_output_adapter(
    model,
    name: str,
    config: RoadConfig,
    positions: Positions,
    *,
    size: int | None = None,
    seed: int | None = None,
    activate: bool = True,
) -> list[str]:
    """Put adapter ``name`` on the outputs of the modules ``config.targets`` selects in a
    `RoadModel`, acting at ``positions``. ``size`` defaults to the model's ``hidden_size``
    (right for block, attention and MLP outputs). Returns the site paths.

    Everything is checked before the model changes; the base model is frozen and the new
    adapter's parameters are trainable, as with `RoadModel.add_adapter`.
    """
    if name in model.configs:
        raise ValueError(f"an adapter named {name!r} already exists; delete_adapter() it first")
    if not name or "." in name:
        raise ValueError(f"adapter names must be non-empty and contain no '.', got {name!r}")
    if size is None:
        size = getattr(getattr(model.model, "config", None), "hidden_size", None)
        if size is None:
            raise ValueError("this model's config has no hidden_size; pass size=")
    check_pairing(size, config.group_size)
    targets = resolve_modules(model, config)
    modules = dict(model.model.named_modules())
    for target in targets:
        existing = getattr(modules[target], SITE_ATTR, None)
        if existing is not None and (existing.positions != positions or existing.size != size):
            raise ValueError(
                f"{target} already has a representation site with positions "
                f"{existing.positions} and size {existing.size}; one site per module"
            )
    for p in model.model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    device = next(model.model.parameters()).device
    paths = []
    for target in targets:
        module = modules[target]
        site = getattr(module, SITE_ATTR, None)
        if site is None:
            site = RoadOutput(size, f"{target}.{SITE_ATTR}", positions)
            site.attach(model.model, module)
        cast(RoadOutput, site).add_adapter(name, config, generator).to(device)
        paths.append(site.site_name)
    model.configs[name] = config
    if activate:
        model.set_active(*model.active, name)
    return paths


def remove_output_sites(model) -> None:
    """Detach every representation site of a `RoadModel` (hooks and modules)."""
    for site in output_sites(model).values():
        site.detach()


def load_output_adapter(
    model,
    path: str | Path,
    positions: Positions | None = None,
    name: str | None = None,
    *,
    activate: bool = True,
) -> str:
    """Load an adapter folder saved from representation sites back onto the same modules, at
    the positions stored in the folder (``positions`` overrides them)."""
    adapter = read_adapter(path)
    name = name or Path(path).name
    suffix = f".{SITE_ATTR}"
    bad = [s for s in adapter.params if not s.endswith(suffix)]
    if bad:
        raise ValueError(
            f"{path} has sites that are not module outputs ({bad[:3]}); load it with "
            "road_interp.load_adapter instead"
        )
    if positions is None:
        if adapter.positions is None:
            raise ValueError(
                f"{path} does not say at which token positions it acts; pass positions="
            )
        positions = Positions.parse(adapter.positions)
    sizes = set(adapter.sites.values())
    if len(sizes) != 1:
        raise ValueError(f"{path}: representation sites of different sizes {sorted(sizes)}")
    modules = tuple(s.removesuffix(suffix) for s in adapter.params)
    config = replace(adapter.config, targets=modules)
    add_output_adapter(model, name, config, positions, size=sizes.pop(), activate=activate)
    with torch.no_grad():
        for site, (theta, alpha) in adapter.params.items():
            target = model.sites[site].adapter(name)
            target.theta.copy_(theta)
            target.alpha.copy_(alpha)
    return name
