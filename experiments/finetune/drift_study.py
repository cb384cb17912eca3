"""The paper's pilot study: finetuning turns representations more than it stretches them.

Liao & Monz (2024, §2) compare, layer by layer, a finetuned model's hidden state x with the
pretrained model's x0 on the same input: the relative change of magnitude ΔM = |‖x‖ − ‖x0‖| /
‖x0‖ and the change of direction ΔD = 1 − cos(x, x0) (both from
`road_interp.analysis.drift.drift_measures`, in float64). Their observation: ΔD moves far more
than ΔM, which is what motivates a rotation. Here MiniLM is finetuned on one task with full
finetuning and with RoAd1 (same steps, batch and data order; each at its own learning rate),
and both are compared with the untouched pretrained encoder on validation sentences, with the
mean-pooled state (the one MiniLM's head reads). Layer 0 is the embeddings.

Each (method, seed) is one cell of a results store (`experiments.composition.store`), so seeds
accumulate; the table gives per (method, layer) the mean over seeds of ΔM and ΔD with a 95%
t-interval over seeds, and the figure draws them.

    python -m experiments.finetune.drift_study --steps 80 --seeds 0 1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from experiments.composition.store import ResultStore, run_cells
from road_interp.analysis.drift import drift_measures, pick_token, text_batches
from road_interp.analysis.figures import mean_interval
from road_interp.baselines import RunSpec, apply_method, load_for_task
from road_interp.models import load_model
from road_interp.tasks import get_task
from road_interp.training import TrainConfig, train

HERE = Path(__file__).parent
METHODS = {"full": 1e-4, "road_1": 1e-2}
"""Each method's learning rate (the quick grid's chosen rates on multiemo_en)."""


@torch.no_grad()
def layer_states(
    model: nn.Module, batches: Sequence[Mapping[str, Tensor]], token: str
) -> list[Tensor]:
    """Per layer (embeddings first), the pooled hidden state of every example: (N, H) float64."""
    model.eval()
    per_layer: list[list[Tensor]] = []
    for batch in batches:
        states = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"]
        for i, h in enumerate(states):
            if len(per_layer) <= i:
                per_layer.append([])
            per_layer[i].append(pick_token(h, mask, token))
    return [torch.cat(parts) for parts in per_layer]


def drift_by_layer(tuned: list[Tensor], base: list[Tensor]) -> pd.DataFrame:
    """layer, delta_m, delta_d (= 1 − cos), angle_deg: means over examples."""
    rows = []
    for layer, (x, x0) in enumerate(zip(tuned, base, strict=True)):
        delta_m, cos = drift_measures(x, x0)
        angle = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
        rows.append(
            {
                "layer": layer,
                "delta_m": float(delta_m.mean()),
                "delta_d": float((1.0 - cos).mean()),
                "angle_deg": float(angle.mean()),
            }
        )
    return pd.DataFrame(rows)


def run_cell(method: str, seed: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Train one method on the task, then measure its drift from the pretrained encoder."""
    task = get_task(args.task)
    spec = RunSpec(model="minilm", task=args.task, method=method)
    model, tokenizer = load_for_task(spec, len(task.labels), seed=seed)
    model = apply_method(model, spec, seed=seed)
    for p in model.parameters() if method == "full" else ():
        p.requires_grad_(True)
    head = [p for n, p in model.named_parameters() if "classifier" in n]
    for p in head:
        p.requires_grad_(True)
    config = TrainConfig(
        lr=METHODS[method], head_lr=1e-2, max_steps=args.steps, batch_size=16,
        max_length=args.max_length, eval_limit=args.texts, seed=seed, progress=False,
    )  # fmt: skip
    result = train(model, tokenizer, task, config, folder)
    shutil.rmtree(folder, ignore_errors=True)
    texts = [e.text for e in task.examples("validation", limit=args.texts)]
    batches = text_batches(tokenizer, texts, batch_size=32, max_length=args.max_length)
    base = load_model("minilm", task="classification", num_labels=len(task.labels))
    table = drift_by_layer(
        layer_states(model, batches, args.token), layer_states(base, batches, args.token)
    )
    return {
        "method": method,
        "seed": seed,
        "lr": METHODS[method],
        "steps": args.steps,
        "validation": (result.final_eval or {}).get("value"),
        "layers": table.to_dict("records"),
    }


