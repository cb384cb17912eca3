"""Adapter folders on disk: ours (safetensors + JSON) and PEFT's RoAd format. No model here:
`road_interp.model.RoadModel` puts an `AdapterFile` on a model and takes one back.

Our folder (format 2)::

    road_config.json          {"format_version", "adapter": RoadConfig (placement included),
                               "base_model": {...}, "sites": {"<module path>": d}}
    road_adapter.safetensors  "<module path>.theta", "<module path>.alpha" (float32), and
                              "extra/<parameter name>" for each extra weight

An adapter may carry **extra weights**: trained parameters of the wrapped model that are not
RoAd's, such as a sequence classifier's head (``classifier.weight``, ``score.weight``). They
are listed in the config under the optional key ``"extra": {"<parameter name>": shape}`` and
stored in the same safetensors file under ``extra/<parameter name>``, so one folder is one
adapter; `RoadModel.load_adapter` copies them into the model. A folder without them has no
``extra`` key (the format is unchanged); in a run folder written before heads travelled, the
``head.safetensors`` beside the adapter is read as its extra weights.

A site is keyed by the path of the module it acts on: the Linear layer, or for an adapter at
token positions, the module whose output it rotates (``model.layers.15``). Format 1 folders
(positions beside the config, output sites keyed ``<module>.road_output``) are read too.

PEFT's folder::

    adapter_config.json       {"peft_type": "ROAD", "variant", "group_size", "target_modules",
                               "task_type", "base_model_name_or_path", "modules_to_save", ...}
    adapter_model.safetensors "base_model.model.<module path>.road_theta" / ".road_alpha", and
                              "base_model.model.<parameter name>" for `modules_to_save`
    README.md                 a short model card (written by `write_peft`)

Extra weights travel as PEFT's ``modules_to_save`` (the modules that hold them), which is how
PEFT saves a classifier's head.

Both parameter layouts are the same (see `road_interp.rotation`), so import and export copy
tensors. `read_adapter` reads either; folders are written atomically, and never over a folder
that is not an adapter's (`road_interp.files.atomic_folder`; replacing one needs
``overwrite=True``).

**One validation path.** `validate` checks an adapter completely: θ and α are 1-D, of equal
length, the length of a site the group size pairs, and finite. Reading (ours and PEFT's),
writing (save, export, compose), `RoadModel.load_adapter`, the bank and the analysis all call
it, so a bad adapter is refused before any model or folder changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import FORMAT_VERSION, Positions, RoadConfig
from .files import atomic_folder
from .layers import SITE_ATTR
from .rotation import PARAMS_PER_COORDINATE, Layout, check_pairing

CONFIG_FILE = "road_config.json"
WEIGHTS_FILE = "road_adapter.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LEGACY_HEAD_FILE = "head.safetensors"
"""Where `road-interp train` kept an encoder's head beside the adapter before heads travelled
in it; read as the adapter's extra weights."""
EXTRA_PREFIX = "extra/"
"""Key prefix of an extra weight in ``road_adapter.safetensors`` (module paths hold no '/')."""
TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForCausalLM": "CAUSAL_LM"}
"""PEFT's task_type by the ending of the base model's architecture (GPT-2's LMHeadModel is a
causal LM too)."""


@dataclass(frozen=True)
class AdapterFile:
    """One adapter as stored: its config, the model it was made for, and per-site (θ, α)."""

    config: RoadConfig
    base_model: dict[str, Any]
    params: dict[str, tuple[Tensor, Tensor]]
    """site path -> (θ, α)."""
    extra: dict[str, Tensor] = field(default_factory=dict)
    """Trained weights of the wrapped model that are not RoAd's, by parameter name in the
    Hugging Face model (``"classifier.weight"``): a classifier's head, most often."""

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


