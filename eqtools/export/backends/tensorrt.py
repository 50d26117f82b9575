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

__all__ = ["FILE", "OPSET", "RUNTIME", "blocker", "build", "run", "version"]

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


def blocker(graph: Graph) -> str | None:
    """Why TensorRT's INT8 layers cannot run this graph as it is, or None."""
    t = graph.tensors
    for node in graph.layers():
        if not node.quantized:
            continue
        assert node.input_quant is not None
        if bool(t[f"{node.name}.weight.zero_point"].any()):
            return f"layer {node.name!r} has asymmetric weights; TensorRT quantizes weights symmetrically (zero point 0)"
        zero = int(t[f"{node.name}.input.zero_point"].reshape(-1)[0])
        if zero != 0 or node.input_quant.qmin < -128 or node.input_quant.qmax > 127:
            return (f"layer {node.name!r} has an activation quantizer with zero point {zero} and codes "
                    f"[{node.input_quant.qmin}, {node.input_quant.qmax}]; TensorRT's activations are signed INT8 "
                    "with zero point 0")
    return None


def build(graph: Graph, error: type[Exception] = ValueError, calibration: list[Tensor] | None = None) -> Built:
    data = build_onnx(graph, OPSET, narrow_types=False, error=error, weight_form="int8").SerializeToString()
    return Built(data, ir_arithmetic(graph))


def run(data: bytes, batches: list[Tensor], threads: int = 2) -> tuple[Tensor, dict[str, Any]]:
    """The file's logits under ONNX semantics (onnxruntime, CPU); TensorRT's own execution is not measured."""
    from eqtools.export.backends.onnxruntime import run_onnx

    return run_onnx(data, batches, threads), {"integer_layers": None, "checked_in": "onnxruntime (ONNX semantics)"}
