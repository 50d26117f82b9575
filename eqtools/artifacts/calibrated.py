"""The ``calibrated`` kind: one subnet with its own BN statistics, measured before and after."""

from __future__ import annotations

from typing import Any, ClassVar

from eqtools.artifacts._manifest import ArtifactKind, Open
from eqtools.errors import ArtifactError, ConfigError
from eqtools.space import SubnetConfig

__all__ = ["Calibrated"]


class Calibrated(ArtifactKind):
    kind = "calibrated"
    made_by = "eqtools calibrate"
    WEIGHTS = "weights.safetensors"
    CONFIG = "config.json"
    files: ClassVar[dict[str, str]] = {WEIGHTS: "the supernet's state_dict with this subnet's recalibrated BN statistics",
             CONFIG: "the SubnetConfig (granularity, w_symmetry, a_symmetry, layers)"}

    class Metrics(Open):
        top1: float | None = None
        top5: float | None = None
        loss: float | None = None
        images: int | None = None
        top1_before: float | None = None
        top5_before: float | None = None
        loss_before: float | None = None
        calib_images: int | None = None
        split: str | None = None
        avg_w_bits: float | None = None
        avg_a_bits: float | None = None
        size_bytes: int | None = None
        bops: int | None = None
        time_s: float | None = None

    class Extra(Open):
        config: dict[str, Any] | None = None

    @classmethod
    def config(cls, artifact: Any) -> SubnetConfig:
        """The subnet a calibrated artifact holds (activate it after ``load_supernet``)."""
        if artifact.kind != cls.kind:
            raise ArtifactError(f"{artifact.path} is a '{artifact.kind}' artifact, not a 'calibrated' one")
        try:
            return SubnetConfig.from_json(artifact.file(cls.CONFIG).read_text())
        except ConfigError as exc:
            raise ArtifactError(f"{artifact.path}/{cls.CONFIG}: {exc}") from None

    @classmethod
    def payload(cls, config: SubnetConfig) -> dict[str, str]:
        """The files beside the weights, as ``save_supernet(files=...)`` takes them."""
        return {cls.CONFIG: config.to_json() + "\n"}
