"""One module per runtime, each lowering the export IR (:mod:`eqtools.export.runtime`) to the file that runtime runs.

- :mod:`~eqtools.export.backends.qdq`: the ONNX emitter every ONNX backend shares, the float lowering of
  every op, and the exact QDQ form (the fake-quant arithmetic, quantized layers as Q/DQ around float ops).
- :mod:`~eqtools.export.backends.onnxruntime`: onnxruntime's integer graph (QLinearConv, QGemm, QLinearAdd)
  and running ONNX files in onnxruntime.
- :mod:`~eqtools.export.backends.openvino`, :mod:`~eqtools.export.backends.tensorrt`: QDQ files with int8
  weights at zero point 0, checked in OpenVINO (TensorRT: ONNX semantics only, no GPU here).
- :mod:`~eqtools.export.backends.pt2e`: the IR as a PT2E quantized graph, which
  :mod:`~eqtools.export.backends.litert` converts with ``litert-torch`` and
  :mod:`~eqtools.export.backends.executorch` lowers to XNNPACK.

Adding a runtime adds a module here with ``RUNTIME``, ``FILE``, ``version()``,
``build(graph, error, calibration) -> Built`` and ``run(data, batches, threads) -> (logits, report)``, where
the report's ``integer_layers`` is counted from the runtime's own view of what it executes. What subnets a
target can run (bit-widths, weight and activation symmetry, weight range) is declared on its ``Target`` in
:mod:`eqtools.export.targets` and checked there, before any backend is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Built", "ir_arithmetic"]


@dataclass
class Built:
    """A target file and the arithmetic it describes: ``deployed(batches)`` simulates it in PyTorch."""

    data: bytes
    deployed: Callable[[list[Tensor]], Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def ir_arithmetic(graph: Any) -> Callable[[list[Tensor]], Tensor]:
    """The IR's own float semantics in float64: what an exact QDQ file computes (the fake-quant model)."""
    from eqtools.export.runtime import build_model

    def run(batches: list[Tensor]) -> Tensor:
        model = build_model(graph).double()
        with torch.no_grad():
            return torch.cat([model.run(x.double()).float() for x in batches])

    return run
