"""The ``supernet`` kind: a trained weight-sharing supernet (or a static-QAT baseline)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from eqtools.artifacts._manifest import ArtifactKind, Open

__all__ = ["Supernet"]


class Supernet(ArtifactKind):
    kind = "supernet"
    made_by = "eqtools train SPEC"
    WEIGHTS = "weights.safetensors"
    TRAINING_LOG = "metrics.jsonl"
    files: ClassVar[dict[str, str]] = {WEIGHTS: "the whole state_dict: weights, BN statistics, every quantizer's steps/offsets/signedness",
             TRAINING_LOG: "one JSON object per epoch (losses, monitor accuracies)"}

    class Metrics(Open):
        mode: Literal["supernet", "static"] | None = None
        epochs: int | None = None
        steps_per_epoch: int | None = None
        final: dict[str, Any] | None = None
        processes: int | None = None
        train_time_s: float | None = None
        compiled: bool | None = None
        data: dict[str, Any] | None = None  # dataset name, root read, train/val/test image counts

    class Extra(Open):
        mode: Literal["supernet", "static"] | None = None
        image_size: int | None = None
        channels: int | None = None
        config: dict[str, Any] | None = None  # the static baseline's one SubnetConfig
