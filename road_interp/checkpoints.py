"""What a training run writes and reads back: its checkpoint, its trained parameters, its log.

`road_interp.training.train` holds the loop; this module holds every file of a run. In
``output_dir``::

    run.lock            while a process trains here: its pid, host and start time
    train_config.json   {"identity": what makes the run (`run_identity`), "settings": all
                        settings}; written once the run has been checked, before step 1
    metrics.jsonl       one JSON object per logged step and per evaluation
    checkpoint/         the last resumable state (written atomically): trainable.safetensors,
                        optimizer.safetensors, rng.safetensors, state.json (step, settings,
                        parameter names, AdamW groups, scheduler, best so far)
    best/  final/       the trained parameters at the best evaluation and at the end: a RoAd
                        adapter folder carrying an encoder's trained head as extra weights
                        (one folder, one adapter; `restore_trained` puts it back), or
                        trainable.safetensors for other models. Folders written before
                        heads travelled keep head.safetensors beside the adapter; it is
                        still read

**One process, one run.** `run_folder` guards a run: it refuses a folder that holds anything
but a run's files, takes the lock (a second process gets `RunLocked` naming the first; a lock
left by a dead process on this host is taken over), and puts back or removes what a killed
`road_interp.files.atomic_folder` left. A run started again in the same folder must have the
same identity (`check_identity`: model, data, adapters with their variant, group size and
targets, trained parameters, seed and settings), or it is refused before anything is written;
``metrics.jsonl`` is then cut back to the checkpoint's step (to nothing when there is none).

Everything is safetensors plus JSON; nothing is pickled. The AdamW moments are stored under
``"<parameter index>.<moment name>"`` (``"0.exp_avg"``), the index being the position in
``state.json``'s ``parameters``, which is the order of the optimizer's groups.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .encoding import unwrap
from .files import OutputError, atomic_file, atomic_folder, recover_folder
from .io import read_adapter, read_tensors, write_adapter
from .model import HEAD_MODULES, RoadModel, head_parameters  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from .training import TrainConfig

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
SETTINGS = "train_config.json"
LOCK = "run.lock"
RUN_FILES = (LOCK, SETTINGS, METRICS, "run.json", CHECKPOINT)
"""What only a run folder holds; `run_folder` trains only in a folder that holds one of these
or is empty."""
RESUME_NEUTRAL = ("progress", "eval_batch_size", "log_every", "save_every")
"""Settings that may change between an interrupted run and its resumption."""


# ----------------------------------------------------------------------------- parameters


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter that requires grad, by its name in ``model``."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _cpu(params: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    return {n: p.detach().float().contiguous().cpu() for n, p in params.items()}


# ----------------------------------------------------------------------------- trained parameters


def save_trained(model: nn.Module, folder: Path) -> Path:
    """Write what was trained, atomically: a `RoadModel`'s trainable adapters (one adapter:
    the folder is that adapter; several: a subfolder each), each carrying its extra weights
    and the trained head of an encoder (`road_interp.io.AdapterFile.extra`); for any other
    model, ``trainable.safetensors`` with every parameter that requires grad."""
    with atomic_folder(folder, overwrite=True) as tmp:  # best/ and final/ are the run's own
        adapters = model.trainable_adapters() if isinstance(model, RoadModel) else ()
        if isinstance(model, RoadModel) and adapters:
            head = {n: p for n, p in head_parameters(model).items() if p.requires_grad}
            for name in adapters:
                adapter = model.adapter_file(name)
                if head.keys() - adapter.extra.keys():  # a trained head travels with it
                    adapter = replace(adapter, extra={**adapter.extra, **_cpu(head)})
                write_adapter(adapter, tmp if len(adapters) == 1 else tmp / name)
        else:
            save_file(_cpu(trainable_parameters(model)), str(tmp / "trainable.safetensors"))
    return folder


def restore_trained(model: nn.Module, folder: str | Path) -> None:
    """Put the parameters `save_trained` wrote in ``folder`` back into the model that trained
    them (e.g. ``best/`` after training ended): each trainable adapter's θ and α, its extra
    weights and head; ``trainable.safetensors`` for other models."""
    folder = Path(folder)
    adapters = model.trainable_adapters() if isinstance(model, RoadModel) else ()
    if not (isinstance(model, RoadModel) and adapters):
        load_trainable(model, folder / "trainable.safetensors")
        return
    for name in adapters:
        stored = read_adapter(folder if len(adapters) == 1 else folder / name)
        params = model.adapter_parameters(name)
        sites = {key.rpartition(".")[0] for key in params}
        if set(stored.params) != sites:
            raise ValueError(
                f"{folder} holds sites {sorted(stored.params)[:3]}..., adapter {name!r} has "
                f"{sorted(sites)[:3]}...; it was written by another run"
            )
        with torch.no_grad():
            for site, (theta, alpha) in stored.params.items():
                params[f"{site}.theta"].copy_(theta)
                params[f"{site}.alpha"].copy_(alpha)
        if stored.extra:  # (read_adapter also reads an older folder's head.safetensors)
            model.copy_extra(stored, name)


def load_head(model: nn.Module, path: str | Path) -> None:
    """Copy a trained head into a sequence classifier: from an adapter folder that carries it
    (`save_trained`), from ``head.safetensors`` beside an older one, or from that file."""
    file = Path(path)
    if file.is_dir() and not (file / "head.safetensors").exists():
        head_names = set(head_parameters(model))
        extra = read_adapter(file).extra
        tensors = {n: v for n, v in extra.items() if n in head_names}
        if not tensors:
            raise FileNotFoundError(
                f"{file} carries no classifier head (nor head.safetensors beside it); an "
                "encoder needs the head trained for its task: give a best/ or final/ folder "
                "of `road-interp train`"
            )
        _copy_head(model, tensors, file)
        return
    file = file / "head.safetensors" if file.is_dir() else file
    tensors = read_tensors(
        file, "train the adapter and its head again (or use the run's other folder)"
    )
    _copy_head(model, tensors, file)


def _copy_head(model: nn.Module, tensors: dict[str, Tensor], file: Path) -> None:
    head = head_parameters(model)
    if set(tensors) != set(head):
        raise ValueError(
            f"{file} holds {sorted(tensors)}, but this model's head has {sorted(head)}"
        )
    _copy_checked(head, tensors, file, "; was it trained with another number of labels?")


def _copy_checked(
    params: dict[str, nn.Parameter], tensors: dict[str, Tensor], file: Path | str, hint: str = ""
) -> None:
    """Copy ``tensors`` into the same-named ``params``, every shape checked before any copy."""
    for name, value in tensors.items():
        if value.shape != params[name].shape:
            raise ValueError(
                f"{file}: {name} has shape {tuple(value.shape)}, the model's "
                f"{tuple(params[name].shape)}{hint}"
            )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def load_trainable(model: nn.Module, path: str | Path) -> None:
    """Copy ``trainable.safetensors`` (written by `save_trained` for a model that is not a
    `RoadModel`, e.g. full finetuning) into a model built the same way."""
    tensors = read_tensors(path, "train again (or use the run's other folder)")
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ValueError(
            f"{path} holds parameters this model lacks ({missing[:3]}...); build the model the "
            "way it was trained (a LoRA run needs the same PEFT wrapping)"
        )
    _copy_checked(params, tensors, path)


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
    with atomic_folder(folder, overwrite=True) as tmp:
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
    try:
        meta = json.loads(state_file.read_text())
        saved = meta["config"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{state_file} is corrupt; delete {folder} to start over") from None
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
    fix = f"delete {folder} to start over"
    params = read_tensors(folder / "trainable.safetensors", fix)
    moments = read_tensors(folder / "optimizer.safetensors", fix)
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(params[name].to(p.dtype))
    optimizer_state: dict[int, dict[str, Tensor]] = {}
    for key, value in moments.items():
        index, name = key.split(".", 1)
        optimizer_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    rng = read_tensors(folder / "rng.safetensors", fix)
    if meta["world_size"] == world:
        torch.set_rng_state(rng[f"rng.{rank}"])
    else:
        torch.manual_seed(config.seed + meta["step"] + rank)
    return int(meta["step"]), meta["best"]


def checkpoint_step(folder: Path) -> int | None:
    """The step a complete checkpoint was written at, or None when there is none."""
    state = folder / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.exists() else None


# ----------------------------------------------------------------------------- the run folder


class RunLocked(RuntimeError):
    """Another process is training in this run folder; the message names it."""


@contextmanager
def run_folder(output_dir: Path, *, main: bool = True) -> Iterator[Path]:
    """Hold ``output_dir`` for one training process: refuse a folder that is not a run's,
    lock it, and clean what a killed writer left (see the module docstring). Only the main
    process (``main``) locks and cleans; under DDP the others write nothing. On exit the lock
    is released, and a folder this call created and left empty is removed."""
    out = Path(output_dir)
    if not main:
        yield out
        return
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is an existing file; give a folder for the run")
    if out.is_dir() and any(out.iterdir()) and not any((out / f).exists() for f in RUN_FILES):
        raise OutputError(
            f"{out} already holds files that are not a training run's; choose another output "
            "folder (nothing was written)"
        )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(out / LOCK)
    try:
        for name in (CHECKPOINT, "best", "final"):
            recover_folder(out / name)
        for stale in out.glob(f".{METRICS}.tmp-*"):
            stale.unlink(missing_ok=True)
        yield out
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()


def _take_lock(path: Path) -> Path:
    """Create ``path`` holding this process's pid, host and start time, atomically. A lock of
    a live process (or of another host) raises `RunLocked`; one left by a dead process on this
    host is taken over."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is not None and not _stale(holder):
                raise RunLocked(
                    f"{path.parent} is in use by another training process (pid "
                    f"{holder.get('pid')} on {holder.get('host')}, started "
                    f"{holder.get('started')}); wait for it to finish or stop it, or choose "
                    f"another output folder. If that process is gone, delete {path}"
                ) from None
            aside = path.with_name(f".{path.name}.stale-{os.getpid()}")
            with suppress(FileNotFoundError):  # stale or unreadable: only one process wins
                os.replace(path, aside)
            aside.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        return path
    raise RunLocked(f"could not take the lock {path}; another process keeps taking it")


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        # a lock being written right now reads as empty: give its writer a moment
        time.sleep(0.2)
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    return holder if isinstance(holder, dict) else None


