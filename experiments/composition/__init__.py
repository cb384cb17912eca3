"""Composition experiments (issue 5): do RoAd adapters trained on separate subspaces combine
into a model with both skills?

- **E1** (generation, SmolLM2-135M-Instruct): skill A = answering in French, skill B =
  answering a sentiment instruction with positive/negative. Metrics: sentiment accuracy,
  share of answers in French, joint success.
- **E2** (classification, MiniLM): skill A = sentiment (MultiEmo-en), skill B = fact
  verification (VitaminC), each with its own head; the overlap of the two plane sets is swept
  from disjoint to identical.

Conditions: base, skill A, skill B, A+B composed from separately trained adapters, A+B
trained jointly with per-example subspace routing, and a LoReFT baseline (joint, one row
partition per skill).

    python -m experiments.composition.run --experiment e2 --preset quick -o results/composition

or, from Python, ``run_experiment("e2", "quick", out_dir)``. Two helpers:
``python -m experiments.composition.probe`` trains and scores one skill alone (to size a
preset), ``python -m experiments.composition.strength`` composes a finished E1 run's skills at
other strengths. What was measured: ``measured/NOTES.md``.
"""

from .run import EXPERIMENTS, run_experiment

__all__ = ["EXPERIMENTS", "run_experiment"]
