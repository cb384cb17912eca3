"""The pyvene view: RoAd, a LoReFT baseline and plane interchanges as pyvene interventions.

This is the only module that imports pyvene. Three intervention classes, each usable in
``pyvene.IntervenableModel`` (training, ``generate``, ``save`` / ``load``):

- `RoadIntervention`: z = R h at the chosen units, with R from `road_interp.rotation`
  (the same coefficients (c, s) as our sites, so the same logits).
- `LoreftIntervention`: LoReFT (Wu et al., 2024), z = h + Rᵀ(W h + b − R h) with R (r × d)
  semi-orthogonal (``torch.nn.utils.parametrizations.orthogonal``). Its r rows can be split
  into per-skill partitions; an example then edits only along its skill's rows (the subspace
  protocol of the paper's composition experiment).
- `PlaneInterchange`: a distributed interchange intervention on whole RoAd planes, z = where(m,
  s, b) with m the coordinate mask of the planes. A RoAd adapter maps each plane into itself,
  so exchanging a plane's content before or after its rotation is the same test: what do these
  planes carry? `interchange` and `interchange_score` run it through pyvene (models whose RoAd
  sites are Linear layers: pyvene strips forward hooks, so output sites go through
  `road_interp.interchange`).

pyvene builds interventions by calling the class with its representation metadata as keyword
arguments (``embed_dim``, ``low_rank_dimension``, ``layer`` ...), and ``IntervenableModel.load``
does so again from the saved config. So these constructors take their own settings by name and
pass pyvene's metadata on to pyvene's base class unchanged.

Locations: a site is a module path (``model.layers.15``); pyvene's component is
``"<path>.output"`` and `unit_locations` turns an attention mask and `Positions` into pyvene's
per-row position lists.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pandas as pd
import torch

with contextlib.redirect_stdout(io.StringIO()):  # pyvene prints a note about nnsight on import
    import pyvene as pv
from pyvene.models.interventions import (
    DistributedRepresentationIntervention,
    Intervention,
    SourcelessIntervention,
    TrainableIntervention,
)
from torch import Tensor, nn

from . import rotation
from .config import Positions, RoadConfig
from .io import AdapterFile
from .layers import RoadAdapter, RoadOutput, RoadSite


class RoadIntervention(
    SourcelessIntervention, TrainableIntervention, DistributedRepresentationIntervention
):
    """RoAd as a pyvene intervention: base (B, units, d) -> R base.

    Args:
        embed_dim: site size d (pyvene passes it for its named components).
        variant, group_size, init: as in `RoadConfig`.
        seed: seed for ``init="random"``.
        pyvene_metadata: the keyword arguments pyvene passes when it builds or loads the
            intervention (ignored here, kept by pyvene's base class).

    The state dict holds ``adapter.theta``, ``adapter.alpha`` and two buffers, the variant's
    name (as UTF-8 bytes) and the group size, so ``IntervenableModel.load`` rebuilds the right
    shapes.
    """

    def __init__(
        self,
        embed_dim: int | None = None,
        variant: str = "road_1",
        group_size: int = 2,
        init: str = "identity",
        seed: int | None = None,
        **pyvene_metadata: Any,
    ):
        super().__init__(embed_dim=embed_dim, **pyvene_metadata)
        self.keep_last_dim = True  # act per unit on the last dim: (B, units, d)
        self.register_buffer("road_variant", _encode(variant))
        self.register_buffer("road_group_size", torch.tensor(group_size))
        self.adapter: RoadAdapter | None = None
        if embed_dim is not None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            config = RoadConfig(variant=variant, group_size=group_size, init=init)
            self.adapter = RoadAdapter(int(embed_dim), config, generator)

    @classmethod
    def from_params(cls, config: RoadConfig, theta: Tensor, alpha: Tensor) -> RoadIntervention:
        """An intervention holding these (θ, α) (e.g. one site of an `AdapterFile`)."""
        size = rotation.Layout.of(config).site_size(theta.numel())
        intervention = cls(size, config.variant, config.group_size)
        assert intervention.adapter is not None
        with torch.no_grad():
            intervention.adapter.theta.copy_(theta)
            intervention.adapter.alpha.copy_(alpha)
        return intervention

    def forward(self, base: Tensor, source: Tensor | None = None, subspaces: Any = None) -> Tensor:
        if self.adapter is None:
            raise ValueError(
                "this RoadIntervention has no size; pass embed_dim= (the site size) when the "
                "component is a module path pyvene does not know"
            )
        c, s = self.adapter.coefficients()
        z = rotation.apply(base.to(c.dtype), c, s, self.adapter.group_size)
        return z.to(base.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        """Rebuild the adapter with the saved variant, group size and size before loading."""
        variant = _decode(state_dict[prefix + "road_variant"])
        group_size = int(state_dict[prefix + "road_group_size"])
        theta = state_dict[prefix + "adapter.theta"]
        size = rotation.Layout(variant, group_size).site_size(theta.numel())
        adapter = self.adapter
        if (
            adapter is None
            or adapter.variant != variant
            or adapter.group_size != group_size
            or adapter.size != size
        ):
            config = RoadConfig(variant=variant, group_size=group_size)
            self.adapter = RoadAdapter(size, config)
        for key in ("embed_dim", "interchange_dim"):  # pyvene's size buffers, if it saved them
            if prefix + key in state_dict and key not in self._buffers:
                delattr(self, key)
                self.register_buffer(key, state_dict[prefix + key].clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __str__(self) -> str:
        return f"RoadIntervention({self.adapter.extra_repr() if self.adapter else 'unsized'})"


class LoreftIntervention(
    SourcelessIntervention, TrainableIntervention, DistributedRepresentationIntervention
):
    """LoReFT: z = h + Rᵀ(W h + b − R h), R (r × d) with orthonormal rows.

    Args:
        embed_dim: d. low_rank_dimension: r.
        partitions: optional split of the r rows into skills, e.g. ((0, 4), (4, 8)); with it,
            pyvene's ``subspaces`` argument (one partition index per example) selects which
            rows each example edits along. Without ``subspaces`` all rows act.
        seed: seed of the initial R and W.
        identity_init: start with W = R and b = 0, so the intervention starts as the identity
            (pyreft starts W at random; with short training runs that is a large random edit).
        pyvene_metadata: pyvene's keyword arguments, passed to its base class.
    """

    def __init__(
        self,
        embed_dim: int | None = None,
        low_rank_dimension: int | None = None,
        partitions: Sequence[tuple[int, int]] = (),
        seed: int = 0,
        identity_init: bool = True,
        **pyvene_metadata: Any,
    ):
        super().__init__(embed_dim=embed_dim, **pyvene_metadata)
        if embed_dim is None or low_rank_dimension is None:
            raise ValueError("LoreftIntervention needs embed_dim and low_rank_dimension")
        d, r = int(embed_dim), int(low_rank_dimension)
        self.keep_last_dim = True
        with torch.random.fork_rng(devices=[]):  # seeded init; the caller's RNG is untouched
            torch.manual_seed(seed)
            self.rotate = nn.utils.parametrizations.orthogonal(nn.Linear(d, r, bias=False))
            self.learned = nn.Linear(d, r)
        if identity_init:  # W = R, b = 0: the edit starts at zero, like a RoAd identity
            with torch.no_grad():
                self.learned.weight.copy_(cast(Tensor, self.rotate.weight))
                self.learned.bias.zero_()
        self.partitions = [tuple(p) for p in partitions]
        for lo, hi in self.partitions:
            if not 0 <= lo < hi <= r:
                raise ValueError(f"partition ({lo}, {hi}) is not inside the {r} rows")

    def row_mask(self, subspaces: Any, batch: int, device: torch.device) -> Tensor | None:
        """(B, r) float mask of the rows each example may use, from partition indices."""
        if subspaces is None:
            return None
        if not self.partitions:
            raise ValueError("pass partitions= to the LoreftIntervention to route examples")
        r = self.learned.out_features
        mask = torch.zeros(batch, r, device=device)
        for row, parts in enumerate(subspaces):
            for k in parts if isinstance(parts, (list, tuple)) else [parts]:
                lo, hi = self.partitions[int(k)]
                mask[row, lo:hi] = 1.0
        return mask

    def forward(self, base: Tensor, source: Tensor | None = None, subspaces: Any = None) -> Tensor:
        h = base.float()
        R = cast(Tensor, self.rotate.weight)  # (r, d), orthonormal rows
        delta = self.learned(h) - h @ R.T  # (B, units, r)
        mask = self.row_mask(subspaces, base.shape[0], base.device)
        if mask is not None:
            delta = delta * mask.view(base.shape[0], *([1] * (base.dim() - 2)), -1)
        return (h + delta @ R).to(base.dtype)

    def __str__(self) -> str:
        return f"LoreftIntervention(r={self.learned.out_features})"


class PlaneInterchange(Intervention, DistributedRepresentationIntervention):
    """z = where(m, source, base) with m the (d,) coordinate mask of the exchanged planes."""

    def __init__(self, coordinate_mask: Tensor | None = None, **pyvene_metadata: Any):
        super().__init__(**pyvene_metadata)
        self.keep_last_dim = True
        if coordinate_mask is None:
            raise ValueError("PlaneInterchange needs the coordinate mask of its planes")
        self.register_buffer("mask", coordinate_mask.bool())

    def forward(self, base: Tensor, source: Tensor | None = None, subspaces: Any = None) -> Tensor:
        if source is None:
            raise ValueError("a plane interchange needs a source input")
        return torch.where(self.mask.to(base.device), source.to(base.dtype), base)

    def __str__(self) -> str:
        return f"PlaneInterchange(planes={int(self.mask.sum()) // 2})"


def _encode(text: str) -> Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def _decode(data: Tensor) -> str:
    return bytes(data.tolist()).decode()


# -- building IntervenableModels ----------------------------------------------------------------
def unit_locations(attention_mask: Tensor, positions: Positions) -> list[list[int]]:
    """Per-row positions for pyvene: every position for ``all``, else the k selected real
    tokens of `Positions` (each row needs at least k real tokens)."""
    if positions.kind == "all":
        return [list(range(attention_mask.shape[1]))] * attention_mask.shape[0]
    if positions.kind not in ("first", "last"):
        raise ValueError(
            f"the pyvene view has no unit locations for positions {positions}; it takes "
            "all, first:k or last:k"
        )
    mask = positions.mask(attention_mask)
    rows = [torch.nonzero(m).reshape(-1).tolist() for m in mask]
    short = [i for i, r in enumerate(rows) if len(r) != positions.k]
    if short:
        raise ValueError(f"rows {short} have fewer than {positions.k} real tokens")
    return rows


def intervenable(
    model: nn.Module, interventions: Mapping[str, Intervention], group: bool = False
) -> pv.IntervenableModel:
    """An ``IntervenableModel`` with one intervention per module path (its output).

    ``group=True`` puts them all in one group, so a single source input feeds all of them.
    pyvene freezes every model parameter; the ``requires_grad`` flags of RoAd adapters inside
    the model (a `RoadModel`'s sites) are restored afterwards.

    pyvene removes every forward hook of the model before each call, so RoAd sites on module
    outputs (`road_interp.layers.RoadOutput`, hooks) would silently stop acting: a model with
    any is refused (exchange on such models with `road_interp.interchange.SuffixInterchange`).
    Sites on Linear layers are modules, not hooks, and keep acting.
    """
    hooked = sorted(m.site_name for m in model.modules() if isinstance(m, RoadOutput))
    if hooked:
        raise ValueError(
            f"the model has RoAd sites on module outputs ({', '.join(hooked)}); pyvene removes "
            "every forward hook before it runs, so they would silently stop acting. Use "
            "road_interp.interchange.SuffixInterchange for interchanges on this model, or "
            "to_pyvene(plain_model, adapter) to run the adapter as pyvene interventions"
        )
    ours = [p for m in model.modules() if isinstance(m, RoadSite) for p in m.adapters.parameters()]
    grads = [p.requires_grad for p in ours]
    reps = []
    for path, intervention in interventions.items():
        rep: dict[str, Any] = {
            "layer": 0,
            "component": f"{path}.output",
            "intervention": intervention,
        }
        if group:
            rep["group_key"] = 0
        reps.append(rep)
    iv = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model)
    for p, flag in zip(ours, grads, strict=True):  # pyvene froze them with the model
        p.requires_grad_(flag)
    return iv


def to_pyvene(model: nn.Module, adapter: AdapterFile) -> pv.IntervenableModel:
    """An adapter exported to pyvene: an ``IntervenableModel`` over the plain Hugging Face
    ``model`` with one `RoadIntervention` per site of ``adapter`` (on the output of the
    module at the site's path). Run it with pyvene's ``unit_locations`` (`base_locations`
    turns the adapter's `Positions` into them); it gives the logits of the adapter on a
    `RoadModel`."""
    interventions = {
        path: RoadIntervention.from_params(adapter.config, theta, alpha)
        for path, (theta, alpha) in adapter.params.items()
    }
    return intervenable(model, interventions)


def base_locations(batch: Mapping[str, Tensor], positions: Positions, n: int) -> dict[str, list]:
    """pyvene ``unit_locations`` for ``n`` sourceless interventions at `Positions`."""
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(batch["input_ids"].shape[:2], dtype=torch.long)
    return {"base": [unit_locations(mask, positions)] * n}


def interchange(
    model: nn.Module,
    plane_masks: Mapping[str, Tensor],
    base: Mapping[str, Tensor],
    source: Mapping[str, Tensor],
    positions: Positions,
) -> Any:
    """Run ``base`` with the content of the given planes taken from ``source``.

    ``plane_masks`` maps module paths to (d,) coordinate masks (see
    `road_interp.subspaces.Subspace.coordinate_mask`). Both inputs must select the same
    number of units per row (e.g. ``Positions("last")``). Returns the model output.
    """
    ivs = {path: PlaneInterchange(mask) for path, mask in plane_masks.items()}
    iv = intervenable(model, ivs, group=True)
    b_mask = base.get("attention_mask", torch.ones(base["input_ids"].shape[:2], dtype=torch.long))
    s_mask = source.get(
        "attention_mask", torch.ones(source["input_ids"].shape[:2], dtype=torch.long)
    )
    b_loc, s_loc = unit_locations(b_mask, positions), unit_locations(s_mask, positions)
    n = len(ivs)
    with torch.no_grad():
        locations = {"sources->base": ([s_loc] * n, [b_loc] * n)}
        _, out = iv(dict(base), [dict(source)], unit_locations=locations)
    return out


def interchange_score(
    model: nn.Module,
    plane_masks: Mapping[str, Tensor],
    base: Mapping[str, Tensor],
    source: Mapping[str, Tensor],
    positions: Positions,
) -> tuple[pd.DataFrame, float]:
    """Classification interchange: does moving these planes from the source move the
    prediction to the source's?

    Returns a table with one row per (base, source) pair — pred_base, pred_source,
    pred_interchanged, and the change in the logit of the source's prediction — and the
    interchange score: among pairs whose base and source predictions differ, the share whose
    interchanged prediction equals the source's.
    """
    with torch.no_grad():
        logits_b = model(**base).logits
        logits_s = model(**source).logits
    logits_x = interchange(model, plane_masks, base, source, positions).logits
    pb, ps, px = logits_b.argmax(-1), logits_s.argmax(-1), logits_x.argmax(-1)
    rows = torch.arange(len(ps))
    table = pd.DataFrame(
        {
            "pred_base": pb.tolist(),
            "pred_source": ps.tolist(),
            "pred_interchanged": px.tolist(),
            "source_logit_change": (logits_x[rows, ps] - logits_b[rows, ps]).tolist(),
        }
    )
    differ = table["pred_base"] != table["pred_source"]
    flipped = (table["pred_interchanged"] == table["pred_source"])[differ]
    score = float(flipped.mean()) if differ.any() else float("nan")
    return table, score
