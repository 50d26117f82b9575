"""The Conditional Quantization-Aware accuracy Predictor (CQAP): encoders, MLP, xgboost, metrics.

``fit_predictor`` turns a ``samples`` artifact into a ``predictor`` artifact; ``load_predictor``
opens one for the search. Nothing here imports torch at module level; the MLP imports it lazily to
train and to predict.
"""

from __future__ import annotations

from eqtools.predictor.encoding import ENCODINGS, Encoding
from eqtools.predictor.fit import FitOptions, fit_predictor
from eqtools.predictor.metrics import regression_metrics, scatter_plot
from eqtools.predictor.model import MODELS, Predictor, load_predictor
from eqtools.predictor.samples import SampleSet, load_samples, split_indices

__all__ = [
    "ENCODINGS",
    "MODELS",
    "Encoding",
    "FitOptions",
    "Predictor",
    "SampleSet",
    "fit_predictor",
    "load_predictor",
    "load_samples",
    "regression_metrics",
    "scatter_plot",
    "split_indices",
]
