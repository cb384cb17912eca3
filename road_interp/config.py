"""`RoadConfig`: what a RoAd adapter is, validated once, versioned, JSON round-trip.

A config says *how* an adapter is parametrised (``variant``, ``group_size``), *where* it
acts (``targets``) and how it starts (``init``). It holds no tensors; shapes come from the
model the adapter is put into.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FORMAT_VERSION = 1
"""Version of the config and adapter-folder format. Bumped on incompatible changes."""

VARIANTS = ("road_1", "road_2", "road_4")
"""RoAd1: one (α, θ) per plane; RoAd2: one per output coordinate; RoAd4: four per plane."""

INITS = ("identity", "random")
"""identity: θ = 0, α = 1 (the adapter changes nothing); random: θ ~ N(0, 0.5), α ~ N(1, 0.5)
(PEFT's ``init_weights=False``; for tests and demos)."""

TARGET_PRESETS = ("default", "all-linear")
"""default: the per-architecture table in `road_interp.injection`; all-linear: every Linear /
Conv1D except output heads."""


@dataclass(frozen=True)
class RoadConfig:
    """How a RoAd adapter is parametrised and where it acts.

    Attributes:
        variant: ``"road_1"`` (d params per site), ``"road_2"`` (2d) or ``"road_4"`` (4d).
        group_size: pairing layout. Inside each group of g coordinates, coordinate j pairs
            with j + g/2. g = 2 is the paper's adjacent pairing; g = 64 is PEFT's and vLLM's.
        targets: ``"default"``, ``"all-linear"``, or a tuple of module-name patterns. A pattern
            matches a module if it equals its full name, is a dotted suffix of it, or is a
            regular expression that fully matches it.
        init: ``"identity"`` or ``"random"``.
        format_version: the format this config was written in.
    """

    variant: str = "road_1"
    group_size: int = 64
    targets: str | tuple[str, ...] = "default"
    init: str = "identity"
    format_version: int = field(default=FORMAT_VERSION)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown RoAd variant {self.variant!r}; choose one of {VARIANTS}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size must be an int, got {self.group_size!r}")
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(
                f"group_size must be an even number >= 2 (each group splits into two halves "
                f"that pair up), got {self.group_size}"
            )
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {INITS}")
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.targets, str):
            if self.targets not in TARGET_PRESETS:
                object.__setattr__(self, "targets", (self.targets,))
        elif not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(
                f"targets must be {TARGET_PRESETS} or a non-empty list of module-name patterns, "
                f"got {self.targets!r}"
            )
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"this config has format version {self.format_version}, newer than the "
                f"{FORMAT_VERSION} this road_interp understands; upgrade road_interp"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.targets, tuple):
            data["targets"] = list(self.targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RoadConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoadConfig:
        return cls.from_dict(json.loads(text))
