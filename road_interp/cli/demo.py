"""``road-interp demo``: put a RoAd adapter on each embedded model and show what it costs."""

from __future__ import annotations

import argparse

import torch

from ..config import RoadConfig
from ..model import RoadModel
from ..models import EMBEDDED, fetch_model, load_model, load_tokenizer

SENTENCES = [
    "The hotel was lovely and the staff were kind.",
    "The food was cold and the room smelled.",
]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="put RoAd1 adapters on the embedded models; report parameters and check identity",
        description="Fetch the embedded models if needed, put an identity-initialised RoAd "
        "adapter on every linear layer of each, print the trainable-parameter report, and "
        "check that the logits are bit-identical to the base model's.",
    )
    p.add_argument("--variant", default="road_1", choices=["road_1", "road_2", "road_4"])
    p.add_argument("--group-size", type=int, default=64, help="pairing group size (default 64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = RoadConfig(variant=args.variant, group_size=args.group_size)
    for name in EMBEDDED:
        fetch_model(name)
        model, tok = load_model(name), load_tokenizer(name)
        batch = tok(SENTENCES, return_tensors="pt", padding=True)
        with torch.no_grad():
            base = model(**batch).logits
            road = RoadModel(model)
            road.add_adapter("demo", config)
            adapted = road(**batch).logits
        print(
            f"\n== {name} ({type(model).__name__}) with {config.variant}, group_size {config.group_size}"
        )
        report = road.trainable_report()
        print(report.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        print(
            f"total: {report['params'].sum():,} trainable parameters in "
            f"{report['sites'].sum()} sites, {report['percent_of_base'].sum():.4f} % of the "
            f"base model's {report.attrs['base_params']:,}"
        )
        same = torch.equal(base, adapted)
        print(f"identity adapter leaves logits bit-identical: {same}")
        if not same:
            return 1
    return 0
