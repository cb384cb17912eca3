"""Adapter folders on disk: ours (safetensors + JSON) and PEFT's RoAd format.

Our folder::

    road_config.json          {"format_version", "adapter": RoadConfig, "base_model": {...},
                               "sites": {"<module path>": d},
                               "positions": "last:1"   (representation sites only)}
    road_adapter.safetensors  "<module path>.theta", "<module path>.alpha" (float32)

PEFT's folder::

    adapter_config.json       {"peft_type": "ROAD", "variant", "group_size", "target_modules", ...}
    adapter_model.safetensors "base_model.model.<module path>.road_theta" / ".road_alpha"

Both parameter layouts are the same (see `road_interp.rotation`), so import and export copy
tensors. `read_adapter` reads either without a model; folders are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import FORMAT_VERSION, RoadConfig
from .files import atomic_folder
from .injection import out_features
from .rotation import PARAMS_PER_COORDINATE

CONFIG_FILE = "road_config.json"
WEIGHTS_FILE = "road_adapter.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class AdapterFile:
    """One adapter as stored: its config, the model it was made for, and per-site (θ, α)."""

    config: RoadConfig
    base_model: dict[str, Any]
    params: dict[str, tuple[Tensor, Tensor]]
    """site path -> (θ, α)."""
    positions: str | None = None
    """For adapters on module outputs (`road_interp.representation`): the token positions they
    act at, as ``str(Positions)`` (``"all"``, ``"last:1"``, ...). None for linear layers."""

    @property
    def sites(self) -> dict[str, int]:
        """site path -> site size d."""
        factor = PARAMS_PER_COORDINATE[self.config.variant]
        return {name: int(theta.numel() / factor) for name, (theta, _) in self.params.items()}


# -- reading ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is corrupt") from None


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the adapter folder is incomplete")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt, "
            "save or export the adapter again"
        ) from None


def read_adapter(path: str | Path) -> AdapterFile:
    """Read an adapter folder (ours or PEFT's RoAd) without a model."""
    folder = Path(path)
    if (folder / CONFIG_FILE).exists():
        return _read_ours(folder)
    if (folder / PEFT_CONFIG_FILE).exists():
        return _read_peft(folder)
    raise FileNotFoundError(
        f"{folder} is not a RoAd adapter folder: it has neither {CONFIG_FILE} nor a PEFT {PEFT_CONFIG_FILE}"
    )


def _read_ours(folder: Path) -> AdapterFile:
    meta = _read_json(folder / CONFIG_FILE)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{folder / CONFIG_FILE} has format version {version!r}; this road_interp reads up to "
            f"{FORMAT_VERSION}; upgrade road_interp"
        )
    unknown = set(meta) - {"format_version", "adapter", "base_model", "sites", "positions"}
    if unknown:
        raise ValueError(f"{folder / CONFIG_FILE} has unknown keys {sorted(unknown)}")
    config = RoadConfig.from_dict(meta["adapter"])
    tensors = _read_tensors(folder / WEIGHTS_FILE)
    params = {}
    for site in meta["sites"]:
        try:
            params[site] = (tensors[f"{site}.theta"], tensors[f"{site}.alpha"])
        except KeyError:
            raise ValueError(
                f"{folder / WEIGHTS_FILE} lacks the parameters of site {site}"
            ) from None
    positions = meta.get("positions")
    if positions is not None and not isinstance(positions, str):
        raise ValueError(f"{folder / CONFIG_FILE}: positions must be a string, got {positions!r}")
    adapter = AdapterFile(config, meta["base_model"], params, positions)
    _check_shapes(adapter, meta["sites"], folder)
    return adapter


def _read_peft(folder: Path) -> AdapterFile:
    meta = _read_json(folder / PEFT_CONFIG_FILE)
    if meta.get("peft_type") != "ROAD":
        raise ValueError(f"{folder} is a PEFT adapter of type {meta.get('peft_type')!r}, not ROAD")
    tensors = _read_tensors(folder / PEFT_WEIGHTS_FILE)
    params = {}
    for key, theta in tensors.items():
        if key.endswith(".road_theta"):
            site = key.removeprefix(PEFT_PREFIX).removesuffix(".road_theta")
            params[site] = (theta, tensors[key.replace(".road_theta", ".road_alpha")])
    config = RoadConfig(
        variant=meta["variant"],
        group_size=meta["group_size"],
        targets=tuple(sorted(params)),
        init="identity" if meta.get("init_weights", True) else "random",
    )
    auto = meta.get("auto_mapping") or {}
    base = {
        "model_type": None,
        "architecture": auto.get("base_model_class"),
        "name_or_path": meta.get("base_model_name_or_path"),
    }
    return AdapterFile(config, base, params)


def _check_shapes(adapter: AdapterFile, sizes: dict[str, int], where: Path) -> None:
    for site, (theta, alpha) in adapter.params.items():
        expected = int(PARAMS_PER_COORDINATE[adapter.config.variant] * sizes[site])
        if theta.shape != (expected,) or alpha.shape != (expected,):
            raise ValueError(
                f"{where}: site {site} has θ {tuple(theta.shape)} and α {tuple(alpha.shape)}, "
                f"expected ({expected},) for {adapter.config.variant} on size {sizes[site]}"
            )


