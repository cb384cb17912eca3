"""Which modules of a Hugging Face model get a RoAd site: name patterns and per-architecture
defaults. Only leaves are replaced (a Linear or Conv1D by a `RoadLinear` holding it), and
`restore` puts the very same module objects back.
"""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import RoadConfig
from .layers import RoadLinear, RoadSite

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
    """Names of the Linear / Conv1D modules that ``config.targets`` selects in ``model``.

    Raises ValueError naming the problem if the architecture has no default, or a pattern
    matches no adaptable module.
    """
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


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at dotted path ``name`` and return the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
