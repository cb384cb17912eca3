"""Serving many adapters in one batch: prefill and decode throughput of one batch in which the
requests use n distinct adapters, for four ways of serving it, measured side by side:

- ``base``: the plain model (no adapters; the ceiling),
- ``bank``: our `road_interp.bank.AdapterBank` (one gather per call, one element-wise op per
  site),
- ``peft_road``: PEFT's RoAd with ``adapter_names`` (a Python loop over the batch's adapters),
- ``peft_lora``: PEFT's LoRA r = 8 with ``adapter_names`` (the same loop).

    python -m experiments.bench_batching --quick --threads 1 --clock cpu --json results/bench_batching.json

Each method runs the same greedy loop: a prefill of B × P prompt tokens, then S decode steps of
one token with the KV cache. The batch has B = max(16, n) requests, request i using adapter
i mod n. Methods and adapter counts are interleaved round by round and the median of the
rounds is reported, so the ratios compare runs made under the same machine load. Models:
SmolLM2 (the embedded real model) and a random-weight Llama of hidden size 2048; both are
Llamas, so every method adapts `road_interp.injection.DEFAULT_TARGETS["llama"]`.

Writes results/bench_batching/throughput.{csv,png} (``--out`` to change) and, with ``--json``,
the full results with a ``summary`` of ratios (bank throughput / other throughput) and the
targets of DESIGN.md §5: decode_vs_peft_lora_16 >= 2.0, decode_vs_peft_road_16 >= 1.5, and
prefill and decode vs the base model >= 0.90 at 16 and 64 adapters (0.95 on a GPU). On a
machine shared with other jobs use ``--threads 1 --clock cpu``. All options: ``--help``.

The benchmark also checks that bank and PEFT RoAd give the same logits for the mixed batch
(the same adapters are loaded into both), and times the routed element-wise op eagerly and
fused into one kernel by ``torch.compile`` (`fused_op_table`). On the 2-core CPU machines of
this project the fused op was slower at decode shapes (B = 16, T = 1: 0.67-0.96x, the
compiled call's fixed cost outweighs the saved kernels) and 2.2-2.6x faster at prefill shapes
(T = 64), where the op is a few percent of the step; so sites run the eager op (no fused
path is switched on), and the table is kept in every run to revisit that choice (e.g. on a GPU).
PEFT is needed here (``pip install road-interp[peft]``), never by the library's core.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from experiments.machine import describe
from road_interp import rotation
from road_interp.bank import AdapterBank
from road_interp.bank.synthetic import random_adapter
from road_interp.config import RoadConfig
from road_interp.injection import DEFAULT_TARGETS
from road_interp.io import AdapterFile

METHODS = ("base", "bank", "peft_road", "peft_lora")
CLOCKS = ("wall", "cpu")
TARGETS = DEFAULT_TARGETS["llama"]
"""Where every method adapts both benchmark models (Llamas)."""


@dataclass(frozen=True)
class BenchSettings:
    """What to run. ``models``: ``"smollm2"`` (the embedded real model) and/or
    ``"llama-2048"`` (a random-weight Llama of hidden size 2048 with ``llama_layers`` layers)."""

    models: tuple[str, ...] = ("smollm2", "llama-2048")
    adapters: tuple[int, ...] = (1, 4, 16, 64)
    prompt_len: int = 64
    decode_steps: int = 16
    rounds: int = 5
    llama_layers: int = 4
    group_size: int = 64
    threads: int | None = None
    """torch CPU threads (default: torch's own choice)."""
    device: str = "auto"
    seed: int = 0
    fused_check: bool = True
    clock: str = "wall"
    """Clock of the summary and the plot: ``"wall"`` (elapsed time), or ``"cpu"`` (this
    process's CPU time: stable on a machine shared with other jobs when ``threads`` is 1,
    where waiting for a core is not counted). Both are always recorded."""

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")

    @classmethod
    def quick(cls) -> BenchSettings:
        return cls(prompt_len=16, decode_steps=8, rounds=3, llama_layers=2)


@dataclass
class BenchResult:
    settings: BenchSettings
    machine: dict[str, Any]
    table: pd.DataFrame
    """One row per (model, method, adapters): median prefill/decode tokens/s and seconds."""
    checks: dict[str, Any] = field(default_factory=dict)
    fused_op: pd.DataFrame | None = None

    def summary(self, model: str | None = None, clock: str | None = None) -> dict[str, float]:
        """Decode and prefill throughput ratios of the bank (bank / other): against every
        method at 16 adapters, and against the base model at 64 adapters when measured
        (``model``: the first model benchmarked; ``clock``: the settings' clock)."""
        model = model or self.settings.models[0]
        column = throughput_column(clock or self.settings.clock)
        out = {}
        for n, others in ((16, ("peft_lora", "peft_road", "base")), (64, ("base",))):
            rows = self.table[(self.table["model"] == model) & (self.table["adapters"] == n)]
            if rows.empty:
                continue
            tps = rows.set_index("method")
            for phase in ("decode", "prefill"):
                ours = float(tps.loc["bank", column.format(phase=phase)])
                for other in others:
                    theirs = float(tps.loc[other, column.format(phase=phase)])
                    out[f"{phase}_vs_{other}_{n}"] = ours / theirs
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "machine": self.machine,
            "clock": self.settings.clock,
            "summary": self.summary(),
            "summary_by_model_and_clock": {
                m: {c: self.summary(m, c) for c in CLOCKS} for m in self.settings.models
            },
            "targets": TARGETS_GPU if self.machine["device"] == "cuda" else TARGETS_CPU,
            "checks": self.checks,
            "results": self.table.to_dict(orient="records"),
            "fused_op": None if self.fused_op is None else self.fused_op.to_dict("records"),
        }


