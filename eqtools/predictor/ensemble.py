"""An ensemble predictor: several MLPs (different seeds) and one xgboost model, averaged.

The mean of the members is the prediction; their standard deviation across members is a cheap
uncertainty estimate (deep-ensemble style, Lakshminarayanan et al. 2017): members agree where the
samples pin the accuracy down and disagree away from them. The search uses the spread to decide
which candidates are worth measuring (``search --verify``).

Storage: the MLP members' tensors go into one safetensors file with the key prefix ``m<k>.``
(``m0.0.weight``, ...), their target scaling into ``predictor.json``; the xgboost member, if
any, into the xgboost model file the ``predictor`` kind names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqtools.artifacts import Predictor as PredictorArtifact
from eqtools.errors import ArtifactError
from eqtools.predictor.mlp import MLPWeights

__all__ = ["ENSEMBLE_FILE", "Ensemble", "load_ensemble_mlps", "save_ensemble_mlps"]

ENSEMBLE_FILE = PredictorArtifact.ENSEMBLE_WEIGHTS


class Ensemble:
    """Members with ``predict(x) -> [N]``; :meth:`predict` is their mean, :meth:`spread` their std."""

    def __init__(self, members: Sequence[Any]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)

    def predict_members(self, x: np.ndarray) -> np.ndarray:
        """[M, N]: every member's prediction for features ``x`` [N, F]."""
        return np.stack([np.asarray(m.predict(x), dtype=np.float64) for m in self.members])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_members(x).mean(axis=0)

    def predict_with_spread(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation across members, both [N] (accuracy fractions)."""
        p = self.predict_members(x)
        return p.mean(axis=0), p.std(axis=0)

    def spread(self, x: np.ndarray) -> np.ndarray:
        return self.predict_with_spread(x)[1]

    @property
    def mlps(self) -> list[MLPWeights]:
        return [m for m in self.members if isinstance(m, MLPWeights)]


def save_ensemble_mlps(path: Path, mlps: Sequence[MLPWeights]) -> list[dict[str, float]]:
    """Write the MLP members' tensors; return their target scalings (for ``predictor.json``)."""
    from safetensors.numpy import save_file

    state = {f"m{k}.{key}": value for k, m in enumerate(mlps) for key, value in m.state_dict().items()}
    save_file(state, str(path), metadata={"format": "eqtools-cqap-ensemble"})
    return [{"mean": m.target_mean, "std": m.target_std} for m in mlps]


def load_ensemble_mlps(path: Path, targets: Sequence[dict[str, Any]]) -> list[MLPWeights]:
    """Read what :func:`save_ensemble_mlps` wrote; ``targets`` are the stored scalings, in order."""
    from safetensors.numpy import load_file

    from eqtools.predictor.mlp import mlp_from_state

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for malformed headers/data
        raise ArtifactError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    members: list[MLPWeights] = []
    for k, target in enumerate(targets):
        prefix = f"m{k}."
        part = {key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)}
        if not part:
            raise ArtifactError(f"{path} has no tensors for ensemble member {k}")
        try:
            mean, std = float(target["mean"]), float(target["std"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{path}: member {k} needs a target mean and std in predictor.json") from None
        members.append(mlp_from_state(part, mean, std, f"{path} (member {k})"))
    extra = {key.split(".", 1)[0] for key in state} - {f"m{k}" for k in range(len(targets))}
    if extra:
        raise ArtifactError(f"{path} holds tensors of members {sorted(extra)} that predictor.json does not list")
    return members
