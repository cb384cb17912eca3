"""Adapter folders on disk: ours (safetensors + JSON) and PEFT's RoAd format. No model here:
`road_interp.model.RoadModel` puts an `AdapterFile` on a model and takes one back.

Our folder (format 2)::

    road_config.json          {"format_version", "adapter": RoadConfig (placement included),
                               "base_model": {...}, "sites": {"<module path>": d}}
    road_adapter.safetensors  "<module path>.theta", "<module path>.alpha" (float32)

A site is keyed by the path of the module it acts on: the Linear layer, or for an adapter at
token positions, the module whose output it rotates (``model.layers.15``). Format 1 folders
(positions beside the config, output sites keyed ``<module>.road_output``) are read too.

PEFT's folder::

    adapter_config.json       {"peft_type": "ROAD", "variant", "group_size", "target_modules", ...}
    adapter_model.safetensors "base_model.model.<module path>.road_theta" / ".road_alpha"

Both parameter layouts are the same (see `road_interp.rotation`), so import and export copy
tensors. `read_adapter` reads either; folders are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import FORMAT_VERSION, Positions, RoadConfig
from .files import atomic_folder
from .layers import SITE_ATTR
from .rotation import Layout

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

    @property
    def positions(self) -> Positions | None:
        """Where the adapter acts: None for Linear / Conv1D outputs, else the token positions
        of its module outputs (``config.positions``)."""
        return self.config.positions

    @property
    def sites(self) -> dict[str, int]:
        """site path -> site size d."""
        layout = Layout.of(self.config)
        return {name: layout.site_size(theta.numel()) for name, (theta, _) in self.params.items()}


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
    renamed: dict[str, str] = {}
    if version == 1:
        meta, renamed = _upgrade_v1(meta, folder)
    unknown = set(meta) - {"format_version", "adapter", "base_model", "sites"}
    if unknown:
        raise ValueError(f"{folder / CONFIG_FILE} has unknown keys {sorted(unknown)}")
    config = RoadConfig.from_dict(meta["adapter"])
    tensors = _read_tensors(folder / WEIGHTS_FILE)
    params = {}
    for site in meta["sites"]:
        stored = renamed.get(site, site)
        try:
            params[site] = (tensors[f"{stored}.theta"], tensors[f"{stored}.alpha"])
        except KeyError:
            raise ValueError(
                f"{folder / WEIGHTS_FILE} lacks the parameters of site {stored}"
            ) from None
    adapter = AdapterFile(config, meta["base_model"], params)
    _check_shapes(adapter, meta["sites"], folder)
    return adapter


def _upgrade_v1(meta: dict[str, Any], folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Format 1 -> 2: positions move into the config; output sites lose ``.road_output``.
    Returns the upgraded metadata and, per site key, the tensor prefix it is stored under."""
    meta = dict(meta)
    positions = meta.pop("positions", None)
    if positions is not None and not isinstance(positions, str):
        raise ValueError(f"{folder / CONFIG_FILE}: positions must be a string, got {positions!r}")
    suffix = f".{SITE_ATTR}"
    sites = meta.get("sites", {})
    renamed = {s.removesuffix(suffix): s for s in sites}
    meta["sites"] = {s.removesuffix(suffix): d for s, d in sites.items()}
    adapter = dict(meta.get("adapter", {}))
    targets = adapter.get("targets")
    if isinstance(targets, list):
        adapter["targets"] = [t.removesuffix(suffix) for t in targets]
    adapter.update(positions=positions, format_version=FORMAT_VERSION)
    meta["adapter"] = adapter
    return meta, renamed


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
        expected = Layout.of(adapter.config).num_params(sizes[site])
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