def summarize(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per (method, layer): mean over seeds of ΔM, ΔD and the angle, each with the
    half-width of its 95% t-interval over seeds (``*_half``; NaN for one seed), and n seeds."""
    long = pd.DataFrame(
        [{"method": r["method"], "seed": r["seed"], **row} for r in records for row in r["layers"]]
    )
    rows = []
    for (method, layer), part in long.groupby(["method", "layer"], sort=True):
        row: dict[str, Any] = {"method": method, "layer": layer}
        for column in ("delta_m", "delta_d", "angle_deg"):
            mean, half, n = mean_interval(part[column])
            row[column], row[f"{column}_half"], row["seeds"] = mean, half, n
        rows.append(row)
    return pd.DataFrame(rows)


def drift_figure(table: pd.DataFrame, ax: Sequence[Axes] | None = None) -> Figure:
    """ΔM and ΔD per layer, one line per method, bands = 95% t-intervals over seeds.
    ``ax``: two Axes (ΔM, ΔD); default: a new figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=False)
    else:
        axes = list(ax)
        fig = axes[0].figure
    for a, column, title in zip(
        axes,
        ("delta_m", "delta_d"),
        ("ΔM = |‖x‖ − ‖x0‖| / ‖x0‖", "ΔD = 1 − cos(x, x0)"),
        strict=True,
    ):
        for method, part in table.groupby("method", sort=True):
            x, y = part["layer"].to_numpy(), part[column].to_numpy()
            half = np.nan_to_num(part[f"{column}_half"].to_numpy())
            (line,) = a.plot(x, y, marker="o", label=f"{method} ({int(part['seeds'].min())} seeds)")
            a.fill_between(x, y - half, y + half, color=line.get_color(), alpha=0.2)
        a.set_title(title)
        a.set_xlabel("layer (0 = embeddings)")
        a.set_ylim(bottom=0)
    axes[0].legend()
    fig.tight_layout()
    return fig


def markdown(
    table: pd.DataFrame, records: Sequence[Mapping[str, Any]], args: argparse.Namespace
) -> str:
    def fmt(value: float, half: float) -> str:
        return f"{value:.4f}" if np.isnan(half) else f"{value:.4f} ± {half:.4f}"

    vals = {m: [r["validation"] for r in records if r["method"] == m] for m in METHODS}
    lines = [
        "# Representation drift: full finetuning vs RoAd1 (MiniLM)",
        "",
        f"Task {args.task}, {args.steps} steps of 16, max_length {args.max_length}; drift on "
        f"{args.texts} validation sentences, {args.token}-pooled state, against the pretrained "
        "encoder. Mean over seeds ± half-width of the 95% t-interval over seeds. Validation "
        "accuracy per seed: "
        + "; ".join(f"{m} {', '.join(f'{v:.3f}' for v in vs)}" for m, vs in vals.items()),
        "",
        "| method | layer | ΔM | ΔD = 1 − cos | angle (deg) | ΔD / ΔM | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        ratio = r.delta_d / r.delta_m if r.delta_m > 0 else float("nan")
        lines.append(
            f"| {r.method} | {r.layer} | {fmt(r.delta_m, r.delta_m_half)} | "
            f"{fmt(r.delta_d, r.delta_d_half)} | {fmt(r.angle_deg, r.angle_deg_half)} | "
            f"{ratio:.1f} | {r.seeds} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="multiemo_en")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--texts", type=int, default=200, help="validation sentences measured")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--token", default="mean", choices=("cls", "mean"))
    parser.add_argument("-o", "--out", default=str(HERE / "results" / "drift"))
    parser.add_argument("--budget-minutes", type=float)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    store = ResultStore(out)
    work = Path(tempfile.gettempdir()) / "road_drift_study"
    prefix = f"{args.task}/steps{args.steps}/len{args.max_length}/{args.token}/texts{args.texts}"
    cells = [
        (f"{prefix}/{m}/seed{s}", lambda m=m, s=s: run_cell(m, s, args, work / f"{m}_{s}"))
        for s in args.seeds
        for m in METHODS
    ]
    run_cells(cells, store, args.budget_minutes)
    records = [r for k, r in store.records.items() if k.startswith(prefix + "/")]
    table = summarize(records)
    table.to_csv(out / "drift.csv", index=False)
    text = markdown(table, records, args)
    (out / "drift.md").write_text(text)
    drift_figure(table).savefig(out / "drift.png", dpi=130)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
