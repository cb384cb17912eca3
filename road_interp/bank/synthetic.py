"""Random adapters for a model, without touching it: for tests, demos and benchmarks of
mixed-adapter serving (a trained adapter is read with `road_interp.io.read_adapter`)."""

from __future__ import annotations

import torch
from torch import nn

from .. import injection, rotation
from ..config import RoadConfig
from ..io import AdapterFile
from ..layers import RoadLinear


def random_adapter(model: nn.Module, config: RoadConfig, seed: int) -> AdapterFile:
    """An `AdapterFile` with θ ~ N(0, 0.5), α ~ N(1, 0.5) (whatever ``config.init`` says) on
    the modules ``config.targets`` selects in ``model`` (a Hugging Face model, or a
    `RoadModel`'s ``.model``). The model is not changed."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    params = {}
    for name in injection.resolve_targets(model, config):
        module = modules[name]
        if isinstance(module, RoadLinear):
            size = module.size
        else:
            size = module.out_features if isinstance(module, nn.Linear) else module.nf
        rotation.check_pairing(size, config.group_size)
        params[name] = rotation.random_params(config.variant, size, generator)
    hf_config = getattr(model, "config", None)
    identity = {
        "model_type": getattr(hf_config, "model_type", None),
        "architecture": type(model).__name__,
        "name_or_path": getattr(hf_config, "_name_or_path", None) or None,
    }
    return AdapterFile(config, identity, params)
