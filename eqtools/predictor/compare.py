"""Named predictor variants, fitted the way ``fit-predictor`` fits them: what the comparison in
``docs/fit-predictor.md`` (made by ``benchmarks/bench_predictor.py``) is run on.

A variant is a :class:`FitOptions` (model, encoding, ranking term, ensemble size) plus the label
it learns: ``accuracy`` (top-1, what the sampler records and the search maximises) or ``loss``
(the mean cross-entropy on the same images, a continuous label with less counting noise than
top-1 on a few thousand images; its prediction is mapped back to accuracy by the least-squares
line of accuracy on loss over the training rows, which keeps the ranking and makes Pearson r
comparable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from eqtools.predictor.encoding import Encoding
from eqtools.predictor.fit import FitOptions, fit_regressor
from eqtools.predictor.model import LossToAccuracy
from eqtools.space import ElasticSpace, SubnetConfig

__all__ = ["VARIANTS", "FittedVariant", "fit_variant"]

VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "mlp": ({"model": "mlp"}, "accuracy"),
    "xgb": ({"model": "xgb"}, "accuracy"),
    "mlp-rank": ({"model": "mlp", "rank_weight": 1.0}, "accuracy"),
    "mlp-costs": ({"model": "mlp", "encoding": "onehot-costs"}, "accuracy"),
    "mlp-loss": ({"model": "mlp"}, "loss"),
    "xgb-costs": ({"model": "xgb", "encoding": "onehot-costs"}, "accuracy"),
    "ensemble": ({"model": "ensemble"}, "accuracy"),
    "ensemble-costs-rank": ({"model": "ensemble", "encoding": "onehot-costs", "rank_weight": 1.0}, "accuracy"),
    "mlp-costs-rank-loss": ({"model": "mlp", "encoding": "onehot-costs", "rank_weight": 1.0}, "loss"),
    "ensemble-loss": ({"model": "ensemble"}, "loss"),
    "ensemble-costs-rank-loss": ({"model": "ensemble", "encoding": "onehot-costs", "rank_weight": 1.0}, "loss"),
}


@dataclass
class FittedVariant:
    """A fitted variant: ``predict(configs)`` gives accuracies (fractions) [N]."""

    name: str
    encoding: Encoding
    regressor: Any

    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.regressor.predict(self.encoding.encode(configs))


def fit_variant(
    name: str, space: ElasticSpace, configs: Sequence[SubnetConfig], accuracy: np.ndarray, loss: np.ndarray | None = None,
    *, seed: int = 0, **overrides: Any,
) -> FittedVariant:
    """Fit variant ``name`` on every given row (no internal split: the caller holds its test set out)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {list(VARIANTS)}")
    settings, target = VARIANTS[name]
    # every variant starts from the plain MLP, so a variant's name lists all it changes
    base = FitOptions(model="mlp", encoding="onehot", rank_weight=0.0, target="accuracy", seed=seed)
    options = replace(base, **{**settings, **overrides})
    encoding = Encoding.for_space(space, options.encoding)
    x = encoding.encode(configs)
    acc = np.asarray(accuracy, dtype=np.float64)
    if target == "accuracy":
        return FittedVariant(name, encoding, fit_regressor(options, x, acc))
    if loss is None:
        raise ValueError(f"variant {name!r} learns the loss; pass the rows' losses")
    lo = np.asarray(loss, dtype=np.float64)
    slope, intercept = np.polyfit(lo, acc, 1)
    return FittedVariant(name, encoding, LossToAccuracy(fit_regressor(options, x, lo), slope, intercept))
