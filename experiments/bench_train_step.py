"""Time per optimizer step: our RoAd vs PEFT's RoAd vs PEFT's LoRA vs the frozen base model,
side by side in one run.

For each embedded model (MiniLM as a 2-label classifier, SmolLM2-135M as a causal LM) three
copies are built with the same targets (the per-architecture defaults of
`road_interp.injection`): our RoAd1 (group_size 64), PEFT's RoAd1 (group_size 64) and PEFT's
LoRA (r = 8, alpha 16). One step is forward + backward + AdamW step on the same batch of real
task sentences (MultiEmo-en), padded/truncated to ``--seq`` tokens. The methods are timed in
turn, round after round, so machine load hits them alike; the median over rounds is reported.

The **frozen base** is the limit a RoAd step is held to (DESIGN §5: within 10%): the base
model with every weight frozen, run forward and backward on the same batch with the gradient
flowing back through every layer to the embeddings' output (``enable_input_require_grads``),
so it pays for the activations' backward that any adapter in the first block needs, and for
no weight gradient and no optimizer step. ``road_vs_frozen_base_step_time`` is each method's
step time over it.

    python -m experiments.bench_train_step --json experiments/results/bench_train_step.json

On a machine shared with other jobs, time with ``--threads 1 --clock cpu``: the process's CPU
time (``time.process_time``) is not stretched by the other jobs' turns on the cores, which
moved the wall-clock ratios by ±0.1 between runs here.

The summary's ratios are ours / PEFT's (below 1: ours is faster) and each method / the frozen
base; over models, the worst (largest) ratio is reported alongside each model's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from experiments.machine import describe, load_average
from road_interp import RoadConfig, load_model, load_tokenizer
from road_interp.injection import resolve_targets
from road_interp.model import RoadModel
from road_interp.tasks import get_task

FROZEN = "frozen base"
METHODS = ("road (ours)", "road (peft)", "lora r=8 (peft)", FROZEN)


def build(base: torch.nn.Module, method: str) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from peft import RoadConfig as PeftRoadConfig

    model = copy.deepcopy(base)
    if method == FROZEN:
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()  # backward runs through every block
        return model
    targets = resolve_targets(model, RoadConfig())
    if method == "road (ours)":
        road = RoadModel(model)
        road.add_adapter("bench", RoadConfig(variant="road_1", group_size=64))
        return road
    if method == "road (peft)":
        config = PeftRoadConfig(variant="road_1", group_size=64, target_modules=targets)
        return get_peft_model(model, config)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))


def make_batch(name: str, batch: int, seq: int) -> dict[str, torch.Tensor]:
    tok = load_tokenizer(name)
    texts = [e.text for e in get_task("multiemo_en").examples("train", limit=batch)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def step_fn(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], causal: bool, clock: str = "wall"
):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0) if params else None
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    model.train()
    now = CLOCKS[clock]

    def step() -> float:
        start = now()
        out = model(**batch)
        if causal:
            logits = out.logits[:, :-1]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1)
            )
        else:
            loss = F.cross_entropy(out.logits, labels)
        loss.backward()
        if optimizer is not None:  # the frozen base has no weight to update
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return now() - start

    return step, sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (with --threads 1, on a machine "
        "shared with other jobs)",
    )
    parser.add_argument("--json", help="write results and summary here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = describe()  # with the load average at the start
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.models:
        causal = name == "smollm2"
        base = load_model(name, task="causal-lm" if causal else "classification")
        batch = {k: v.to(device) for k, v in make_batch(name, args.batch, args.seq).items()}
        steps = {}
        for method in METHODS:
            model = build(base, method).to(device)
            steps[method] = step_fn(model, batch, causal, args.clock)
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        for r in tqdm(range(args.warmup + args.rounds), desc=f"bench {name}"):
            for method in METHODS:
                seconds = steps[method][0]()
                if r >= args.warmup:
                    times[method].append(seconds)
        for method in METHODS:
            rows.append(
                {
                    "model": name,
                    "method": method,
                    "trainable_params": steps[method][1],
                    "median_s": statistics.median(times[method]),
                    "min_s": min(times[method]),
                    "max_s": max(times[method]),
                }
            )
        del steps, base
    table = pd.DataFrame(rows)
    median = table.pivot(index="model", columns="method", values="median_s")
    ratios = pd.DataFrame(
        {
            "road_vs_peft_road": median["road (ours)"] / median["road (peft)"],
            "road_vs_peft_lora": median["road (ours)"] / median["lora r=8 (peft)"],
            "road_vs_frozen_base": median["road (ours)"] / median[FROZEN],
            "peft_road_vs_frozen_base": median["road (peft)"] / median[FROZEN],
            "peft_lora_vs_frozen_base": median["lora r=8 (peft)"] / median[FROZEN],
        }
    )
    summary = {
        "road_vs_peft_road_step_time": float(ratios["road_vs_peft_road"].max()),
        "road_vs_peft_lora_step_time": float(ratios["road_vs_peft_lora"].max()),
        "road_vs_frozen_base_step_time": float(ratios["road_vs_frozen_base"].max()),
        "road_vs_frozen_base_limit": 1.10,
        **{
            f"road_vs_peft_road_step_time_{m}": float(v)
            for m, v in ratios["road_vs_peft_road"].items()
        },
        **{
            f"road_vs_peft_lora_step_time_{m}": float(v)
            for m, v in ratios["road_vs_peft_lora"].items()
        },
        **{
            f"{column}_step_time_{m}": float(v)
            for column in (
                "road_vs_frozen_base",
                "peft_road_vs_frozen_base",
                "peft_lora_vs_frozen_base",
            )
            for m, v in ratios[column].items()
        },
    }
    info["load_average_at_end"] = load_average()
    print(f"\nmachine: {info}")
    print(
        f"batch {args.batch} x {args.seq} tokens, {args.rounds} timed rounds, median seconds "
        f"({args.clock} clock) per step:"
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print("\nratios (ours / PEFT: < 1 means ours is faster; method / frozen base: limit 1.10):")
    print(ratios.to_string(float_format=lambda x: f"{x:.3f}"))
    print(json.dumps(summary, indent=2))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "settings": vars(args),
            "results": rows,
            "summary": summary,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
