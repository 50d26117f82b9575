"""The paired bootstrap interval: it covers a known difference at about its nominal rate, is
narrower than unpaired intervals for correlated scores, and is deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest

from eqtools.stats import paired_bootstrap


def _pair(rng: np.random.Generator, n: int, p: float, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Model b correct with probability p; model a = b, except that a fraction `gain` of b's
    errors are fixed (true difference gain·(1-p))."""
    b = rng.random(n) < p
    a = b | (rng.random(n) < gain)
    return a, b


def test_interval_covers_the_true_difference_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    p, gain, n = 0.8, 0.05, 1000
    true = gain * (1 - p)  # 0.01
    covered = 0
    trials = 100
    for t in range(trials):
        a, b = _pair(rng, n, p, gain)
        ci = paired_bootstrap(a, b, resamples=400, seed=t)
        covered += ci["ci_low"] <= true <= ci["ci_high"]
    assert 0.88 <= covered / trials <= 1.0, covered


def test_clear_gain_excludes_zero_and_identical_models_give_a_zero_interval() -> None:
    rng = np.random.default_rng(1)
    a, b = _pair(rng, 10000, 0.85, 0.2)  # true +3 points
    ci = paired_bootstrap(a, b, resamples=500)
    assert ci["ci_low"] > 0 and ci["ci_low"] <= ci["difference"] <= ci["ci_high"]
    assert ci["difference"] == pytest.approx(a.mean() - b.mean())
    same = paired_bootstrap(b, b, resamples=50)
    assert same["ci_low"] == same["ci_high"] == same["difference"] == 0.0


def test_pairing_narrows_the_interval_and_the_seed_fixes_it() -> None:
    rng = np.random.default_rng(2)
    a, b = _pair(rng, 4000, 0.8, 0.02)
    paired = paired_bootstrap(a, b, resamples=500, seed=3)
    # unpaired: b's images shuffled, so the per-image agreement is lost
    unpaired = paired_bootstrap(a, rng.permutation(b), resamples=500, seed=3)
    assert paired["ci_high"] - paired["ci_low"] < 0.5 * (unpaired["ci_high"] - unpaired["ci_low"])
    assert paired_bootstrap(a, b, resamples=500, seed=3) == paired


def test_mismatched_or_empty_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])


def test_interval_width_matches_the_normal_approximation_of_the_paired_mean() -> None:
    rng = np.random.default_rng(4)
    a, b = _pair(rng, 5000, 0.8, 0.1)
    ci = paired_bootstrap(a, b, resamples=2000, seed=0)
    d = a.astype(float) - b.astype(float)
    expected = 2 * 1.959964 * d.std() / np.sqrt(d.size)
    assert ci["ci_high"] - ci["ci_low"] == pytest.approx(expected, rel=0.12)