# -- writing ------------------------------------------------------------------------------------
def write_adapter(adapter: AdapterFile, path: str | Path) -> Path:
    """Write ``adapter`` as our folder format, atomically (all or nothing)."""
    folder = Path(path)
    tensors: dict[str, Tensor] = {}
    for site, (theta, alpha) in adapter.params.items():
        tensors[f"{site}.theta"] = theta.detach().float().contiguous().cpu()
        tensors[f"{site}.alpha"] = alpha.detach().float().contiguous().cpu()
    meta = {
        "format_version": FORMAT_VERSION,
        "adapter": adapter.config.to_dict(),
        "base_model": adapter.base_model,
        "sites": adapter.sites,
    }
    if adapter.positions is not None:
        meta["positions"] = adapter.positions
    with atomic_folder(folder) as tmp:
        save_file(
            tensors,
            str(tmp / WEIGHTS_FILE),
            metadata={"format": "pt", "road_interp": str(FORMAT_VERSION)},
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def write_peft(adapter: AdapterFile, path: str | Path) -> Path:
    """Write ``adapter`` in PEFT's RoAd format (loadable with ``PeftModel.from_pretrained``)."""
    if adapter.positions is not None:
        raise ValueError(
            "PEFT's RoAd adapts linear layers only; this adapter acts on module outputs at "
            f"positions {adapter.positions}: save it in road_interp's format"
        )
    folder = Path(path)
    tensors: dict[str, Tensor] = {}
    for site, (theta, alpha) in adapter.params.items():
        tensors[f"{PEFT_PREFIX}{site}.road_theta"] = theta.detach().float().contiguous().cpu()
        tensors[f"{PEFT_PREFIX}{site}.road_alpha"] = alpha.detach().float().contiguous().cpu()
    meta = {
        "peft_type": "ROAD",
        "variant": adapter.config.variant,
        "group_size": adapter.config.group_size,
        "target_modules": sorted(adapter.params),
        "init_weights": adapter.config.init == "identity",
        "base_model_name_or_path": adapter.base_model.get("name_or_path"),
        "modules_to_save": None,
        "inference_mode": True,
        "task_type": None,
        "revision": None,
    }
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


# -- with a model -------------------------------------------------------------------------------
def adapter_from_model(model, name: str) -> AdapterFile:
    """Snapshot adapter ``name`` of a `RoadModel` (tensors are detached copies)."""
    sites = model.sites_of(name)
    params = {
        site: (a.adapter(name).theta.detach().clone(), a.adapter(name).alpha.detach().clone())
        for site, a in sites.items()
    }
    positions = {str(p) for a in sites.values() if (p := getattr(a, "positions", None))}
    if len(positions) > 1:
        raise ValueError(f"adapter {name!r} acts at several positions {sorted(positions)}")
    return AdapterFile(
        model.configs[name],
        model.base_model_identity,
        params,
        positions.pop() if positions else None,
    )


def save_adapter(model, name: str, path: str | Path, *, peft: bool = False) -> Path:
    """Save adapter ``name`` of a `RoadModel` (``peft=True``: in PEFT's format)."""
    adapter = adapter_from_model(model, name)
    return write_peft(adapter, path) if peft else write_adapter(adapter, path)


def check_compatible(model, adapter: AdapterFile, where: str = "adapter") -> None:
    """Raise ValueError if ``adapter`` was made for a model of another type or other shapes."""
    ours = model.base_model_identity
    theirs = adapter.base_model
    if theirs.get("model_type") and theirs["model_type"] != ours["model_type"]:
        raise ValueError(
            f"{where} was made for a {theirs['model_type']!r} model ({theirs.get('architecture')}), "
            f"this model is {ours['model_type']!r} ({ours['architecture']})"
        )
    modules = dict(model.model.named_modules())
    for site, size in adapter.sites.items():
        module = modules.get(site)
        if module is None:
            raise ValueError(
                f"{where} has a site {site} that this {ours['architecture']} does not have; "
                "was it made for another architecture?"
            )
        actual = out_features(module)
        if actual != size:
            raise ValueError(
                f"{where}: site {site} has size {size} in the adapter but {actual} in this model"
            )


def load_adapter(model, path: str | Path, name: str | None = None, *, activate: bool = True) -> str:
    """Load an adapter folder (ours or PEFT's) into a `RoadModel` as ``name`` (default: the
    folder's name). Everything is checked before the model changes. Returns the name."""
    adapter = read_adapter(path)
    if adapter.positions is not None:
        raise ValueError(
            f"{path} acts on module outputs at positions {adapter.positions}, not on linear "
            "layers; load it with road_interp.representation.load_output_adapter"
        )
    name = name or Path(path).name
    check_compatible(model, adapter, where=str(path))
    add_adapter_file(model, adapter, name, activate=activate)
    return name


def add_adapter_file(model, adapter: AdapterFile, name: str, *, activate: bool = True) -> None:
    """Add an in-memory `AdapterFile` to a `RoadModel` on exactly its sites."""
    config = replace(adapter.config, targets=tuple(adapter.params))
    model.add_adapter(name, config, activate=activate)
    with torch.no_grad():
        for site, (theta, alpha) in adapter.params.items():
            target = model.sites[site].adapter(name)
            target.theta.copy_(theta)
            target.alpha.copy_(alpha)
