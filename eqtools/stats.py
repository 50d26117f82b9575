"""Statistics shared by the stages that compare measured subnets (search ``--verify``, ``report``).

A difference of two subnets' top-1 measured on the *same* images is a paired comparison: each
image is scored by both, so the image-to-image variation cancels and the interval is far
narrower than two independent binomial intervals would suggest. :func:`paired_bootstrap` gives
the percentile bootstrap interval of the mean per-image difference (resampling images with
replacement, Efron & Tibshirani 1993, ch. 13), seeded so a report is reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["paired_bootstrap"]

CHUNK = 256  # resamples drawn at once: CHUNK × images int64 indices in memory


def paired_bootstrap(
    a: Any, b: Any, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``a - b`` over images and its bootstrap confidence interval.

    ``a`` and ``b`` are per-image scores [N] of two models on the same N images in the same order
    (e.g. correct = 1, wrong = 0, so the mean difference is the top-1 difference as a fraction).
    Returns ``{"difference", "ci_low", "ci_high", "level", "resamples", "images", "seed",
    "a_mean", "b_mean"}``; the interval is the (1 - level)/2 and (1 + level)/2 percentiles of the
    resampled mean differences.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same images: got {a.size} and {b.size} values")
    if a.size == 0:
        raise ValueError("paired scores are empty")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is {level}; it must lie strictly between 0 and 1")
    if resamples < 1:
        raise ValueError(f"resamples is {resamples}; it must be at least 1")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        k = min(CHUNK, resamples - start)
        means[start:start + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"difference": float(d.mean()), "ci_low": float(low), "ci_high": float(high), "level": level,
            "resamples": resamples, "images": int(d.size), "seed": seed, "a_mean": float(a.mean()),
            "b_mean": float(b.mean())}
