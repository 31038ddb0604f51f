"""The comparison's statistics on cases with known answers: identical samples differ by nothing, a constant shift
is significant, and the interval of a known sample is Student's t."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.stats import aso_violation, mean_interval, paired_bootstrap

SCORES = [40.0, 18.8, 43.8, 35.1, 29.6]  # five seeds, spread like the tiny world's SFT runs


def test_the_interval_of_a_known_sample():
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sem = sqrt(2.5 / 5), t(0.975, 4) = 2.776445
    assert interval.mean == 3.0
    assert interval.high - 3.0 == pytest.approx(2.776445 * np.sqrt(0.5), rel=1e-5)
    assert interval.low == pytest.approx(6.0 - interval.high)


def test_identical_samples_show_no_difference():
    same = paired_bootstrap(SCORES, SCORES)
    assert same.mean == 0.0 and same.low == 0.0 and same.high == 0.0 and not same.significant
    assert aso_violation(SCORES, SCORES) > 0.5  # no stochastic order either way


def test_a_constant_shift_is_significant_both_ways():
    better = [s + 5.0 for s in SCORES]
    shift = paired_bootstrap(better, SCORES)
    assert shift.mean == pytest.approx(5.0) and shift.low == pytest.approx(5.0) and shift.significant
    assert paired_bootstrap(SCORES, better).p_value == 1.0
    # ASO compares the two distributions unpaired: +5 is inside a spread of 25 points (ε_min ≈ 0.52), a shift
    # beyond the spread is not. Pairing by seed is what the bootstrap adds.
    assert 0.4 < aso_violation(better, SCORES) < 0.7
    far = [s + 30.0 for s in SCORES]
    assert aso_violation(far, SCORES) < 0.1
    assert aso_violation(SCORES, far) > 0.9


def test_a_noisy_difference_smaller_than_the_spread_is_not_significant():
    rng = np.random.default_rng(1)
    noisy = [s + d for s, d in zip(SCORES, rng.normal(0.5, 10.0, size=len(SCORES)), strict=True)]
    assert not paired_bootstrap(noisy, SCORES).significant


def test_mismatched_seeds_are_refused():
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap([1.0, 2.0], [1.0])
