"""`RoadConfig`: what a RoAd adapter is, validated once, versioned, JSON round-trip.

A config says *how* an adapter is parametrised (``variant``, ``group_size``), *where* it
acts (``targets``, ``positions``) and how it starts (``init``). It holds no tensors; shapes
come from the model the adapter is put into.

Placement, in the manner of pyvene's representation record: ``positions=None`` puts the
rotation on the output of each targeted Linear / Conv1D layer at every token (a site that can
be merged into the weights); ``positions=Positions(...)`` puts it on the output of each
targeted module (any module whose output is (B, L, d), e.g. a transformer block: the residual
stream) at those token positions only, the placement of a distributed interchange
intervention.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

FORMAT_VERSION = 2
"""Version of the config and adapter-folder format. Bumped on incompatible changes.
2: positions are part of the config; representation sites are keyed by their module path."""

VARIANTS = ("road_1", "road_2", "road_4")
"""RoAd1: one (α, θ) per plane; RoAd2: one per output coordinate; RoAd4: four per plane."""

INITS = ("identity", "random")
"""identity: θ = 0, α = 1 (the adapter changes nothing); random: θ ~ N(0, 0.5), α ~ N(1, 0.5)
(PEFT's ``init_weights=False``; for tests and demos)."""

TARGET_PRESETS = ("default", "all-linear")
"""default: the per-architecture table in `road_interp.injection`; all-linear: every Linear /
Conv1D except output heads."""


POSITION_KINDS = ("all", "first", "last", "prompt", "answer")


@dataclass(frozen=True)
class Positions:
    """Which tokens a module-output site rotates: ``all``; the ``first`` / ``last`` k real
    tokens of the prompt (``Positions("last")`` is the last prompt token); or one side of the
    prompt / answer split, for position routing in generation:

    - ``prompt``: every real prompt token but the last (the tokens that are read);
    - ``answer``: the last prompt token, whose output predicts the first answer token, and
      every token after it: the answer tokens under teacher forcing and every decode step of
      ``generate`` (the tokens that write).

    ``prompt`` and ``answer`` split a sequence's real tokens, so adapters at the two can act on
    the same model without ever acting on the same token. Real tokens are those with
    attention_mask = 1, so left and right padding both work.
    """

    kind: str = "all"
    k: int = 1

    def __post_init__(self) -> None:
        if self.kind not in POSITION_KINDS:
            raise ValueError(f"unknown positions {self.kind!r}; choose one of {POSITION_KINDS}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        if self.kind in ("all", "prompt", "answer") and self.k != 1:
            raise ValueError(f"positions {self.kind!r} take no k (got {self.k})")

    @property
    def on_decode_steps(self) -> bool:
        """Whether the decode steps of ``generate`` (one new token each) are rotated."""
        return self.kind in ("all", "answer")

    def mask(self, prompt: Tensor) -> Tensor:
        """Bool (B, L) from the prompt's tokens (B, L): 1 = a real prompt token, 0 = padding
        (or, under teacher forcing, an answer token)."""
        real = prompt.bool()
        if self.kind == "all":
            return real
        rank = real.long().cumsum(dim=1)  # 1-based index among real tokens
        count = real.long().sum(dim=1, keepdim=True)
        if self.kind == "first":
            return real & (rank <= self.k)
        if self.kind == "last":
            return real & (rank > count - self.k)
        if self.kind == "prompt":
            return real & (rank < count)
        last = (real & (rank == count)).long().argmax(dim=1, keepdim=True)  # (B, 1)
        return torch.arange(real.shape[1], device=real.device) >= last

    def __str__(self) -> str:
        return self.kind if self.kind in ("all", "prompt", "answer") else f"{self.kind}:{self.k}"

    @classmethod
    def parse(cls, text: str) -> Positions:
        """Inverse of ``str``: ``"all"``, ``"last"`` (k = 1), ``"last:3"``, ``"first:2"``,
        ``"prompt"``, ``"answer"``."""
        kind, _, k = text.partition(":")
        try:
            return cls(kind, int(k) if k else 1)
        except ValueError as err:
            raise ValueError(f"cannot read positions {text!r}: {err}") from None


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
        positions: None (the default) for Linear / Conv1D outputs at every token, mergeable;
            or the `Positions` (or their text, ``"last:1"``) at which the outputs of the
            targeted modules are rotated. Presets need ``positions=None``.
        subspace: None (every plane), or the planes of each site the adapter may move, as a
            `road_interp.subspaces.Subspace` spec (``"half:0"``, ``"part:1/3"``,
            ``"random:0.5:SEED"``, ...). The adapter stays the identity on every other plane
            through training (`RoadModel.restricted`), so adapters on disjoint subspaces
            compose by `road_interp.compose.union`.
        format_version: the format this config was written in.
    """

    variant: str = "road_1"
    group_size: int = 64
    targets: str | tuple[str, ...] = "default"
    init: str = "identity"
    positions: Positions | None = None
    subspace: str | None = None
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
        if isinstance(self.positions, str):
            object.__setattr__(self, "positions", Positions.parse(self.positions))
        if self.positions is not None and not isinstance(self.positions, Positions):
            raise TypeError(f"positions must be None or Positions, got {self.positions!r}")
        if self.positions is not None and isinstance(self.targets, str):
            raise ValueError(
                f"an adapter on module outputs at positions {self.positions} needs explicit "
                f"module patterns as targets (e.g. 'model.layers.15'), not the preset "
                f"{self.targets!r}"
            )
        if self.subspace is not None and (not isinstance(self.subspace, str) or not self.subspace):
            raise ValueError(f"subspace must be None or a subspace spec, got {self.subspace!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"this config has format version {self.format_version}, newer than the "
                f"{FORMAT_VERSION} this road_interp understands; upgrade road_interp"
            )

    @property
    def mergeable(self) -> bool:
        """Whether the adapter acts on Linear / Conv1D outputs (so it can fold into W, b)."""
        return self.positions is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.targets, tuple):
            data["targets"] = list(self.targets)
        data["positions"] = None if self.positions is None else str(self.positions)
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
