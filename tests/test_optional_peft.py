"""PEFT is an optional extra (``road-interp[peft]``): the package, every one of its modules
and the command line import without it, and the one library path that needs it (the LoRA
baselines) says how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from road_interp.baselines import RunSpec, apply_method
from tests.conftest import tiny_llama

WITHOUT_PEFT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    sys.modules["peft"] = None  # as if not installed: `import peft` raises ImportError

    import road_interp
    from road_interp.cli import build_parser

    names = [
        m.name
        for m in pkgutil.walk_packages(road_interp.__path__, "road_interp.")
        if not m.name.endswith(".__main__")  # `python -m road_interp.cli` runs the CLI
    ]
    for name in names:
        importlib.import_module(name)
    build_parser()  # imports every command's module
    assert sys.modules["peft"] is None, "something replaced the PEFT blocker"
    print(len(names))
    """
)


def test_every_module_and_the_cli_import_without_peft():
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PEFT],
        cwd=Path(__file__).resolve().parents[1],  # this checkout's road_interp
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 20  # the walk saw the whole package


@pytest.mark.parametrize("method", ["lora", "lora_matched"])
def test_lora_baseline_without_peft_says_how_to_install_it(monkeypatch, method):
    monkeypatch.setitem(sys.modules, "peft", None)
    model = tiny_llama()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ImportError, match=r"road-interp\[peft\]"):
        apply_method(model, RunSpec(model="smollm2", method=method))
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
