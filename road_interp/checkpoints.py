"""What a training run writes and reads back: its checkpoint, its trained parameters, its log.

`road_interp.training.train` holds the loop; this module holds every file of a run. In
``output_dir``::

    train_config.json   the settings of the run
    metrics.jsonl       one JSON object per logged step and per evaluation
    checkpoint/         the last resumable state (written atomically): trainable.safetensors,
                        optimizer.safetensors, rng.safetensors, state.json (step, settings,
                        parameter names, AdamW groups, scheduler, best so far)
    best/  final/       the trained parameters at the best evaluation and at the end: a RoAd
                        adapter folder (`RoadModel.save_adapter`) plus head.safetensors
                        for an encoder's head, or trainable.safetensors for other models

Everything is safetensors plus JSON; nothing is pickled. The AdamW moments are stored under
``"<parameter index>.<moment name>"`` (``"0.exp_avg"``), the index being the position in
``state.json``'s ``parameters``, which is the order of the optimizer's groups.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .encoding import unwrap
from .files import atomic_file, atomic_folder
from .model import RoadModel

if TYPE_CHECKING:
    from .training import TrainConfig

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
SETTINGS = "train_config.json"
HEAD_MODULES = ("classifier", "score")
"""Names of sequence-classification heads (BERT/RoBERTa ``classifier``, Llama/GPT-2 ``score``)."""
RESUME_NEUTRAL = ("progress", "eval_batch_size", "log_every", "save_every")
"""Settings that may change between an interrupted run and its resumption."""


# ----------------------------------------------------------------------------- parameters


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters of a sequence classifier's head (``classifier`` / ``score``), by name in the
    Hugging Face model."""
    inner = unwrap(model)
    if not type(inner).__name__.endswith("ForSequenceClassification"):
        return {}
    out: dict[str, nn.Parameter] = {}
    for name, module in inner.named_children():
        if name in HEAD_MODULES:
            out.update({f"{name}.{n}": p for n, p in module.named_parameters()})
    return out


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter that requires grad, by its name in ``model``."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _cpu(params: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    return {n: p.detach().float().contiguous().cpu() for n, p in params.items()}


# ----------------------------------------------------------------------------- trained parameters


def save_trained(model: nn.Module, folder: Path) -> Path:
    """Write what was trained, atomically: a `RoadModel`'s trainable adapters (one adapter:
    the folder is that adapter; several: a subfolder each) plus ``head.safetensors``; for any
    other model, ``trainable.safetensors`` with every parameter that requires grad."""
    with atomic_folder(folder) as tmp:
        adapters = model.trainable_adapters() if isinstance(model, RoadModel) else ()
        if isinstance(model, RoadModel) and adapters:
            for name in adapters:
                model.save_adapter(name, tmp if len(adapters) == 1 else tmp / name)
            head = head_parameters(model)
            if head:
                save_file(_cpu(head), str(tmp / "head.safetensors"))
        else:
            save_file(_cpu(trainable_parameters(model)), str(tmp / "trainable.safetensors"))
    return folder


def load_head(model: nn.Module, path: str | Path) -> None:
    """Copy ``head.safetensors`` (written by `save_trained`) into a sequence classifier."""
    file = Path(path)
    file = file / "head.safetensors" if file.is_dir() else file
    tensors = load_file(str(file))
    head = head_parameters(model)
    if set(tensors) != set(head):
        raise ValueError(
            f"{file} holds {sorted(tensors)}, but this model's head has {sorted(head)}"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            if value.shape != head[name].shape:
                raise ValueError(
                    f"{file}: {name} has shape {tuple(value.shape)}, the model's "
                    f"{tuple(head[name].shape)}; was it trained with another number of labels?"
                )
            head[name].copy_(value)


def load_trainable(model: nn.Module, path: str | Path) -> None:
    """Copy ``trainable.safetensors`` (written by `save_trained` for a model that is not a
    `RoadModel`, e.g. full finetuning) into a model built the same way."""
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ValueError(
            f"{path} holds parameters this model lacks ({missing[:3]}...); build the model the "
            "way it was trained (a LoRA run needs the same PEFT wrapping)"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            if value.shape != params[name].shape:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(value.shape)}, the model's "
                    f"{tuple(params[name].shape)}"
                )
            params[name].copy_(value)