def _stale(holder: dict[str, Any]) -> bool:
    """Whether a lock's process is known to be gone (same host, no such pid)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def run_identity(
    model: nn.Module, config: TrainConfig, named: dict[str, nn.Parameter], data: dict[str, Any]
) -> dict[str, Any]:
    """What makes a run the run it is: the base model, the data (``{"name", "examples"}``),
    each trained RoAd adapter's config (variant, group size, targets, placement), the trained
    parameters' names and shapes, and every setting but `RESUME_NEUTRAL` (the seed among
    them). JSON-ready."""
    road = model if isinstance(model, RoadModel) else None
    if road is None:
        inner = unwrap(model)
        hf = getattr(inner, "config", None)
        base = {
            "model_type": getattr(hf, "model_type", None),
            "architecture": type(inner).__name__,
            "name_or_path": getattr(hf, "_name_or_path", None) or None,
        }
    else:
        base = road.base_model_identity
    adapters = {}
    if road is not None:
        adapters = {n: road.configs[n].to_dict() for n in road.trainable_adapters()}
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUME_NEUTRAL}
    return {
        "model": base,
        "data": data,
        "adapters": adapters,
        "parameters": {n: list(p.shape) for n, p in named.items()},
        "settings": settings,
    }


def check_identity(output_dir: Path, identity: dict[str, Any]) -> None:
    """Raise ValueError, before anything is written, if ``output_dir`` holds a run whose
    recorded identity (``train_config.json``) differs from ``identity``; the message lists
    the differences."""
    saved = read_identity(output_dir)
    if saved is None:
        return
    now = json.loads(json.dumps(identity))  # tuples as lists, as they were saved
    diffs = _differences(saved, now)
    if diffs:
        shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diffs[:4])
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise ValueError(
            f"{output_dir} holds another run ({shown}{more}); resume it with the same model, "
            "task, method and settings, or choose another output folder"
        )


def read_identity(output_dir: Path) -> dict[str, Any] | None:
    """The identity recorded in ``train_config.json``, or None (no file, or one written
    before identities were recorded)."""
    path = Path(output_dir) / SETTINGS
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{path} is corrupt; delete the run folder or choose another") from None
    identity = data.get("identity") if isinstance(data, dict) else None
    return identity if isinstance(identity, dict) else None


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) wherever two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += _differences(a.get(key), b.get(key), name)
        return out
    return [] if a == b else [(prefix, a, b)]


# ----------------------------------------------------------------------------- settings and log


def write_settings(
    output_dir: Path, config: TrainConfig, identity: dict[str, Any] | None = None
) -> None:
    """``train_config.json``: the run's identity and every setting."""
    data = {"identity": identity, "settings": config.to_dict()}
    with atomic_file(output_dir / SETTINGS) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def append_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    """Add one record (a logged step or an evaluation) to ``metrics.jsonl``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / METRICS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def truncate_metrics(output_dir: Path, step: int) -> None:
    """Drop records logged after ``step`` (the interrupted run went past its checkpoint; 0
    when it wrote none), and a line cut short by a kill."""
    path = output_dir / METRICS
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        steps = record.get("step") if isinstance(record, dict) else None
        if isinstance(steps, int) and steps <= step:
            keep.append(line)
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
