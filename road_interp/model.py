"""`RoadModel`: a Hugging Face model with RoAd sites in it, and named adapters on those sites.

    model = RoadModel(hf_model)
    model.add_adapter("sentiment", RoadConfig(variant="road_1", group_size=64))
    logits = model(**batch).logits          # the active adapter acts
    with model.disabled():                  # the base model, bit-identical
        ...
    model.merge(); model.unmerge()          # fold into W, b and back, O(d·k) per layer
    model.save_adapter("sentiment", "adapters/sentiment")
    model.load_adapter("adapters/other")    # ours or PEFT's, any placement; or an AdapterFile
    base = model.remove()                   # the original modules back in place

`RoadModel` owns every site: adapters of both placements (`RoadConfig.positions`) are added
and loaded here, sites are created by the single dispatch `road_interp.injection.create_site`,
and its `road_interp.routing.Router` holds the one hook on the wrapped model. The wrapped model
keeps its own module paths: the site of ``bert.encoder.layer.0.attention.self.query`` is found
under that name in `RoadModel.sites`, and an adapter on block 15's output under
``model.layers.15``.

Activation and training follow PEFT: `add_adapter` makes the new adapter the only active one
and the only trainable one (the base model and other adapters are frozen); `load_adapter`
activates a frozen copy. Stack adapters explicitly with ``set_active("a", "b")``.

**Extra weights.** An adapter owns the non-RoAd weights it needs, such as a sequence
classifier's head (`head_parameters`): `add_adapter` gives a classifier's adapter its head by
default, `adapter_file` and `save_adapter` write them with the adapter (`AdapterFile.extra`)
and `load_adapter` copies them back into the model, checked first. The model has one head,
so it holds the values of the adapter that last loaded (or was given) it; saving another
adapter that claims the same weights is refused rather than writing the wrong head.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from . import injection
from .config import RoadConfig
from .io import AdapterFile, read_adapter, validate, write_adapter, write_peft
from .layers import RoadLinear, RoadOutput, RoadSite
from .rotation import check_pairing
from .routing import Router, RowCoefficients
from .subspaces import Subspace, train_on

HEAD_MODULES = ("classifier", "score")
"""Names of sequence-classification heads (BERT/RoBERTa ``classifier``, Llama/GPT-2 ``score``)."""


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters of a sequence classifier's head (``classifier`` / ``score``), by name in the
    Hugging Face model (looked for through `RoadModel`, DDP and PEFT wrappers); {} for other
    models."""
    inner = unwrap(model)
    if not type(inner).__name__.endswith("ForSequenceClassification"):
        return {}
    out: dict[str, nn.Parameter] = {}
    for name, module in inner.named_children():
        if name in HEAD_MODULES:
            out.update({f"{name}.{n}": p for n, p in module.named_parameters()})
    return out


RESERVED_NAMES = frozenset(name for name in dir(nn.ModuleDict()) if not name.startswith("__"))
"""Adapter names that would shadow an attribute of the ModuleDict holding a site's adapters
(``train``, ``eval``, ``to``, ``forward``, ...)."""


