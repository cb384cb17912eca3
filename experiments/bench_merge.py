"""Merge + unmerge of a RoAd adapter into a d×d Linear: ours (row-wise, closed-form inverse)
against PEFT's (dense d×d R, torch.linalg.inv), side by side in one run.

    python -m experiments.bench_merge [--sizes 1024 2048 4096] [--json results/bench_merge.json]

Prints a table of times and speed-ups, checks exactness against a float64 reference, and
writes JSON with a ``summary`` holding ``speedup_vs_peft_d4096`` and ``max_rel_error``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from peft import RoadConfig as PeftRoadConfig
from peft import get_peft_model
from torch import nn

from experiments.machine import describe
from road_interp import RoadConfig, rotation
from road_interp.layers import RoadLinear


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).norm() / expected.norm())


def bench(d: int, variant: str, group_size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(d)
    linear = nn.Linear(d, d)
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()

    ours = RoadLinear(nn.Linear(d, d), name="ours")
    ours.base_layer.load_state_dict(linear.state_dict())
    adapter = ours.add_adapter(
        "a",
        RoadConfig(variant=variant, group_size=group_size, init="random"),
        torch.Generator().manual_seed(0),
    )
    ours.set_active(["a"])

    peft = get_peft_model(
        nn.Sequential(nn.Linear(d, d)),
        PeftRoadConfig(variant=variant, group_size=group_size, target_modules=["0"]),
    )
    peft_layer = peft.base_model.model[0]
    peft_layer.base_layer.load_state_dict(linear.state_dict())
    with torch.no_grad():
        peft_layer.road_theta["default"].copy_(adapter.theta)
        peft_layer.road_alpha["default"].copy_(adapter.alpha)

    # exactness: one merge against the float64 reference R W, then unmerge against W
    c, s = rotation.coefficients(
        variant, group_size, adapter.theta.detach().double(), adapter.alpha.detach().double()
    )
    expected_w = rotation.merge_rows(w0.double(), c, s, group_size)
    ours.merge()
    merge_error = rel_error(ours.base_layer.weight.detach(), expected_w)
    ours.unmerge()
    roundtrip_error = rel_error(ours.base_layer.weight.detach(), w0.double())
    peft_layer.merge()
    peft_merge_error = rel_error(peft_layer.base_layer.weight.detach(), expected_w)
    peft_layer.unmerge()
    assert torch.allclose(ours.base_layer.bias, b0, atol=1e-5)

    def ours_cycle():
        ours.merge()
        ours.unmerge()

    def peft_cycle():
        peft_layer.merge()
        peft_layer.unmerge()

    t_ours, t_peft = timed(ours_cycle, repeats), timed(peft_cycle, repeats)
    return {
        "d": d,
        "ours_ms": 1e3 * t_ours,
        "peft_ms": 1e3 * t_peft,
        "speedup": t_peft / t_ours,
        "ours_merge_rel_error": merge_error,
        "ours_roundtrip_rel_error": roundtrip_error,
        "peft_merge_rel_error": peft_merge_error,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="d of the d×d Linear"
    )
    parser.add_argument("--variant", default="road_1", choices=["road_1", "road_2", "road_4"])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per size (median)")
    parser.add_argument(
        "--threads", type=int, help="torch threads for both sides (default: torch's)"
    )
    parser.add_argument("--json", type=Path, help="write results and summary here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [bench(d, args.variant, args.group_size, args.repeats) for d in args.sizes]
    table = pd.DataFrame(rows)
    machine = describe()
    print(f"merge + unmerge, {args.variant}, group_size {args.group_size}, on {machine}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    largest = table.iloc[-1]
    summary = {
        f"speedup_vs_peft_d{int(largest['d'])}": float(largest["speedup"]),
        "max_rel_error": float(
            table[["ours_merge_rel_error", "ours_roundtrip_rel_error"]].to_numpy().max()
        ),
    }
    print("summary:", json.dumps(summary))
    result = {
        "summary": summary,
        "rows": rows,
        "machine": machine,
        "variant": args.variant,
        "group_size": args.group_size,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
    return result


if __name__ == "__main__":
    main()
