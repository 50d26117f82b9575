"""The OpenVINO backend: exact QDQ ONNX with int8 weight codes at zero point 0, checked in OpenVINO itself.

Why this form (measured, ``docs/decisions/0202-openvino-qdq-int8-weights.md``): OpenVINO reads ONNX
directly and fuses ``DequantizeLinear -> Conv/Gemm`` (with a quantized input) into int8 convolutions
only when the weights are int8 codes with zero point 0; uint8 weights around 128 and INT4 weights stay
float. It must never get onnxruntime's integer graph: it refuses ``com.microsoft`` ops and computes
per-channel ``QLinearConv`` wrongly without an error. So the file is the exact QDQ form
(:mod:`eqtools.export.backends.qdq`) at opset 13, every value in an 8-bit container, weights int8. A
b-bit activation's range is a float ``Clip`` in front of its ``QuantizeLinear`` (``clip="float"``), not
an integer ``Clip`` between Q and DQ: OpenVINO's CPU plugin folds the former into the FakeQuantize's
crop bounds (or the conv that feeds it) and runs the latter as a ``Clamp`` of its own, which cost the
below-8-bit files a tenth of their time at batch 1 (``docs/decisions/0220-openvino-float-range-clip.md``).

The check compiles the file on the CPU with ``INFERENCE_PRECISION_HINT=f32`` (the default on CPUs
with AMX is bf16, which moves low-bit rounding boundaries) and counts what ran in integer from the
executed graph (``compiled.get_runtime_model()``, each op's ``layerType`` and ``runtimePrecision``),
not from the file.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eqtools.export.backends import Built, ir_arithmetic
from eqtools.export.backends.qdq import build_onnx
from eqtools.export.runtime import Graph

__all__ = ["FILE", "OPSET", "RUNTIME", "build", "executed_layers", "run", "version"]

RUNTIME = "openvino"
FILE = "model.openvino.onnx"
OPSET = 13
# executed-graph layer types that hold a conv/linear's multiply-adds
_WEIGHTED = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
_INTEGER_PRECISIONS = ("u8", "i8")


def version() -> str | None:
    """The installed OpenVINO's version, or None when it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


def build(graph: Graph, error: type[Exception] = ValueError, calibration: list[Tensor] | None = None) -> Built:
    """The file OpenVINO runs: exact QDQ, 8-bit containers with float range clips, int8 weights at zero point 0."""
    data = build_onnx(graph, OPSET, narrow_types=False, error=error, weight_form="int8",
                      clip="float").SerializeToString()
    return Built(data, ir_arithmetic(graph))


def _compile(data: bytes, threads: int) -> Any:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(data, b"")
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})


def executed_layers(compiled: Any) -> dict[str, dict[str, int]]:
    """``{layerType: {runtimePrecision: count}}`` of the graph OpenVINO executes."""
    out: dict[str, Counter[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        out.setdefault(kind, Counter())[precision] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def run(data: bytes, batches: list[Tensor], threads: int = 2) -> tuple[Tensor, dict[str, Any]]:
    """Logits of the file in OpenVINO (CPU, f32 inference hint) and what its executed graph ran in integer."""
    compiled = _compile(data, threads)
    request = compiled.create_infer_request()
    logits = torch.cat([torch.from_numpy(np.array(request.infer({0: x.numpy()})[0])) for x in batches])
    layers = executed_layers(compiled)
    weighted = {k: v for k, v in layers.items() if k in _WEIGHTED}
    integer = sum(n for v in weighted.values() for p, n in v.items() if p in _INTEGER_PRECISIONS)
    return logits, {"integer_layers": integer, "float_layers": sum(sum(v.values()) for v in weighted.values()) - integer,
                    "executed": layers, "inference_precision": "f32"}
