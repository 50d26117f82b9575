"""The ExecuTorch backend: a ``.pte`` whose quantized layers the XNNPACK delegate runs as QS8 operators.

The same PT2E graph as LiteRT's (:mod:`eqtools.export.backends.pt2e`: int8 weight codes as buffers read
by ``dequantize_per_channel``, the subnet's own activation grids, explicit clamps below 8 bits) is
exported with ``torch.export`` and lowered by ``to_edge_transform_and_lower`` with the
``XnnpackPartitioner``, which takes each dequantize -> conv/linear -> quantize pattern as one
quantized (QS8) XNNPACK operator. No graph is written by hand; the one change made to the exported
graph is to give each reader of a quantized value its own dequantize (:func:`_dequantize_per_reader`),
the form PT2E's own convert step leaves, without which the partitioner refuses graphs below 8 bits.

The check runs the ``.pte`` in ExecuTorch's own runtime (``executorch.runtime``). What ran on
integer kernels is read from ExecuTorch's delegation report (``get_delegation_info``: the
conv/linear ops inside XNNPACK partitions next to their dequantize ops), since the runtime does not
list executed kernels without its profiler.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from eqtools.export.backends import Built
from eqtools.export.runtime import Graph

__all__ = ["FILE", "RUNTIME", "build", "run", "version"]

RUNTIME = "executorch"
FILE = "model.pte"
_WEIGHTED = ("aten_convolution_default", "aten_linear_default", "aten_addmm_default", "aten_mm_default")


def version() -> str | None:
    from importlib import metadata

    try:
        import executorch  # noqa: F401
    except ImportError:
        return None
    return f"executorch {metadata.version('executorch')} (XNNPACK delegate)"


def build(graph: Graph, error: type[Exception] = ValueError, calibration: list[Tensor] | None = None,
          batch: int = 1) -> Built:
    """Export the PT2E graph of ``graph`` and lower it to XNNPACK; the ``.pte``'s batch is fixed at ``batch``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    from eqtools.export.backends.pt2e import Pt2eGraph, deployed_arithmetic, pt2e_plan

    if not calibration:
        raise error("the ExecuTorch file needs calibration images for its 8-bit ranges")
    plan = pt2e_plan(graph, calibration)
    module = Pt2eGraph(graph, plan).eval()
    example = calibration[0][:1].expand(batch, *calibration[0].shape[1:]).contiguous()
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,))
            _dequantize_per_reader(program.graph_module)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            table = get_delegation_info(edge.exported_program().graph_module).get_operator_delegation_dataframe()
            data = bytes(edge.to_executorch().buffer)
    except Exception as exc:  # ExecuTorch raises its own types
        raise error(f"ExecuTorch cannot lower the graph ({type(exc).__name__}: {str(exc)[:300]})") from None
    rows = {r["op_type"]: (int(r["occurrences_in_delegated_graphs"]), int(r["occurrences_in_non_delegated_graphs"]))
            for r in table.to_dict("records") if r["op_type"] != "Total"}
    weighted = {k: v for k, v in rows.items() if k in _WEIGHTED}
    dequantized = rows.get("quantized_decomposed_dequantize_per_channel_default", (0, 0))[0]
    delegation = {"delegated": {k: v[0] for k, v in rows.items() if v[0]},
                  "not_delegated": {k: v[1] for k, v in rows.items() if v[1]},
                  # a weighted op inside an XNNPACK partition with its int8 weight's dequantize: a QS8 operator
                  "integer_layers": min(sum(v[0] for v in weighted.values()), dequantized),
                  "float_layers": sum(v[1] for v in weighted.values())}
    return Built(data, lambda xs: deployed_arithmetic(graph, plan, xs),
                 {"delegation": delegation, "identity_layers": len(module.identity_layers)})


def _dequantize_per_reader(gm: torch.fx.GraphModule) -> int:
    """Give every reader of a quantized value its own dequantize node (what PT2E's convert step leaves).

    The partitioner takes a reader's input dequantize into that reader's partition; a dequantize shared
    by two readers in different partitions (a value read by a residual add and by the identity conv that
    moves it to a layer's grid, which only happens below 8 bits) then puts a path out of one partition
    and back into it ("Invalid partition, found dependency cycles"). The module keeps one
    dequantized tensor per value, read by all its readers, so the copies are made on the exported graph.
    Returns how many dequantize nodes were added.
    """
    dequantize = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    added = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != dequantize or len(node.users) < 2:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_after(node):
                copy = gm.graph.node_copy(node)
            user.replace_input_with(node, copy)
            added += 1
    if added:
        gm.graph.lint()
        gm.recompile()
    return added


def run(data: bytes, batches: list[Tensor], threads: int = 2) -> tuple[Tensor, dict[str, Any]]:
    """Logits of the ``.pte`` in ExecuTorch's runtime (its batch is the one it was built for)."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(data).load_method("forward")
    batch = int(method.metadata.input_tensor_meta(0).sizes()[0])
    logits = []
    for x in batches:
        for start in range(0, len(x), batch):
            part = x[start:start + batch]
            padded = part if len(part) == batch else torch.cat([part, part.new_zeros(batch - len(part), *part.shape[1:])])
            logits.append(method.execute([padded.contiguous()])[0][: len(part)].clone())
    return torch.cat(logits), {"integer_layers": None, "threads": "ExecuTorch's XNNPACK default"}
