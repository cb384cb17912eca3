"""Methods to compare, all trained by the same loop (`road_interp.training.train`).

| method        | what trains                                                        | default lr |
| ------------- | ------------------------------------------------------------------ | ---------- |
| road_1/2/4    | a RoAd adapter of that variant on the default targets              | 3e-3       |
| lora          | PEFT LoRA, rank ``lora_r`` (8), alpha 2r, on the same modules       | 3e-4       |
| lora_matched  | PEFT LoRA with the rank whose parameter count is closest to RoAd1's | 3e-4       |
| full          | every weight of the model                                          | 5e-5       |
| zero_shot     | nothing: the base model is evaluated as it is                       | –          |
| few_shot      | nothing: the base model is asked with ``shots`` solved examples     | –          |

An encoder also trains its (fresh) classification head with every method; its parameters are
reported apart from the method's. A LoRA of rank r on a Linear (k -> d) has r (k + d)
parameters, RoAd1 d / 2 + d / 2 = d, so no LoRA is as small as RoAd1: on MiniLM the smallest
(r = 1) has twice RoAd1's parameters (exactly RoAd2's).

`RunSpec` names the model, task and method; with a `TrainConfig` it is a whole run, and
`run` trains, evaluates and returns one results row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import restore_trained
from .config import TARGET_PRESETS, Positions, RoadConfig
from .encoding import model_kind, unwrap
from .evaluation import evaluate
from .injection import resolve_targets
from .model import RoadModel
from .models import EMBEDDED, load_model, load_tokenizer
from .rotation import num_params
from .training import TrainConfig, TrainResult, _coerce, check_keys, head_parameters, train

logger = logging.getLogger(__name__)

ROAD_METHODS = ("road_1", "road_2", "road_4")
UNTRAINED = ("zero_shot", "few_shot")
"""Methods that train nothing (prompted base models; their ``lr`` is unused)."""
METHODS = (*ROAD_METHODS, "lora", "lora_matched", "full", *UNTRAINED)
DEFAULT_LR = {"road_1": 3e-3, "road_2": 3e-3, "road_4": 3e-3, "lora": 3e-4, "lora_matched": 3e-4}
DEFAULT_LR.update({"full": 5e-5, "zero_shot": 3e-3, "few_shot": 3e-3})


@dataclass(frozen=True)
class RunSpec:
    """Which model learns which task with which method."""

    model: str = field(
        default="minilm",
        metadata={"help": "embedded model (minilm, smollm2), Hugging Face id or local folder"},
    )
    task: str = field(default="multiemo_en", metadata={"help": "registered task name"})
    method: str = field(
        default="road_1",
        metadata={
            "help": "road_1/2/4: RoAd of that variant; lora: PEFT LoRA of rank lora_r; "
            "lora_matched: LoRA with RoAd1's parameter count; full: every weight; zero_shot: "
            "the base model as it is; few_shot: the base model asked with `shots` solved "
            "examples first",
            "choices": METHODS,
        },
    )
    group_size: int = field(
        default=64, metadata={"help": "RoAd pairing group size (64: PEFT's and vLLM's layout)"}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of method 'lora'"})
    shots: int = field(
        default=4,
        metadata={
            "help": "few_shot: solved training examples before each prompt (the seed picks "
            "them, label-stratified)"
        },
    )
    subspace: str | None = field(
        default=None,
        metadata={
            "help": "RoAd only: train on these planes of each site and record them in the "
            "adapter, so adapters on disjoint planes compose: half:0, half:1, part:K/N, "
            "range:START:STOP, random:FRACTION:SEED (None: all planes)"
        },
    )

    targets: str = field(
        default="default",
        metadata={
            "help": "RoAd only: default, all-linear, or comma-separated module patterns (a "
            "full name, a dotted suffix or a regex: o_proj; model.layers.6,model.layers.12)"
        },
    )
    positions: str | None = field(
        default=None,
        metadata={
            "help": "RoAd only: None acts on each Linear target's output at every token "
            "(mergeable); all, first:K, last:K, prompt or answer act on the targets' outputs at "
            "those tokens (e.g. blocks: the residual stream); prompt and answer split a "
            "sequence, for position routing"
        },
    )
    alongside: str | None = field(
        default=None,
        metadata={
            "help": "RoAd only: an adapter folder loaded frozen and active while this adapter "
            "trains (interference-aware training: train a skill beside the one it will be "
            "composed with); it is not saved with the run"
        },
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(self, f.name, getattr(self, f.name)))
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if self.shots != RunSpec.shots and self.method != "few_shot":
            raise ValueError(f"shots is for method 'few_shot', not {self.method!r}")
        self.road_config("road_1")  # validates group size, subspace, targets and positions
        road_only = ("subspace", "positions", "alongside")
        for name in road_only + ("targets",):
            if getattr(self, name) != getattr(RunSpec, name) and self.method not in ROAD_METHODS:
                raise ValueError(f"{name} is for RoAd methods {ROAD_METHODS}, not {self.method!r}")

    def road_config(self, variant: str) -> RoadConfig:
        """The RoAd adapter these settings describe."""
        targets = self.targets
        if targets not in TARGET_PRESETS:
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())  # type: ignore[assignment]
        return RoadConfig(
            variant=variant,
            group_size=self.group_size,
            targets=targets,
            positions=Positions.parse(self.positions) if self.positions is not None else None,
            subspace=self.subspace,
        )


def split_settings(data: dict[str, Any]) -> tuple[RunSpec, TrainConfig]:
    """A flat mapping of settings (a config file, merged with flags) -> the two configs.

    Unknown keys are errors; without ``lr`` the method's default learning rate applies."""
    check_keys(data, RunSpec, TrainConfig)
    spec_keys = {f.name for f in fields(RunSpec)}
    spec = RunSpec(**{k: v for k, v in data.items() if k in spec_keys})
    train_settings = {k: v for k, v in data.items() if k not in spec_keys}
    train_settings.setdefault("lr", DEFAULT_LR[spec.method])
    return spec, TrainConfig.from_dict(train_settings)


