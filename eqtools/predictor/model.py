"""A fitted predictor loaded from its artifact: configs in, predicted accuracy out.

``predictor.json`` holds the model kind, the encoding (with the space fingerprint it was built
for) and, for the MLP, the target scaling; the weights live in ``mlp.safetensors`` or
``xgb_model.json``. Loading checks that the stored encoding matches the manifest's space, and
:meth:`Predictor.check_space` refuses configs from any other space.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eqtools.artifacts import Artifact, read_artifact
from eqtools.artifacts import Predictor as PredictorArtifact
from eqtools.errors import ArtifactError
from eqtools.predictor.encoding import Encoding
from eqtools.space import ElasticSpace, SubnetConfig

__all__ = ["MODELS", "PREDICTOR_FILE", "LossToAccuracy", "Predictor", "load_predictor"]

MODELS: tuple[str, ...] = ("mlp", "xgb", "ensemble")
PREDICTOR_FILE = PredictorArtifact.INFO


class _Regressor(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...


class LossToAccuracy:
    """A regressor fitted on the mean loss, read out as accuracy: ``intercept + slope × loss``.

    The line is the least-squares fit of accuracy on loss over the training rows (slope < 0), so
    the order of predictions is the loss model's order reversed, and values are on the accuracy
    scale the search and the reports use. An ensemble's spread scales by ``|slope|``.
    """

    def __init__(self, regressor: _Regressor, slope: float, intercept: float) -> None:
        self.regressor = regressor
        self.slope = float(slope)
        self.intercept = float(intercept)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * self.regressor.predict(x)

    def __getattr__(self, name: str) -> Any:
        if name == "predict_with_spread" and hasattr(self.regressor, "predict_with_spread"):
            def predict_with_spread(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                mean, spread = self.regressor.predict_with_spread(x)
                return self.intercept + self.slope * mean, abs(self.slope) * spread
            return predict_with_spread
        raise AttributeError(name)


class Predictor:
    """Predicted top-1 accuracy (a fraction) for configs of one elastic space."""

    def __init__(self, model: str, encoding: Encoding, regressor: _Regressor, space: ElasticSpace,
                 artifact: Artifact | None = None) -> None:
        self.model = model
        self.encoding = encoding
        self.regressor = regressor
        self.space = space
        self.artifact = artifact
        encoding.check_space(space, "the predictor's encoding")

    def check_space(self, space: ElasticSpace, what: str = "the supernet") -> None:
        """Refuse to predict for another space (e.g. a predictor fitted on another supernet)."""
        if space.fingerprint != self.space.fingerprint:
            where = f"predictor {self.artifact.path}" if self.artifact is not None else "the predictor"
            raise ArtifactError(
                f"{where} was fitted for elastic space {self.space.fingerprint}, but {what} has space "
                f"{space.fingerprint} ({self.space.describe_difference(space)}); fit a predictor on samples "
                "of this supernet (`eqtools sample`, then `eqtools fit-predictor`)"
            )

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Scope for many small batched calls (the search): the MLP runs on one torch thread."""
        if self.model == "mlp":
            from eqtools.predictor.mlp import one_thread

            ctx = one_thread()
        else:
            ctx = nullcontext()
        with ctx:
            yield

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        return self.regressor.predict(x)

    def predict_indices(
        self, w_idx: np.ndarray, a_idx: np.ndarray, granularity: str, w_symmetry: str, a_symmetry: str
    ) -> np.ndarray:
        """Accuracies [N] for index arrays [N, n_elastic] at one condition: one batched call."""
        return self.regressor.predict(self.encoding.encode_indices(w_idx, a_idx, granularity, w_symmetry, a_symmetry))

    def predict_indices_with_spread(
        self, w_idx: np.ndarray, a_idx: np.ndarray, granularity: str, w_symmetry: str, a_symmetry: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_indices` and the ensemble's spread [N] (zeros for a single model)."""
        x = self.encoding.encode_indices(w_idx, a_idx, granularity, w_symmetry, a_symmetry)
        if self.has_spread:
            return self.regressor.predict_with_spread(x)
        mean = self.regressor.predict(x)
        return mean, np.zeros_like(mean)

    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        for config in configs:
            self.space.validate(config)
        return self.regressor.predict(self.encoding.encode(configs))

    @property
    def has_spread(self) -> bool:
        """Whether the model estimates its own uncertainty (an ensemble: the spread of its members)."""
        return hasattr(self.regressor, "predict_with_spread")

    def predict_with_spread(self, configs: Sequence[SubnetConfig]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted accuracies [N] and their uncertainty [N] (std across ensemble members; zeros
        for a single model, which has no estimate of its own)."""
        for config in configs:
            self.space.validate(config)
        x = self.encoding.encode(configs)
        if self.has_spread:
            return self.regressor.predict_with_spread(x)
        mean = self.regressor.predict(x)
        return mean, np.zeros_like(mean)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    return data


def load_predictor(source: Artifact | Path | str) -> Predictor:
    """Open a ``predictor`` artifact (path or already-read artifact) and rebuild its model."""
    artifact = source if isinstance(source, Artifact) else read_artifact(source, "predictor")
    if artifact.kind != "predictor":
        raise ArtifactError(f"{artifact.path} is a '{artifact.kind}' artifact; expected a 'predictor' artifact")
    space = artifact.space
    if space is None:
        raise ArtifactError(f"{artifact.path} records no elastic space; re-create it with `eqtools fit-predictor`")
    info_path = artifact.file(PREDICTOR_FILE)
    info = _read_json(info_path)
    model = info.get("model")
    if model not in MODELS:
        raise ArtifactError(f"{info_path}: model is {model!r}; this eqtools knows {list(MODELS)}")
    encoding = Encoding.from_dict(info.get("encoding") or {}, str(info_path))
    if encoding.space_fingerprint != artifact.manifest.get("space_fingerprint"):
        raise ArtifactError(
            f"{artifact.path}: the encoding was built for space {encoding.space_fingerprint} but the manifest "
            f"records space {artifact.manifest.get('space_fingerprint')}; the artifact was assembled from "
            "mismatched parts, re-create it with `eqtools fit-predictor`"
        )
    regressor: _Regressor
    if model == "mlp":
        from eqtools.predictor.mlp import WEIGHTS_FILE, load_mlp

        target = info.get("target") or {}
        try:
            mean, std = float(target["mean"]), float(target["std"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{info_path}: an MLP predictor needs target.mean and target.std") from None
        regressor = load_mlp(artifact.file(WEIGHTS_FILE), mean, std)
        if regressor.weights[0].shape[1] != encoding.n_features:
            raise ArtifactError(
                f"{artifact.path}: the MLP takes {regressor.weights[0].shape[1]} inputs but the encoding "
                f"makes {encoding.n_features}; the artifact was assembled from mismatched parts"
            )
    elif model == "xgb":
        from eqtools.predictor.xgb import MODEL_FILE, load_xgb

        regressor = load_xgb(artifact.file(MODEL_FILE))
    else:
        from eqtools.predictor.ensemble import ENSEMBLE_FILE, Ensemble, load_ensemble_mlps
        from eqtools.predictor.xgb import MODEL_FILE, load_xgb

        targets = info.get("members")
        if not isinstance(targets, list) or not targets:
            raise ArtifactError(f"{info_path}: an ensemble predictor needs a non-empty 'members' list")
        mlps = load_ensemble_mlps(artifact.file(ENSEMBLE_FILE), targets)
        if any(m.weights[0].shape[1] != encoding.n_features for m in mlps):
            raise ArtifactError(f"{artifact.path}: an MLP member's input width differs from the encoding's features")
        regressor = Ensemble([*mlps, load_xgb(artifact.file(MODEL_FILE))])
    target_map = info.get("target_map")
    if target_map is not None:
        try:
            regressor = LossToAccuracy(regressor, float(target_map["slope"]), float(target_map["intercept"]))
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{info_path}: target_map needs a numeric slope and intercept") from None
    return Predictor(model, encoding, regressor, space, artifact)
