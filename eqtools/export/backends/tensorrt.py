"""The TensorRT backend: the QDQ ONNX TensorRT builds INT8 engines from; not checked in TensorRT here.

TensorRT takes symmetric quantization only (zero point 0) for weights and activations, weights per
output channel in [-127, 127], activations per tensor, signed INT8 (``PRESETS["tensorrt"].source``).
The file is the exact QDQ form at opset 13 with int8 weight codes at zero point 0 and every value
in an 8-bit container (a ``Clip`` between Q and DQ narrows a b-bit value). No GPU is available to
this project's checks, so the file is checked for its ONNX semantics in onnxruntime (that it computes
the fake-quant arithmetic), never in TensorRT: the manifest says so.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from eqtools.export.backends import Built, ir_arithmetic
from eqtools.export.backends.qdq import build_onnx
from eqtools.export.runtime import Graph

__all__ = ["FILE", "OPSET", "RUNTIME", "build", "run", "version"]

RUNTIME = "tensorrt"
FILE = "model.tensorrt.onnx"
OPSET = 13


def version() -> str | None:
    """onnxruntime's version: the file's ONNX semantics are checked there (TensorRT itself is not run)."""
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency
        return None
    return f"onnxruntime {onnxruntime.__version__} (ONNX semantics only; TensorRT unchecked)"


def build(graph: Graph, error: type[Exception] = ValueError, calibration: list[Tensor] | None = None) -> Built:
    data = build_onnx(graph, OPSET, narrow_types=False, error=error, weight_form="int8").SerializeToString()
    return Built(data, ir_arithmetic(graph))


def run(data: bytes, batches: list[Tensor], threads: int = 2) -> tuple[Tensor, dict[str, Any]]:
    """The file's logits under ONNX semantics (onnxruntime, CPU); TensorRT's own execution is not measured."""
    from eqtools.export.backends.onnxruntime import run_onnx

    return run_onnx(data, batches, threads), {"integer_layers": None, "checked_in": "onnxruntime (ONNX semantics)"}
