"""Settings of the composition experiments: one dataclass per experiment, named presets.

A preset holds only what differs from the defaults (the defaults are the full runs)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from road_interp.training import TrainConfig


@dataclass(frozen=True)
class E2Config:
    """E2: MiniLM, sentiment (MultiEmo-en) vs fact verification (VitaminC)."""

    train_examples: int = 4000
    """training examples per task (the train split's label-stratified prefix)"""
    eval_examples: int = 600
    """test examples per task"""
    steps: int = 300
    """optimizer steps per training run (joint runs get twice as many: two tasks)"""
    batch_size: int = 16
    max_length: int = 96
    lr: float = 3e-3
    variant: str = "road_1"
    group_size: int = 64
    overlaps: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """shared share of the two plane sets: 0 = disjoint halves, 1 = the same half"""
    joint_overlaps: tuple[float, ...] = (0.0, 1.0)
    """overlaps at which the joint (per-example routed) adapter is trained too"""
    loreft_rank: int = 4
    """LoReFT rows per skill (two partitions, at every block output, every token)"""
    loreft_lr: float = 3e-3
    seed: int = 0


@dataclass(frozen=True)
class E1Config:
    """E1: SmolLM2, answering in French x sentiment instruction."""

    train_examples: int = 1000
    """training examples per skill"""
    eval_examples: int = 200
    """held-out (test split) sentences"""
    skill_a_eval: int = 48
    """held-out sentences asked with skill A's own instructions (did skill A learn?)"""
    steps: int = 120
    batch_size: int = 8
    max_length: int = 128
    lr: float = 1e-2
    layers: tuple[int, ...] = (3, 6, 9, 12, 15, 18, 21, 24)
    """blocks whose output (residual stream) is adapted. The paper used one middle block of
    LLaMA-7B; on the 135M model block 15 alone learned no French in 120 steps (a probe: French
    share 0 even on skill A's own instructions), so every third block is adapted."""
    positions: str = "all"
    """token positions of the representation site: all, or last (the last prompt token)"""
    loreft_rank: int = 4
    loreft_lr: float = 1e-2
    max_new_tokens: int = 12
    seed: int = 0


PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "e2": {
        "quick": dict(
            train_examples=640,
            eval_examples=240,
            steps=40,
            max_length=48,
            lr=1e-2,
            loreft_lr=1e-2,
            overlaps=(0.0, 1.0),
            joint_overlaps=(0.0,),
        ),
        "default": dict(overlaps=(0.0, 0.5, 1.0)),
        "full": {},
    },
    "e1": {
        "quick": dict(
            train_examples=192,
            eval_examples=60,
            skill_a_eval=16,
            steps=24,
            max_length=80,
            layers=(9, 12, 15, 18, 21),
            lr=2e-2,
            loreft_lr=2e-2,
        ),
        "default": {},
    },
}

CONFIGS = {"e1": E1Config, "e2": E2Config}


def make_config(experiment: str, preset: str) -> E1Config | E2Config:
    """The config of ``experiment`` under ``preset`` (clear errors for unknown names)."""
    if experiment not in CONFIGS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {sorted(CONFIGS)}")
    presets = PRESETS[experiment]
    if preset not in presets:
        raise ValueError(
            f"unknown preset {preset!r} for {experiment}; choose one of {sorted(presets)}"
        )
    base = CONFIGS[experiment]()
    known = {f.name for f in fields(base)}
    unknown = set(presets[preset]) - known
    if unknown:
        raise ValueError(f"preset {preset!r} sets unknown fields {sorted(unknown)}")
    return replace(base, **presets[preset])  # type: ignore[arg-type]


def train_config(cfg: E1Config | E2Config, progress: bool, steps: int, lr: float) -> TrainConfig:
    """The shared training settings of every condition: ``steps`` optimizer steps at ``lr``."""
    return TrainConfig(
        lr=lr,
        batch_size=cfg.batch_size,
        max_steps=steps,
        max_length=cfg.max_length,
        seed=cfg.seed,
        log_every=max(1, steps // 4),
        progress=progress,
    )
