"""Fitting a predictor on a ``samples`` artifact and writing the ``predictor`` artifact.

The held-out split (``test_fraction`` of the rows, by seed) is never seen in training; its
measured and predicted accuracies are written to ``heldout.json`` so every reported metric can be
recomputed from the artifact alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from eqtools.artifacts import Artifact, write_artifact
from eqtools.artifacts import Predictor as PredictorArtifact
from eqtools.errors import ArtifactError, ConfigError, NumericError, SpecError
from eqtools.predictor.encoding import ENCODINGS, Encoding
from eqtools.predictor.ensemble import ENSEMBLE_FILE, Ensemble, save_ensemble_mlps
from eqtools.predictor.metrics import regression_metrics, scatter_plot
from eqtools.predictor.mlp import OPTIMIZERS, WEIGHTS_FILE, save_mlp, train_mlp
from eqtools.predictor.model import MODELS, PREDICTOR_FILE, LossToAccuracy, Predictor
from eqtools.predictor.samples import load_samples, split_indices
from eqtools.predictor.xgb import DEFAULT_PARAMS, MODEL_FILE, train_xgb

__all__ = ["HELDOUT_FILE", "SCATTER_FILE", "FitOptions", "fit_predictor", "fit_regressor"]

TARGETS: tuple[str, ...] = ("accuracy", "loss")
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_MEMBERS = 100
HELDOUT_FILE = PredictorArtifact.HELDOUT
SCATTER_FILE = PredictorArtifact.SCATTER


@dataclass(frozen=True)
class FitOptions:
    """Everything that decides a fit; defaults are the spec's ``predictor`` section's defaults
    (the winner of docs/fit-predictor.md's comparison: an ensemble of 3 MLPs + xgboost on the
    onehot-costs encoding, learning the loss, with the pairwise ranking term)."""

    model: str = "ensemble"
    encoding: str = "onehot-costs"
    epochs: int = 100
    seed: int = 0
    hidden: int = 200
    layers: int = 7
    lr: float = 4e-4
    weight_decay: float = 1e-5
    optimizer: str = "adam"
    batch_size: int = 32
    test_fraction: float = 0.2
    rank_weight: float = 1.0  # MLP: weight of the pairwise ranking term added to SmoothL1
    members: int = 3  # ensemble: MLP members (seeds seed, seed+1, ...), plus one xgboost member
    target: str = "loss"  # or "accuracy": learn the rows' mean loss, read out as accuracy (LossToAccuracy)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"predictor model {self.model!r} is unknown; allowed: {list(MODELS)}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"encoding {self.encoding!r} is unknown; allowed: {list(ENCODINGS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is unknown; allowed: {list(OPTIMIZERS)}")
        if self.epochs < 1:
            raise ConfigError(f"epochs is {self.epochs}; it must be at least 1")
        if not 0 <= self.rank_weight <= FLOAT32_MAX:
            raise ConfigError(
                f"the rank weight (--rank-weight, or the spec's predictor.rank_weight) is {self.rank_weight}; it must be a number from 0 to {FLOAT32_MAX:.4g} (the loss it "
                "scales is float32, so a larger weight makes it infinite)"
            )
        if self.target not in TARGETS:
            raise ConfigError(f"target {self.target!r} is unknown; allowed: {list(TARGETS)}")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise ConfigError(
                f"the ensemble size (--members, or the spec's predictor.members) is {self.members}; an ensemble takes 1 to {MAX_MEMBERS} MLP members (each is trained "
                "and kept in full)"
            )

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], **overrides: Any) -> FitOptions:
        """Defaults from a resolved spec (``spec['predictor']``, ``spec['seed']``); None overrides are ignored."""
        from eqtools.specs import parse_spec

        try:
            parsed = parse_spec(dict(spec), "in the samples artifact's manifest")
        except SpecError as exc:
            raise ArtifactError(f"the samples artifact's spec is not valid for this eqtools: {exc}") from None
        p = parsed.predictor
        base = cls(model=p.model, encoding=p.encoding, epochs=p.epochs, seed=parsed.seed, hidden=p.hidden,
                   layers=p.layers, lr=p.lr, weight_decay=p.weight_decay, test_fraction=p.test_fraction,
                   rank_weight=p.rank_weight, members=p.members, target=p.target)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def fit_regressor(
    options: FitOptions, x: np.ndarray, y: np.ndarray, on_epoch: Callable[[int, float], None] | None = None
) -> Any:
    """Train the model ``options`` names on features ``x`` [N, F] and accuracies ``y`` [N].

    Returns an object with ``predict(x) -> [N]``: :class:`MLPWeights`, :class:`XGBModel` or
    :class:`Ensemble` (``members`` MLPs with seeds ``seed, seed + 1, ...`` and one xgboost).
    Deterministic for a seed.
    """
    mlp_args = dict(hidden=options.hidden, layers=options.layers, epochs=options.epochs, lr=options.lr,
                    weight_decay=options.weight_decay, optimizer=options.optimizer, batch_size=options.batch_size,
                    rank_weight=options.rank_weight)
    if options.model == "mlp":
        return train_mlp(x, y, seed=options.seed, on_epoch=on_epoch, **mlp_args)
    if options.model == "xgb":
        regressor = train_xgb(x, y, seed=options.seed)
        if on_epoch is not None:
            on_epoch(options.epochs - 1, float("nan"))
        return regressor
    members: list[Any] = [train_mlp(x, y, seed=options.seed + k, **mlp_args) for k in range(options.members)]
    members.append(train_xgb(x, y, seed=options.seed))
    if on_epoch is not None:
        on_epoch(options.epochs - 1, float("nan"))
    return Ensemble(members)


def fit_predictor(
    samples: Artifact,
    out: Path | str,
    options: FitOptions,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Artifact:
    """Fit, evaluate on the held-out split and write a ``predictor`` artifact at ``out``."""
    data = load_samples(samples)
    space = data.space
    encoding = Encoding.for_space(space, options.encoding)
    x = encoding.encode(data.configs)
    y = data.accuracy
    train, test = split_indices(len(data), options.test_fraction, options.seed)
    conditions = np.asarray(data.conditions)

    start = time.perf_counter()
    info: dict[str, Any] = {"model": options.model, "encoding": encoding.to_dict(), "options": asdict(options)}
    if options.target == "loss":
        loss = data.loss
        if loss is None:
            raise ArtifactError(f"{samples.path}: --target loss needs a numeric 'loss' in every row (the sampler writes it)")
        slope, intercept = np.polyfit(loss[train], y[train], 1)
        regressor = LossToAccuracy(fit_regressor(options, x[train], loss[train], on_epoch), slope, intercept)
        info["target_map"] = {"slope": float(slope), "intercept": float(intercept),
                              "fitted_on": "least squares of accuracy on loss over the training rows"}
    else:
        regressor = fit_regressor(options, x[train], y[train], on_epoch)
    inner = regressor.regressor if isinstance(regressor, LossToAccuracy) else regressor
    mlp_info = {"hidden": options.hidden, "layers": options.layers, "activation": "relu",
                "loss": "smooth_l1" + (f"+{options.rank_weight:g}*pairwise" if options.rank_weight else "")}
    if options.model == "mlp":
        info["target"] = {"mean": inner.target_mean, "std": inner.target_std}
        info["mlp"] = mlp_info
    elif options.model == "xgb":
        info["xgb"] = dict(DEFAULT_PARAMS)
    else:
        info["mlp"] = mlp_info
        info["xgb"] = dict(DEFAULT_PARAMS)
        info["members"] = [{"mean": m.target_mean, "std": m.target_std} for m in inner.mlps]
    fit_time = time.perf_counter() - start
    predictor = Predictor(options.model, encoding, regressor, space)

    pred_test = predictor.predict_features(x[test])
    pred_train = predictor.predict_features(x[train])
    if not (np.isfinite(pred_test).all() and np.isfinite(pred_train).all()):
        raise NumericError(
            f"the {options.model} predictor's fit diverged: it predicts NaN or infinity for "
            f"{int((~np.isfinite(pred_train)).sum() + (~np.isfinite(pred_test)).sum())} of {len(data)} subnets; "
            f"nothing was written. Lower the learning rate (the spec's predictor.lr, now {options.lr:g}) or "
            f"--rank-weight (now {options.rank_weight:g})"
        )
    held = regression_metrics(y[test], pred_test, conditions[test].tolist())
    seen = regression_metrics(y[train], pred_train)
    metrics = {
        "model": options.model,
        "encoding": options.encoding,
        "n_samples": len(data),
        "n_train": len(train),
        "n_test": len(test),
        "rmse": held["rmse"],
        "mae": held["mae"],
        "pearson": held["pearson"],
        "kendall_tau": held["kendall_tau"],
        "per_condition": held["per_condition"],
        "train_rmse": seen["rmse"],
        "train_kendall_tau": seen["kendall_tau"],
        "fit_time_s": round(fit_time, 3),
    }
    heldout = {
        "test_indices": test.tolist(),
        "train_indices": train.tolist(),
        "measured": y[test].tolist(),
        "predicted": pred_test.tolist(),
        "conditions": conditions[test].tolist(),
    }
    title = (
        f"{options.model} ({options.encoding}), {len(test)} held-out subnets: "
        f"r={_fmt(held['pearson'])} τ={_fmt(held['kendall_tau'])} RMSE={100 * held['rmse']:.2f} pt"
    )

    def write(tmp: Path) -> None:
        (tmp / PREDICTOR_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / HELDOUT_FILE).write_text(json.dumps(heldout) + "\n")
        if options.model == "mlp":
            save_mlp(tmp / WEIGHTS_FILE, inner)
        elif options.model == "xgb":
            inner.save(tmp / MODEL_FILE)
        else:
            save_ensemble_mlps(tmp / ENSEMBLE_FILE, inner.mlps)
            inner.members[-1].save(tmp / MODEL_FILE)
        scatter_plot(tmp / SCATTER_FILE, y[test], pred_test, conditions[test].tolist(), title)

    return write_artifact(out, "predictor", write, spec=samples.spec, space=space, parents=[samples],
                          metrics=metrics, extra={"model": options.model, "encoding": options.encoding})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