class RoadModel(nn.Module):
    """Wraps a model; adds, loads, activates, merges and removes RoAd adapters on it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if isinstance(model, RoadModel):
            raise TypeError("this model is already a RoadModel")
        self.model = model
        self.configs: dict[str, RoadConfig] = {}
        self._base_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self.active: tuple[str, ...] = ()
        self.router = Router(model)
        self.extras: dict[str, tuple[str, ...]] = {}
        """adapter name -> names of the wrapped model's parameters that travel with it."""
        self._extra_holder: dict[str, str] = {}
        self._extra_original: dict[str, Tensor] = {}
        self._extra_claimed: dict[str, Tensor] = {}
        """Each held weight's value when its holder claimed it (see `_own_extra`)."""
        """The wrapped model's own values of weights a loaded adapter overwrote (`remove`)."""
        """parameter name -> the adapter whose values that parameter holds now."""

    # -- structure --------------------------------------------------------------------------
    @property
    def sites(self) -> dict[str, RoadSite]:
        """Every site, keyed by the wrapped model's own module path."""
        return injection.find_sites(self.model)

    def linear_sites(self) -> dict[str, RoadLinear]:
        return {n: m for n, m in self.sites.items() if isinstance(m, RoadLinear)}

    @property
    def base_model_identity(self) -> dict[str, Any]:
        """What an adapter file records about the model it was made for."""
        config = getattr(self.model, "config", None)
        return {
            "model_type": getattr(config, "model_type", None),
            "architecture": type(self.model).__name__,
            "name_or_path": getattr(config, "_name_or_path", None) or None,
        }

    def sites_of(self, name: str) -> dict[str, RoadSite]:
        """The sites holding adapter ``name``."""
        self._check_names([name])
        return {n: s for n, s in self.sites.items() if name in s.adapters}

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(
        self,
        name: str,
        config: RoadConfig,
        *,
        seed: int | None = None,
        activate: bool = True,
        size: int | None = None,
        extra: Sequence[str] | None = None,
    ) -> None:
        """Put a new adapter ``name`` where ``config`` says (targets and positions).

        ``size``: the site size for module outputs (default: the model's ``hidden_size``).
        All targets are checked before anything changes. The new adapter is trainable; the
        base model and every other adapter are frozen. ``activate``: make it the only active
        adapter. ``extra``: names of the wrapped model's parameters (or modules) saved and
        loaded with this adapter (default: a sequence classifier's head, `head_parameters`);
        they are not made trainable here (`road_interp.training.train` trains the head).
        """
        self._check_new_name(name)
        extra_names = self._extra_names(extra)
        targets = injection.resolve_targets(self.model, config)
        sizes = {t: size or injection.site_size(self.model, t, config) for t in targets}
        if config.subspace is not None:
            Subspace.from_spec(config.subspace, sizes, config.group_size)  # checked up front
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._attach(name, config, sizes, generator)
        subspace = self.subspace_of(name)
        if subspace is not None:
            with train_on(self, name, subspace):  # the identity off its planes from the start
                pass
        self.set_trainable(name)
        self._own_extra(name, extra_names, loaded=False)
        if activate:
            self.set_active(name)

    def load_adapter(
        self,
        source: str | Path | AdapterFile,
        name: str | None = None,
        *,
        activate: bool = True,
        trainable: bool = False,
    ) -> str:
        """Put a stored adapter on this model: a folder (ours in any format version, or
        PEFT's RoAd) or an in-memory `AdapterFile`, on exactly its sites and placement, and
        copy its extra weights (a classifier's head) into the model.

        ``name`` defaults to the folder's name (required for an `AdapterFile`). Everything is
        checked before the model changes (`road_interp.io.validate`: shapes, pairing,
        finiteness; then `check_fits`, extra weights' names and shapes included), and a
        failure while attaching takes the adapter out again. The loaded adapter is frozen
        unless ``trainable``. Returns the name.
        """
        if isinstance(source, AdapterFile):
            if name is None:
                raise ValueError("give a name= to load an in-memory AdapterFile")
            adapter, where = source, f"adapter {name!r}"
        else:
            adapter, where = read_adapter(source), str(source)
            name = name or Path(source).name
        self._check_new_name(name)
        validate(adapter, where)
        self.check_fits(adapter, where)
        self.check_extra(adapter, where)
        config = replace(adapter.config, targets=tuple(adapter.params))
        before = set(self.sites)
        try:
            self._attach(name, config, adapter.sites, None)
            with torch.no_grad():
                for path, site in self.sites_of(name).items():
                    theta, alpha = adapter.params[path]
                    site.adapter(name).theta.copy_(theta)
                    site.adapter(name).alpha.copy_(alpha)
        except BaseException:
            if name in self.configs:
                self.delete_adapter(name)
            self.remove_sites(p for p in set(self.sites) - before)
            raise
        self.copy_extra(adapter, name)
        if trainable:
            self.set_trainable(*self.trainable_adapters(), name)
        else:
            for p in self.adapter_parameters(name).values():
                p.requires_grad_(False)
        if activate:
            self.set_active(name)
        return name

    def adapter_file(self, name: str) -> AdapterFile:
        """Adapter ``name`` as an `AdapterFile` (detached copies of θ, α and of its extra
        weights). Raises ValueError if another adapter has since loaded its own values into
        those extra weights."""
        params = {
            path: (
                site.adapter(name).theta.detach().clone(),
                site.adapter(name).alpha.detach().clone(),
            )
            for path, site in self.sites_of(name).items()
        }
        model_params = dict(self.model.named_parameters())
        extra = {}
        for n in self.extras.get(name, ()):
            holder = self._extra_holder.get(n)
            changed = n not in self._extra_claimed or not torch.equal(
                model_params[n], self._extra_claimed[n]
            )
            if holder is not None and holder != name and changed:
                raise ValueError(
                    f"{n} now holds the values of adapter {holder!r}, not of {name!r} (loaded "
                    f"after it); save {name!r} before loading another adapter with its own "
                    f"{n}, or load {name!r} again"
                )
            extra[n] = model_params[n].detach().clone()
        return AdapterFile(self.configs[name], self.base_model_identity, params, extra)

    def copy_extra(self, adapter: AdapterFile, name: str | None = None) -> None:
        """Copy ``adapter``'s extra weights into the wrapped model, all checked first (names
        and shapes). With ``name`` (an adapter of this model), they become that adapter's."""
        self.check_extra(adapter, f"adapter {name!r}" if name else "adapter")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, value in adapter.extra.items():
                self._extra_original.setdefault(n, params[n].detach().clone())
                params[n].copy_(value)
        if name is not None:
            self._own_extra(name, tuple(adapter.extra), loaded=True)
        else:
            for n in adapter.extra:
                self._extra_holder.pop(n, None)

    def check_extra(self, adapter: AdapterFile, where: str = "adapter") -> None:
        """Raise ValueError unless this model has every extra weight of ``adapter`` with
        the same shape."""
        params = dict(self.model.named_parameters())
        for n, value in adapter.extra.items():
            if n not in params:
                known = sorted(head_parameters(self.model)) or "no head"
                raise ValueError(
                    f"{where} carries {n}, which this {type(self.model).__name__} does not have "
                    f"(its head: {known}); load it into the kind of model it was trained on "
                    "(an encoder's adapter into a sequence classifier)"
                )
            if value.shape != params[n].shape:
                raise ValueError(
                    f"{where}: {n} has shape {tuple(value.shape)}, this model's "
                    f"{tuple(params[n].shape)}; was it trained with another number of labels?"
                )

    def _extra_names(self, extra: Sequence[str] | None) -> tuple[str, ...]:
        """Parameter names of ``extra`` (parameter or module names; None: the head)."""
        if extra is None:
            return tuple(head_parameters(self.model))
        params = dict(self.model.named_parameters())
        names: list[str] = []
        for item in extra:
            inside = [n for n in params if n.startswith(f"{item}.")]
            if item not in params and not inside:
                raise ValueError(f"extra={item!r}: the model has no such parameter or module")
            names += [item] if item in params else inside
        return tuple(names)

    def _own_extra(self, name: str, names: tuple[str, ...], *, loaded: bool) -> None:
        """Adapter ``name`` claims these weights; the model holds one value of each, so the
        newest claim is their holder (values ``loaded`` from a file, or an adapter added while
        another claims them: training it changes them), and their value at that moment is
        kept. `adapter_file` refuses to save an older claimant's weights once they differ from
        that value (the holder changed them)."""
        params = dict(self.model.named_parameters())
        for n in names:
            shared = any(n in theirs for other, theirs in self.extras.items() if other != name)
            if loaded or shared or n in self._extra_holder:
                self._extra_holder[n] = name
                if loaded:  # the older claimants' values are gone already
                    self._extra_claimed.pop(n, None)
                else:
                    self._extra_claimed[n] = params[n].detach().clone()
        self.extras[name] = names

    def save_adapter(
        self, name: str, path: str | Path, *, peft: bool = False, overwrite: bool = False
    ) -> Path:
        """Write adapter ``name`` as a folder, atomically (``peft=True``: PEFT's format).
        An existing adapter folder is replaced only with ``overwrite``; a folder holding
        anything else, or a file, is refused (`road_interp.files.OutputError`)."""
        adapter = self.adapter_file(name)
        write = write_peft if peft else write_adapter
        return write(adapter, path, overwrite=overwrite)

    def save_pretrained(
        self,
        folder: str | Path,
        *,
        adapter: str | None = None,
        peft: bool = False,
        overwrite: bool = False,
    ) -> Path:
        """Hugging Face's spelling of `save_adapter`: write ``adapter`` (default: the one
        adapter this model has, or the one active) with its extra weights to ``folder``."""
        if adapter is None:
            candidates = list(self.configs) if len(self.configs) == 1 else list(self.active)
            if len(candidates) != 1:
                raise ValueError(
                    f"this model has adapters {list(self.configs)} (active: {list(self.active)}); "
                    "say which to save with adapter="
                )
            adapter = candidates[0]
        return self.save_adapter(adapter, folder, peft=peft, overwrite=overwrite)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | AdapterFile,
        base: nn.Module | str | None = None,
        *,
        name: str | None = None,
        trainable: bool = False,
    ) -> RoadModel:
        """Hugging Face's spelling of `load_adapter` on a fresh model: the base model with
        the adapter in ``source`` (a folder, ours or PEFT's, or an `AdapterFile`) loaded,
        active, and its extra weights (head) in place.

        ``base``: a model to wrap, or a name for `road_interp.models.load_model`; default:
        the model the adapter records (``base_model.name_or_path``), as a sequence classifier
        with as many labels as its head has when its architecture is one, else as a causal LM.
        """
        from .models import load_model

        adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
        if isinstance(base, nn.Module):
            model = cls(base)
        else:
            base_name = base or adapter.base_model.get("name_or_path")
            if not base_name:
                raise ValueError("the adapter records no base model; pass base=")
            architecture = adapter.base_model.get("architecture") or ""
            if architecture.endswith("ForSequenceClassification"):
                head = [v for n, v in adapter.extra.items() if n.rpartition(".")[0] in HEAD_MODULES]
                labels = head[0].shape[0] if head else 2
                model = cls(load_model(base_name, task="classification", num_labels=labels))
            else:
                model = cls(load_model(base_name))
        if name is None:
            name = Path(source).name if not isinstance(source, AdapterFile) else "default"
        model.load_adapter(adapter, name, trainable=trainable)
        return model

    def delete_adapter(self, name: str) -> None:
        self._check_names([name])
        if name in self.active:
            self.set_active(*(n for n in self.active if n != name))
        for site in self.sites.values():
            if name in site.adapters:
                del site.adapters[name]
        del self.configs[name]
        self.extras.pop(name, None)
        self._extra_holder = {n: a for n, a in self._extra_holder.items() if a != name}
        self._extra_claimed = {
            n: v for n, v in self._extra_claimed.items() if n in self._extra_holder
        }

    def set_active(self, *names: str) -> None:
        """Activate these adapters (applied in this order at every site that has them)."""
        self._check_names(names)
        for site in self.sites.values():
            site.set_active(n for n in names if n in site.adapters)
        self.active = tuple(names)

    def set_trainable(self, *names: str) -> None:
        """Make exactly these adapters' parameters trainable (the base model stays frozen)."""
        self._check_names(names)
        for other in self.configs:
            for p in self.adapter_parameters(other).values():
                p.requires_grad_(other in names)

    def trainable_adapters(self) -> tuple[str, ...]:
        """Adapters with a parameter that requires grad."""
        return tuple(
            n
            for n in self.configs
            if any(p.requires_grad for p in self.adapter_parameters(n).values())
        )

    def check_fits(self, adapter: AdapterFile, where: str = "adapter") -> None:
        """Raise ValueError if ``adapter`` was made for a model of another type or shapes."""
        ours, theirs = self.base_model_identity, adapter.base_model
        if theirs.get("model_type") and theirs["model_type"] != ours["model_type"]:
            raise ValueError(
                f"{where} was made for a {theirs['model_type']!r} model "
                f"({theirs.get('architecture')}), this model is {ours['model_type']!r} "
                f"({ours['architecture']})"
            )
        modules = dict(self.model.named_modules())
        for path, size in adapter.sites.items():
            if path not in modules:
                raise ValueError(
                    f"{where} has a site {path} that this {ours['architecture']} does not "
                    "have; was it made for another architecture?"
                )
            actual = (
                injection.out_features(modules[path])
                if adapter.positions is None
                else _hidden_size(self.model, size)
            )
            if actual != size:
                raise ValueError(
                    f"{where}: site {path} has size {size} in the adapter but {actual} in "
                    "this model"
                )

    def _attach(
        self,
        name: str,
        config: RoadConfig,
        sizes: Mapping[str, int],
        generator: torch.Generator | None,
    ) -> None:
        """Put adapter ``name`` on the sites ``sizes`` names (created as needed), all checked
        first; the base model is frozen."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        sites, _ = self.ensure_sites(sizes, config)
        device = _device(self.model)
        for site in sites.values():
            site.add_adapter(name, config, generator).to(device)
        self.configs[name] = config

    def ensure_sites(
        self, sizes: Mapping[str, int], config: RoadConfig
    ) -> tuple[dict[str, RoadSite], set[str]]:
        """The sites at these module paths for adapters placed as ``config`` says (its group
        size and positions), created through `injection.create_site` where missing.

        Every path is checked before any site is created. Returns the sites and the paths of
        those created now (`remove_sites` takes them out again)."""
        for path, size in sizes.items():
            try:
                check_pairing(size, config.group_size)
                injection.check_site(self.model, path, size, config.positions)
            except ValueError as err:
                raise ValueError(f"module {path}: {err}") from None
        existing = self.sites
        sites = {
            path: injection.create_site(
                self.model, path, size, config.positions, self.router.tokens
            )
            for path, size in sizes.items()
        }
        return sites, set(sites) - set(existing)

    def remove_sites(self, paths: Iterator[str] | set[str]) -> None:
        """Take the sites at these paths out of the model (they must hold no adapter)."""
        for path in paths:
            site = injection.site_at(self.model, path)
            if site is not None and len(site.adapters):
                raise ValueError(f"{path} still holds adapters {list(site.adapters)}")
            injection.remove_site(self.model, path)

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"adapter names must be non-empty and contain no '.', got {name!r}")
        if name in RESERVED_NAMES:
            raise ValueError(
                f"{name!r} is the name of a torch Module attribute; choose another adapter name"
            )
        if name in self.configs:
            raise ValueError(f"an adapter named {name!r} already exists; delete_adapter() it first")

    def _check_names(self, names) -> None:
        unknown = [n for n in names if n not in self.configs]
        if unknown:
            raise KeyError(f"no adapter named {unknown}; this model has {list(self.configs)}")

    @contextmanager
    def disabled(self) -> Iterator[RoadModel]:
        """Run the base model's rotations: every site passes its input through untouched.
        (Extra weights a loaded adapter brought, such as a classifier's head, stay loaded;
        `remove` puts the model's own back.)"""
        previous = [(site, site.disabled) for site in self.sites.values()]
        for site, _ in previous:
            site.disabled = True
        try:
            yield self
        finally:
            for site, flag in previous:  # nested or routed contexts keep their own state
                site.disabled = flag

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """``{"<site>.theta": θ, "<site>.alpha": α}`` of adapter ``name``."""
        out: dict[str, nn.Parameter] = {}
        for site_name, site in self.sites_of(name).items():
            adapter = site.adapter(name)
            out[f"{site_name}.theta"] = adapter.theta
            out[f"{site_name}.alpha"] = adapter.alpha
        return out

    def subspace_of(self, name: str) -> Subspace | None:
        """The planes adapter ``name`` may move (its ``config.subspace``), or None for all."""
        spec = self.configs[name].subspace
        if spec is None:
            return None
        sizes = {path: site.size for path, site in self.sites_of(name).items()}
        return Subspace.from_spec(spec, sizes, self.configs[name].group_size)

    @contextmanager
    def restricted(self) -> Iterator[RoadModel]:
        """Inside, every trainable adapter with a ``subspace`` trains only on its planes
        (`road_interp.subspaces.train_on`: the identity elsewhere, gradients masked there).
        `road_interp.training.train` enters it; enter it around a loop of your own."""
        with ExitStack() as stack:
            for name in self.trainable_adapters():
                subspace = self.subspace_of(name)
                if subspace is not None:
                    stack.enter_context(train_on(self, name, subspace))
            yield self

    # -- routing ----------------------------------------------------------------------------
    def route(
        self,
        rows: RowCoefficients,
        group_size: int,
        *,
        requests: int | None = None,
        exclusive: bool = True,
    ) -> Any:
        """Per-row rotations for the forward passes inside (see `Router.route`)."""
        return self.router.route(
            self.sites, rows, group_size, requests=requests, exclusive=exclusive
        )

    def prompt_tokens(self, mask: Tensor) -> Any:
        """Inside, output sites take each row's prompt to be where ``mask`` (B, L) is True
        (see `Router.prompt_tokens`)."""
        return self.router.prompt_tokens(mask)

    # -- merging and removal ----------------------------------------------------------------
    def merge(self) -> None:
        """Fold the active adapters into every Linear/Conv1D site's weights."""
        sites = self.linear_sites().values()
        for site in sites:  # check all before changing any
            for n in site.active:
                site.adapter(n).check_finite(f"{site.site_name} / adapter {n!r}")
        for site in sites:
            site.merge()

    def unmerge(self) -> None:
        for site in self.linear_sites().values():
            site.unmerge()

    def remove(self) -> nn.Module:
        """Take every site and the hook out and return the wrapped model with its original
        modules (bit-identical to before if nothing is merged; merged sites are unmerged
        first) and its original ``requires_grad`` flags."""
        self.unmerge()
        return self._unload(restore_extra=True)

    def merge_and_unload(self) -> nn.Module:
        """Fold the active adapters in and return a plain model: no sites, no hook, and the
        parameters' original ``requires_grad`` flags."""
        outputs = [n for n, s in self.sites.items() if isinstance(s, RoadOutput)]
        if outputs:
            raise ValueError(
                f"sites on module outputs at token positions ({outputs[0]}, ...) cannot be "
                "folded into weights; save the adapter and remove() the model instead"
            )
        self.merge()
        for site in self.linear_sites().values():
            site.merged = ()
        return self._unload(restore_extra=False)

    def _unload(self, *, restore_extra: bool) -> nn.Module:
        for path in self.sites:
            injection.remove_site(self.model, path)
        if restore_extra:  # remove(): the wrapped model's own head back
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for n, value in self._extra_original.items():
                    params[n].copy_(value)
        self._extra_original.clear()
        self.router.close()
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(n, p.requires_grad))
        self.configs.clear()
        self.extras.clear()
        self._extra_holder.clear()
        self._extra_claimed.clear()
        self.active = ()
        return self.model

    # -- running ----------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)  # type: ignore[operator]

    # -- reporting --------------------------------------------------------------------------
    def adapter_parameter_ids(self) -> set[int]:
        """ids of every adapter parameter in the model (to tell them from the base model's)."""
        return {id(p) for site in self.sites.values() for p in site.adapters.parameters()}

    def trainable_report(self, name: str | None = None) -> pd.DataFrame:
        """Parameters of adapter ``name`` (default: the first active) per module type.

        One row per module type (``self_attn.q_proj``, ``block`` for a block's output, ...),
        in the order the sites come in the model. Columns: module_type, sites (how many sites
        of that type hold the adapter), params (its θ and α entries there) and
        percent_of_base (params as a percentage of the base model's parameters: 0.1 means
        0.1 %). There is no total row; the adapter's total is ``table[["sites", "params",
        "percent_of_base"]].sum()``, and ``table.attrs["base_params"]`` holds the base
        model's parameter count the percentages divide by.
        """
        name = name or (self.active[0] if self.active else next(iter(self.configs), None))
        if name is None:
            raise ValueError("this model has no adapters yet")
        ours = self.adapter_parameter_ids()
        base = sum(p.numel() for p in self.model.parameters() if id(p) not in ours)
        rows: dict[str, list[int]] = {}
        for site_name, site in self.sites_of(name).items():
            a = site.adapter(name)
            kind = _module_type(site_name)
            rows.setdefault(kind, [0, 0])
            rows[kind][0] += 1
            rows[kind][1] += a.theta.numel() + a.alpha.numel()
        table = pd.DataFrame(
            [(k, n, p) for k, (n, p) in rows.items()], columns=["module_type", "sites", "params"]
        )
        table["percent_of_base"] = 100.0 * table["params"] / base
        table.attrs["base_params"] = base
        return table


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP, `RoadModel` and PEFT wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "module", None)  # DDP
        if isinstance(inner, nn.Module):
            model = inner
            continue
        get_base = getattr(model, "get_base_model", None)  # PEFT
        if callable(get_base):
            model = get_base()
            continue
        if isinstance(model, RoadModel):
            model = model.model
            continue
        break
    return model


def _hidden_size(model: nn.Module, default: int) -> int:
    """The model's hidden size (the width of block outputs), or ``default`` if it has none."""
    return int(getattr(getattr(model, "config", None), "hidden_size", None) or default)


def road_model_in(model: nn.Module) -> RoadModel | None:
    """The `RoadModel` that ``model`` is or wraps (through DDP's ``module``), or None."""
    for _ in range(4):
        if isinstance(model, RoadModel):
            return model
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return None


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _module_type(site_name: str) -> str:
    """The part of a module path after the block index: 'model.layers.3.mlp.up_proj' ->
    'mlp.up_proj'; a block output 'model.layers.3' -> 'block'."""
    parts = site_name.split(".")
    if parts[-1].isdigit():
        return "block"
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[i + 1 :])
    return parts[-1]
