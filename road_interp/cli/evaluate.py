"""``road-interp evaluate``: score a model (with a trained adapter, or as it is) on a task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model, with or without a trained adapter, on a task split",
        description="Evaluate with the task's metric: encoder classification accuracy, causal-LM "
        "multiple choice by log-likelihood of each choice, or exact match of greedy answers. "
        "--adapter takes the best/ or final/ folder of `road-interp train` (a RoAd adapter "
        "carrying an encoder's trained head, or trainable.safetensors of full finetuning), or "
        "any RoAd adapter folder (ours or PEFT's). Without it, the base model is scored "
        "(zero-shot; causal LMs only, since an encoder's head would be untrained).",
    )
    p.add_argument(
        "--model", default="minilm", help="embedded model name, HF id or folder (default: minilm)"
    )
    p.add_argument("--task", required=True, help="registered task name")
    p.add_argument("--adapter", help="trained adapter folder (see above)")
    p.add_argument(
        "--head",
        help="encoders: the adapter folder whose head to use (default: the one --adapter "
        "carries); for a composed adapter without heads, the best/ folder of the run that "
        "trained this task's skill",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "validation", "test"],
        help="split to score (default: test)",
    )
    p.add_argument("--limit", type=int, default=None, help="at most N examples (default: all)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="examples (or choices) per batch (default: 16)"
    )
    p.add_argument(
        "--max-length", type=int, default=256, help="tokens per example at most (default: 256)"
    )
    p.add_argument("-o", "--output", help="also write the result to this JSON file")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the -o file if it exists already"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..baselines import RunSpec, load_for_task
    from ..checkpoints import load_head, load_trainable
    from ..evaluation import evaluate
    from ..files import OutputError, atomic_file
    from ..model import RoadModel
    from ..tasks import get_task

    task = get_task(args.task)
    model, tokenizer = load_for_task(RunSpec(model=args.model, task=args.task), len(task.labels))
    is_encoder = type(model).__name__.endswith("ForSequenceClassification")
    if args.adapter:
        folder = Path(args.adapter)
        if (folder / "trainable.safetensors").exists():
            load_trainable(model, folder / "trainable.safetensors")
        else:
            model = RoadModel(model)
            name = model.load_adapter(folder)  # with the head it carries
            if args.head:
                load_head(model, args.head)
            elif is_encoder and not model.extras[name]:
                raise FileNotFoundError(
                    f"{folder} carries no classifier head; an encoder needs the head trained "
                    "for this task (a best/ or final/ folder of `road-interp train`; for a "
                    "composed adapter pass --head with the best/ folder of this task's run)"
                )
    elif is_encoder:
        raise ValueError(
            "an encoder without a trained head has no meaningful answer; pass --adapter"
        )
    result = evaluate(
        model,
        tokenizer,
        task,
        args.split,
        args.limit,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise OutputError(f"{out} already exists; pass --overwrite to replace it")
        with atomic_file(out) as tmp:
            tmp.write_text(text + "\n")
    return 0
