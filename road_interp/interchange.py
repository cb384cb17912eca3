"""Interchange interventions on RoAd planes over a shared suffix, many plane sets per run.

A distributed interchange intervention (Geiger et al., 2024) on a plane set S runs a *base*
prompt with the content of S taken from a *source* prompt's run: at every chosen site (a
module output of size d) and at the last k tokens,

    h_base ← where(m_S, h_source, h_base),        m_S: (d,) the coordinate mask of S,

with h_source the source's own (unintervened) output there, as in
`road_interp.pyvene_view.interchange`. A RoAd adapter maps every plane into itself, so the
exchange reads the same before or after its rotation: the test asks what S carries.

**Why a suffix.** When every prompt ends in the same k tokens (a chat template's assistant
header and a teacher-forced answer prefix, e.g. "The sentiment of this review is"), the
exchange at those tokens needs no alignment between prompts of different lengths, and the
tokens before them never see it (causal attention). `SuffixInterchange` therefore runs each
base prompt's prefix once, keeps its keys and values, and runs only the k suffix tokens again
per plane set: a condition costs k tokens, not the prompt, which is what makes nulls of many
random plane sets affordable on a CPU. Positions follow the attention mask (left padding:
position = number of real tokens before, as ``generate`` counts), so a padded row answers as
it would alone.

**Readout**: the logits of the last token at ``label_ids`` (the first token of each label),
argmax = the predicted label. **Interchange-intervention accuracy** (IIA) of a plane set on
pairs (base, source) whose gold labels differ: the share of pairs whose intervened prediction
is the *source's* gold label. A claim about S is a claim against nulls: the same number of
random planes per site (`road_interp.subspaces.Subspace.random_like`), and the same planes in
the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .analysis.stats import plane_table
from .evaluation import accepts, positions_of
from .io import AdapterFile
from .layers import RoadOutput
from .model import unwrap
from .subspaces import Subspace

Masks = Mapping[str, Tensor]
"""site path -> (d,) bool coordinate mask of the exchanged planes."""


def shared_suffix_length(input_ids: Tensor, attention_mask: Tensor) -> int:
    """k: how many trailing tokens every row of a left-padded batch has in common (at most the
    shortest row's real length − 1, so that every row keeps a prefix)."""
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("the batch must be left-padded: every row's last token is real")
    shortest = int(attention_mask.sum(-1).min())
    k = 0
    while k < shortest - 1 and bool((input_ids[:, -k - 1] == input_ids[0, -k - 1]).all()):
        k += 1
    return k


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, h: Tensor) -> Any:
    return (h, *output[1:]) if isinstance(output, tuple) else h


