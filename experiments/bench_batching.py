"""Serving many adapters in one batch: prefill and decode tokens/s for 1, 4, 16, 64 distinct
adapters in a batch of max(16, n) requests; the plain base model, our AdapterBank, PEFT RoAd
and PEFT LoRA (r=8) with ``adapter_names``, side by side in one run, on SmolLM2 and on a
random-weight Llama of hidden size 2048. Runs on CUDA when present and records the machine.

    python -m experiments.bench_batching --quick --json results/bench_batching.json

Writes results/bench_batching/throughput.{csv,png} (``--out`` to change) and, with ``--json``,
the full results with a ``summary`` of ratios: decode_vs_peft_lora_16 (target >= 2.0),
decode_vs_peft_road_16 (>= 1.5), decode_vs_base_16 (>= 0.85 on CPU, >= 0.95 on a GPU).
The same benchmark is ``road-interp serve-bench``; this entry point only sets the output
folder. All options: ``--help``.
"""

from __future__ import annotations

import sys

from road_interp.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "results/bench_batching"]
    sys.exit(main(["serve-bench", *args]))
