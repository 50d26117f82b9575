"""The ``calibrated`` kind: one subnet with its own BN statistics, measured before and after."""

from __future__ import annotations

import json
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
    DEPLOY_PLAN = "deploy_plan.json"
    files: ClassVar[dict[str, str]] = {
        WEIGHTS: "the supernet's state_dict with this subnet's recalibrated BN statistics",
        CONFIG: "the SubnetConfig (granularity, w_symmetry, a_symmetry, layers)",
        DEPLOY_PLAN: "optional: the 8-bit requantization ranges of the integer ONNX graph whose accuracy "
                     "metrics.deployed records (export builds its file from them)",
    }

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
        deployed: dict[str, Any] | None = None

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
    def deploy_plan(cls, artifact: Any) -> dict[str, Any] | None:
        """The kept deploy plan (a JSON document), or None for an artifact calibrated without one."""
        if cls.DEPLOY_PLAN not in artifact.manifest.get("files", {}):
            return None
        try:
            return json.loads(artifact.file(cls.DEPLOY_PLAN).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{artifact.path}/{cls.DEPLOY_PLAN} cannot be read as JSON: {exc}") from None

    @classmethod
    def payload(cls, config: SubnetConfig, deploy_plan: dict[str, Any] | None = None) -> dict[str, str]:
        """The files beside the weights, as ``save_supernet(files=...)`` takes them."""
        files = {cls.CONFIG: config.to_json() + "\n"}
        if deploy_plan is not None:
            files[cls.DEPLOY_PLAN] = json.dumps(deploy_plan, indent=1) + "\n"
        return files
