"""Statistics for method comparisons over seeds: a mean with its 95% interval, a paired bootstrap of the
difference between two methods (paired by seed: each seed's cold start is shared by every method), and the paper's
Almost Stochastic Order test (Dror et al., 2019, through `deepsig`).

Scores are per-seed averages (e.g. exact match in %), higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.1f} [{self.low:.1f}, {self.high:.1f}]"


def mean_interval(scores, confidence: float = 0.95) -> Interval:
    """The mean and Student's t interval (n − 1 degrees of freedom); a single score has no width to give."""
    from scipy import stats

    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("mean_interval: no scores")
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1) * stats.sem(values))
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class PairedDifference:
    """A − B per seed, resampled: the mean difference, its percentile interval, and the one-sided p-value of
    "A is not better than B" (the share of resamples whose mean difference is ≤ 0)."""

    mean: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired_bootstrap(
    scores_a, scores_b, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> PairedDifference:
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"paired_bootstrap: need two equal, non-empty lists of per-seed scores, got {a.size} and {b.size}"
        )
    differences = a - b
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, differences.size, size=(resamples, differences.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return PairedDifference(float(differences.mean()), float(low), float(high), float((means <= 0).mean()))


def aso_violation(
    scores_a, scores_b, seed: int = 0, confidence: float = 0.95, comparisons: int = 1, iterations: int = 1000
) -> float:
    """ε_min of ASO: below 0.5, A is almost stochastically better than B (the paper's test; 0 = always better,
    1 = never). `comparisons` applies the Bonferroni correction when several pairs are tested; `iterations` is the
    bootstrap size of its variance estimate (deepsig's default, 1000, costs seconds per call)."""
    from deepsig import aso

    return float(
        aso(
            list(map(float, scores_a)),
            list(map(float, scores_b)),
            confidence_level=confidence,
            num_comparisons=comparisons,
            num_bootstrap_iterations=iterations,
            seed=seed,
            show_progress=False,
        )
    )