def non_default_settings(spec: RunSpec, config: TrainConfig) -> dict[str, Any]:
    """What a config file for this run needs to hold."""
    out = {k: v for k, v in asdict(spec).items() if getattr(RunSpec(), k) != v}
    out.update(config.non_defaults())
    if config.lr == DEFAULT_LR[spec.method]:
        out.pop("lr", None)
    return out


# ----------------------------------------------------------------------------- building


def load_for_task(spec: RunSpec, num_labels: int, seed: int = 0) -> tuple[nn.Module, Any]:
    """The base model for a task (encoders get a head with ``num_labels``) and its tokenizer."""
    encoder = _is_encoder(spec.model)
    task = "classification" if encoder else "causal-lm"
    model = load_model(spec.model, task=task, num_labels=num_labels, seed=seed)
    return model, load_tokenizer(spec.model)


def apply_method(model: nn.Module, spec: RunSpec, seed: int = 0) -> nn.Module:
    """Make the parameters of ``spec.method`` trainable (and only those, besides a head)."""
    method = spec.method
    if method in ROAD_METHODS:
        road = RoadModel(model)
        beside = road.load_adapter(spec.alongside) if spec.alongside is not None else None
        name = spec.task.replace(".", "_")
        road.add_adapter(name, spec.road_config(method), seed=seed)
        if beside is not None:
            road.set_active(beside, name)  # the loaded adapter stays frozen
        return road
    if method in ("lora", "lora_matched"):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:  # PEFT is an optional extra, only for the LoRA baselines
            raise ImportError(
                f"method {method!r} trains PEFT's LoRA, and PEFT is not installed: "
                "pip install 'road-interp[peft]' (or pip install 'peft>=0.17')"
            ) from err

        rank = spec.lora_r if method == "lora" else matched_lora_rank(model, "road_1")
        targets = resolve_targets(model, RoadConfig())
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
        return get_peft_model(model, lora)
    for p in model.parameters():
        p.requires_grad_(method == "full")
    return model


