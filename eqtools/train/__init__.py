"""Supernet training: losses, the sandwich step, and the resumable loop."""

from eqtools.train.loop import TrainingInterrupted, TrainOptions, run_training
from eqtools.train.losses import kl_distill, kurtosis, skewness, wdr_loss
from eqtools.train.step import sample_sandwich, sandwich_step, static_step

__all__ = [
    "TrainOptions",
    "TrainingInterrupted",
    "kl_distill",
    "kurtosis",
    "run_training",
    "sample_sandwich",
    "sandwich_step",
    "skewness",
    "static_step",
    "wdr_loss",
]