# -- validation ---------------------------------------------------------------------------------
def validate(adapter: AdapterFile, where: str = "adapter") -> AdapterFile:
    """Raise ValueError naming the site unless every site's θ and α are 1-D tensors of the
    same length n, n is the parameter count of a site of size d = n / (params per coordinate)
    that ``group_size`` pairs, and every value is finite. Returns ``adapter``."""
    config = adapter.config
    if not adapter.params:
        raise ValueError(f"{where} has no sites; there is nothing to apply")
    per_coordinate = PARAMS_PER_COORDINATE[config.variant]
    for site, pair in adapter.params.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"{where}: site {site} must hold a pair (θ, α)")
        theta, alpha = pair
        if not (isinstance(theta, torch.Tensor) and isinstance(alpha, torch.Tensor)):
            raise ValueError(f"{where}: site {site}: θ and α must be tensors")
        if theta.dim() != 1 or theta.shape != alpha.shape:
            raise ValueError(
                f"{where}: site {site} has θ {tuple(theta.shape)} and α {tuple(alpha.shape)}; "
                "both must be 1-D and of the same length. The adapter is truncated or was "
                "written by another tool; save or export it again"
            )
        d = theta.numel() / per_coordinate
        if not d.is_integer() or d < 2:
            raise ValueError(
                f"{where}: site {site} has {theta.numel()} parameters, which fits no site of "
                f"{config.variant}; the adapter is damaged"
            )
        try:
            check_pairing(int(d), config.group_size)
        except ValueError as err:
            raise ValueError(f"{where}: site {site}: {err}") from None
        if not (theta.is_floating_point() and alpha.is_floating_point()):
            raise ValueError(f"{where}: site {site}: θ and α must be floating-point tensors")
        if not (torch.isfinite(theta).all() and torch.isfinite(alpha).all()):
            raise ValueError(
                f"{where}: site {site} has NaN or inf parameters; refusing to use or write "
                "them (a diverged training run, or a scale too large)"
            )
    _validate_extra(adapter.extra, where)
    return adapter


def _validate_extra(extra: Any, where: str) -> None:
    if not isinstance(extra, dict):
        raise ValueError(f"{where}: extra weights must be a dict of name -> tensor")
    for name, value in extra.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"{where}: {name!r} is not a parameter name for an extra weight")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"{where}: extra weight {name} must be a floating-point tensor")
        if not torch.isfinite(value).all():
            raise ValueError(f"{where}: extra weight {name} has NaN or inf values")


# -- reading ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is corrupt") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _require(meta: dict[str, Any], keys: tuple[str, ...], path: Path, fix: str) -> None:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(map(repr, missing))}; {fix}")


