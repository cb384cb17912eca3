"""``road-interp serve-bench``: mixed-adapter serving throughput, our bank against the base model
and PEFT's RoAd and LoRA mixed-batch paths (see `road_interp.bank.benchmark`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..bank.benchmark import BenchSettings, plot_throughput, run_benchmark


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


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve-bench",
        help="benchmark serving many adapters in one batch (bank vs base vs PEFT)",
        description="Prefill and decode tokens/s for batches of max(16, n) requests using n "
        "distinct adapters: the plain base model, our AdapterBank, PEFT RoAd and PEFT LoRA "
        "(r=8) with adapter_names, side by side (interleaved rounds, medians). Writes a "
        "table (CSV), a plot (PNG) and, with --json, the results with a summary of ratios.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="16-token prompts, 8 decode steps, 3 rounds, 1/4/16 adapters, 2-layer llama-2048",
    )
    p.add_argument(
        "--models",
        default="smollm2,llama-2048",
        help="comma-separated: smollm2 (the embedded model), llama-2048 (random weights)",
    )
    p.add_argument(
        "--adapters", type=_ints, help="adapter counts, default 1,4,16,64 (--quick: 1,4,16)"
    )
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
        "--out", type=Path, default=Path("serve_bench"), help="folder for the CSV and PNG"
    )
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
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
    print(f"\nsummary (bank throughput / other, 16 adapters, {settings.clock} clock):")
    for key, value in report["summary"].items():
        target = report["targets"].get(key)
        verdict = "" if target is None else f"  (target >= {target}: {value >= target})"
        print(f"  {key}: {value:.3f}{verdict}")
    print(f"checks: {report['checks']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        tmp.replace(args.json)
    print(f"wrote {args.out / 'throughput.csv'}, {args.out / 'throughput.png'}")
    return 0