def throughput_column(clock: str) -> str:
    """Column (with a ``{phase}`` field) of tokens/s measured with ``clock``."""
    return "{phase}_tok_s" if clock == "wall" else "{phase}_tok_cpu_s"


_VS_BASE = tuple(f"{phase}_vs_base_{n}" for n in (16, 64) for phase in ("prefill", "decode"))
TARGETS_CPU = {
    "decode_vs_peft_lora_16": 2.0,
    "decode_vs_peft_road_16": 1.5,
    **dict.fromkeys(_VS_BASE, 0.90),
}
TARGETS_GPU = {**TARGETS_CPU, **dict.fromkeys(_VS_BASE, 0.95)}
"""DESIGN.md §5: minimum ratios (bank throughput / other throughput); within 10% of the base
model on a CPU (5% on a GPU) at batch 16 and 64."""


# -- models ----------------------------------------------------------------------------------
def load_bench_model(name: str, settings: BenchSettings) -> nn.Module:
    if name == "smollm2":
        from road_interp.models import load_model

        return load_model("smollm2", task="causal-lm")
    if name == "llama-2048":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(settings.seed)
        config = LlamaConfig(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=settings.llama_layers,
            num_attention_heads=16,
            num_key_value_heads=4,
            vocab_size=32000,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config).eval()
    raise ValueError(f"unknown benchmark model {name!r}; choose smollm2 or llama-2048")


# -- the four servers -------------------------------------------------------------------------
Step = Callable[[Tensor, Any, list[str]], tuple[Tensor, Any]]
"""(input_ids, cache, routes) -> (last-position logits, cache)."""


def _hf_step(model: nn.Module, *, peft: bool = False) -> Step:
    """One forward with the KV cache; PEFT models get the routes as ``adapter_names``, the
    others ignore them (the bank routes through its context, base has no adapters)."""

    def step(ids: Tensor, cache: Any, routes: list[str]) -> tuple[Tensor, Any]:
        if peft:
            out = model(
                input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, adapter_names=routes
            )
        else:
            out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.cache

    return step


