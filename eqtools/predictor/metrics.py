"""Predictor quality: RMSE, Pearson r and Kendall τ on held-out subnets, and the scatter plot.

Correlations come from :mod:`scipy.stats` (``pearsonr``; ``kendalltau``, the τ-b variant that
handles ties) rather than hand-written formulas. The search only ever compares configs of *one*
condition, so the ranking that matters is within a condition: besides the overall numbers the
metrics hold τ and r per condition (where the held-out set has at least three subnets of it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["regression_metrics", "scatter_plot"]

MIN_PER_CONDITION = 3


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN; a constant prediction has no correlation, say so with null
    value = float(value)
    return value if math.isfinite(value) else None


def _correlations(measured: np.ndarray, predicted: np.ndarray) -> tuple[float | None, float | None]:
    from scipy import stats

    if len(measured) < 2 or np.ptp(measured) == 0 or np.ptp(predicted) == 0:
        return None, None
    pearson = stats.pearsonr(measured, predicted).statistic
    kendall = stats.kendalltau(measured, predicted).statistic
    return _finite_or_none(pearson), _finite_or_none(kendall)


def regression_metrics(
    measured: Sequence[float] | np.ndarray,
    predicted: Sequence[float] | np.ndarray,
    conditions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """RMSE (accuracy fraction), Pearson r, Kendall τ-b and n; per condition too if given."""
    y = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"measured and predicted must be equal-length vectors, got {y.shape} and {p.shape}")
    pearson, kendall = _correlations(y, p)
    out: dict[str, Any] = {
        "n": len(y),
        "rmse": float(np.sqrt(np.mean((p - y) ** 2))) if len(y) else None,
        "mae": float(np.mean(np.abs(p - y))) if len(y) else None,
        "pearson": pearson,
        "kendall_tau": kendall,
    }
    if conditions is not None:
        labels = np.asarray(list(conditions))
        per: dict[str, Any] = {}
        for label in sorted(set(labels.tolist())):
            mask = labels == label
            if mask.sum() < MIN_PER_CONDITION:
                continue
            r, tau = _correlations(y[mask], p[mask])
            per[label] = {"n": int(mask.sum()), "pearson": r, "kendall_tau": tau,
                          "rmse": float(np.sqrt(np.mean((p[mask] - y[mask]) ** 2)))}
        out["per_condition"] = per
    return out


def scatter_plot(
    path: Path,
    measured: np.ndarray,
    predicted: np.ndarray,
    conditions: Sequence[str],
    title: str,
) -> None:
    """Predicted vs measured accuracy (in %), one colour per condition, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = 100.0 * np.asarray(measured)
    p = 100.0 * np.asarray(predicted)
    labels = np.asarray(list(conditions))
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=110)
    try:
        for label in sorted(set(labels.tolist())):
            mask = labels == label
            ax.scatter(y[mask], p[mask], s=12, alpha=0.7, label=label)
        lo = float(min(y.min(), p.min())) if len(y) else 0.0
        hi = float(max(y.max(), p.max())) if len(y) else 100.0
        pad = 0.02 * (hi - lo) + 1e-6
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linewidth=1, linestyle="--")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("measured top-1 accuracy (%)")
        ax.set_ylabel("predicted top-1 accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
