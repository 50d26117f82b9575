"""The LiteRT (TFLite) backend: a ``.tflite`` with int8 CONV_2D / FULLY_CONNECTED, converted by ``litert-torch``.

The IR is written as a PT2E quantized graph (:mod:`eqtools.export.backends.pt2e`: the subnet's own
scales, int8 activations, weights in [-127, 127] at zero point 0, explicit clamps below 8 bits) and
converted by ``litert-torch`` in its static-quantization mode, which folds each quantize/dequantize
pair into the int8 kernels' tensor types (biases become int32 at ``s_x * s_w``). No FlatBuffer is
written here. The file's input and output are int8 (the input quantized on the first layer's grid,
the output on the logits' 8-bit grid), as LiteRT's fully-quantized models have them; :func:`run`
quantizes and dequantizes at the edges.

The check runs the file in ``ai-edge-litert``'s interpreter and counts the conv/linear ops whose
input tensor is int8 in the interpreter's own op list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from eqtools.export.backends import Built
from eqtools.export.runtime import Graph

__all__ = ["FILE", "RUNTIME", "build", "run", "version"]

RUNTIME = "litert"
FILE = "model.tflite"
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")


def version() -> str | None:
    """``ai-edge-litert`` and ``litert-torch`` versions, or None when either is missing."""
    from importlib import metadata

    try:
        import ai_edge_litert  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        return None
    return f"ai-edge-litert {metadata.version('ai-edge-litert')} (litert-torch {metadata.version('litert-torch')})"


def build(graph: Graph, error: type[Exception] = ValueError, calibration: list[Tensor] | None = None,
          batch: int = 1) -> Built:
    """Convert the PT2E graph of ``graph`` (8-bit ranges from ``calibration``) with litert-torch.

    The file's batch is fixed at ``batch`` (the converter bakes the shapes of its reshapes; a LiteRT
    model is usually run on one image at a time)."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    from eqtools.export.backends.pt2e import Pt2eGraph, deployed_arithmetic, pt2e_plan

    if not calibration:
        raise error("the LiteRT file needs calibration images for its 8-bit ranges")
    plan = pt2e_plan(graph, calibration)
    module = Pt2eGraph(graph, plan, int8_weights=False).eval()
    # the quantizer only selects the converter's static-quantization mode: the scales are the graph's own
    mode = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)))
    example = calibration[0][:1].expand(batch, *calibration[0].shape[1:]).contiguous()
    try:
        with torch.no_grad():
            edge = litert_torch.convert(module, (example,), quant_config=mode)
    except Exception as exc:  # the converter raises its own types
        raise error(f"litert-torch cannot convert the graph ({type(exc).__name__}: {str(exc)[:300]})") from None
    return Built(bytes(edge.model_content()), lambda xs: deployed_arithmetic(graph, plan, xs),
                 {"requantized_values": sum(1 for e in plan.values() if e is not None and not e.exact),
                  "identity_layers": len(module.identity_layers)})


def _interpreter(data: bytes, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=data, num_threads=threads)


def executed_ops(interpreter: Any) -> dict[str, dict[str, int]]:
    """``{op name: {input dtype: count}}`` from the interpreter's op list."""
    out: dict[str, dict[str, int]] = {}
    for op in interpreter._get_ops_details():
        first = op["inputs"][0] if len(op["inputs"]) else -1
        dtype = interpreter._get_tensor_details(first, 0)["dtype"].__name__ if first >= 0 else "none"
        kinds = out.setdefault(op["op_name"], {})
        kinds[dtype] = kinds.get(dtype, 0) + 1
    return out


def run(data: bytes, batches: list[Tensor], threads: int = 2) -> tuple[Tensor, dict[str, Any]]:
    """Logits of the ``.tflite`` in LiteRT's interpreter, and which conv/linear ops it holds in int8."""
    it = _interpreter(data, threads)
    it.allocate_tensors()
    inp, = it.get_input_details()
    out, = it.get_output_details()
    batch = int(inp["shape"][0])  # the file's batch is fixed when it is converted (see build)
    scale, zero = inp["quantization"]
    logits = []
    for x in batches:
        for start in range(0, len(x), batch):
            part = x[start:start + batch]
            value = part.numpy()
            if len(part) < batch:  # a short last slice: padded, the padding's outputs dropped
                value = np.concatenate([value, np.zeros((batch - len(part), *value.shape[1:]), value.dtype)])
            if inp["dtype"] == np.int8:
                value = np.clip(np.round(value / scale) + zero, -128, 127).astype(np.int8)
            it.set_tensor(inp["index"], value)
            it.invoke()
            y = it.get_tensor(out["index"])[: len(part)]
            if out["dtype"] == np.int8:
                y = (y.astype(np.float32) - out["quantization"][1]) * out["quantization"][0]
            logits.append(torch.from_numpy(np.array(y, np.float32)))
    ops = executed_ops(it)
    weighted = {k: v for k, v in ops.items() if k in _WEIGHTED}
    integer = sum(v.get("int8", 0) for v in weighted.values())
    return torch.cat(logits), {"integer_layers": integer,
                               "float_layers": sum(sum(v.values()) for v in weighted.values()) - integer,
                               "executed": ops}
