"""The ``export`` kind: the integer weights file and/or the ONNX model, checked against the fake-quant subnet."""

from __future__ import annotations

from typing import Any, ClassVar

from eqtools.artifacts._manifest import ArtifactKind, Open

__all__ = ["Export"]


class Export(ArtifactKind):
    kind = "export"
    made_by = "eqtools export"
    INT = "model.int.safetensors"
    ONNX = "model.onnx"
    files: ClassVar[dict[str, str]] = {INT: "packed integer weights, scales, zero points and the graph (standalone loader)",
             ONNX: "the ONNX model (integer-kernel or exact QDQ form)"}

    class Metrics(Open):
        config: dict[str, Any] | None = None
        check: dict[str, Any] | None = None
        sizes: dict[str, Any] | None = None
        bn_fold: dict[str, Any] | None = None
        zero_points: dict[str, Any] | None = None

    class Extra(Open):
        config: dict[str, Any] | None = None
        bn_fold: str | None = None
        opset: int | None = None
        files: dict[str, str] | None = None
