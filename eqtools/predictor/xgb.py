"""The CQAP as gradient-boosted trees (xgboost), saved in xgboost's own JSON model format.

Trees need no target scaling and train in about a second on thousands of samples; they are the
baseline the MLP has to beat. The model file is xgboost's documented JSON schema, loadable by any
xgboost of the same major version (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eqtools.artifacts import Predictor as PredictorArtifact
from eqtools.errors import ArtifactError

__all__ = ["DEFAULT_PARAMS", "XGBModel", "load_xgb", "train_xgb"]

MODEL_FILE = PredictorArtifact.XGB_MODEL

# shallow trees, slow learning rate, row/column subsampling: what tabular predictors of this size
# (hundreds to thousands of rows, a few hundred binary features) usually need
DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 600,
    "max_depth": 4,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
    "reg_lambda": 1.0,
    "tree_method": "hist",
}


class XGBModel:
    """A loaded booster; ``predict`` takes float32 features [N, F] and returns accuracies [N]."""

    def __init__(self, booster: Any) -> None:
        self.booster = booster

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(np.asarray(x, dtype=np.float32)), dtype=np.float64)

    def save(self, path: Path) -> None:
        self.booster.save_model(str(path))


def train_xgb(x: np.ndarray, y: np.ndarray, *, seed: int = 0, threads: int = 2, **params: Any) -> XGBModel:
    """Fit a regressor; ``params`` override :data:`DEFAULT_PARAMS`. Deterministic for a seed."""
    import xgboost

    settings = {**DEFAULT_PARAMS, **params}
    model = xgboost.XGBRegressor(objective="reg:squarederror", random_state=seed, n_jobs=threads, **settings)
    model.fit(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float64))
    return XGBModel(model.get_booster())


def load_xgb(path: Path, threads: int = 1) -> XGBModel:
    """Load for inference: one thread, since the search predicts ~100 rows at a time."""
    import xgboost

    booster = xgboost.Booster(params={"nthread": threads})
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as exc:
        raise ArtifactError(f"{path} is not a readable xgboost model ({str(exc).splitlines()[0]})") from None
    return XGBModel(booster)
