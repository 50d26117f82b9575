"""What each deployment target (a ``search --preset`` name) gets from export, and what it needs of a subnet.

A target names a backend (``eqtools.export.backends.<module>``), the file it writes, the runtime that
file is checked in on this machine (None where none can run here) and the constraints of that
runtime's integer kernels, checked against the subnet's integer view *before* anything is built, so a
subnet the target cannot run is refused with what to search for instead. The forms come from
:data:`eqtools.presets.PRESETS`, whose sources name the documents they follow.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

from eqtools.artifacts import Export as ExportArtifact
from eqtools.export.runtime import Graph
from eqtools.presets import PRESETS

__all__ = ["TARGETS", "Target", "backend", "narrow_weights", "target_blocker"]


@dataclass(frozen=True)
class Target:
    name: str
    backend: str | None  # module under eqtools.export.backends; None: no file is written here
    file: str | None
    checked: bool  # whether the file runs in its own runtime here (TensorRT: no GPU)
    symmetric_weights: bool = True  # weight zero point 0 (the runtimes' prepacked int8 kernels)
    symmetric_activations: bool = False  # activation zero point 0, signed int8
    narrow_weights: bool = False  # int8 weight codes in [-127, 127]
    why_not: str | None = None  # for a target without a backend: why, and the nearest file


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnxruntime", "onnxruntime", ExportArtifact.ONNX, True),
    Target("openvino", "openvino", "model.openvino.onnx", True),
    Target("tensorrt", "tensorrt", "model.tensorrt.onnx", False, symmetric_activations=True, narrow_weights=True),
    Target("tflite", "litert", "model.tflite", True, narrow_weights=True),
    Target("xnnpack", "executorch", "model.pte", True, narrow_weights=True),
    Target("tflite-uint8", None, None, False, symmetric_weights=False,
           why_not="legacy uint8 TFLite models come from TensorFlow's old converter, which eqtools does not "
                   "use; the maintained converters (litert-torch) write int8 models: --target tflite"),
    Target("snpe", None, None, False, symmetric_weights=False,
           why_not="no SNPE/QNN runtime or converter runs here; the exact QDQ ONNX (--onnx-form exact) is the "
                   "file their converters read, unchecked on that hardware"),
    Target("qnn", None, None, False, symmetric_weights=False,
           why_not="no SNPE/QNN runtime or converter runs here; the exact QDQ ONNX (--onnx-form exact) is the "
                   "file their converters read, unchecked on that hardware"),
)}
assert set(TARGETS) == set(PRESETS)


def backend(target: Target) -> ModuleType:
    """The backend module of ``target`` (imported on first use: runtimes are optional)."""
    assert target.backend is not None
    return importlib.import_module(f"eqtools.export.backends.{target.backend}")


def target_blocker(graph: Graph, target: Target) -> str | None:
    """Why ``target`` cannot run this subnet on its integer kernels, with what to search for instead; or None."""
    preset = PRESETS[target.name]
    search = (f"search for a subnet it can run with `eqtools search --preset {target.name}` ({preset.label}) and "
              "calibrate and export that one")
    t = graph.tensors
    for node in graph.layers():
        if not node.quantized:
            continue
        assert node.weight is not None and node.input_quant is not None
        bits = max(int(node.weight.bits or 0), node.input_quant.bits)
        if bits > 8:
            return f"layer {node.name!r} has {bits}-bit values; {target.name} runs integer kernels of at most 8 bits"
        if target.symmetric_weights and bool(t[f"{node.name}.weight.zero_point"].any()):
            return (f"layer {node.name!r} has asymmetric weights (non-zero weight zero points); {target.name} needs "
                    f"symmetric weights (zero point 0); {search}")
        zero = int(t[f"{node.name}.input.zero_point"].reshape(-1)[0])
        if target.symmetric_activations and zero != 0:
            return (f"layer {node.name!r} has an asymmetric activation quantizer (zero point {zero}); {target.name} "
                    f"needs symmetric activations (zero point 0); {search}")
        if target.symmetric_activations and node.input_quant.qmax > 127:
            # a symmetric quantizer of non-negative values (after a ReLU) uses codes 0..255 at 8 bits
            return (f"layer {node.name!r} has 8-bit unsigned activation codes [0, {node.input_quant.qmax}] (a "
                    f"symmetric quantizer after a ReLU); {target.name}'s INT8 activations are signed, so they hold "
                    "such a value at 7 bits at most: search with activations of at most 7 bits (--a-bits) at "
                    f"--preset {target.name}, or export this subnet for another target")
    return None


def narrow_weights(graph: Graph) -> tuple[Graph, int]:
    """``graph`` with int8 weight codes -128 moved to -127 (the [-127, 127] range XNNPACK, LiteRT and TensorRT
    take), and how many codes moved. A moved code is arithmetic the fake-quant model does not do; the target
    file is checked against the moved graph and the fake-quant model both."""
    tensors, moved = dict(graph.tensors), 0
    for node in graph.layers():
        if not node.quantized or node.weight is None or int(node.weight.qmin or 0) > -128:
            continue
        key = f"{node.name}.weight.codes"
        low = tensors[key] < -127
        if bool(low.any()):
            moved += int(low.sum())
            tensors[key] = torch.clamp(tensors[key], min=-127)
    return dataclasses.replace(graph, tensors=tensors), moved
