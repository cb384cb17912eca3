"""Intervals against closed forms and simulation; verdicts in words."""

from __future__ import annotations

import math

import numpy as np
import pytest

from road_interp.intervals import paired_bootstrap, verdict, wilson


def test_wilson_matches_the_closed_form_and_its_edges():
    low, p, high = wilson(81, 100)
    assert p == 0.81 and low == pytest.approx(0.7222, abs=1e-4)
    assert high == pytest.approx(0.8749, abs=1e-4)
    assert wilson(0, 10)[0] == pytest.approx(0.0) and wilson(10, 10)[2] == 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson(11, 10)


def test_paired_bootstrap_covers_the_truth_and_pairing_narrows_a_difference():
    rng = np.random.default_rng(0)
    skill = rng.random(2000) < 0.8  # per item, correct or not
    composed = skill & (rng.random(2000) < 0.95)  # loses ~5% of the items skill gets right
    low, point, high = paired_bootstrap(lambda a, b: b.mean() - a.mean(), skill, composed)
    assert low < point < high < 0 and high - low < 0.02
    unpaired = np.sqrt(2 * 0.8 * 0.2 / 2000) * 2 * 1.96  # width if the items were independent
    assert high - low < unpaired
    # per-seed rows (seeds, items) resample the same items in every row
    two_seeds = np.stack([skill, skill])
    assert paired_bootstrap(np.mean, two_seeds, resamples=200)[1] == pytest.approx(skill.mean())
    with pytest.raises(ValueError, match="share their items"):
        paired_bootstrap(np.mean, skill, skill[:10])


def test_ratio_with_a_vanishing_denominator_is_not_established():
    gain = np.zeros(50)
    low, _, high = paired_bootstrap(lambda g: g.mean() / g.mean(), gain, resamples=100)
    assert math.isnan(low) and verdict((low, 0.0, high), 0.95) == "not established"


def test_verdicts():
    assert verdict((0.96, 0.97, 0.99), 0.95) == "met"
    assert verdict((0.80, 0.85, 0.90), 0.95) == "not met"
    assert verdict((0.90, 0.96, 1.02), 0.95) == "not established"
    assert verdict((0.01, 0.02, 0.03), 0.05, higher_is_better=False) == "met"
