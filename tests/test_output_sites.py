"""Output sites: RoAd on module outputs at token positions (``RoadConfig.positions``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from road_interp import Positions, RoadConfig, RoadModel, rotation
from road_interp.compose import union
from road_interp.encoding import IGNORE_INDEX, encode_lm
from road_interp.evaluation import answer_logprobs, pad_left
from road_interp.io import read_adapter, write_peft
from road_interp.layers import SITE_ATTR, RoadOutput
from road_interp.subspaces import Subspace, model_sizes, route_subspaces
from tests.conftest import tiny_bert, tiny_llama

CONFIG = RoadConfig(
    variant="road_1", group_size=2, targets=("model.layers.1",), init="random", positions="last"
)


def at(positions: str, config: RoadConfig = CONFIG, *targets: str) -> RoadConfig:
    """``config`` at other positions (and targets)."""
    return replace(config, positions=positions, targets=targets or config.targets)


def padded_batch():
    """Two prompts of lengths 6 and 4, left-padded (as for generation)."""
    ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    return ids, mask


def test_position_masks_with_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert Positions("last").mask(left).nonzero().tolist() == [[0, 4], [1, 4]]
    assert Positions("last").mask(right).nonzero().tolist() == [[0, 2], [1, 4]]
    assert Positions("first", 2).mask(left).nonzero().tolist() == [[0, 2], [0, 3], [1, 0], [1, 1]]
    assert Positions("last", 2).mask(right).nonzero().tolist() == [[0, 1], [0, 2], [1, 3], [1, 4]]
    assert torch.equal(Positions("all").mask(right), right.bool())
    with pytest.raises(ValueError, match="unknown positions"):
        Positions("middle")
    with pytest.raises(ValueError, match="positive int"):
        Positions("last", 0)
    for positions in (Positions("all"), Positions("last"), Positions("first", 3)):
        assert Positions.parse(str(positions)) == positions
    assert Positions.parse("last") == Positions("last", 1)
    with pytest.raises(ValueError, match="cannot read positions 'last:x'"):
        Positions.parse("last:x")


def test_prompt_and_answer_positions_split_the_real_tokens():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert Positions("prompt").mask(left).nonzero().tolist() == [[0, 2], [0, 3]] + [
        [1, i] for i in range(4)
    ]
    assert Positions("answer").mask(left).nonzero().tolist() == [[0, 4], [1, 4]]
    # teacher forcing: the prompt mask ends before the answer tokens (then right padding)
    forced = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    assert Positions("answer").mask(forced).nonzero().tolist() == [[0, i] for i in (2, 3, 4, 5)] + [
        [1, i] for i in (1, 2, 3, 4, 5)
    ]
    assert not (Positions("prompt").mask(forced) & Positions("answer").mask(forced)).any()
    for kind in ("prompt", "answer"):
        assert Positions.parse(kind) == Positions(kind)
        with pytest.raises(ValueError, match="take no k"):
            Positions(kind, 2)
    assert [Positions(k).on_decode_steps for k in ("all", "first", "last", "prompt", "answer")] == [
        True,
        False,
        False,
        False,
        True,
    ]


@pytest.mark.parametrize("kinds", [("answer",), ("prompt",), ("prompt", "answer")])
def test_generation_scores_equal_teacher_forced_logprobs_at_prompt_and_answer_positions(kinds):
    """Position routing is the same in training (teacher forcing, one pass over prompt + answer)
    as in ``generate`` (prefill, then decode steps through the cache): the log-probs of the
    greedy continuation agree. The prompt adapter sits on layer 0 (on the last layer, prompt
    tokens but the last reach no logit), the answer adapter on layer 1."""
    ids, mask = padded_batch()
    model = RoadModel(tiny_llama())
    for i, kind in enumerate(kinds):
        layer = f"model.layers.{int(kind == 'answer')}"
        model.add_adapter(kind, at(kind, CONFIG, layer), seed=i + 1)
    model.set_active(*kinds)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
        )
        steps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
        new = out.sequences[:, ids.shape[1] :]
        generated = steps.gather(-1, new.unsqueeze(-1)).squeeze(-1)  # (B, 4)
        labels = torch.cat([torch.full_like(ids, IGNORE_INDEX), new], 1)
        full_mask = torch.cat([mask, torch.ones_like(new)], 1)
        batch = {
            "input_ids": out.sequences,
            "attention_mask": full_mask,
            "position_ids": (full_mask.cumsum(-1) - 1).clamp(min=0),
            "labels": labels,
        }
        forced, _ = answer_logprobs(model, batch)
        torch.testing.assert_close(forced, generated, rtol=1e-4, atol=1e-4)
        with model.disabled():
            base = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=0,
                output_scores=True,
                return_dict_in_generate=True,
            )
        assert not torch.allclose(torch.stack(base.scores, 1), torch.stack(out.scores, 1))


def test_all_positions_on_a_linear_output_equals_the_linear_site(input_ids):
    """The same rotation on q_proj's output: as a representation site and as a RoadLinear."""
    target = "model.layers.0.self_attn.q_proj"
    config = RoadConfig(variant="road_2", group_size=8, targets=(target,), init="random")
    rep = RoadModel(tiny_llama())
    rep.add_adapter("x", at("all", config), seed=3)
    assert isinstance(rep.sites[target], RoadOutput)
    lin = RoadModel(tiny_llama())
    params = rep.adapter_file("x").params[target]
    lin.add_adapter("x", config)
    with torch.no_grad():
        lin.sites[target].adapter("x").theta.copy_(params[0])
        lin.sites[target].adapter("x").alpha.copy_(params[1])
        torch.testing.assert_close(rep(input_ids).logits, lin(input_ids).logits, rtol=0, atol=1e-6)
        with rep.disabled(), lin.disabled():
            assert torch.equal(rep(input_ids).logits, lin(input_ids).logits)