def matched_lora_rank(model: nn.Module, variant: str = "road_1") -> int:
    """The LoRA rank (>= 1) whose parameter count on RoAd's default targets is closest to
    a RoAd adapter of ``variant``: round(Σ_sites n_θα / Σ_sites (k + d)), n_θα = 2 n (θ and
    α, `road_interp.rotation.num_params`)."""
    modules = dict(model.named_modules())
    per_rank = road = 0
    for name in resolve_targets(model, RoadConfig()):
        layer = modules[name]
        d, k = layer.weight.shape  # type: ignore[union-attr]
        per_rank += d + k
        road += 2 * num_params(variant, d)
    return max(1, round(road / per_rank))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``trainable`` (the method's parameters, head excluded), ``head``, and ``base`` (the
    model's own parameters; for RoAd and LoRA without the adapter's)."""
    head = {id(p) for p in head_parameters(model).values()}
    inner = unwrap(model)
    base_names = {n for n, _ in inner.named_parameters()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head)
    road = model.adapter_parameter_ids() if isinstance(model, RoadModel) else set()
    base = sum(
        p.numel()
        for n, p in inner.named_parameters()
        if n in base_names and id(p) not in road and "lora_" not in n  # PEFT names LoRA lora_*
    )
    return {
        "trainable": trainable,
        "head": sum(p.numel() for p in head_parameters(model).values()),
        "base": base,
    }


def _is_encoder(name: str) -> bool:
    if name in EMBEDDED:
        return EMBEDDED[name].kind == "encoder"
    from transformers import AutoConfig

    from .models import resolve

    archs = AutoConfig.from_pretrained(resolve(name)).architectures or []
    return not any(a.endswith("ForCausalLM") for a in archs)


# ----------------------------------------------------------------------------- one run

TEST_CHECKPOINTS = ("best", "final")


def use_checkpoint(model: nn.Module, result: TrainResult, which: str) -> tuple[str, int]:
    """Give ``model`` the parameters of checkpoint ``which`` of its finished run (``best``:
    restored from ``best/`` unless the final step was the best). Returns what it now holds
    and that checkpoint's step: ("best", step), or ("final", steps) when asked for it or
    when nothing was evaluated."""
    if which == "final" or result.best_step is None:
        return "final", result.steps
    if result.best_step != result.steps:
        restore_trained(model, result.best_dir)
        logger.info("testing the best checkpoint (step %d of %d)", result.best_step, result.steps)
    return "best", result.best_step


def run(
    spec: RunSpec,
    config: TrainConfig,
    output_dir: str | Path,
    *,
    test_limit: int | None = None,
    resume: bool = True,
    test_checkpoint: str = "best",
    detail: bool = False,
) -> dict[str, Any]:
    """Build the model, train it (unless zero-shot), evaluate a checkpoint on the test split,
    and return one results row.

    ``test_checkpoint``: ``"best"`` (default) tests the parameters of the best validation
    score (the run's ``best/``), ``"final"`` the model as training left it; the row says which
    was tested (``tested``: best, final or base; ``tested_step``).

    With ``detail``, the row also holds the final model's validation score (``validation``,
    ``validation_majority``, ``n_validation``: the first ``config.eval_limit`` validation
    examples, what a learning-rate sweep selects on) and the test split's per-example
    ``test_predictions`` and ``test_correct`` (0/1), so intervals can be recomputed."""
    from .tasks import FewShot, get_task

    if test_checkpoint not in TEST_CHECKPOINTS:
        raise ValueError(
            f"test_checkpoint must be one of {TEST_CHECKPOINTS}, not {test_checkpoint!r}"
        )
    task = get_task(spec.task)
    num_labels = max(2, len(task.labels))
    torch.manual_seed(config.seed)
    model, tokenizer = load_for_task(spec, num_labels, seed=config.seed)
    trains = spec.method not in UNTRAINED
    if _is_encoder(spec.model) and not trains:
        raise ValueError(
            f"an encoder has no {spec.method} answer (its classification head is untrained); "
            "compare against the majority baseline that every evaluation reports"
        )
    model = apply_method(model, spec, seed=config.seed)
    if config.train_head and model_kind(model) == "encoder":
        for p in head_parameters(model).values():
            p.requires_grad_(True)
    counts = parameter_counts(model)
    started = time.perf_counter()
    steps = 0
    validation = None
    if trains:
        result = train(model, tokenizer, task, config, output_dir, resume=resume)
        steps, validation = result.steps, result.final_eval
    seconds = time.perf_counter() - started
    tested, tested_step = "base", None
    if trains:
        tested, tested_step = use_checkpoint(model, result, test_checkpoint)
    asked: Any = task
    max_length = config.max_length
    if spec.method == "few_shot":  # prompts are cut from the left: room for every shot
        asked, max_length = FewShot.of(task, spec.shots, config.seed), max_length * (spec.shots + 1)
    if detail and validation is None:  # untrained, or a run that had finished before
        validation = evaluate(
            model,
            tokenizer,
            asked,
            "validation",
            config.eval_limit,
            batch_size=config.eval_batch_size,
            max_length=max_length,
            progress=False,
        )
    test = evaluate(
        model,
        tokenizer,
        asked,
        "test",
        test_limit,
        batch_size=config.eval_batch_size,
        max_length=max_length,
        progress=config.progress,
        predictions=detail,
    )
    row = {
        "model": spec.model,
        "task": spec.task,
        "method": spec.method,
        "seed": config.seed,
        "trainable_params": counts["trainable"],
        "trainable_pct": 100.0 * counts["trainable"] / counts["base"],
        "head_params": counts["head"],
        "steps": steps,
        "tested": tested,
        "tested_step": tested_step,
        "lr": config.lr if trains else None,
        "metric": test["metric"],
        "test": test["value"],
        "majority": test.get("majority"),
        "n_test": test["n"],
        "train_seconds": round(seconds, 1),
    }
    if detail and validation is not None:
        row["validation"] = validation["value"]
        row["validation_majority"] = validation.get("majority")
        row["n_validation"] = validation["n"]
        row["test_predictions"], row["test_correct"] = test["predictions"], test["correct"]
    return row