def build_peft(base: nn.Module, adapters: dict[str, AdapterFile], kind: str, settings) -> nn.Module:
    """A PEFT model (RoAd with our adapters' exact θ, α; or LoRA r=8) with every adapter."""
    try:
        import peft
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the serving benchmark compares against PEFT: pip install 'road-interp[peft]'"
        ) from err
    model = copy.deepcopy(base)
    peft_model = None
    for name in adapters:
        if kind == "road":
            cfg: Any = peft.RoadConfig(
                variant="road_1",
                group_size=settings.group_size,
                target_modules=list(TARGETS),
                init_weights=False,
            )
        else:
            cfg = peft.LoraConfig(
                r=8, lora_alpha=16, target_modules=list(TARGETS), init_lora_weights=False
            )
        if peft_model is None:
            peft_model = peft.get_peft_model(model, cfg, adapter_name=name)
        else:
            peft_model.add_adapter(name, cfg)
    assert peft_model is not None
    if kind == "road":
        modules = dict(peft_model.base_model.model.named_modules())
        with torch.no_grad():
            for name, f in adapters.items():
                for site, (theta, alpha) in f.params.items():
                    modules[site].road_theta[name].copy_(theta)
                    modules[site].road_alpha[name].copy_(alpha)
    return peft_model.eval()


# -- measuring --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(
    step: Step,
    prompt: Tensor,
    routes: list[str],
    steps: int,
    device: torch.device,
    context: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[tuple[float, float], tuple[float, float], Tensor]:
    """(wall, CPU) seconds of the prefill and of ``steps`` greedy decode steps, and the prefill
    logits. ``context()`` is entered once around the whole call (the bank's routing: its
    gather is timed as part of the prefill)."""
    with torch.inference_mode():
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with context():
            logits, cache = step(prompt, None, routes)
            _sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            first = logits
            for _ in range(steps):
                logits, cache = step(logits.argmax(-1, keepdim=True), cache, routes)
            _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
    return (t1 - t0, c1 - c0), (t2 - t1, c2 - c1), first


