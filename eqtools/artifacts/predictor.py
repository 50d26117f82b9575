"""The ``predictor`` kind: the conditional accuracy predictor (MLP or xgboost) and its held-out check."""

from __future__ import annotations

from typing import Any, ClassVar

from eqtools.artifacts._manifest import ArtifactKind, Open

__all__ = ["Predictor"]


class Predictor(ArtifactKind):
    kind = "predictor"
    made_by = "eqtools fit-predictor"
    INFO = "predictor.json"
    MLP_WEIGHTS = "mlp.safetensors"
    XGB_MODEL = "xgb_model.json"
    ENSEMBLE_WEIGHTS = "ensemble.safetensors"
    HELDOUT = "heldout.json"
    SCATTER = "scatter.png"
    files: ClassVar[dict[str, str]] = {INFO: "model kind, encoding (elastic layers, candidate bits, condition columns), options",
             MLP_WEIGHTS: "the MLP's tensors (model mlp)", XGB_MODEL: "the xgboost booster (model xgb, or the ensemble's xgboost member)",
             ENSEMBLE_WEIGHTS: "the ensemble's MLP members, keys m<k>.<tensor> (model ensemble)",
             HELDOUT: "held-out row indices, measured and predicted accuracies, conditions",
             SCATTER: "predicted vs measured plot of the held-out rows"}

    class Metrics(Open):
        model: str | None = None
        encoding: str | None = None
        n_samples: int | None = None
        n_train: int | None = None
        n_test: int | None = None
        rmse: float | None = None
        mae: float | None = None
        pearson: float | None = None
        kendall_tau: float | None = None
        per_condition: dict[str, dict[str, Any]] | None = None
        train_rmse: float | None = None
        train_kendall_tau: float | None = None
        fit_time_s: float | None = None

    class Extra(Open):
        model: str | None = None
        encoding: str | None = None
