"""``road-interp train``: train a RoAd adapter (or a baseline) on a registered task.

Settings come from flags, or from a JSON config file holding only the settings that differ
from the defaults (flags given as well override the file). Every setting is a field of
`road_interp.baselines.RunSpec` or `road_interp.training.TrainConfig`; the options below are
generated from those fields, so ``--help`` always lists them all.
"""

from __future__ import annotations

import argparse
import json
import os
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any


def add_settings(parser: argparse.ArgumentParser, *classes: type) -> None:
    """One ``--option`` per dataclass field, with its help text, type and default."""
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not MISSING else None
            text = f"{f.metadata.get('help', '')} (default: {default})"
            allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
            if bool in allowed:
                group.add_argument(
                    flag,
                    dest=f.name,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=text,
                )
                continue
            kind = next(k for k in allowed if k is not type(None))
            choices = f.metadata.get("choices")  # an enumeration: argparse lists and checks it
            group.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=None,
                choices=choices,
                metavar=None if choices else kind.__name__.upper(),
                help=text,
            )


def settings_from(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The config file's settings (if ``--config``), updated by the flags that were given."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object of settings")
    for cls in classes:
        for f in fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                data[f.name] = value
    return data


def add_parser(sub) -> None:
    from ..baselines import RunSpec
    from ..training import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a RoAd adapter or a baseline on a task",
        description="Train a RoAd adapter (or LoRA, full finetuning) on a registered task with "
        "one Accelerate loop: AdamW, linear schedule with warm-up, periodic evaluation, best "
        "checkpoint kept, metrics in OUTPUT/metrics.jsonl. Run it again with the same OUTPUT to "
        "resume. Launch with `accelerate launch -m road_interp.cli train ...` for several "
        "processes. Without --lr, each method's default applies (RoAd 3e-3, LoRA 3e-4, full 5e-5); "
        "RoAd on Linear sites learns at 3e-3 to 1e-2, on a block's output at ~3e-2. Each "
        "evaluation prints a line (step, metric, best so far; --quiet silences it), and the "
        "test split scores the best checkpoint unless --test-checkpoint final.",
    )
    p.add_argument("--output", "-o", required=True, help="run folder (created, or resumed)")
    p.add_argument(
        "--config", help="JSON file of settings (only those that differ from the defaults)"
    )
    p.add_argument(
        "--test-limit", type=int, default=None, help="evaluate on at most N test examples (all)"
    )
    p.add_argument(
        "--test-checkpoint",
        choices=["best", "final"],
        default="best",
        help="which parameters the test split scores: best (the best validation score's, "
        "kept in OUTPUT/best; default) or final; the result says which (tested, tested_step)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="fail instead of resuming if OUTPUT already holds a checkpoint",
    )
    add_settings(p, RunSpec, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..baselines import RunSpec, non_default_settings, split_settings
    from ..baselines import run as run_method
    from ..checkpoints import RESUME_NEUTRAL
    from ..tasks import get_task
    from ..training import TrainConfig
    from . import UsageError

    try:  # settings that cannot make a run are usage errors (exit 2), found before any work
        spec, config = split_settings(settings_from(args, RunSpec, TrainConfig))
        get_task(spec.task)
    except (ValueError, TypeError, KeyError) as err:
        raise UsageError(str(err.args[0]) if isinstance(err, KeyError) else str(err)) from err
    out = Path(args.output)
    settings = non_default_settings(spec, config)
    _check_same_run(out / "run.json", settings, RESUME_NEUTRAL)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch`
    row = run_method(
        spec,
        config,
        out,
        test_limit=args.test_limit,
        resume=not args.no_resume,
        test_checkpoint=args.test_checkpoint,
    )
    if main_process:  # the run was valid and is done: its settings as a config file
        _write(out / "run.json", settings)
        _write(out / "test_result.json", row)
        print(json.dumps(row, indent=2))
    return 0


def _check_same_run(path: Path, settings: dict[str, Any], neutral: tuple[str, ...]) -> None:
    """Refuse, before any work, to run in a folder whose ``run.json`` names other settings
    (the training loop checks the full identity again before it writes anything)."""
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return  # unreadable: the training loop's own check decides
    if not isinstance(saved, dict):
        return
    diffs = [
        f"{key}: {saved.get(key)!r} in the run, {settings.get(key)!r} now"
        for key in sorted(set(saved) | set(settings))
        if key not in neutral and saved.get(key) != settings.get(key)
    ]
    if diffs:
        raise ValueError(
            f"{path.parent} holds another run ({'; '.join(diffs[:4])}); resume it with the "
            "same settings, or choose another output folder"
        )


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