def test_last_prompt_token_acts_only_there_and_batching_with_padding_is_exact():
    ids, mask = padded_batch()
    model = RoadModel(tiny_llama())
    model.add_adapter("x", CONFIG, seed=1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
        with model.disabled():
            base = model(input_ids=ids, attention_mask=mask).logits
        # causal model: every position before the last prompt token is untouched
        assert torch.equal(out[:, :-1], base[:, :-1])
        assert not torch.allclose(out[:, -1], base[:, -1])
        # each row on its own, unpadded, gives the same last-token logits
        for row in range(2):
            real = mask[row].bool()
            alone = model(input_ids=ids[row : row + 1, real]).logits
            torch.testing.assert_close(out[row, -1], alone[0, -1], rtol=1e-4, atol=1e-4)


def test_generate_rotates_the_prompt_only_for_last_and_every_token_for_all():
    ids, mask = padded_batch()
    model = RoadModel(tiny_llama())
    model.add_adapter("x", CONFIG, seed=1)
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    out = model.generate(input_ids=ids, attention_mask=mask, **gen)
    # reference without a cache: rotate only the prompt's last token, then decode step by step
    c, s = model.sites["model.layers.1"].adapter("x").coefficients()
    seq, m = ids.clone(), mask.clone()
    layer = model.model.model.layers[1]

    def rotate_prompt_last(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, ids.shape[1] - 1] = rotation.apply(h[:, ids.shape[1] - 1], c, s, 2)
        return h

    with model.disabled(), torch.no_grad():
        handle = layer.register_forward_hook(rotate_prompt_last)
        try:
            for _ in range(4):
                logits = model(input_ids=seq, attention_mask=m).logits[:, -1]
                nxt = logits.argmax(-1, keepdim=True)
                seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
        finally:
            handle.remove()
    assert torch.equal(out, seq)


def test_representation_adapter_trains_and_only_its_parameters_move(input_ids):
    model = RoadModel(tiny_llama())
    config = RoadConfig(
        variant="road_1", group_size=2, targets=("model.layers.0", "model.layers.1")
    )
    model.add_adapter("x", replace(config, positions=Positions("last", 2)))
    assert list(model.sites_of("x")) == ["model.layers.0", "model.layers.1"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapters.x." in n for n in trainable)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=5e-2, weight_decay=0.0
    )
    target = input_ids[:, -1].clone()

    def loss():
        return torch.nn.functional.cross_entropy(model(input_ids).logits[:, -1], target)

    first = loss().item()
    for _ in range(10):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < first


def test_per_example_routing_through_output_sites(input_ids):
    model = RoadModel(tiny_llama())
    model.add_adapter("x", CONFIG, seed=0)
    sizes = model_sizes(model, "x")
    skills = [Subspace.part(sizes, 0, 2), Subspace.part(sizes, 1, 2)]
    with route_subspaces(model, "x", skills, torch.zeros(3, dtype=torch.long)):
        model(input_ids).logits[:, -1].sum().backward()
    theta = model.adapter_parameters("x")["model.layers.1.theta"]
    assert torch.all(theta.grad[64:] == 0) and bool((theta.grad[:64] != 0).any())


def test_remove_detaches_hooks_and_restores_the_model_bit_identically(input_ids):
    base = tiny_llama()
    with torch.no_grad():
        expected = base(input_ids).logits
    model = RoadModel(base)
    model.add_adapter("x", at("all"), seed=0)
    model.add_adapter("y", at("last", CONFIG, "model.layers.0"), seed=1)
    model.add_adapter("lin", RoadConfig(targets=("q_proj",), init="random"), seed=0)
    model.set_active("x", "y", "lin")
    model.to("cpu").float()  # walks every submodule: the site must not hold its parent as one
    assert len(model.state_dict()) == len(base.state_dict())
    layer = base.model.layers[1]
    # one forward hook per output site, and one pre-hook on the model whatever the sites
    assert len(layer._forward_hooks) == 1 and len(base._forward_pre_hooks) == 1
    restored = model.remove()
    assert not hasattr(layer, SITE_ATTR)
    assert not layer._forward_hooks and not restored._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(restored(input_ids).logits, expected)


def test_save_load_round_trip(tmp_path):
    ids, mask = padded_batch()
    model = RoadModel(tiny_llama())
    model.add_adapter("x", CONFIG, seed=5)
    model.save_adapter("x", tmp_path / "x")
    assert read_adapter(tmp_path / "x").positions == Positions("last")
    assert list(read_adapter(tmp_path / "x").params) == ["model.layers.1"]
    fresh = RoadModel(tiny_llama())
    fresh.load_adapter(tmp_path / "x")  # the placement comes from the folder
    assert fresh.sites["model.layers.1"].positions == Positions("last")
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).logits,
            fresh(input_ids=ids, attention_mask=mask).logits,
        )
    lin = RoadModel(tiny_llama())  # one load_adapter for both placements
    lin.add_adapter("l", RoadConfig(targets=("q_proj",)))
    lin.save_adapter("l", tmp_path / "lin")
    fresh.load_adapter(tmp_path / "lin", activate=False)
    assert fresh.sites_of("lin").keys() == lin.sites_of("l").keys()
    with pytest.raises(ValueError, match="cannot be folded"):
        model.merge_and_unload()


