"""What RoAd adapters learned: tidy tables of angles and magnitudes (`stats`, from adapter files
alone), representation drift (`drift`) and plane importance (`importance`) on a model, and
figures drawn from those tables (`figures`)."""

from .drift import drift_samples, representation_drift, summarize_drift, text_batches
from .importance import groups_by, plane_importance, planes_reset, task_metric
from .stats import (
    compare,
    entry_table,
    overall_agreement,
    paired_planes,
    plane_table,
    plane_tables,
    select,
    similarity,
    strong_planes,
    summarize,
)

__all__ = [
    "compare",
    "drift_samples",
    "entry_table",
    "groups_by",
    "overall_agreement",
    "paired_planes",
    "plane_importance",
    "plane_table",
    "plane_tables",
    "planes_reset",
    "representation_drift",
    "select",
    "similarity",
    "strong_planes",
    "summarize",
    "summarize_drift",
    "task_metric",
    "text_batches",
]