def read_tensors(
    path: str | Path, fix: str = "save or export the adapter again"
) -> dict[str, Tensor]:
    """``load_file`` with one-line errors for a missing, truncated or corrupt file; ``fix``
    says what to do about it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing; the folder is incomplete: {fix}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt: {fix}"
        ) from None


def read_adapter(path: str | Path) -> AdapterFile:
    """Read an adapter folder (ours or PEFT's RoAd) without a model."""
    folder = Path(path)
    if (folder / CONFIG_FILE).exists():
        return validate(_read_ours(folder), str(folder))
    if (folder / PEFT_CONFIG_FILE).exists():
        return validate(_read_peft(folder), str(folder))
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the path of an adapter folder")
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
    unknown = set(meta) - {"format_version", "adapter", "base_model", "sites", "extra"}
    if unknown:
        raise ValueError(f"{folder / CONFIG_FILE} has unknown keys {sorted(unknown)}")
    fix = "the file is incomplete; save or export the adapter again"
    _require(meta, ("adapter", "base_model", "sites"), folder / CONFIG_FILE, fix)
    if not isinstance(meta["sites"], dict) or not isinstance(meta["base_model"], dict):
        raise ValueError(f"{folder / CONFIG_FILE}: 'sites' and 'base_model' must be objects")
    config = _config(meta["adapter"], folder / CONFIG_FILE)
    tensors = read_tensors(folder / WEIGHTS_FILE)
    params = {}
    for site in meta["sites"]:
        stored = renamed.get(site, site)
        try:
            params[site] = (tensors[f"{stored}.theta"], tensors[f"{stored}.alpha"])
        except KeyError:
            raise ValueError(
                f"{folder / WEIGHTS_FILE} lacks the parameters of site {stored}"
            ) from None
    extra = _read_extra(meta.get("extra", {}), tensors, folder)
    if not extra and (folder / LEGACY_HEAD_FILE).exists():
        extra = read_tensors(folder / LEGACY_HEAD_FILE)
    adapter = AdapterFile(config, meta["base_model"], params, extra)
    _check_shapes(adapter, meta["sites"], folder)
    return adapter


def _read_extra(listed: Any, tensors: dict[str, Tensor], folder: Path) -> dict[str, Tensor]:
    """The extra weights the config lists (name -> shape), each checked against its shape."""
    if not isinstance(listed, dict):
        raise ValueError(f"{folder / CONFIG_FILE}: 'extra' must be an object of name -> shape")
    extra = {}
    for name, shape in listed.items():
        key = f"{EXTRA_PREFIX}{name}"
        if key not in tensors:
            raise ValueError(f"{folder / WEIGHTS_FILE} lacks the extra weight {name}")
        if not isinstance(shape, list) or list(tensors[key].shape) != shape:
            raise ValueError(
                f"{folder}: extra weight {name} has shape {list(tensors[key].shape)}, the config "
                f"says {shape!r}; the folder is damaged, save the adapter again"
            )
        extra[name] = tensors[key]
    return extra


def _config(data: Any, where: Path) -> RoadConfig:
    """The `RoadConfig` of a stored config; any problem is a ValueError naming the file."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: 'adapter' must be an object, got {data!r}")
    try:
        return RoadConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


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
    fix = "the PEFT config is incomplete; save it again with PEFT >= 0.17"
    _require(meta, ("variant", "group_size"), folder / PEFT_CONFIG_FILE, fix)
    tensors = read_tensors(folder / PEFT_WEIGHTS_FILE)
    params, extra = {}, {}
    for key, theta in tensors.items():
        if not key.endswith((".road_theta", ".road_alpha")):
            extra[key.removeprefix(PEFT_PREFIX)] = theta  # modules_to_save (a head)
        if key.endswith(".road_theta"):
            site = key.removeprefix(PEFT_PREFIX).removesuffix(".road_theta")
            alpha_key = key.replace(".road_theta", ".road_alpha")
            if alpha_key not in tensors:
                raise ValueError(
                    f"{folder / PEFT_WEIGHTS_FILE} has θ but no α for site {site}; the file "
                    "is incomplete"
                )
            params[site] = (theta, tensors[alpha_key])
    if not params:
        raise ValueError(f"{folder / PEFT_WEIGHTS_FILE} holds no RoAd parameters (*.road_theta)")
    config = _config(
        {
            "variant": meta["variant"],
            "group_size": meta["group_size"],
            "targets": sorted(params),
            "init": "identity" if meta.get("init_weights", True) else "random",
        },
        folder / PEFT_CONFIG_FILE,
    )
    auto = meta.get("auto_mapping") or {}
    base = {
        "model_type": None,
        "architecture": auto.get("base_model_class"),
        "name_or_path": meta.get("base_model_name_or_path"),
    }
    if base["architecture"] is None and meta.get("task_type") is not None:
        base["architecture"] = {v: k for k, v in TASK_TYPES.items()}.get(meta["task_type"])
    return AdapterFile(config, base, params, extra)


def _check_shapes(adapter: AdapterFile, sizes: dict[str, Any], where: Path) -> None:
    for site, (theta, alpha) in adapter.params.items():
        if isinstance(sizes[site], bool) or not isinstance(sizes[site], int):
            raise ValueError(f"{where}: site {site} has size {sizes[site]!r}, not an integer")
        expected = Layout.of(adapter.config).num_params(sizes[site])
        if theta.shape != (expected,) or alpha.shape != (expected,):
            raise ValueError(
                f"{where}: site {site} has θ {tuple(theta.shape)} and α {tuple(alpha.shape)}, "
                f"expected ({expected},) for {adapter.config.variant} on size {sizes[site]}"
            )


# -- writing ------------------------------------------------------------------------------------
def write_adapter(adapter: AdapterFile, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``adapter`` (validated first) as our folder format, atomically (all or nothing).
    An existing adapter folder is replaced only with ``overwrite``; any other existing folder
    or file is refused (`road_interp.files.OutputError`)."""
    folder = Path(path)
    validate(adapter)
    tensors: dict[str, Tensor] = {}
    for site, (theta, alpha) in adapter.params.items():
        tensors[f"{site}.theta"] = theta.detach().float().contiguous().cpu()
        tensors[f"{site}.alpha"] = alpha.detach().float().contiguous().cpu()
    for name, value in adapter.extra.items():
        tensors[f"{EXTRA_PREFIX}{name}"] = value.detach().float().contiguous().cpu()
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "adapter": adapter.config.to_dict(),
        "base_model": adapter.base_model,
        "sites": adapter.sites,
    }
    if adapter.extra:  # optional: folders without extra weights keep the format as it was
        meta["extra"] = {name: list(value.shape) for name, value in adapter.extra.items()}
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        save_file(
            tensors,
            str(tmp / WEIGHTS_FILE),
            metadata={"format": "pt", "road_interp": str(FORMAT_VERSION)},
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def write_peft(adapter: AdapterFile, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``adapter`` (validated first) in PEFT's RoAd format, with a model card
    (README.md); ``overwrite`` as in `write_adapter`.

    The config names the base model by its Hugging Face id (an embedded model's upstream id,
    `road_interp.models.hub_id`), PEFT's ``task_type`` (SEQ_CLS, CAUSAL_LM) from its
    architecture, and the modules holding the extra weights as ``modules_to_save``, so
    ``AutoPeftModelForSequenceClassification.from_pretrained(folder)`` (or ``…ForCausalLM``)
    loads base, adapter and head in one call (offline once `road-interp fetch` has put the
    embedded models in the Hugging Face cache)."""
    from .models import hub_id  # the embedded models' table; io needs it only here

    validate(adapter)
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
    for name, value in adapter.extra.items():
        tensors[f"{PEFT_PREFIX}{name}"] = value.detach().float().contiguous().cpu()
    recorded = adapter.base_model.get("name_or_path")
    base_id = hub_id(recorded) if recorded else None
    modules = sorted({n.rpartition(".")[0] for n in adapter.extra}) or None
    meta = {
        "peft_type": "ROAD",
        "variant": adapter.config.variant,
        "group_size": adapter.config.group_size,
        "target_modules": sorted(adapter.params),
        "init_weights": adapter.config.init == "identity",
        "base_model_name_or_path": base_id,
        "modules_to_save": modules,
        "inference_mode": True,
        "task_type": task_type(adapter.base_model.get("architecture")),
        "revision": None,
    }
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(model_card(adapter, meta))
    return folder


def task_type(architecture: str | None) -> str | None:
    """PEFT's task_type of a Hugging Face architecture name (None when it has none)."""
    for ending, kind in TASK_TYPES.items():
        if architecture and architecture.endswith(ending):
            return kind
    if architecture and architecture.endswith("LMHeadModel"):
        return "CAUSAL_LM"
    return None


def model_card(adapter: AdapterFile, meta: dict[str, Any]) -> str:
    """A short README.md for a PEFT export: what the adapter is, its base model, how to load
    it, and what a user must know about how it was trained (`road_interp.models.card_note`)."""
    from .models import card_note

    base = meta["base_model_name_or_path"] or "(not recorded)"
    auto = {
        "SEQ_CLS": "AutoPeftModelForSequenceClassification",
        "CAUSAL_LM": "AutoPeftModelForCausalLM",
    }
    loader = auto.get(meta["task_type"] or "", "AutoPeftModel")
    n = sum(t.numel() + a.numel() for t, a in adapter.params.values())
    heads = [v for k, v in adapter.extra.items() if k.endswith(".weight") and v.dim() == 2]
    labels = f", num_labels={heads[0].shape[0]}" if meta["task_type"] == "SEQ_CLS" and heads else ""
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base}",
        "tags: [road, peft, road_interp]",
        "---",
        "",
        f"# RoAd adapter ({adapter.config.variant}, group size {adapter.config.group_size})",
        "",
        f"A RoAd (2D rotary adaptation) adapter for `{base}`, written by road_interp: "
        f"{len(adapter.params)} sites, {n:,} parameters"
        + (
            f", plus {', '.join(meta['modules_to_save'])} (modules_to_save)."
            if meta["modules_to_save"]
            else "."
        ),
        "",
        "```python",
        f"from peft import {loader}",
        "",
        f'model = {loader}.from_pretrained("path/to/this/folder"{labels})',
        "```",
    ]
    note = card_note(adapter.base_model.get("name_or_path"))
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"