def test_bad_targets_sizes_and_positions_give_clear_errors(input_ids):
    model = RoadModel(tiny_llama())
    with pytest.raises(ValueError, match="matches no module"):
        model.add_adapter("x", at("all", CONFIG, "model.layers.9"))
    with pytest.raises(ValueError, match="explicit module patterns"):
        RoadConfig(positions="all")
    with pytest.raises(ValueError, match="matches no Linear/Conv1D module"):
        model.add_adapter("x", RoadConfig(group_size=2, targets=("model.layers.0",)))
    assert not model.sites and not model.configs
    model.add_adapter("x", at("all", CONFIG, "mlp.act_fn"), size=128)
    with pytest.raises(ValueError, match="add it with size=256"):
        model(input_ids)
    with pytest.raises(ValueError, match="one site per module"):
        model.add_adapter("z", at("last", CONFIG, "mlp.act_fn"), size=128)
    bert = RoadModel(tiny_bert())
    bert.add_adapter("p", at("last", CONFIG, "bert.pooler"))
    with pytest.raises(ValueError, match="Positions\\('all'\\)"):
        bert(input_ids)


def rotate_tokens_hook(c, s, columns):
    """Forward hook rotating, in row b, only token ``columns[b]`` of the output (reference)."""

    def hook(module, args, output):
        h = (output[0] if isinstance(output, tuple) else output).clone()
        rows = torch.arange(h.shape[0])
        h[rows, columns] = rotation.apply(h[rows, columns], c, s, 2)
        return h

    return hook