def run_benchmark(settings: BenchSettings) -> BenchResult:
    """Run every (model, adapters, method) for ``settings.rounds`` interleaved rounds."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu")
        if settings.device == "auto"
        else settings.device
    )
    machine = describe(device)
    records, checks = [], {}
    for model_name in settings.models:
        recs, check = _bench_model(model_name, settings, device)
        records.extend(recs)
        checks[model_name] = check
    table = pd.DataFrame(records)
    fused = fused_op_table(device) if settings.fused_check else None
    return BenchResult(settings, machine, table, checks, fused)


def _bench_model(name: str, settings: BenchSettings, device: torch.device):
    base = load_bench_model(name, settings).to(device)
    k_max = max(settings.adapters)
    cfg = RoadConfig("road_1", settings.group_size, targets=TARGETS)
    adapters = {
        f"adapter{i}": random_adapter(base, cfg, seed=settings.seed + i) for i in range(k_max)
    }
    bank = AdapterBank(copy.deepcopy(base))
    for adapter_name, f in adapters.items():
        bank.add(adapter_name, f)
    servers: dict[str, nn.Module] = {
        "base": base,
        "bank": bank.model,
        "peft_road": build_peft(base, adapters, "road", settings).to(device),
        "peft_lora": build_peft(base, adapters, "lora", settings).to(device),
    }
    steps = {
        "base": _hf_step(base),
        "bank": _hf_step(bank.model),
        "peft_road": _hf_step(servers["peft_road"], peft=True),
        "peft_lora": _hf_step(servers["peft_lora"], peft=True),
    }
    vocab: int = base.config.vocab_size  # type: ignore[union-attr,assignment]
    gen = torch.Generator().manual_seed(settings.seed)

    def context(method: str, routes: list[str]) -> Callable[[], AbstractContextManager]:
        return (lambda: bank.route(routes)) if method == "bank" else nullcontext

    times: dict[tuple[str, int], list[tuple[tuple[float, float], tuple[float, float]]]] = {}
    check: dict[str, float] = {}
    total = (settings.rounds * len(settings.adapters) + 1) * len(METHODS)
    bar = tqdm(total=total, desc=f"bench_batching {name}", unit="run")
    for method in METHODS:  # warm-up, untimed: first-call allocations and kernel selection
        routes = [f"adapter{i % k_max}" for i in range(16)]
        warm = torch.randint(0, vocab, (16, settings.prompt_len), generator=gen).to(device)
        time_generation(steps[method], warm, routes, 2, device, context(method, routes))
        bar.update()
    for r in range(settings.rounds):
        for n in settings.adapters:
            batch = max(16, n)
            routes = [f"adapter{i % n}" for i in range(batch)]
            prompt = torch.randint(0, vocab, (batch, settings.prompt_len), generator=gen)
            prompt = prompt.to(device)
            order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
            firsts = {}
            for method in order:
                pre, dec, first = time_generation(
                    steps[method],
                    prompt,
                    routes,
                    settings.decode_steps,
                    device,
                    context(method, routes),
                )
                firsts[method] = first
                times.setdefault((method, n), []).append((pre, dec))
                bar.update()
            if r == 0:
                scale = firsts["peft_road"].abs().max()
                err = (firsts["bank"] - firsts["peft_road"]).abs().max() / scale
                check[f"bank_vs_peft_road_logit_rel_error_{n}"] = float(err)
    bar.close()
    records = []
    for (method, n), runs in times.items():
        batch = max(16, n)
        record: dict[str, Any] = {"model": name, "method": method, "adapters": n, "batch": batch}
        for clock, i in (("wall", 0), ("cpu", 1)):
            suffix = "" if clock == "wall" else "_cpu"
            prefill_s = statistics.median(p[i] for p, _ in runs)
            decode_s = statistics.median(d[i] for _, d in runs)
            record[f"prefill{suffix}_s"] = prefill_s
            record[f"decode{suffix}_s"] = decode_s
            record[f"prefill_tok{suffix}_s"] = batch * settings.prompt_len / prefill_s
            record[f"decode_tok{suffix}_s"] = batch * settings.decode_steps / decode_s
        record["rounds"] = len(runs)
        records.append(record)
    return records, check


# -- the fused element-wise op --------------------------------------------------------------
def fused_op_table(device: torch.device, group_size: int = 64) -> pd.DataFrame:
    """Microseconds per call of the routed op z = c ⊙ h + s ⊙ rot(h) with rows (B, 1, d):
    eager (`rotation.apply`, what sites run) and fused into one kernel by ``torch.compile``,
    at decode (T = 1) and prefill (T = 64) shapes. ``torch.compile`` unavailable (no C++
    compiler, ...) is reported as NaN."""
    shapes = [(16, 1, 576), (16, 1, 1536), (16, 1, 2048), (16, 64, 576), (16, 64, 2048)]

    def eager(h: Tensor, c: Tensor, s: Tensor) -> Tensor:
        return rotation.apply(h, c, s, group_size)

    try:
        fused: Callable | None = torch.compile(eager, dynamic=False)
    except Exception:  # pragma: no cover - depends on the toolchain
        fused = None
    rows = []
    for b, t, d in shapes:
        h = torch.randn(b, t, d, device=device)
        c, s = torch.randn(b, 1, d, device=device), torch.randn(b, 1, d, device=device)
        row = {"batch": b, "tokens": t, "d": d, "eager_us": _us_per_call(eager, h, c, s, device)}
        try:
            row["fused_us"] = _us_per_call(fused, h, c, s, device) if fused else float("nan")
        except Exception:  # pragma: no cover - compile failures surface at the first call
            row["fused_us"] = float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    table["speedup"] = table["eager_us"] / table["fused_us"]
    return table


def _us_per_call(fn: Callable, h: Tensor, c: Tensor, s: Tensor, device: torch.device) -> float:
    with torch.inference_mode():
        for _ in range(20):
            fn(h, c, s)
        _sync(device)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(100):
                fn(h, c, s)
            _sync(device)
            best = min(best, (time.perf_counter() - t0) / 100 * 1e6)
    return best


# -- the figure -------------------------------------------------------------------------------
def plot_throughput(table: pd.DataFrame, clock: str = "wall"):
    """Tokens/s (measured with ``clock``) against the number of distinct adapters in the
    batch, one panel per (phase, model), one line per method. Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        sub = table[table["model"] == model]
        for row, phase in enumerate(("decode", "prefill")):
            ax = axes[row][col]
            for method in METHODS:
                m = sub[sub["method"] == method].sort_values("adapters")
                column = throughput_column(clock).format(phase=phase)
                ax.plot(m["adapters"], m[column], marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("distinct adapters in the batch (batch = max(16, n))")
            ax.set_ylabel(f"{phase} tokens/s ({clock} clock)")
            ax.set_title(f"{model}: {phase}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    return fig


# -- the command line ----------------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench_batching",
        description="Prefill and decode tokens/s for batches of max(16, n) requests using n "
        "distinct adapters: the plain base model, our AdapterBank, PEFT RoAd and PEFT LoRA "
        "(r=8) with adapter_names, side by side (interleaved rounds, medians). Writes a "
        "table (CSV), a plot (PNG) and, with --json, the results with a summary of ratios.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="16-token prompts, 8 decode steps, 3 rounds, 2-layer llama-2048",
    )
    p.add_argument(
        "--models",
        default="smollm2,llama-2048",
        help="comma-separated: smollm2 (the embedded model), llama-2048 (random weights)",
    )
    p.add_argument("--adapters", type=_ints, help="adapter counts (default 1,4,16,64)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (median reported)")
    p.add_argument("--prompt-len", type=int, help="prompt tokens per request")
    p.add_argument("--decode-steps", type=int, help="decode steps per run")
    p.add_argument("--llama-layers", type=int, help="layers of the random llama-2048")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="clock of the summary and plot: wall (default) or cpu (process CPU time; stable "
        "on a shared machine with --threads 1). Both are recorded.",
    )
    p.add_argument("--no-fused-check", action="store_true", help="skip the fused-op timing")
    p.add_argument("--json", type=Path, help="write results and summary as JSON here")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/bench_batching"),
        help="folder for the CSV and PNG (default: results/bench_batching)",
    )
    return p


