"""Where RoAd sites go in a Hugging Face model, and the one place that creates them.

`resolve_targets` turns a `RoadConfig`'s targets (name patterns, or a per-architecture
default) into module paths; `create_site` is the single dispatch that puts a site there:

- ``config.positions is None``: the Linear / Conv1D leaf at the path is replaced by a
  `RoadLinear` holding it (`remove_site` puts the very same module object back);
- otherwise a `RoadOutput` is hooked onto the module's output at those positions.

A site is found again under the module's own path (``model.layers.3.self_attn.q_proj``,
``model.layers.15``), which is also its key in adapter files.
"""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import Positions, RoadConfig
from .layers import SITE_ATTR, RoadLinear, RoadOutput, RoadSite, TokenState

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    # every linear layer inside the transformer blocks, as in the paper
    "bert": (
        "query",
        "key",
        "value",
        "attention.output.dense",
        "intermediate.dense",
        r".*layer\.\d+\.output\.dense",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gpt2": ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"),
}
"""model_type -> target patterns used by ``targets="default"``."""

HEAD_NAMES = frozenset({"classifier", "score", "lm_head", "qa_outputs", "cls"})
"""Name components of output heads, which ``"all-linear"`` leaves out."""

ADAPTABLE = (nn.Linear, Conv1D)


def out_features(module: nn.Module) -> int | None:
    """Output size d of a site or an adaptable layer; None for any other module."""
    if isinstance(module, RoadSite):
        return module.size
    if isinstance(module, Conv1D):
        return int(module.nf)
    return module.out_features if isinstance(module, nn.Linear) else None


def pattern_matches(pattern: str, name: str) -> bool:
    """A pattern matches a full module name, a dotted suffix of it, or fully as a regex."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _is_head(model: nn.Module, name: str, module: nn.Module) -> bool:
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    return module is out or bool(HEAD_NAMES.intersection(name.split(".")))


def resolve_targets(model: nn.Module, config: RoadConfig) -> list[str]:
    """Paths of the modules that ``config.targets`` selects in ``model``: Linear / Conv1D
    layers for a mergeable config, any module for one at positions.

    Raises ValueError naming the problem if the architecture has no default, or a pattern
    matches no module of the right kind.
    """
    if not config.mergeable:
        return _resolve_modules(model, config.targets)
    candidates: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, RoadLinear):  # an existing site counts as the layer it wraps
            candidates[name] = module.base_layer
        elif isinstance(module, ADAPTABLE) and not name.endswith(".base_layer"):
            candidates[name] = module
    if config.targets == "all-linear":
        return [n for n, m in candidates.items() if not _is_head(model, n, m)]
    if config.targets == "default":
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise ValueError(
                f"no default RoAd targets for model type {model_type!r} (known: "
                f"{sorted(DEFAULT_TARGETS)}); pass targets='all-linear' or a list of module-name patterns"
            )
        patterns = DEFAULT_TARGETS[model_type]
    else:
        patterns = tuple(config.targets)
    chosen = []
    for pattern in patterns:
        hits = [n for n in candidates if pattern_matches(pattern, n)]
        if not hits:
            examples = ", ".join(list(candidates)[:6])
            raise ValueError(
                f"target pattern {pattern!r} matches no Linear/Conv1D module of this model; "
                f"its adaptable modules are named like: {examples}"
            )
        chosen.extend(hits)
    return [n for n in candidates if n in set(chosen)]  # model order, no duplicates


def _resolve_modules(model: nn.Module, patterns: str | tuple[str, ...]) -> list[str]:
    modules = dict(model.named_modules())
    sites = tuple(f"{n}." for n, m in modules.items() if isinstance(m, RoadSite))
    names = [
        n
        for n, m in modules.items()
        if n and not isinstance(m, RoadSite) and not n.startswith(sites)
    ]
    chosen = []
    for pattern in patterns:
        hits = [n for n in names if pattern_matches(pattern, n)]
        if not hits:
            blocks = [n for n in names if n.split(".")[-1].isdigit()][:4]
            raise ValueError(
                f"target pattern {pattern!r} matches no module of this model; blocks are named "
                f"like: {', '.join(blocks)}"
            )
        chosen.extend(hits)
    return list(dict.fromkeys(chosen))


def site_at(model: nn.Module, path: str) -> RoadSite | None:
    """The site at module path ``path`` of ``model``, or None."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    if isinstance(module, RoadSite):
        return module
    site = getattr(module, SITE_ATTR, None)
    return site if isinstance(site, RoadOutput) else None


def find_sites(model: nn.Module) -> dict[str, RoadSite]:
    """Every site in ``model``, keyed by its module path (an output site by the path of the
    module whose output it rotates)."""
    out: dict[str, RoadSite] = {}
    for name, module in model.named_modules():
        if isinstance(module, RoadOutput):
            out[name.rpartition(".")[0]] = module
        elif isinstance(module, RoadSite):
            out[name] = module
    return out


def site_size(model: nn.Module, path: str, config: RoadConfig) -> int:
    """The size d a new site at ``path`` would have: the layer's output size for a mergeable
    config, the model's ``hidden_size`` for module outputs (blocks, attention and MLP
    outputs)."""
    if config.mergeable:
        size = out_features(model.get_submodule(path))
        assert size is not None  # resolve_targets returns adaptable layers only
        return size
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if size is None:
        raise ValueError(
            f"this model's config has no hidden_size, so the size of the output of {path} is "
            "unknown; pass size= when adding the adapter"
        )
    return int(size)


def check_site(model: nn.Module, path: str, size: int, positions: Positions | None) -> None:
    """Raise ValueError if `create_site` could not put (or find) such a site at ``path``."""
    existing = site_at(model, path)
    if existing is not None:
        ours = existing.positions if isinstance(existing, RoadOutput) else None
        if ours != positions or existing.size != size:
            where = "its Linear output" if ours is None else f"positions {ours}"
            wanted = "its Linear output" if positions is None else f"positions {positions}"
            raise ValueError(
                f"already has a site acting at {where} with size {existing.size}; one site per "
                f"module, so an adapter at {wanted} with size {size} cannot go there"
            )
        return
    module = model.get_submodule(path)
    if positions is None and not isinstance(module, ADAPTABLE):
        raise ValueError(
            f"a {type(module).__name__} is not a Linear or Conv1D layer; give the adapter "
            "positions to act on its output instead"
        )


def create_site(
    model: nn.Module, path: str, size: int, positions: Positions | None, tokens: TokenState
) -> RoadSite:
    """The site at ``path`` for an adapter placed at ``positions`` (None: the Linear /
    Conv1D layer itself), created if there is none yet; output sites read ``tokens``.
    Raises ValueError, changing nothing, where `check_site` does."""
    check_site(model, path, size, positions)
    existing = site_at(model, path)
    if existing is not None:
        return existing
    module = model.get_submodule(path)
    if positions is None:
        site: RoadSite = RoadLinear(module, name=path)
        replace_module(model, path, site)
        return site
    output = RoadOutput(size, path, positions, tokens)
    output.attach(module)
    return output


def remove_site(model: nn.Module, path: str) -> None:
    """Take the site at ``path`` out of ``model``, restoring the original module object."""
    site = site_at(model, path)
    if isinstance(site, RoadOutput):
        site.detach()
    elif isinstance(site, RoadLinear):
        replace_module(model, path, site.base_layer)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at dotted path ``name`` and return the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