def test_teacher_forcing_rotates_the_last_prompt_token_not_the_last_answer_token():
    """Training scores prompt + answer in one pass; `answer_logprobs` must make a "last prompt
    token" site act where it acts in generation: a reference hook on exactly that token agrees."""
    gen = torch.Generator().manual_seed(2)
    items = []
    for prompt_len, answer_len in ((7, 3), (4, 5)):
        prompt = torch.randint(1, 96, (prompt_len,), generator=gen).tolist()
        answer = torch.randint(1, 96, (answer_len,), generator=gen).tolist()
        items.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * prompt_len + answer})
    batch = pad_left(items, pad_id=0)  # widths 10 and 9: row 1 has one pad token
    last_prompt = torch.tensor([6, 1 + 3])
    model = RoadModel(tiny_llama())
    model.add_adapter("x", CONFIG, seed=4)
    c, s = model.sites["model.layers.1"].adapter("x").coefficients()
    layer = model.model.model.layers[1]
    with torch.no_grad():
        ours, mask = answer_logprobs(model, batch)
        with model.disabled():
            handle = layer.register_forward_hook(rotate_tokens_hook(c, s, last_prompt))
            try:
                reference, _ = answer_logprobs(model, batch)
            finally:
                handle.remove()
            base, _ = answer_logprobs(model, batch)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    # rotating the last token of the input (the old behaviour) changes no answer score at all
    assert not torch.allclose(ours[mask], base[mask], atol=1e-4)


def test_positions_travel_with_the_adapter_and_mismatches_are_clear_errors(tmp_path):
    model = RoadModel(tiny_llama())
    model.add_adapter("last", replace(CONFIG, positions=Positions("last", 2)), seed=1)
    model.add_adapter("all", at("all", CONFIG, "model.layers.0"), seed=2)
    last, every = model.adapter_file("last"), model.adapter_file("all")
    assert (last.positions, every.positions) == (Positions("last", 2), Positions("all"))
    with pytest.raises(ValueError, match="same token positions"):
        union({"last": last, "all": every})
    with pytest.raises(ValueError, match="linear layers only"):
        write_peft(last, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_format_1_folders_load_unchanged():
    """Folders written before placement moved into the config (format 1: positions beside
    it, output sites keyed ``<module>.road_output``) read as the same adapter."""
    measured = Path(__file__).parents[1] / "experiments" / "composition" / "measured"
    folders = sorted(measured.glob("*/adapters/*"))
    assert len(folders) >= 8
    for folder in folders:
        meta = json.loads((folder / "road_config.json").read_text())
        assert meta["format_version"] == 1
        adapter = read_adapter(folder)
        stored = load_file(folder / "road_adapter.safetensors")
        positions = meta.get("positions")  # linear adapters had none
        assert adapter.positions == (positions and Positions.parse(positions))
        targets = meta["adapter"]["targets"]
        if isinstance(targets, list):
            assert adapter.config.targets == tuple(t.removesuffix(f".{SITE_ATTR}") for t in targets)
        for old, size in meta["sites"].items():
            theta, alpha = adapter.params[old.removesuffix(f".{SITE_ATTR}")]
            assert adapter.sites[old.removesuffix(f".{SITE_ATTR}")] == size
            assert torch.equal(theta, stored[f"{old}.theta"])
            assert torch.equal(alpha, stored[f"{old}.alpha"])


@pytest.mark.real
def test_smollm2_last_prompt_token_site_scores_the_answer_as_generation_predicts_it(
    real_smollm2,
):
    """On the real model: the log-probability training gives the first answer token equals the
    log-softmax of the generation step that predicts it (prefill of the prompt alone)."""
    hf, tok = real_smollm2
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Is this review positive or negative? Great food."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    item = encode_lm(tok, prompt, "positive", max_length=128, add_eos=True)
    batch = pad_left([item], tok.pad_token_id)
    model = RoadModel(hf)
    try:
        config = RoadConfig("road_1", 2, ("model.layers.15",), "random", positions="last")
        model.add_adapter("x", config, seed=0)
        n = item["labels"].count(IGNORE_INDEX)
        with torch.no_grad():
            logp, _ = answer_logprobs(model, batch)
            prefill = model(input_ids=torch.tensor([item["input_ids"][:n]])).logits[0, -1]
            with model.disabled():
                base, _ = answer_logprobs(model, batch)
        expected = torch.log_softmax(prefill.float(), -1)[item["input_ids"][n]]
        torch.testing.assert_close(logp[0, 0], expected, rtol=0, atol=1e-4)
        assert abs(float(logp[0, 0] - base[0, 0])) > 1e-3
    finally:
        model.remove()


def test_an_output_adapter_for_another_width_is_refused_at_load():
    from transformers import LlamaConfig, LlamaForCausalLM

    narrow = LlamaForCausalLM(
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=96)
    )  # fmt: skip
    small = RoadModel(narrow)
    small.add_adapter("x", CONFIG, seed=0)
    wide = RoadModel(tiny_llama())
    with pytest.raises(ValueError, match="size 64 in the adapter but 128"):
        wide.load_adapter(small.adapter_file("x"), "x")
    assert not wide.sites
