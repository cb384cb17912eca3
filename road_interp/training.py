"""One readable training loop on Hugging Face Accelerate, for RoAd and its baselines.

    result = train(road_model, tokenizer, get_task("multiemo_en"), TrainConfig(), "runs/emo")

It trains whatever parameters require grad (a RoAd adapter, a LoRA, a whole model; plus the
classification head of an encoder when ``train_head``), so baselines run through the same code.

**Loss.** Encoders: cross-entropy of the head's logits against the label. Causal LMs: the
answer tokens' negative log-likelihood (prompt tokens masked), averaged over each example's
answer tokens, then over examples. Both are means over *examples*, so a step's gradient is
the same however the batch is split over processes and accumulation steps.

**Batches.** ``batch_size`` is the number of examples per optimizer step in total. Each step
takes the next ``batch_size`` indices of the epoch's permutation (``torch.randperm`` seeded
by ``(seed, epoch)``; an incomplete last batch is dropped), cuts them into
``grad_accum_steps`` micro-batches, and gives each process an equal slice of each. The order
is a function of the step number alone, which is what makes resuming exact.

**Schedule.** AdamW (weight decay 0 by default), learning rate rising linearly from 0 over the
first ``warmup_ratio`` of the steps, then falling linearly to 0; gradients clipped to
``max_grad_norm``.

**Reading order.** `train` is the loop: `_prepare` builds everything before the first step,
`_step` is one optimizer step (micro-batches, loss, backward, clip, divergence check) and
`_after_step` logs, evaluates, keeps the best and checkpoints; `_finish` writes the trained
parameters. What they share between steps is one `_Run`.

**Files** in ``output_dir`` (``train_config.json``, ``metrics.jsonl``, ``checkpoint/``,
``best/``, ``final/``) are written and read by `road_interp.checkpoints`. A run started again with the same ``output_dir`` resumes from ``checkpoint/`` and ends where
an uninterrupted run would. A NaN or inf loss (or gradient) stops the run with
`TrainingDiverged`, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoints import (
    CHECKPOINT,
    append_metrics,
    check_identity,
    checkpoint_step,
    head_parameters,
    load_checkpoint,
    load_head,
    load_trainable,
    read_identity,
    read_metrics,
    run_folder,
    run_identity,
    save_checkpoint,
    save_trained,
    trainable_parameters,
    truncate_metrics,
    write_settings,
)
from .encoding import (
    ExampleSet,
    answer_of,
    check_task_fits,
    encode_classification,
    encode_lm,
    example_set,
    pad,
    unwrap,
)
from .evaluation import answer_logprobs, classifier_logits, evaluate, pad_left
from .model import road_model_in

if TYPE_CHECKING:
    from .tasks import Example, Task

__all__ = [
    # the loop
    "ForwardContext",
    "StepCallback",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "check_keys",
    "train",
    # the run's files, kept importable from here (they live in road_interp.checkpoints)
    "head_parameters",
    "load_head",
    "load_trainable",
    "read_metrics",
    "save_trained",
    "trainable_parameters",
]

PRECISIONS = ("fp32", "bf16")
logger = logging.getLogger(__name__)


def _opt(help_text: str) -> Any:
    return field(default=None, metadata={"help": help_text})


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop; validated on construction (see each field's help)."""

    lr: float = field(
        default=3e-3,
        metadata={
            "help": "peak learning rate. RoAd on Linear sites: 3e-3 to 1e-2 (about 10x LoRA's); "
            "on a block's output (positions): ~3e-2; full finetuning ~5e-5"
        },
    )
    head_lr: float | None = _opt(
        "learning rate of an encoder's classification head (None: lr); a fresh head on frozen "
        "features learns faster with ~1e-2"
    )
    batch_size: int = field(
        default=16,
        metadata={"help": "examples per optimizer step, over all processes and accumulation"},
    )
    grad_accum_steps: int = field(
        default=1, metadata={"help": "micro-batches per optimizer step (saves memory)"}
    )
    epochs: int = field(default=1, metadata={"help": "passes over the training examples"})
    max_steps: int | None = _opt("stop after this many optimizer steps (overrides epochs)")
    warmup_ratio: float = field(
        default=0.1, metadata={"help": "share of the steps with a linearly rising learning rate"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"}
    )
    max_length: int = field(default=128, metadata={"help": "tokens per example at most"})
    precision: str = field(
        default="fp32", metadata={"help": "compute precision", "choices": PRECISIONS}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward (less memory)"}
    )
    train_head: bool = field(
        default=True,
        metadata={"help": "also train an encoder's classification head (it starts random)"},
    )
    dropout: bool = field(
        default=True,
        metadata={
            "help": "train in training mode, dropout active (off: eval mode, no dropout, the "
            "same result for any number of processes)"
        },
    )
    end_with_eos: bool = field(
        default=True,
        metadata={
            "help": "causal LMs: end every target with EOS (off: supervise the answer's own "
            "tokens only, e.g. a label that a longer reply goes on after)"
        },
    )
    train_limit: int | None = _opt("use at most this many training examples")
    eval_limit: int | None = field(
        default=500, metadata={"help": "evaluate on at most this many validation examples"}
    )
    eval_every: int = field(
        default=0, metadata={"help": "evaluate every N optimizer steps (0: only at the end)"}
    )
    save_every: int = field(
        default=0,
        metadata={"help": "write the resumable checkpoint every N steps (0: at each evaluation)"},
    )
    eval_batch_size: int = field(default=32, metadata={"help": "batch size of evaluation"})
    log_every: int = field(default=10, metadata={"help": "log the loss every N steps"})
    seed: int = field(default=0, metadata={"help": "seed of data order, dropout and init"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(self, f.name, getattr(self, f.name)))
        if not 0 < self.lr <= 1:
            raise ValueError(
                f"lr must be in (0, 1], got {self.lr}; RoAd trains well at ~3e-3, LoRA at ~3e-4"
            )
        if self.head_lr is not None and not 0 < self.head_lr <= 1:
            raise ValueError(f"head_lr must be in (0, 1] or None, got {self.head_lr}")
        for name in ("batch_size", "grad_accum_steps", "epochs", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("max_steps", "train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum_steps "
                f"{self.grad_accum_steps}; each micro-batch must hold the same number of examples"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.gradient_checkpointing and not self.dropout:
            raise ValueError(
                "gradient_checkpointing needs dropout on: without dropout the model trains in "
                "eval mode, where Hugging Face models skip checkpointing"
            )
        if self.eval_every < 0 or self.save_every < 0:
            raise ValueError("eval_every and save_every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def non_defaults(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults (what a config file holds)."""
        default = TrainConfig()
        return {k: v for k, v in asdict(self).items() if getattr(default, k) != v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_keys(data, cls)
        return cls(**data)


def check_keys(data: dict[str, Any], *classes: type) -> None:
    """Raise ValueError naming unknown keys (with a "did you mean") of a config mapping."""
    known = sorted({f.name for c in classes for f in fields(c)})
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown setting {key!r}{hint} Known settings: {', '.join(known)}")


def _coerce(config: Any, name: str, value: Any) -> Any:
    """Check ``value`` against the field's annotation; ints are accepted for floats."""
    hint = typing.get_type_hints(type(config))[name]
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    for kind in allowed:
        if kind is not type(None) and type(value) is kind:
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise TypeError(f"setting {name!r} must be {names}, got {value!r}")


# ----------------------------------------------------------------------------- results


class TrainingDiverged(FloatingPointError):
    """The loss or gradient became NaN or inf; the message names the step and the checkpoint."""


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: final and best evaluation, and where the files are."""

    output_dir: Path | None
    """The run folder, or None for a run that wrote no files."""
    steps: int
    final_eval: dict[str, Any] | None
    best_eval: dict[str, Any] | None
    best_step: int | None
    trainable_params: int
    history: pd.DataFrame
    """One row per logged step (step, epoch, loss, lr, grad_norm, seconds)."""

    @property
    def best_dir(self) -> Path:
        return self._folder() / "best"

    @property
    def final_dir(self) -> Path:
        return self._folder() / "final"

    def _folder(self) -> Path:
        if self.output_dir is None:
            raise ValueError(
                "this run wrote no files (output_dir=None); the model holds the final parameters"
            )
        return self.output_dir


# ----------------------------------------------------------------------------- the loop


ForwardContext = Callable[[Sequence["Example"]], AbstractContextManager[Any]]
"""Called with a micro-batch's examples; the forward pass runs inside the returned context
(e.g. per-example subspace routing)."""
StepCallback = Callable[[int, dict[str, Any]], None]
"""Called after each optimizer step with the step number (1-based) and its log record."""


def train(
    model: nn.Module,
    tokenizer: Any,
    data: Task | Sequence[Example],
    config: TrainConfig,
    output_dir: str | Path | None,
    *,
    eval_data: Task | Sequence[Example] | None = None,
    forward_context: ForwardContext | None = None,
    on_step_end: StepCallback | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad on ``data``.

    Args:
        model: a `RoadModel`, a PEFT model or any Hugging Face sequence classifier or causal LM.
        data: a `Task` (its ``train`` split; ``validation`` is evaluated) or a list of
            `Example` (then evaluation uses ``eval_data``, if given).
        eval_data: what to evaluate on instead of the task's validation split.
        forward_context: wraps each micro-batch's forward pass (see `ForwardContext`).
        on_step_end: called after every optimizer step (see `StepCallback`).
        resume: continue from ``output_dir/checkpoint`` if it exists (the run's identity
            must match, `road_interp.checkpoints.check_identity`); with False, an existing
            checkpoint is an error.

    ``output_dir`` is locked while this runs (`road_interp.checkpoints.run_folder`). Ctrl-C
    in a single process lets the step in progress finish, writes the checkpoint and raises
    KeyboardInterrupt; run again to resume. With ``output_dir=None`` nothing is written (no
    checkpoint, no best/ or final/, no metrics file): the model ends with its final
    parameters, and the result still reports the best evaluation and its step.

    Each evaluation is logged as it happens on the ``road_interp`` logger (step, metric, best
    so far; ``logging.basicConfig(level="INFO")`` shows it; the CLI does by default).

    **Learning rates by site type** (RoAd): Linear sites (the default targets) learn at
    3e-3 to 1e-2; sites on a block's output (``RoadConfig(positions=...)``) needed ~3e-2 to
    teach a skill where 3e-3 to 1e-2 did not; an encoder's fresh head ~1e-2 (``head_lr``).
    """
    out = Path(output_dir) if output_dir is not None else None
    main = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch`
    folder = run_folder(out, main=main) if out is not None else nullcontext()
    with folder, _DeferredInterrupt() as interrupt:
        return _train(
            model, tokenizer, data, eval_data, config, out, resume, interrupt,
            forward_context, on_step_end,
        )  # fmt: skip


def _train(
    model: nn.Module,
    tokenizer: Any,
    data: Task | Sequence[Example],
    eval_data: Task | Sequence[Example] | None,
    config: TrainConfig,
    out: Path | None,
    resume: bool,
    interrupt: _DeferredInterrupt,
    forward_context: ForwardContext | None,
    on_step_end: StepCallback | None,
) -> TrainResult:
    """`train` inside its locked run folder."""
    _check_subspace_decay(model, config)
    was_training = model.training
    run = _prepare(model, tokenizer, data, eval_data, config, out, resume)
    run.interrupt = interrupt
    bar = tqdm(
        total=run.total,
        initial=run.start,
        desc=f"train {run.train_set.name}",
        disable=not (config.progress and run.accelerator.is_main_process),
    )
    run.started = time.perf_counter()
    road = road_model_in(model)
    try:
        with road.restricted() if road is not None else nullcontext():  # their own subspaces
            for step in range(run.start, run.total):
                record = _step(run, step, forward_context)
                bar.update(1)
                _after_step(run, record)
                best = f"{run.best['eval']['value']:.4f}" if run.best else "-"
                bar.set_postfix(loss=f"{record['loss']:.4f}", best=best)
                if on_step_end is not None:
                    on_step_end(record["step"], record)
    finally:  # also after a divergence or Ctrl-C: the model's mode as it was
        bar.close()
        model.train(was_training)
    return _finish(run)


@dataclass
class _Run:
    """A run between steps: what `_prepare` built and what the steps have produced so far."""

    config: TrainConfig
    out: Path | None
    """The run folder; None: write nothing."""
    model: nn.Module
    """The model as given: evaluated and saved."""
    ddp_model: nn.Module
    """The model as Accelerate prepared it (DDP when distributed): trained."""
    tokenizer: Any
    kind: str
    """``"encoder"`` or ``"causal-lm"``."""
    train_set: ExampleSet
    encoded: list[dict]
    eval_set: ExampleSet | None
    accelerator: Any
    named: dict[str, nn.Parameter]
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total: int
    start: int
    """Steps done before this call (non-zero when resuming)."""
    best: dict[str, Any] | None
    """``{"step", "eval"}`` of the best evaluation so far."""
    last_eval: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    """`time.perf_counter` at the first step of this call."""
    interrupt: _DeferredInterrupt | None = None
    """Set when Ctrl-C asked the run to stop after the step in progress."""


class _DeferredInterrupt:
    """Ctrl-C while training: the step in progress finishes, `_after_step` writes the
    checkpoint and raises KeyboardInterrupt; a second Ctrl-C stops at once. Only in a single
    process's main thread (under DDP every process would have to stop at the same step)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self.enabled = (
            int(os.environ.get("WORLD_SIZE", "1")) == 1
            and threading.current_thread() is threading.main_thread()
        )

    def __enter__(self) -> _DeferredInterrupt:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstopping after this step, once its checkpoint is written (Ctrl-C again to "
            "stop at once)",
            file=sys.stderr,
        )


def _check_subspace_decay(model: nn.Module, config: TrainConfig) -> None:
    """AdamW's decay pulls every parameter toward 0, also the entries a subspace keeps at the
    identity (α = 1): refuse the two together, before anything runs."""
    road = road_model_in(model)
    restricted = [n for n in road.trainable_adapters() if road.configs[n].subspace] if road else []
    if restricted and config.weight_decay > 0:
        raise ValueError(
            f"adapter {restricted[0]!r} trains on the subspace {road.configs[restricted[0]].subspace!r}"  # type: ignore[union-attr]
            f" and weight_decay is {config.weight_decay}: decay would move its other planes off "
            "the identity (α toward 0), so it would no longer compose; train it with "
            "weight_decay=0 (the default)"
        )


def _prepare(
    model: nn.Module,
    tokenizer: Any,
    data: Task | Sequence[Example],
    eval_data: Task | Sequence[Example] | None,
    config: TrainConfig,
    out: Path | None,
    resume: bool,
) -> _Run:
    """Everything before the first step: example sets, accelerator, trainable parameters,
    optimizer and schedule, and the state of an interrupted run when ``out`` holds one."""
    train_set, eval_set = _example_sets(data, eval_data, config)
    kind = check_task_fits(train_set, model)
    if eval_set is not None:
        check_task_fits(eval_set, model)
    accelerator = _accelerator(config.precision)
    steps_per_epoch = _steps_per_epoch(config, len(train_set), accelerator.num_processes)
    total = config.max_steps or steps_per_epoch * config.epochs
    if out is not None and (out / CHECKPOINT).exists() and not resume:
        raise ValueError(f"{out} already holds a run; resume it or choose another output_dir")

    torch.manual_seed(config.seed)
    named = _make_trainable(model, kind, config)
    optimizer = torch.optim.AdamW(
        _param_groups(model, named, config), lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = math.ceil(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total))
    encoded = _encode(tokenizer, train_set, kind, config.max_length, config.end_with_eos)

    data_identity = {"name": train_set.name, "examples": len(train_set)}
    identity = run_identity(model, config, named, data_identity)
    start, best = 0, None
    if out is not None:
        start, best = _resume_or_start(
            out, config, named, optimizer, scheduler, accelerator, identity
        )
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.wait_for_everyone()
    return _Run(
        config=config,
        out=out,
        model=model,
        ddp_model=ddp_model,
        tokenizer=tokenizer,
        kind=kind,
        train_set=train_set,
        encoded=encoded,
        eval_set=eval_set,
        accelerator=accelerator,
        named=named,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        total=total,
        start=start,
        best=best,
    )


def _step(run: _Run, step: int, forward_context: ForwardContext | None) -> dict[str, Any]:
    """Optimizer step ``step`` (0-based): forward and backward over this process's share of
    each micro-batch, clip, stop on a non-finite loss or gradient, update. Returns the step's
    log record."""
    config, accelerator = run.config, run.accelerator
    run.ddp_model.train(config.dropout)
    indices = _step_indices(step, len(run.train_set), run.steps_per_epoch, config)
    chunks = _micro_batches(
        indices, config.grad_accum_steps, accelerator.num_processes, accelerator.process_index
    )
    losses = []
    for m, chunk in enumerate(chunks):
        examples = [run.train_set.examples[i] for i in chunk]
        batch = _collate(
            [run.encoded[i] for i in chunk], run.tokenizer, run.kind, accelerator.device
        )
        last = m == config.grad_accum_steps - 1
        # gradients are averaged over processes once per step, at the last micro-batch
        sync = nullcontext() if last else accelerator.no_sync(run.ddp_model)
        context = forward_context(examples) if forward_context else nullcontext()
        with sync:
            with context, accelerator.autocast():
                loss = _loss(run.ddp_model, batch, run.kind) / config.grad_accum_steps
            accelerator.backward(loss)
        losses.append(loss.detach())
    step_loss = accelerator.reduce(torch.stack(losses).sum(), reduction="mean")
    grad_norm = _clip(accelerator, list(run.named.values()), config.max_grad_norm)
    if not (torch.isfinite(step_loss) and math.isfinite(grad_norm)):
        raise TrainingDiverged(
            _diverged_message(step + 1, float(step_loss), grad_norm, config, run.out)
        )
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    done = step + 1
    return {
        "step": done,
        "epoch": round(done / run.steps_per_epoch, 4),
        "loss": float(step_loss),
        "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": grad_norm,
        "seconds": round(time.perf_counter() - run.started, 3),
    }


def _after_step(run: _Run, record: dict[str, Any]) -> None:
    """What the step ``record["step"]`` calls for: log it, evaluate (keeping ``best/``),
    write the checkpoint."""
    config, done = run.config, record["step"]
    last = done == run.total
    if done % config.log_every == 0 or last:
        run.history.append(record)
        if run.accelerator.is_main_process and run.out is not None:
            append_metrics(run.out, record)
    evaluate_now = last or (config.eval_every and done % config.eval_every == 0)
    if evaluate_now:
        run.last_eval, run.best = _evaluate_and_keep(run, done)
    save_now = (
        last
        or (config.save_every and done % config.save_every == 0)
        or (evaluate_now and not config.save_every)
    )
    stop = run.interrupt is not None and run.interrupt.requested
    if (save_now or stop) and run.out is not None:
        save_checkpoint(
            run.out / CHECKPOINT,
            step=done,
            config=config,
            named=run.named,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            best=run.best,
            accelerator=run.accelerator,
        )
    if stop:
        kept = (
            f"its checkpoint is in {run.out / CHECKPOINT}: run the same command again to resume"
            if run.out is not None
            else "nothing was written (output_dir=None)"
        )
        raise KeyboardInterrupt(f"training stopped after step {done} of {run.total}; {kept}")


def _finish(run: _Run) -> TrainResult:
    """Write ``final/`` (and ``best/`` when nothing was evaluated) unless the run had already
    ended; the result."""
    if run.accelerator.is_main_process and run.start < run.total and run.out is not None:
        save_trained(run.model, run.out / "final")
        if run.best is None:  # no evaluation data: the final parameters are the best we know
            save_trained(run.model, run.out / "best")
    run.accelerator.wait_for_everyone()
    best = run.best
    return TrainResult(
        output_dir=run.out,
        steps=run.total,
        final_eval=run.last_eval,
        best_eval=best["eval"] if best else None,
        best_step=best["step"] if best else None,
        trainable_params=sum(p.numel() for p in run.named.values()),
        history=pd.DataFrame(run.history),
    )


# ----------------------------------------------------------------------------- preparing


def _example_sets(
    data: Task | Sequence[Example], eval_data: Task | Sequence[Example] | None, config: TrainConfig
) -> tuple[ExampleSet, ExampleSet | None]:
    """The training examples, and what to evaluate on: ``eval_data``, else the task's
    validation split, else nothing (a plain list of examples)."""
    train_set = example_set(data, "train", config.train_limit, config.seed)
    eval_source = eval_data if eval_data is not None else (None if _is_list(data) else data)
    if eval_source is None:
        return train_set, None
    return train_set, example_set(eval_source, "validation", config.eval_limit, config.seed)


def _steps_per_epoch(config: TrainConfig, examples: int, world: int) -> int:
    """Optimizer steps per epoch; raises ValueError when the batches cannot be formed."""
    micro = config.batch_size // config.grad_accum_steps
    if micro % world:
        raise ValueError(
            f"batch_size {config.batch_size} / grad_accum_steps {config.grad_accum_steps} = "
            f"{micro} examples per micro-batch cannot be split evenly over {world} processes"
        )
    steps = examples // config.batch_size
    if steps == 0:
        raise ValueError(
            f"{examples} training examples are fewer than one batch of {config.batch_size}"
        )
    return steps


def _make_trainable(model: nn.Module, kind: str, config: TrainConfig) -> dict[str, nn.Parameter]:
    """Unfreeze an encoder's head (``train_head``), turn on gradient checkpointing when asked;
    the parameters to train, by name."""
    if config.train_head and kind == "encoder":
        for p in head_parameters(model).values():
            p.requires_grad_(True)
    if config.gradient_checkpointing:
        unwrap(model).gradient_checkpointing_enable(  # type: ignore[operator]
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    named = trainable_parameters(model)
    if not named:
        raise ValueError("the model has no parameter that requires grad; nothing to train")
    return named


def _resume_or_start(
    out: Path,
    config: TrainConfig,
    named: dict[str, nn.Parameter],
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    identity: dict[str, Any],
) -> tuple[int, dict[str, Any] | None]:
    """Refuse a folder holding a run of another identity; restore ``out/checkpoint`` if
    there is one, else start from scratch. Either way the log is cut back to where the run
    restarts, and ``train_config.json`` is written once all this has been checked. Returns
    the steps already done and the best evaluation so far."""
    check_identity(out, identity)  # before anything is written
    if not (out / CHECKPOINT).exists():
        if accelerator.is_main_process:
            truncate_metrics(out, 0)  # a restart from scratch: the earlier attempt's log goes
            write_settings(out, config, identity)
        return 0, None
    start, best = load_checkpoint(
        out / CHECKPOINT,
        config=config,
        named=named,
        optimizer=optimizer,
        scheduler=scheduler,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    if accelerator.is_main_process:
        truncate_metrics(out, start)
        if read_identity(out) is None:  # a run folder from before identities were recorded
            write_settings(out, config, identity)
    return start, best


def _param_groups(
    model: nn.Module, named: dict[str, nn.Parameter], config: TrainConfig
) -> list[dict[str, Any]]:
    """One AdamW group, or two when the head has its own learning rate."""
    if config.head_lr is None:
        return [{"params": list(named.values())}]
    head = {id(p) for p in head_parameters(model).values()}
    rest = [p for p in named.values() if id(p) not in head]
    groups = [{"params": rest}] if rest else []
    heads = [p for p in named.values() if id(p) in head]
    return groups + ([{"params": heads, "lr": config.head_lr}] if heads else [])


def _accelerator(precision: str) -> Any:
    """An Accelerator for this run. Accelerate keeps one process-wide state whose precision
    cannot change, so a run in another precision than the previous one resets it (the
    distributed set-up, kept in accelerate's PartialState, is untouched)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    wanted = "bf16" if precision == "bf16" else "no"
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != wanted:
        AcceleratorState._reset_state()
    # cpu=True when there is no GPU: several CPU processes then run DDP over gloo
    return Accelerator(mixed_precision=wanted, cpu=not torch.cuda.is_available())


def _is_list(data: Any) -> bool:
    return not (hasattr(data, "examples") and hasattr(data, "prompt"))


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate after ``step`` scheduler steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# ----------------------------------------------------------------------------- steps


def _step_indices(step: int, n: int, steps_per_epoch: int, config: TrainConfig) -> list[int]:
    """The example indices of optimizer step ``step`` (0-based): a slice of the epoch's
    permutation, seeded by (seed, epoch)."""
    epoch, position = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    return order[position * config.batch_size : (position + 1) * config.batch_size].tolist()


def _micro_batches(indices: list[int], accum: int, world: int, rank: int) -> Iterator[list[int]]:
    """This process's share of each of the ``accum`` micro-batches of a step."""
    size = len(indices) // accum
    share = size // world
    for m in range(accum):
        chunk = indices[m * size : (m + 1) * size]
        yield chunk[rank * share : (rank + 1) * share]


def _encode(
    tokenizer: Any, es: ExampleSet, kind: str, max_length: int, add_eos: bool
) -> list[dict]:
    if kind == "encoder":
        return encode_classification(tokenizer, es.examples, max_length)
    return [
        encode_lm(tokenizer, es.prompt(e), answer_of(e), max_length, add_eos=add_eos)
        for e in tqdm(es.examples, desc="tokenize", leave=False, disable=len(es) < 2000)
    ]


def _collate(items: list[dict], tokenizer: Any, kind: str, device: torch.device) -> dict:
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    batch = pad(items, pad_id, True) if kind == "encoder" else pad_left(items, pad_id)
    return {k: v.to(device) for k, v in batch.items()}


def _loss(model: nn.Module, batch: dict[str, Tensor], kind: str) -> Tensor:
    """Mean over examples: cross-entropy (encoders) or per-example mean answer NLL (LMs)."""
    if kind == "encoder":
        return F.cross_entropy(classifier_logits(model, batch).float(), batch["labels"])
    logp, mask = answer_logprobs(model, batch)
    return -(logp.sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def _clip(accelerator: Any, params: list[nn.Parameter], max_norm: float) -> float:
    """Clip (when ``max_norm`` > 0) and return the total gradient norm before clipping."""
    if max_norm > 0:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    grads = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _diverged_message(
    step: int, loss: float, grad_norm: float, config: TrainConfig, out: Path | None
) -> str:
    kept_step = checkpoint_step(out / CHECKPOINT) if out is not None else None
    kept = (
        f"the last good checkpoint (step {kept_step}) is kept in {out / CHECKPOINT}"
        if kept_step is not None and out is not None
        else "no checkpoint had been written yet"
    )
    return (
        f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm}. Stopped; "
        f"{kept}. Try a lower learning rate (now {config.lr}), a longer warm-up, or fp32."
    )


# ----------------------------------------------------------------------------- evaluation


def _evaluate_and_keep(run: _Run, step: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Evaluate on the main process; keep ``best/`` when the metric improves."""
    config, accelerator, best = run.config, run.accelerator, run.best
    result = None
    if run.eval_set is not None and accelerator.is_main_process:
        with accelerator.autocast():
            result = evaluate(
                run.model,
                run.tokenizer,
                run.eval_set,
                batch_size=config.eval_batch_size,
                max_length=config.max_length,
                progress=config.progress,
            )
        if run.out is not None:
            append_metrics(run.out, {"step": step, "eval": result})
        if best is None or result["value"] > best["eval"]["value"]:
            best = {"step": step, "eval": result}
            if run.out is not None:
                save_trained(run.model, run.out / "best")
        logger.info(
            "step %d/%d: validation %s %.4f, best %.4f (step %d)",
            step, run.total, result["metric"], result["value"], best["eval"]["value"],
            best["step"],
        )  # fmt: skip
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = [result, best]
        broadcast_object_list(shared, from_process=0)
        result, best = shared
    return result, best
