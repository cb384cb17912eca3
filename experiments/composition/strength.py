"""E1 follow-up: compose the two skills of a finished E1 run at other strengths.

    python -m experiments.composition.strength experiments/composition/measured/e1-default \\
        --scales 1:1 2:1 3:1 1:0.5 2:0.5 -o results/composition/e1-strength

For each pair ``a:b`` the composed adapter is ``union(scale(A, a), scale(B, b))`` (RoAd1:
``scale`` is the matrix power R^λ of every plane's scaled rotation, see
`road_interp.compose`), built from the run's saved skill adapters without any training, and
scored like E1's conditions on the same held-out prompts. ``1:1`` is the run's own
"composed A+B" condition (a check: it must give the run's numbers). No scale is chosen on
these prompts: the table reports every one asked for.

Writes ``strength.csv`` and ``README.md`` into the output folder (atomically).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import torch

from road_interp.compose import scale, union
from road_interp.files import atomic_folder
from road_interp.io import read_adapter

from . import report
from .config import E1Config
from .e1 import E1

SKILL_FOLDERS = {"A": "skill_a_french", "B": "skill_b_sentiment"}


def parse_scales(texts: list[str]) -> list[tuple[float, float]]:
    """``["2:1", "1:0.5"]`` -> ``[(2.0, 1.0), (1.0, 0.5)]``."""
    pairs = []
    for text in texts:
        a, sep, b = text.partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((float(a), float(b)))
        except ValueError:
            raise SystemExit(
                f"a scale is 'a:b' (skill A's and skill B's λ), got {text!r}"
            ) from None
    return pairs


def run_config(run: Path) -> E1Config:
    """The `E1Config` a finished E1 run recorded in its ``config.json``."""
    settings = json.loads((run / "config.json").read_text())
    if settings.get("experiment") != "e1":
        raise SystemExit(
            f"{run} is not an E1 run (its config.json says {settings.get('experiment')!r})"
        )
    names = {f.name for f in fields(E1Config)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in names}
    return E1Config(**values)


def sweep(run: Path, scales: list[tuple[float, float]], progress: bool = True) -> pd.DataFrame:
    """One row per (λ_A, λ_B): E1's scores of the composed adapter at those strengths."""
    cfg = run_config(run)
    skills = {k: read_adapter(run / "adapters" / folder) for k, folder in SKILL_FOLDERS.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="e1-strength-") as tmp:
        exp = E1(cfg, Path(tmp), progress)
        for i, (lam_a, lam_b) in enumerate(scales):
            composed = union({"A": scale(skills["A"], lam_a), "B": scale(skills["B"], lam_b)})
            answers, own = exp.answer_both(exp.with_adapter(composed, Path(tmp) / f"composed_{i}"))
            rows.append(
                {
                    "lambda_A": lam_a,
                    "lambda_B": lam_b,
                    **exp.scores(answers, own),
                    "sample_answer": answers[1][:60],
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.composition.strength",
        description="Compose a finished E1 run's two skills at other strengths λ and score them.",
    )
    parser.add_argument("run", type=Path, help="an E1 report folder (with adapters/)")
    parser.add_argument(
        "--scales", nargs="+", default=["1:1", "2:1", "3:1", "1:0.5", "2:0.5"], metavar="A:B"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    table = sweep(args.run, parse_scales(args.scales))
    with atomic_folder(args.output) as tmp:
        table.to_csv(tmp / "strength.csv", index=False)
        (tmp / "README.md").write_text(
            f"# E1 composed at other strengths: union(scale(A, λ_A), scale(B, λ_B))\n\n"
            f"Skills from `{args.run}`; held-out prompts as in that run.\n\n"
            + report.markdown_table(table)
            + f"\n\nRun time: {(time.perf_counter() - started) / 60:.1f} min "
            f"({torch.get_num_threads()} threads).\n"
        )
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