def settings_from(args: argparse.Namespace) -> BenchSettings:
    settings = BenchSettings.quick() if args.quick else BenchSettings()
    overrides = {
        "adapters": args.adapters,
        "rounds": args.rounds,
        "prompt_len": args.prompt_len,
        "decode_steps": args.decode_steps,
        "llama_layers": args.llama_layers,
        "threads": args.threads,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    models = tuple(m for m in args.models.split(",") if m)
    return replace(
        settings,
        models=models,
        device=args.device,
        clock=args.clock,
        fused_check=not args.no_fused_check,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark as the command line says; print the table and summary, write the
    CSV, PNG and (``--json``) JSON. Returns the JSON report."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    result = run_benchmark(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(args.out / "throughput.csv", index=False)
    plot_throughput(result.table, settings.clock).savefig(args.out / "throughput.png", dpi=120)
    print(f"machine: {result.machine}")
    print(result.table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if result.fused_op is not None:
        print("\nrouted element-wise op, microseconds per call (eager vs torch.compile):")
        print(result.fused_op.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    report = result.to_json()
    print(f"\nbank throughput / other ({settings.clock} clock; the summary is the first model's):")
    ratios = pd.DataFrame(
        {
            m: by_clock[settings.clock]
            for m, by_clock in report["summary_by_model_and_clock"].items()
        }
    )
    ratios["target"] = [report["targets"].get(key, float("nan")) for key in ratios.index]
    print(ratios.to_string(float_format=lambda x: f"{x:.3f}"))
    print(f"checks: {report['checks']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        tmp.replace(args.json)
    print(f"wrote {args.out / 'throughput.csv'}, {args.out / 'throughput.png'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