# ----------------------------------------------------------------------------- checkpoint


def save_checkpoint(
    folder: Path,
    *,
    step: int,
    config: TrainConfig,
    named: dict[str, nn.Parameter],
    optimizer: Any,
    scheduler: Any,
    best: dict[str, Any] | None,
    accelerator: Any,
) -> None:
    """Write everything a resumed run needs, atomically: parameters, AdamW moments, scheduler,
    every process's RNG state and the best evaluation so far. Every process calls it (the RNG
    states are gathered); the main process writes."""
    from accelerate.utils import gather_object

    rng_states = gather_object([torch.get_rng_state()])
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    state = optimizer.state_dict()
    moments: dict[str, Tensor] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            moments[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    rng = {f"rng.{r}": s for r, s in enumerate(rng_states)}
    meta = {
        "step": step,
        "world_size": accelerator.num_processes,
        "config": config.to_dict(),
        "parameters": list(named),
        "param_groups": state["param_groups"],
        "scheduler": scheduler.state_dict(),
        "best": best,
    }
    with atomic_folder(folder) as tmp:
        save_file(_cpu(named), str(tmp / "trainable.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    accelerator.wait_for_everyone()


def load_checkpoint(
    folder: Path,
    *,
    config: TrainConfig,
    named: dict[str, nn.Parameter],
    optimizer: Any,
    scheduler: Any,
    rank: int,
    world: int,
) -> tuple[int, dict[str, Any] | None]:
    """Restore a checkpoint into the parameters, optimizer, scheduler and this process's RNG;
    returns the step it was written at and the best evaluation so far. Settings other than
    `RESUME_NEUTRAL` and the trained parameters' names must match the interrupted run's."""
    state_file = folder / "state.json"
    if not state_file.exists():
        raise ValueError(f"{folder} is not a complete checkpoint (no state.json); delete it")
    meta = json.loads(state_file.read_text())
    saved = meta["config"]
    diffs = {
        k: (saved.get(k), v)
        for k, v in config.to_dict().items()
        if k not in RESUME_NEUTRAL and saved.get(k) != v
    }
    if diffs:
        raise ValueError(
            f"{folder} belongs to a run with other settings {diffs} (saved, now); resume with "
            "the same settings or choose another output_dir"
        )
    if meta["parameters"] != list(named):
        raise ValueError(
            f"{folder} holds parameters {meta['parameters'][:3]}... but the model trains "
            f"{list(named)[:3]}...; build the model the same way as the interrupted run"
        )
    params = load_file(str(folder / "trainable.safetensors"))
    moments = load_file(str(folder / "optimizer.safetensors"))
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(params[name].to(p.dtype))
    optimizer_state: dict[int, dict[str, Tensor]] = {}
    for key, value in moments.items():
        index, name = key.split(".", 1)
        optimizer_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    if meta["world_size"] == world:
        torch.set_rng_state(rng[f"rng.{rank}"])
    else:
        torch.manual_seed(config.seed + meta["step"] + rank)
    return int(meta["step"]), meta["best"]


def checkpoint_step(folder: Path) -> int | None:
    """The step a complete checkpoint was written at, or None when there is none."""
    state = folder / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.exists() else None


# ----------------------------------------------------------------------------- settings and log


def write_settings(output_dir: Path, config: TrainConfig) -> None:
    """``train_config.json``: every setting of the run."""
    with atomic_file(output_dir / SETTINGS) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def append_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    """Add one record (a logged step or an evaluation) to ``metrics.jsonl``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / METRICS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def truncate_metrics(output_dir: Path, step: int) -> None:
    """Drop records logged after ``step`` (the interrupted run went past its checkpoint)."""
    path = output_dir / METRICS
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln)["step"] <= step]
    with atomic_file(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep))


def read_metrics(output_dir: str | Path) -> pd.DataFrame:
    """``metrics.jsonl`` of a run as a table (evaluation records flattened to ``eval_*``)."""
    rows = []
    for line in (Path(output_dir) / METRICS).read_text().splitlines():
        record = json.loads(line)
        evaluation = record.pop("eval", None)
        if evaluation:
            record.update({f"eval_{k}": v for k, v in evaluation.items()})
        rows.append(record)
    return pd.DataFrame(rows)
