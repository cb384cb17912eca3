"""Suffix interchanges against full forward passes, against pyvene, and their plane-set nulls."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from experiments.composition.store import ResultStore
from road_interp import Positions, RoadConfig, RoadModel
from road_interp.interchange import (
    SuffixInterchange,
    positions_of,
    shared_suffix_length,
    top_planes,
)
from road_interp.io import AdapterFile
from road_interp.pyvene_view import interchange, intervenable
from road_interp.subspaces import Subspace
from tests.conftest import tiny_llama

SITES = ["model.layers.0", "model.layers.1"]
LABELS = [5, 9, 17]
SUFFIX = torch.tensor([11, 12, 13])


def prompts(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch of random prompts of these lengths, all ending in SUFFIX."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + len(SUFFIX)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n - len(SUFFIX) :] = torch.cat(
            [torch.randint(20, 96, (n,), generator=gen), SUFFIX]
        )
        mask[row, width - n - len(SUFFIX) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def adapted() -> RoadModel:
    """Tiny Llama with a random RoAd1 adapter on both block outputs (every token)."""
    model = RoadModel(tiny_llama())
    config = RoadConfig(targets=tuple(SITES), positions="all", init="random", group_size=2)
    model.add_adapter("x", config, seed=0)
    return model


def full_logits(
    model, batch, patch: Mapping[str, tuple[torch.Tensor, torch.Tensor]] = {}, labels=LABELS
):
    """Reference: one forward pass of the whole prompts, the last k outputs of each patched
    site replaced where mask by the given (B, k, d) values."""

    def hook(site):
        mask, values = patch[site]

        def replace(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            k = values.shape[1]
            h[:, -k:] = torch.where(mask, values, h[:, -k:])
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return replace

    handles = [model.get_submodule(s).register_forward_hook(hook(s)) for s in patch]
    try:
        with torch.no_grad():
            out = model(**batch, position_ids=positions_of(batch["attention_mask"]))
    finally:
        for handle in handles:
            handle.remove()
    return out.logits[:, -1, labels]


def test_suffix_length_is_the_shared_tail_and_needs_left_padding():
    batch = prompts([4, 6, 2])
    assert shared_suffix_length(batch["input_ids"], batch["attention_mask"]) == 3
    right = {k: v.flip(-1) for k, v in batch.items()}
    with pytest.raises(ValueError, match="left-padded"):
        shared_suffix_length(right["input_ids"], right["attention_mask"])


def test_without_an_exchange_the_cached_suffix_gives_the_full_pass_row_by_row():
    model = adapted()
    batch = prompts([4, 6, 2])
    run = SuffixInterchange(model.model, batch, SITES, LABELS)
    torch.testing.assert_close(run.plain(), full_logits(model.model, batch), atol=1e-5, rtol=1e-5)
    for row in range(3):  # a padded row answers as it would alone
        alone = {
            k: v[row : row + 1, v.shape[1] - int(batch["attention_mask"][row].sum()) :]
            for k, v in batch.items()
        }
        torch.testing.assert_close(
            run.plain()[row],
            SuffixInterchange(model.model, alone, SITES, LABELS).plain()[0],
            atol=1e-5,
            rtol=1e-5,
        )


def test_exchange_equals_a_patched_full_pass_with_the_adapter_acting():
    model = adapted()
    base, source = prompts([4, 6, 2], seed=1), prompts([5, 3, 6], seed=2)
    planes = Subspace.random({s: 128 for s in SITES}, 0.4, seed=3)
    masks = {s: planes.coordinate_mask(s, 2) for s in SITES}
    sources = SuffixInterchange(model.model, source, SITES, LABELS).sources()
    got = SuffixInterchange(model.model, base, SITES, LABELS).logits(masks, sources)
    expected = full_logits(model.model, base, {s: (masks[s], sources[s]) for s in SITES})
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, full_logits(model.model, base), atol=1e-3)
    short = {s: v[:, 1:] for s, v in sources.items()}  # recorded with another k
    run = SuffixInterchange(model, base, SITES, LABELS)  # a RoadModel: its inner model's paths
    with pytest.raises(ValueError, match="batch, k, d"):
        run.logits(masks, short)
    torch.testing.assert_close(run.logits(masks, sources), got)  # the failed call left it whole


def test_exchange_equals_pyvenes_interchange_on_a_plain_model():
    model = tiny_llama()
    base, source = (
        prompts([5, 5], seed=1),
        prompts([5, 5], seed=2),
    )  # no padding: pyvene's positions
    planes = Subspace.random({s: 128 for s in SITES}, 0.5, seed=4)
    masks = {s: planes.coordinate_mask(s, 2) for s in SITES}
    sources = SuffixInterchange(model, source, SITES, LABELS).sources()
    got = SuffixInterchange(model, base, SITES, LABELS).logits(masks, sources)
    expected = interchange(model, masks, base, source, Positions("last", 3)).logits[:, -1, LABELS]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pyvene_interchange_refuses_output_sites_it_would_strip():
    model = adapted()
    with pytest.raises(ValueError, match="forward hook"):
        intervenable(model.model, {})


def test_sites_on_prompt_tokens_are_refused():
    model = RoadModel(tiny_llama())
    model.add_adapter("x", RoadConfig(targets=tuple(SITES), positions="prompt", group_size=2))
    with pytest.raises(ValueError, match="prompt or answer"):
        SuffixInterchange(model.model, prompts([4, 4]), SITES, LABELS)


def test_random_like_draws_as_many_planes_per_site_and_top_planes_the_largest_angles():
    sizes = {"a": 16, "b": 32}
    theta = {"a": torch.linspace(-1, 0.5, 8), "b": torch.zeros(16)}
    theta["b"][[3, 11]] = torch.tensor([0.2, -0.9])
    params = {s: (t, torch.ones_like(t)) for s, t in theta.items()}
    adapter = AdapterFile(RoadConfig(group_size=2), {}, params)
    top = top_planes(adapter, 2)
    assert top.planes["a"].tolist() == [0, 1] and top.planes["b"].tolist() == [3, 11]
    null = Subspace.random_like(top, seed=0)
    assert {s: p.numel() for s, p in null.planes.items()} == {"a": 2, "b": 2}
    assert null.sizes == sizes
    other = Subspace.random_like(top, seed=1)
    assert any(not torch.equal(null.planes[s], other.planes[s]) for s in sizes)
    with pytest.raises(ValueError, match="k must be"):
        top_planes(adapter, 9)


@pytest.mark.real
def test_the_interchange_benchmark_on_the_kept_sentiment_adapters(tmp_path):
    from experiments.composition.interchange_bench import (
        SeedInterchange,
        make_config,
        run_benchmark,
    )

    cfg = make_config("quick", prompts=8, nulls=1)
    seed = SeedInterchange(cfg, 0)
    model = seed.model("content")  # the real model: a suffix exchange = a patched full pass
    seed.tok.padding_side = "left"
    batch = dict(
        seed.tok(seed.texts[:3], padding=True, add_special_tokens=False, return_tensors="pt")
    )
    source = dict(
        seed.tok(seed.texts[3:6], padding=True, add_special_tokens=False, return_tensors="pt")
    )
    k = shared_suffix_length(batch["input_ids"], batch["attention_mask"])
    masks = {s: seed.plane_sets["top"].coordinate_mask(s, 2) for s in seed.sites}
    sources = SuffixInterchange(model, source, seed.sites, seed.label_ids, k=k).sources()
    got = SuffixInterchange(model, batch, seed.sites, seed.label_ids, k=k).logits(masks, sources)
    patch = {s: (masks[s], sources[s]) for s in seed.sites}
    torch.testing.assert_close(
        got, full_logits(model, batch, patch, seed.label_ids), atol=1e-3, rtol=1e-4
    )

    summary = run_benchmark(cfg, tmp_path)
    cell = ResultStore(tmp_path)["seed0/content"]
    gold, sources_of = np.array(cell["gold"]), np.array(cell["source"])
    assert (gold[sources_of] != gold).all()  # every source has the other label
    names = {"plain", "all", "content", "format", "top", "random-half/0", "random-top/0"}
    assert set(cell["predicted"]) == names and all(len(p) == 8 for p in cell["predicted"].values())
    assert cell["planes"]["content"] == 8 * 144 and cell["planes"]["top"] == 8 * 16
    assert set(summary["verdicts"]) == {
        f"{m}/{s}" for m in ("content", "base") for s in ("content", "format", "top")
    }
    low, point, high = summary["models"]["content"]["sets"]["content"]["vs_base"]
    assert low <= point <= high
    assert (tmp_path / "interchange.png").exists()
    low, point, high = summary["models"]["base"]["all_planes_effect"]
    assert low <= point <= high
    keys = set(ResultStore(tmp_path).records)
    assert run_benchmark(cfg, tmp_path)["finished"] and set(ResultStore(tmp_path).records) == keys
