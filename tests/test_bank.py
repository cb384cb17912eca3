"""Mixed-adapter serving: coefficient tables, the adapter bank's registry, and per-request
routing. The core check: every request of a mixed batch (base rows included) gets what it
gets when run alone with its adapter through the ordinary `RoadModel` path, in forward, greedy,
beam-search and sampled `generate`, on both embedded real models."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from transformers import GenerationConfig

from road_interp import RoadConfig, RoadModel, write_adapter, write_peft
from road_interp.bank import AdapterBank, CoefficientTables
from road_interp.bank.synthetic import random_adapter
from tests.conftest import tiny_bert, tiny_llama

SUBSET = {"llama": ("q_proj", "v_proj"), "bert": ("query", "value")}
"""Targets of the adapter that covers only some sites (identity rows everywhere else)."""


def adapters_for(model, group_size: int = 64) -> dict:
    """Three random adapters of different variants and target sets, one group_size."""
    subset = SUBSET[model.config.model_type]
    return {
        "a": random_adapter(model, RoadConfig("road_1", group_size), seed=1),
        "b": random_adapter(model, RoadConfig("road_2", group_size, targets=subset), seed=2),
        "c": random_adapter(model, RoadConfig("road_4", group_size), seed=3),
    }


@contextmanager
def served(model, group_size: int = 64):
    """A RoadModel holding the adapters (the reference path) and a bank serving the same
    adapters over it; the model is restored afterwards."""
    road = RoadModel(model)
    try:
        files = adapters_for(model, group_size)
        bank = AdapterBank(road)
        for name, f in files.items():
            road.load_adapter(f, name, activate=False)
            bank.add(name, f)
        yield road, bank
    finally:
        road.remove()


def alone(road: RoadModel, name: str | None) -> None:
    """Make ``road`` run only adapter ``name`` (None: the base model)."""
    road.set_active(*([name] if name else []))


def assert_close_to_scale(actual, expected, rel=1e-4):
    error = (actual - expected).abs().max() / expected.abs().max()
    assert error < rel, f"max error {error:.2e} of the logit scale"


def assert_unrouted(road: RoadModel):
    assert all(site.routing is None and not site.disabled for site in road.sites.values())
    assert not road.router.routing
    assert list(road.model._forward_pre_hooks.values()) == [road.router._read_inputs]


# -- tables -----------------------------------------------------------------------------------
def test_tables_identity_rows_missing_sites_and_drop():
    tables = CoefficientTables()
    cpu = {"x": torch.device("cpu"), "y": torch.device("cpu")}
    tables.append({"x": (torch.full((4,), 2.0), torch.full((4,), 3.0))}, cpu)
    tables.append({"y": (torch.full((2,), 5.0), torch.full((2,), 7.0))}, cpu)
    assert tables.num_rows == 3
    x, y = tables.sites["x"], tables.sites["y"]
    assert torch.equal(x.c[:, 0], torch.tensor([1.0, 2.0, 1.0]))  # identity, adapter 1, identity
    assert torch.equal(x.s[:, 0], torch.tensor([0.0, 3.0, 0.0]))
    assert torch.equal(y.c[:, 0], torch.tensor([1.0, 1.0, 5.0]))
    rows = tables.gather(torch.tensor([2, 0, 1, 2]))
    assert torch.equal(rows["y"][1][:, 0], torch.tensor([7.0, 0.0, 0.0, 7.0]))
    tables.drop(1, keep_sites={"y"})
    assert set(tables.sites) == {"y"} and tables.num_rows == 2
    assert torch.equal(tables.sites["y"].c[:, 0], torch.tensor([1.0, 5.0]))
    with pytest.raises(IndexError, match="not an adapter row"):
        tables.drop(0, keep_sites={"y"})


# -- registry (tiny models) -------------------------------------------------------------------
def test_remove_renumbers_rows_and_unwraps_the_sites_it_created(input_ids):
    model = tiny_llama()
    with torch.no_grad():
        base = model(input_ids).logits
    bank = AdapterBank(model)
    files = adapters_for(model, group_size=2)
    for name, f in files.items():
        bank.add(name, f)
    routes = ["c", None, "b"]
    with torch.no_grad(), bank.route(routes):
        before = bank.model(input_ids).logits
    bank.remove("a")
    assert bank.names == ("b", "c")
    with torch.no_grad(), bank.route(routes):
        after = bank.model(input_ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not torch.allclose(after[0], base[0], atol=1e-3)  # adapter c does change row 0
    bank.remove("c")
    assert set(bank.tables.sites) == set(files["b"].params)  # only b's sites are left
    bank.remove("b")
    assert not bank.model.sites and bank.group_size is None
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, base)


def test_add_rejects_bad_adapters_and_changes_nothing():
    model = tiny_llama()
    bank = AdapterBank(model)
    bank.add("a", random_adapter(model, RoadConfig(group_size=4), seed=0))
    sites, tables = dict(bank.model.sites), dict(bank.tables.sites)
    other_g = random_adapter(model, RoadConfig(group_size=2), seed=1)
    with pytest.raises(ValueError, match="group_size 2.*group_size 4"):
        bank.add("g2", other_g)
    with pytest.raises(ValueError, match="already has an adapter named 'a'"):
        bank.add("a", random_adapter(model, RoadConfig(group_size=4), seed=2))
    for other in (tiny_bert(), tiny_llama_wider()):
        foreign = random_adapter(other, RoadConfig(group_size=4), seed=3)
        with pytest.raises(ValueError, match="made for a 'bert'|does not have|size"):
            bank.add("foreign", foreign)
    broken = random_adapter(model, RoadConfig(group_size=4), seed=4)
    next(iter(broken.params.values()))[0][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bank.add("broken", broken)
    assert bank.names == ("a",) and bank.model.sites == sites
    assert all(bank.tables.sites[n] is t for n, t in tables.items())


def tiny_llama_wider():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
    )
    return LlamaForCausalLM(cfg).eval()


def test_folders_ours_and_peft_give_the_same_rows(tmp_path):
    model = tiny_llama()
    f = random_adapter(model, RoadConfig("road_2", group_size=4), seed=0)
    bank = AdapterBank(model)
    bank.add("memory", f)
    assert bank.load(write_adapter(f, tmp_path / "ours")) == "ours"
    bank.load(write_peft(f, tmp_path / "peft_format"), name="peft")
    rows = bank.tables.gather(bank.rows_for(["memory", "ours", "peft"]))
    for c, s in rows.values():
        assert torch.equal(c[0], c[1]) and torch.equal(c[0], c[2])
        assert torch.equal(s[0], s[1]) and torch.equal(s[0], s[2])


def test_memory_report():
    model = tiny_llama()
    bank = AdapterBank(model)
    bank.add("a", random_adapter(model, RoadConfig(group_size=4), seed=0))
    subset = RoadConfig(group_size=4, targets=SUBSET["llama"])
    bank.add("b", random_adapter(model, subset, seed=1))
    report = bank.memory_report()
    assert list(report["adapter"]) == ["(base: identity row)", "a", "b"]  # no total row
    sizes = bank.model.sites
    expected = sum(2 * sizes[n].size * 4 for n in bank.tables.sites) * 3  # 3 rows of c and s
    assert report["table_bytes"].sum() == expected
    assert report["params"].iloc[1] > report["params"].iloc[2] > 0
    assert report.attrs["base_bytes"] == 4 * sum(p.numel() for p in tiny_llama().parameters())
    assert report["percent_of_base"].to_numpy() == pytest.approx(
        100.0 * report["table_bytes"].to_numpy() / report.attrs["base_bytes"]
    )


def test_route_overrides_and_silences_other_adapters(input_ids):
    """Inside route(), a request sees only its routed adapter: the model's own active adapters
    (on bank sites and elsewhere) do not act, and come back afterwards."""
    model = tiny_llama()
    with torch.no_grad():
        base = model(input_ids).logits
    road = RoadModel(model)
    road.add_adapter("own", RoadConfig(group_size=4, init="random"), seed=9)
    with torch.no_grad():
        own = road(input_ids).logits
    bank = AdapterBank(road)  # a bank built on a RoadModel serves its adapters
    assert bank.names == ("own",)
    bank.add("q", random_adapter(model, RoadConfig(group_size=4, targets=("q_proj",)), seed=1))
    with torch.no_grad(), bank.route([None, None, None]):
        torch.testing.assert_close(road(input_ids).logits, base)
    assert_unrouted(road)
    with torch.no_grad():
        assert torch.equal(road(input_ids).logits, own)
    with torch.no_grad(), bank.route(["own", None, "own"]):
        routed = road(input_ids).logits
    torch.testing.assert_close(routed[0::2], own[0::2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed[1], base[1])


def test_output_and_linear_adapters_share_a_batch_and_match_each_alone():
    """A representation adapter (block output at the last prompt token) and a linear adapter
    in one left-padded batch: each row equals that adapter alone on a RoadModel."""
    ids = torch.randint(1, 96, (3, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    model = tiny_llama()
    at_last = RoadConfig("road_1", 2, ("model.layers.1",), "random", positions="last")
    linear = RoadConfig("road_2", 2, ("q_proj", "down_proj"), "random")
    road = RoadModel(model)
    road.add_adapter("rep", at_last, seed=1)
    road.add_adapter("lin", linear, seed=2)
    alone = {}
    with torch.no_grad():
        for name in ("rep", "lin"):
            road.set_active(name)
            alone[name] = road(input_ids=ids, attention_mask=mask).logits
        road.set_active()
        base = road(input_ids=ids, attention_mask=mask).logits
    bank = AdapterBank(road)
    assert bank.names == ("rep", "lin")
    with torch.no_grad(), bank.route(["rep", "lin", None]):
        mixed = road(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(mixed[0], alone["rep"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], alone["lin"][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[2], base[2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone["rep"][0, -1], base[0, -1], atol=1e-4)
    # a bank on a plain model creates the output site from the folder's placement, too
    other = AdapterBank(tiny_llama())
    other.add("rep", road.adapter_file("rep"))
    with torch.no_grad(), other.route(["rep", None, None]):
        again = other.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(again[0], alone["rep"][0], rtol=1e-5, atol=1e-5)
    at_all = RoadConfig("road_1", 2, ("model.layers.1",), "random", positions="all")
    elsewhere = RoadModel(tiny_llama())
    elsewhere.add_adapter("everywhere", at_all, seed=3)  # same module, other positions
    with pytest.raises(ValueError, match="one site per module"):
        other.add("everywhere", elsewhere.adapter_file("everywhere"))
    assert other.names == ("rep",)


def test_route_refuses_merged_or_nested_and_clears_on_exceptions(input_ids):
    model = tiny_llama()
    bank = AdapterBank(model)
    bank.add("a", random_adapter(model, RoadConfig(group_size=4), seed=0))
    with pytest.raises(RuntimeError, match="boom"), bank.route(["a", None, "a"]):
        raise RuntimeError("boom")
    assert_unrouted(bank.model)
    with bank.route(["a"] * 3), pytest.raises(RuntimeError, match="second route"):  # noqa: SIM117
        with bank.route(["a"] * 3):
            pass
    assert_unrouted(bank.model)
    bank.model.add_adapter("m", RoadConfig(group_size=4, init="random"), seed=1)
    bank.model.merge()
    with pytest.raises(RuntimeError, match="merged"), bank.route(["a"] * 3):
        pass
    bank.model.unmerge()
    with pytest.raises(ValueError, match="list"), bank.route("a"):
        pass
    with pytest.raises(ValueError, match="repeats"), bank.route(["a"], repeats=0):
        pass
    assert_unrouted(bank.model)


# -- the embedded real models ------------------------------------------------------------------
PROMPTS = [
    "The staff were friendly and the room was spotless.",
    "Cold food, rude waiter.",
    "Write one sentence about the sea and the old lighthouse keeper.",
    "Paris is",
]
ROUTES = ["a", None, "c", "b"]


@pytest.mark.real
def test_minilm_mixed_batch_equals_each_request_alone(real_minilm):
    model, tok = real_minilm
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with served(model) as (road, bank), torch.no_grad():
        with bank.route(ROUTES):
            mixed = road(**batch).logits
        assert_unrouted(road)
        for i, (text, name) in enumerate(zip(PROMPTS, ROUTES, strict=True)):
            alone(road, name)
            single = road(**tok([text], return_tensors="pt")).logits
            assert_close_to_scale(mixed[i], single[0])
        alone(road, None)
        base = road(**batch).logits
    assert not torch.allclose(mixed[0], base[0], atol=1e-3)  # the adapters do act


@pytest.mark.real
def test_smollm2_mixed_forward_and_greedy_generate_equal_each_request_alone(real_smollm2):
    model, tok = real_smollm2
    right = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="right")
    left = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    greedy = GenerationConfig(
        max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id
    )
    with served(model) as (road, bank), torch.no_grad():
        with bank.route(ROUTES):
            mixed = road(**right).logits
        tokens = bank.generate(
            ROUTES,
            left["input_ids"],
            attention_mask=left["attention_mask"],
            generation_config=greedy,
        )
        assert_unrouted(road)
        for i, (text, name) in enumerate(zip(PROMPTS, ROUTES, strict=True)):
            alone(road, name)
            ids = tok([text], return_tensors="pt")["input_ids"]
            n = ids.shape[1]
            assert_close_to_scale(mixed[i, :n], road(input_ids=ids).logits[0])
            single = road.generate(ids, generation_config=greedy)
            assert torch.equal(tokens[i, -5:], single[0, -5:]), (name, tokens[i], single[0])
        alone(road, None)
        base = road(**right).logits
    assert not torch.allclose(mixed[0], base[0], atol=1e-2)


@pytest.mark.real
def test_smollm2_beam_search_with_routing_equals_each_request_alone(real_smollm2):
    model, tok = real_smollm2
    prompts, routes = PROMPTS[:3], ROUTES[:3]
    left = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    beams = GenerationConfig(
        num_beams=3,
        num_return_sequences=2,
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    with served(model) as (road, bank), torch.no_grad():
        tokens = bank.generate(
            routes,
            left["input_ids"],
            attention_mask=left["attention_mask"],
            generation_config=beams,
        )
        assert tokens.shape[0] == 2 * len(prompts)
        for i, (text, name) in enumerate(zip(prompts, routes, strict=True)):
            alone(road, name)
            single = road.generate(
                tok([text], return_tensors="pt")["input_ids"], generation_config=beams
            )
            assert torch.equal(tokens[2 * i : 2 * i + 2, -4:], single[:, -4:]), name
        assert_unrouted(road)


@pytest.mark.real
def test_smollm2_sampling_with_routing_samples_each_adapters_distribution(real_smollm2):
    """Sampled sequences (2 per request) are reproducible with a seed, and at every step the
    logits each row sampled from are its adapter's logits for that row's own prefix (checked
    by re-running each sequence alone, teacher-forced)."""
    model, tok = real_smollm2
    prompts, routes = PROMPTS[:3], ROUTES[:3]
    left = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    steps = 3
    sampling = GenerationConfig(
        do_sample=True,
        top_k=0,
        num_return_sequences=2,
        max_new_tokens=steps,
        min_new_tokens=steps,
        pad_token_id=tok.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with served(model) as (road, bank), torch.no_grad():
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            runs.append(
                bank.generate(
                    routes,
                    left["input_ids"],
                    attention_mask=left["attention_mask"],
                    generation_config=sampling,
                )
            )
        assert torch.equal(runs[0].sequences, runs[1].sequences)
        out = runs[0]
        step_logits = torch.stack(out.logits, dim=1)  # (B * 2, steps, vocab)
        for r in range(out.sequences.shape[0]):
            i = r // 2
            mask = torch.cat((left["attention_mask"][i], torch.ones(steps, dtype=torch.long)))
            seq = out.sequences[r][mask.bool()][None]  # the row without its left padding
            alone(road, routes[i])
            forced = road(input_ids=seq[:, :-1]).logits[0, -steps:]
            assert_close_to_scale(step_logits[r], forced)
        assert_unrouted(road)


@pytest.mark.real
def test_smollm2_bad_requests_fail_before_any_computation(real_smollm2, real_minilm):
    model, tok = real_smollm2
    batch = tok(PROMPTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        base = model(**batch).logits
    calls = []
    embed = model.get_input_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        with served(model) as (road, bank), torch.no_grad():
            with (
                pytest.raises(KeyError, match="'cc' .*did you mean 'c'"),
                bank.route(["a", "cc", None]),
            ):
                road(**batch)
            with (
                pytest.raises(ValueError, match="3 rows but the routing expects 2"),
                bank.route(["a", None]),
            ):
                road(**batch)
            hint = "num_beams or num_return_sequences = 3"
            with pytest.raises(ValueError, match=hint), bank.route([None]):
                road(**batch)
            with pytest.raises(ValueError, match="4 entries"):
                bank.generate(["a"] * 4, batch["input_ids"])
            assert not calls
            tables = dict(bank.tables.sites)
            sites = set(road.sites)
            for other in (real_minilm[0], tiny_llama()):
                foreign = random_adapter(other, RoadConfig(group_size=64), seed=5)
                with pytest.raises(ValueError, match="made for a 'bert'|in the adapter but"):
                    bank.add("foreign", foreign)
            assert bank.names == ("a", "b", "c") and set(road.sites) == sites
            assert all(bank.tables.sites[n] is t for n, t in tables.items())
            assert_unrouted(road)
            alone(road, None)
            torch.testing.assert_close(road(**batch).logits, base, rtol=0, atol=0)
    finally:
        embed.remove()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)
