"""The overview over composition benchmark folders: pairs collected, best method, targets."""

from __future__ import annotations

import json

from experiments.composition import overview


def _generation_summary(joint: dict[str, float], lora_gap: list[float]) -> dict:
    def method(point: float) -> dict:
        return {
            "retained_share": {"content": [0.9, 0.97, 1.05], "format": [0.95, 1.0, 1.02]},
            "joint_success": [point - 0.05, point, point + 0.05],
            "joint_minus_independence": [0.01, 0.05, 0.1],
            "joint_minus_prompted_base": [0.1, 0.2, 0.3],
            "joint_vs_lora_task_arithmetic": lora_gap,
            "verdict": "words",
        }

    return {
        "seeds": [0, 1, 2],
        "gate": {"content": {"passed": True}, "format": {"passed": True}},
        "methods": {m: method(p) for m, p in joint.items()},
    }


def _folder(root, name: str, summary: dict, config: dict) -> None:
    (root / name).mkdir()
    (root / name / "summary.json").write_text(json.dumps(summary))
    (root / name / "config.json").write_text(json.dumps(config))


def test_overview_collects_pairs_and_states_each_target(tmp_path):
    _folder(tmp_path, "gen", _generation_summary({"routed": 0.1, "aware": 0.7}, [0.1, 0.2, 0.3]),
            {"pair": "letters"})  # fmt: skip
    gated_out = {
        "pairs": {
            "a+b": {
                "seeds": [0],
                "gate": {"a": {"passed": False}, "b": {"passed": True}},
                "methods": {},
            }
        },
        "verdicts": {},
    }
    _folder(tmp_path, "cls", gated_out, {})
    summary = overview.write(tmp_path)
    pairs = summary["pairs"]
    assert set(pairs) == {"gen/letters", "cls/a+b"}
    assert not pairs["cls/a+b"]["scored"] and pairs["gen/letters"]["scored"]
    assert pairs["gen/letters"]["best_road_method"] == "aware"  # highest joint success
    words = " ".join(summary["targets"].values())
    assert words.count("met (1 of 1 pairs)") == 3 and "not met" not in words
    assert "| gen/letters | generation |" in (tmp_path / "README.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_a_gap_to_lora_inside_the_noise_does_not_count_as_beating_it(tmp_path):
    _folder(tmp_path, "gen", _generation_summary({"aware": 0.7}, [-0.02, 0.03, 0.08]), {})
    targets = overview.write(tmp_path)["targets"]
    beats = next(v for k, v in targets.items() if k.startswith("beats LoRA"))
    assert beats == "not met (0 of 1 pairs)"


def test_the_interchange_claims_are_listed_and_not_taken_for_a_pair(tmp_path):
    _folder(tmp_path, "gen", _generation_summary({"aware": 0.7}, [0.1, 0.2, 0.3]), {})
    claim = {"iia": [0.4, 0.5, 0.6], "vs_null": [-0.3, -0.2, -0.1], "verdict": "below chance"}
    models = {"content": {"seeds": [0], "sets": {"top": {**claim, "vs_base": [-0.1, 0.0, 0.1]}}}}
    _folder(tmp_path, "interchange", {"finished": True, "models": models, "verdicts": {}}, {})
    summary = overview.write(tmp_path)
    assert set(summary["pairs"]) == {"gen/sentiment"} and summary["interchange"] == models
    assert "| content | top | [0] | [0.4, 0.5, 0.6] |" in (tmp_path / "README.md").read_text()


def test_a_pair_scored_on_fewer_than_three_seeds_is_listed_but_not_counted(tmp_path):
    _folder(tmp_path, "gen", _generation_summary({"aware": 0.7}, [0.1, 0.2, 0.3]), {})
    one_seed = {**_generation_summary({"aware": 0.9}, [-0.3, -0.2, -0.1]), "seeds": [0]}
    _folder(tmp_path, "gen-more", one_seed, {"pair": "arithmetic"})
    summary = overview.write(tmp_path)
    assert summary["pairs"]["gen-more/arithmetic"]["scored"]
    assert not summary["pairs"]["gen-more/arithmetic"]["counted"]
    targets = summary["targets"]
    assert targets["pairs scored"] == "1 of 2 (sentiment: aware in gen)"
    beats = next(v for k, v in targets.items() if k.startswith("beats LoRA"))
    assert beats == "met (1 of 1 pairs)"  # the one-seed pair's gap below 0 is not counted
    partial = next(v for k, v in targets.items() if "fewer than 3 seeds" in k)
    assert partial == "gen-more/arithmetic (seeds [0])"
    assert "partial, not counted: words" in (tmp_path / "README.md").read_text()


def test_folders_of_one_pair_count_once_by_their_best_method(tmp_path):
    _folder(tmp_path, "gen", _generation_summary({"aware": 0.7}, [0.1, 0.2, 0.3]), {})
    shares = _generation_summary({"buffered": 0.8}, [-0.1, 0.1, 0.3])
    _folder(tmp_path, "gen-bigger-buffer", shares, {"pair": "sentiment"})
    targets = overview.write(tmp_path)["targets"]
    assert targets["pairs scored"] == "1 of 1 (sentiment: buffered in gen-bigger-buffer)"
    beats = next(v for k, v in targets.items() if k.startswith("beats LoRA"))
    assert beats == "not met (0 of 1 pairs)"  # the best folder's gap, not the other's


def test_intervals_in_the_table_are_rounded_per_skill():
    from experiments.composition.overview import _rounded

    assert _rounded({"a": [-1.0502293, 0.5, None], "b": [0.1, 0.2, 0.3]}) == (
        "a [-1.0502, 0.5, None]; b [0.1, 0.2, 0.3]"
    )
    assert _rounded(None) == "–" and _rounded("the baseline itself") == "the baseline itself"