@contextmanager
def _hooks(model: nn.Module, hooks: Mapping[str, Callable]) -> Iterator[None]:
    handles = [model.get_submodule(path).register_forward_hook(fn) for path, fn in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_all_positions(model: nn.Module) -> None:
    """Refuse models with RoAd sites acting on prompt or answer tokens only: the cached
    suffix run would count as decode steps for them."""
    routed = sorted(
        m.site_name
        for m in model.modules()
        if isinstance(m, RoadOutput) and m.positions.kind != "all"
    )
    if routed:
        raise ValueError(
            f"sites {routed} act on prompt or answer tokens only; a suffix interchange "
            "runs the suffix over a cache, which they would treat as decode steps. Use "
            "pyvene_view.interchange, or adapters on Positions('all')"
        )


class SuffixInterchange:
    """Interchanges on one left-padded batch of base prompts sharing their last ``k`` tokens.

    Args:
        model: a causal LM: a Hugging Face model, or a `RoadModel` (or PEFT / DDP wrapper)
            around one; RoAd sites on module outputs must act on all positions.
        batch: ``input_ids`` and ``attention_mask``, (B, L), left-padded.
        sites: module paths whose outputs are exchanged.
        label_ids: (C,) the token ids the readout compares.
        k: suffix length (default: the whole shared suffix, `shared_suffix_length`).

    `sources` records the sites' outputs at the suffix of the batch's own prompts (a batch can
    be its own sources: pair row i with row j by indexing); `logits` runs the suffix with an
    exchange from given sources.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        sites: Sequence[str],
        label_ids: Sequence[int],
        k: int | None = None,
    ):
        model = unwrap(model)  # site paths are the Hugging Face model's
        check_all_positions(model)
        self.model, self.sites = model, list(sites)
        self.ids, self.mask = batch["input_ids"], batch["attention_mask"]
        self.k = shared_suffix_length(self.ids, self.mask) if k is None else k
        if self.k < 1:
            raise ValueError("the prompts share no last token: nothing to exchange on")
        self.label_ids = torch.as_tensor(list(label_ids), dtype=torch.long)
        self.positions = positions_of(self.mask)
        cut = self.ids.shape[1] - self.k
        with torch.no_grad():
            out = model(
                input_ids=self.ids[:, :cut],
                attention_mask=self.mask[:, :cut],
                position_ids=self.positions[:, :cut],
                use_cache=True,
            )
        # transformers 5 names the key-value cache `cache`, 4.x `past_key_values`
        self.cache_arg = "cache" if accepts(model, "cache") else "past_key_values"
        self.cache, self.cut = getattr(out, self.cache_arg), cut
        self._sources: dict[str, Tensor] | None = None
        self._plain: Tensor | None = None

    def _recorder(self, into: dict[str, Tensor], site: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            into[site] = _hidden(output).detach()

        return hook

    def _suffix(self, hooks: Mapping[str, Callable]) -> Tensor:
        """(B, C) label logits of the last token, the suffix run over the prefix's cache."""
        with torch.no_grad(), _hooks(self.model, hooks):
            out = self.model(
                input_ids=self.ids[:, self.cut :],
                attention_mask=self.mask,
                position_ids=self.positions[:, self.cut :],
                use_cache=True,
                **{self.cache_arg: self.cache},
            )
        self.cache.crop(-self.k)  # drop the suffix: the next condition starts from the prefix
        return out.logits[:, -1, self.label_ids].float()

    def sources(self) -> dict[str, Tensor]:
        """site -> (B, k, d) the sites' outputs at the suffix, without any exchange."""
        if self._sources is None:
            recorded: dict[str, Tensor] = {}
            hooks = {site: self._recorder(recorded, site) for site in self.sites}
            self._plain = self._suffix(hooks)
            self._sources = recorded
        return self._sources

    def plain(self) -> Tensor:
        """(B, C) label logits without any exchange."""
        self.sources()
        assert self._plain is not None
        return self._plain

    def logits(self, masks: Masks, sources: Mapping[str, Tensor]) -> Tensor:
        """(B, C) label logits with the planes of ``masks`` taken from ``sources`` (site ->
        (B, k, d), row i the source of base row i) at every site of ``masks``."""
        unknown = set(masks) - set(self.sites)
        if unknown:
            raise ValueError(f"no recorded sites {sorted(unknown)}; this run has {self.sites}")
        for site, mask in masks.items():  # checked before the run: a failed run spoils the cache
            wanted = (len(self.ids), self.k, mask.numel())
            if tuple(sources[site].shape) != wanted:
                raise ValueError(
                    f"{site}: sources are {tuple(sources[site].shape)}, this run needs "
                    f"{wanted} (batch, k, d); record them with the same k and batch size"
                )

        def exchange(site: str) -> Callable:
            def hook(module: nn.Module, args: tuple, output: Any) -> Any:
                h = _hidden(output)
                src = sources[site].to(h.dtype)
                return _with_hidden(output, torch.where(masks[site].to(h.device), src, h))

            return hook

        return self._suffix({site: exchange(site) for site in masks})


def top_planes(adapter: AdapterFile, k: int) -> Subspace:
    """The ``k`` planes of each site that ``adapter`` rotates most (largest effective |θ|,
    `road_interp.analysis.plane_table`), as a `Subspace` named ``top-k``."""
    table = plane_table(adapter, "adapter")
    sizes = adapter.sites
    if not 0 < k <= min(sizes.values()) // 2:
        raise ValueError(f"k must be in [1, {min(sizes.values()) // 2}] planes, got {k}")
    table["magnitude"] = table["theta"].abs()
    planes = {
        site: torch.tensor(rows.nlargest(k, "magnitude")["plane"].tolist())
        for site, rows in table.groupby("site")
    }
    return Subspace(sizes, planes, f"top-{k}")
