"""Confidence intervals for the numbers experiments report, and verdicts in words.

- `wilson`: the Wilson score interval of a proportion (an accuracy on n items).
- `paired_bootstrap`: a percentile interval of any statistic of per-item arrays that share
  their items (the same test set scored under several conditions, or several seeds): each
  resample draws item indices once and applies them to every array, so differences and
  ratios keep their pairing.
- `verdict`: ``"met"``, ``"not met"`` or ``"not established"`` for a target, from an interval.

Pure numpy; no model, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Interval = tuple[float, float, float]
"""(low, point, high)."""


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """(low, p̂, high) of a proportion: the Wilson score interval,
    (p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), p, min(1.0, centre + half)


def paired_bootstrap(
    statistic: Callable[..., float],
    *arrays: Sequence[float] | np.ndarray,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """(low, point, high) of ``statistic(*arrays)`` over paired resamples of the items.

    Every array has the items on its **last** axis (shape (n,), or (seeds, n) for per-seed
    rows of the same items); one resample picks n item indices with replacement and takes
    them from every array alike. Resamples whose statistic is not finite (e.g. a ratio whose
    denominator resampled to 0) are dropped; if more than 5% are, the interval is NaN.
    """
    data = [np.asarray(a, dtype=float) for a in arrays]
    n = {a.shape[-1] for a in data}
    if len(n) != 1:
        raise ValueError(f"paired arrays must share their items, got lengths {sorted(n)}")
    items = n.pop()
    point = float(statistic(*data))
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for r in range(resamples):
        index = rng.integers(0, items, items)
        values[r] = statistic(*(a[..., index] for a in data))
    finite = values[np.isfinite(values)]
    if finite.size < 0.95 * resamples:
        return math.nan, point, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), point, float(high)


def verdict(interval: Interval, target: float, *, higher_is_better: bool = True) -> str:
    """``"met"`` when the whole interval is on the good side of ``target``, ``"not met"``
    when it is wholly on the other side, else ``"not established"`` (the target is inside
    the noise)."""
    low, _, high = interval
    if math.isnan(low) or math.isnan(high):
        return "not established"
    if not higher_is_better:
        low, high, target = -high, -low, -target
    if low >= target:
        return "met"
    if high < target:
        return "not met"
    return "not established"


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)
