"""Scale-out: `accelerate launch` with 2 CPU processes (DDP over gloo) trains the same adapter
as one process. Each process gets half of every batch; the losses are means over examples,
so the averaged gradients equal the one-process gradient up to float rounding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from road_interp.cli import main

pytestmark = pytest.mark.real

ARGS = [
    "train", "--model", "minilm", "--task", "multiemo_en", "--max-steps", "4",
    "--batch-size", "8", "--max-length", "24", "--no-dropout", "--lr", "1e-2",
    "--eval-limit", "16", "--test-limit", "16", "--no-progress",
]  # fmt: skip


def test_two_process_ddp_trains_the_same_adapter_as_one_process(tmp_path):
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    script = shutil.which("road-interp") or str(Path(sys.executable).parent / "road-interp")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launched = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
         "29517", script, *ARGS, "-o", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    state = (tmp_path / "ddp" / "checkpoint" / "state.json").read_text()
    assert '"world_size": 2' in state

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process (OMP_NUM_THREADS=1)
    try:
        assert main([*ARGS, "-o", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    one = load_file(str(tmp_path / "one" / "final" / "road_adapter.safetensors"))
    two = load_file(str(tmp_path / "ddp" / "final" / "road_adapter.safetensors"))
    assert one.keys() == two.keys()
    assert {"extra/classifier.weight", "extra/classifier.bias"} <= one.keys()  # the head
    rotations = {k: t for k, t in one.items() if not k.startswith("extra/")}
    moved = max(
        (t - (1.0 if k.endswith("alpha") else 0.0)).abs().max() for k, t in rotations.items()
    )
    assert moved > 1e-3  # training changed the adapter, so agreement means something
    for key in one:  # θ, α and the head
        torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=1e-4)
