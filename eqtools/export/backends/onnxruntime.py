"""The onnxruntime backend: the integer graph (QLinearConv/QGemm) its integer kernels run, and running files.

The integer graph is a table of per-op lowerings (:data:`INTEGER_LOWERINGS`) over the IR, for the ops
whose integer semantics (``eqtools.export.runtime.OPS``) let them act on 8-bit codes; every other op
takes its float lowering (:data:`eqtools.export.backends.qdq.LOWERINGS`) on dequantized inputs.

The exact form (:mod:`eqtools.export.backends.qdq`) reproduces the fake-quant model but leaves every
conv in float: onnxruntime only fuses QDQ patterns it recognises, and the fake-quant model has no
quantizer at a conv's output. This form is written directly in onnxruntime's integer operators,
so nothing depends on its pattern matcher:

- quantized conv -> ``QLinearConv`` (uint8 activations, int8 weights with zero point 0, per-channel
  or per-tensor scales, int32 bias at ``s_x * s_w``); quantized linear -> ``com.microsoft.QGemm``;
  residual add -> ``com.microsoft.QLinearAdd``; global / plain average pooling ->
  ``com.microsoft.QLinearGlobalAveragePool`` / ``QLinearAveragePool``; ReLU, ReLU6/clamp, max
  pooling, slicing, zero padding, flatten and reshape act on the uint8 codes directly (``Clip``,
  ``MaxPool``, ``Slice``, ``Pad``...), which is exact: each commutes with a monotone quantizer.
- two copies run on the integer conv kernel instead, as a 1x1 ``QLinearConv`` with an identity
  weight at scale 1: a spatial subsampling followed by a zero pad of the channels (a ResNet's
  option-A shortcut; stride 2, output channels shifted by the pad) and an 8-bit value requantized
  to a layer's grid (what ``DequantizeLinear -> QuantizeLinear`` computes, without a float tensor).
  onnxruntime runs ``Slice``/``Pad`` and the Q/DQ pair as generic copies, slower than the kernel.
- values below 8 bits travel in uint8 with an integer ``Clip`` to their range; signed b-bit codes
  with zero point ``z`` are stored as uint8 codes ``+2^(b-1)`` with zero point ``z + 2^(b-1)`` (the
  same values).
- weights are int8 where the kernels compute every product exactly. x86 CPUs without VNNI add pairs
  of u8 x s8 products in int16 with saturation, so a layer whose input codes reach 255 (8-bit
  activations) keeps int8 weights only up to |code| 64; 8-bit weights there travel as uint8 around
  zero point 128, which the u8 x u8 kernels compute exactly (and more slowly). Below 8 activation
  bits every int8 code is safe. A file built for ``cpu="vnni"`` keeps every weight int8: exact and
  faster where u8 x s8 products are summed in int32 (VNNI, AMX), wrong elsewhere, which its ONNX
  metadata says (:data:`REQUIRES_KEY`).
- every value between integer ops is uint8 with one scale and zero point (an "encoding"). Where all
  readers of a value are quantized layers with one input quantizer, the value is produced directly
  in that quantizer's encoding: the same rounding the fake-quant model does. Elsewhere (a conv
  output feeding a residual add, the sum itself, a pooled value read by two layers) the deployed
  graph needs an 8-bit requantization the fake-quant model does not do. Its range comes from
  calibration images; where the value also feeds a quantized layer with step ``s_b``, the 8-bit
  step is ``s_b / k`` with ``k`` odd, so that rounding to the 8-bit grid and then to the layer's
  grid equals rounding straight to the layer's grid (no double-rounding error on the conv's input;
  only the other readers, e.g. the shortcut, see the 8-bit rounding). Where that layer's quantizer
  is a full 8-bit one whose range clips next to none of the value, the value is produced in the
  layer's own encoding instead, once, for every reader (:func:`_shared`).
- layers pinned as float stay float (``Conv`` / ``Gemm``) between ``DequantizeLinear`` and
  ``QuantizeLinear``; so do ops without an integer form (sigmoid, SiLU, hard-swish, mul, LayerNorm,
  GELU, softmax, activation-activation matmuls, ...).
- a quantized linear on a ``[B, tokens, in]`` input (a transformer) is ``QGemm`` on its uint8 codes
  reshaped to ``[B * tokens, in]`` and back. A quantized layer whose output only float ops read
  returns float: ``QGemm`` without an output scale, or for a conv ``ConvInteger`` scaled to float
  (``QLinearConv`` would requantize its output to 8 bits), and its float32 bias is added after the
  scaling, unrounded. An add or pooling with a float operand runs in float, and its other operand is
  then not requantized for it.

What is only possible with symmetric weights (zero point 0, the kernels' prepacked path) is checked
by :func:`deploy_blocker`; the export then falls back to the exact form and says why.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eqtools.export.backends.qdq import OnnxEmitter
from eqtools.export.runtime import LAYER, OPS, PASS, REQUANTIZE, Graph, Node, build_model, integer_kind
from eqtools.vocab import DEPLOY_CPUS

__all__ = [
    "DEPLOY_CPUS",
    "DEPLOY_OPSET",
    "INTEGER_LOWERINGS",
    "PLAN_FORMAT",
    "REQUIRES_KEY",
    "Encoding",
    "IntegerGraph",
    "build_deploy_onnx",
    "code_multiplier",
    "deploy_blocker",
    "int8_code_limit",
    "integer_difference",
    "optimized_ops",
    "plan_encodings",
    "plan_from_dict",
    "plan_to_dict",
    "run_onnx",
    "run_onnx_teacher_forced",
    "simulate_deploy",
    "u8s8_saturation",
    "value_samples",
]

DEPLOY_OPSET = 13  # the lowest opset the form is built at: QLinearConv exists since 10, per-axis Q/DQ since 13
_MS = "com.microsoft"
# a dense 1x1 identity conv does C multiply-adds per value copied; it beat onnxruntime's generic copies on
# ResNet-20's 16- and 32-channel maps (BENCHMARKS.md); wider maps keep the generic ops, not measured
IDENTITY_CONV_MAX_CHANNELS = 32
FLOAT_MATMUL_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "NhwcFusedConv")


@dataclass(frozen=True)
class Encoding:
    """A uint8 value's meaning: ``real = scale * (code - zero)``, with codes known to lie in ``[lo, hi]``.

    ``exact`` says the value is rounded exactly where (and as) the fake-quant model rounds it;
    otherwise it is one of the deployment's own 8-bit requantizations.
    """

    scale: float
    zero: int
    lo: int = 0
    hi: int = 255
    exact: bool = True

    @property
    def max_code(self) -> int:
        """The largest code a kernel reading this value multiplies: the range's top, or the zero point
        it pads with."""
        return max(self.hi, self.zero)

    def same_grid(self, other: Encoding) -> bool:
        return np.float32(self.scale) == np.float32(other.scale) and self.zero == other.zero

    def clamp_codes(self, op: str, attrs: dict[str, Any]) -> tuple[int, int]:
        """The code interval a ReLU or clamp keeps on this grid (every backend clips to the same codes)."""
        if op == "relu":
            return self.zero, 255
        lo = 0 if attrs.get("min") is None else int(min(255, max(0, round(attrs["min"] / self.scale) + self.zero)))
        hi = 255 if attrs.get("max") is None else int(min(255, max(0, round(attrs["max"] / self.scale) + self.zero)))
        return lo, hi


def _input_encoding(node: Node, tensors: dict[str, Tensor]) -> Encoding:
    """A quantized layer's input quantizer as a uint8 encoding: its codes shifted to start at 0.

    Signed codes shift by ``-qmin`` (128 at 8 bits, 8 at 4 bits), not by a fixed 128, so that narrow
    inputs keep small uint8 codes: the int8 weights they can multiply exactly grow as the codes shrink
    (:func:`int8_code_limit`).
    """
    name, quant = node.name, node.input_quant
    assert quant is not None
    shift = -int(quant.qmin)
    zero = int(tensors[f"{name}.input.zero_point"].reshape(-1)[0]) + shift
    return Encoding(float(tensors[f"{name}.input.scale"].reshape(-1)[0]), zero, int(quant.qmin) + shift,
                    int(quant.qmax) + shift)


def deploy_blocker(graph: Graph) -> str | None:
    """Why onnxruntime cannot run this graph's quantized layers on integer kernels, or None if it can.

    Decided from the integer view the file would store (weight zero points, activation range),
    not from the subnet's symmetry names: what matters is what the kernels will compute.
    """
    t = graph.tensors
    shapes = {n.name: n.shape for n in graph.nodes}
    shapes["input"] = graph.input_shape
    for node in graph.layers():
        if not node.quantized:
            continue
        assert node.weight is not None and node.input_quant is not None
        name = node.name
        if node.op == "linear" and not shapes.get(node.inputs[0]):
            return f"layer {name!r}: the shape of its input is not known"
        if bool(t[f"{name}.weight.zero_point"].any()):
            return (f"layer {name!r} has asymmetric weights (non-zero weight zero points); onnxruntime's integer "
                    "conv/gemm kernels need symmetric weights")
        if node.weight.bits > 8 or node.input_quant.bits > 8:
            return f"layer {name!r} has values wider than 8 bits"
        enc = _input_encoding(node, t)
        if not 0 <= enc.lo <= enc.zero <= enc.hi <= 255:
            return f"layer {name!r}: its activation zero point {enc.zero} does not fit uint8"
    return None


# ------------------------------------------------------------------------------------------ calibration
@torch.no_grad()
def value_samples(graph: Graph, batches: list[Tensor], per_batch: int = 16384) -> dict[str, Tensor]:
    """Values of every node's output over ``batches`` as the exact (fake-quant-equal) model computes them.

    A seeded random subsample per batch plus each batch's exact minimum and maximum (the 8-bit
    ranges use the extremes; the sample keeps the choice of range open to a clipping search).
    """
    model = build_model(graph)
    samples: dict[str, list[Tensor]] = {}
    g = torch.Generator().manual_seed(0)

    def sample(node: Node, args: list[Tensor], y: Tensor) -> Tensor:
        flat = y.detach().reshape(-1).float()
        pick = flat[torch.randperm(flat.numel(), generator=g)[:per_batch]] if flat.numel() > per_batch else flat
        samples.setdefault(node.name, []).append(torch.cat([pick, flat.min()[None], flat.max()[None]]))
        return y

    for x in batches:
        model.run(x, after=sample)
    return {name: torch.cat(parts) for name, parts in samples.items()}


def _calibrated(values: Tensor, align: float | None) -> Encoding:
    """An 8-bit uint8 encoding for ``values``; its step is ``align / k`` (k odd) when ``align`` is given.

    The range is the values' full range, unclipped: on the test fixture the L_p-optimal clipping
    range (p = 2.4, the quantizers' initialisation) was no better (within one image in 300 per
    subnet, either way), and an unclipped residual stream keeps its outliers.
    """
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    width = max(hi - lo, 1e-8)
    scale = width / 255.0
    if align is not None:
        k = math.floor(align * 255.0 / width)
        if k >= 1:
            scale = align / (k if k % 2 else k - 1 or 1)
    zero = int(min(255, max(0, round(-lo / scale))))
    return Encoding(float(np.float32(scale)), zero, exact=False)


# the share of a value's calibration samples that its one 8-bit reader's range may clip for the value to be
# produced in that reader's encoding (see _shared); what this bound costs and buys is measured in BENCHMARKS.md
# ("the residual sum on the next conv's grid")
SHARED_GRID_MAX_CLIPPED = 1e-3


def _shared(values: Tensor, reader: Encoding, calibrated: Encoding) -> Encoding | None:
    """``reader``'s own encoding for a value it reads beside integer ops (a residual sum read by the next
    block's first conv and by the next shortcut), where that costs the other readers next to nothing.

    With its own 8-bit range the value is needed twice, on its range for the shortcut and on the
    conv's grid, which is a second ``QLinearAdd`` of the same sum (or an identity conv for a conv
    output), a node per block that dominates at batch 1. One grid serves both when
    the conv's input quantizer is a full 8-bit one (its clamp is the uint8 saturation, so the shortcut
    still reads every code), its step is no coarser than the calibrated one, and its range clips at
    most :data:`SHARED_GRID_MAX_CLIPPED` of the calibration values. The conv then sees exactly what
    the fake-quant model gives it, and the shortcut the value clipped to the conv's range: an 8-bit
    requantization like the calibrated one, so the encoding is not ``exact``. Narrower readers keep
    the calibrated grid: their step is coarse, and rounding the residual stream to it costs accuracy.
    """
    if (reader.lo, reader.hi) != (0, 255) or np.float32(reader.scale) > np.float32(calibrated.scale) \
            or reader.same_grid(calibrated):
        return None
    outside = (values < reader.scale * (reader.lo - reader.zero)) | (values > reader.scale * (reader.hi - reader.zero))
    if float(outside.float().mean()) > SHARED_GRID_MAX_CLIPPED:
        return None
    return replace(reader, exact=False)


def _with_zero(enc: Encoding) -> Encoding:
    """``enc`` with its code range widened to hold the zero code, which a zero pad writes (after a clamp
    with a positive minimum the range excludes it, and a later ``Clip`` would lift the padding)."""
    return Encoding(enc.scale, enc.zero, min(enc.lo, enc.zero), max(enc.hi, enc.zero), enc.exact)


def _quantized_layer(node: Node) -> bool:
    return integer_kind(node) == LAYER and node.input_quant is not None


def _pass_through(node: Node) -> bool:
    """An op that runs on the codes as they are (the op table's integer semantics)."""
    return integer_kind(node) == PASS


def _integer_op(node: Node) -> bool:
    return integer_kind(node) == REQUANTIZE


def plan_encodings(graph: Graph, samples: dict[str, Tensor] | None = None, *,
                   ranges: dict[str, Encoding] | None = None) -> dict[str, Encoding | None]:
    """The encoding of every value a conv, linear, add or pooling node produces (None: it stays float).

    A value read (through pass-through ops) only by quantized layers that share one input encoding
    is produced in it, exactly; a value read by integer ops is requantized to 8 bits on its
    calibrated range, or on its one 8-bit reader's grid where that clips next to none of it
    (:func:`_shared`); a value read only by float ops stays float (a conv's output is quantized
    anyway, since ``QLinearConv`` has a quantized output).

    The 8-bit ranges come from ``samples`` (:func:`value_samples`) or, given ``ranges`` (a plan
    kept by the calibrate stage, :func:`plan_from_dict`), from there: the decisions are always
    re-derived from the graph, only the calibrated ranges are taken, so a kept plan that does not
    fit the graph is refused (``ValueError`` naming the value) rather than half-used.
    """
    if (samples is None) == (ranges is None):
        raise TypeError("plan_encodings takes exactly one of samples and ranges")
    consumers = graph.consumers()
    output = graph.output
    plan: dict[str, Encoding | None] = {}
    # values that can travel as codes: quantized layer outputs, and what pass-through and integer ops make
    # of them. An add or pooling with a float operand (a transformer's residual stream after a float add
    # of the position embedding) runs in float, so what feeds it is not requantized for nothing.
    codes: set[str] = set()
    for node in graph.nodes:
        ins = node.inputs
        if node.quantized:
            codes.add(node.name)
        elif ins and ins[0] in codes and _pass_through(node):
            codes.add(node.name)
        elif ins and _integer_op(node) and all(i in codes for i in ins):
            codes.add(node.name)

    def runs_integer(node: Node) -> bool:
        return _integer_op(node) and all(i in codes for i in node.inputs)

    def readers(value: str, seen: set[str]) -> tuple[list[Encoding], bool, bool, tuple[float, float] | None]:
        """(input encodings of quantized readers, read by an integer op, read in float, clip bounds).

        The bounds are the union of the readers' clips when every direct reader is a ReLU or a
        clamp (ReLU6, hard-tanh): values outside them are never told apart, so the 8-bit range
        need not cover them (a ReLU6 input's negative half costs resolution for nothing).
        """
        reqs: list[Encoding] = []
        integer, floating = False, value == output
        users = consumers.get(value, [])
        bounds: tuple[float, float] | None = None
        if users and output != value and all(u.op in ("relu", "clamp") for u in users):
            lows = [0.0 if u.op == "relu" else u.attrs.get("min") for u in users]
            highs = [None if u.op == "relu" else u.attrs.get("max") for u in users]
            bounds = (-math.inf if any(v is None for v in lows) else min(lows),
                      math.inf if any(v is None for v in highs) else max(highs))
        for user in users:
            if user.name in seen:
                continue
            seen.add(user.name)
            if _quantized_layer(user):
                reqs.append(_input_encoding(user, graph.tensors))
            elif _pass_through(user):
                r, i, f, _ = readers(user.name, seen)
                reqs += r
                integer |= i
                floating |= f
            elif runs_integer(user):
                integer = True
            else:
                floating = True
        return reqs, integer, floating, bounds

    for node in graph.nodes:
        name = node.name
        if not (node.quantized or runs_integer(node)):
            continue
        reqs, integer, floating, bounds = readers(name, set())
        distinct = {(np.float32(r.scale), r.zero, r.lo, r.hi) for r in reqs}
        if len(distinct) == 1 and not integer and not floating:
            plan[name] = reqs[0]
        elif reqs or integer:
            if ranges is not None:
                if name not in ranges:
                    raise ValueError(f"the kept deploy plan has no 8-bit range for value {name!r}, which this graph "
                                     "requantizes")
                plan[name] = ranges[name]
                continue
            values = samples[name] if bounds is None else samples[name].clamp(*bounds)
            scales = {np.float32(r.scale) for r in reqs}
            plan[name] = _calibrated(values, float(scales.pop()) if len(scales) == 1 else None)
            if len(distinct) == 1 and not floating:
                plan[name] = _shared(values, reqs[0], plan[name]) or plan[name]
        else:
            plan[name] = None
    if ranges is not None:
        extra = sorted(set(ranges) - {n for n, e in plan.items() if e is not None and not e.exact})
        if extra:
            raise ValueError(f"the kept deploy plan has 8-bit ranges for values this graph does not requantize: "
                             f"{extra[:5]}")
    return plan


PLAN_FORMAT = "eqtools.deploy-plan"


def plan_to_dict(plan: dict[str, Encoding | None]) -> dict[str, Any]:
    """The part of a plan that calibration decided (the 8-bit requantizations), JSON-able.

    Scales are float32 values written as Python floats, which JSON round-trips exactly; the exact
    encodings are not stored, since they are the layers' own quantizers, re-read from the graph.
    """
    return {"format": PLAN_FORMAT, "version": 1,
            "requantizations": {name: {"scale": e.scale, "zero": e.zero, "lo": e.lo, "hi": e.hi}
                                for name, e in plan.items() if e is not None and not e.exact}}


def plan_from_dict(data: Any) -> dict[str, Encoding]:
    """The 8-bit ranges of a plan written by :func:`plan_to_dict` (``ValueError`` saying what is wrong)."""
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or data.get("version") != 1:
        raise ValueError(f"not a version-1 {PLAN_FORMAT!r} document")
    requantizations = data.get("requantizations") or {}
    if not isinstance(requantizations, dict):
        raise ValueError("'requantizations' must map value names to {scale, zero, lo, hi}")
    ranges = {}
    for name, e in requantizations.items():
        try:
            scale, zero, lo, hi = float(e["scale"]), int(e["zero"]), int(e["lo"]), int(e["hi"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ValueError(f"value {name!r}: needs scale, zero, lo and hi numbers") from None
        if not (scale > 0 and math.isfinite(scale) and 0 <= lo <= hi <= 255 and 0 <= zero <= 255):
            raise ValueError(f"value {name!r}: scale {scale} must be positive and 0 <= lo <= hi <= 255, zero in 0..255")
        ranges[name] = Encoding(float(np.float32(scale)), zero, lo, hi, exact=False)
    return ranges


# ------------------------------------------------------------------------------------------ ONNX
# x86 kernels without VNNI multiply uint8 activation codes by int8 weight codes and add each pair of
# products in int16 with saturation, so a layer computes exactly only while 2 * x * |w| <= 2^15 - 1 for
# its largest activation code x. At x = 255 (8-bit unsigned activations) that allows |w| <= 64.
INT16_MAX = 32767


def int8_code_limit(max_input_code: int) -> int:
    """The largest |code| of an int8 weight that a layer whose uint8 input codes reach ``max_input_code``
    multiplies exactly (128 when every int8 code is safe; -128 is the only code that wide).

    Activations of 7 bits or fewer (codes <= 127) leave room for every int8 code, so only a layer
    with both 8-bit weights and wide inputs needs its weights as uint8 (see ``IntegerGraph.layer``).
    """
    return min(128, INT16_MAX // (2 * max(1, max_input_code)))


INT8_CODE_MAX = int8_code_limit(255)  # the widest weight code that is safe on any uint8 input
# DEPLOY_CPUS (eqtools.vocab): which CPUs a file is built to be exact on: "any" x86 CPU (uint8 weights where
# int8 could saturate), or only those whose u8 x s8 dot products sum in int32 ("vnni"), every weight int8
REQUIRES_KEY = "eqtools.requires"  # ONNX metadata_props key of what a "vnni" file needs to compute what it says
_VNNI_REQUIREMENT = ("an x86 CPU whose onnxruntime u8 x s8 kernels sum products in int32 (AVX512-VNNI, AVX-VNNI or "
                     "AMX); without it the int16 pair sums saturate and layers with 8-bit weights on 8-bit inputs "
                     "compute wrong values")


@functools.cache
def u8s8_saturation() -> str | None:
    """None when onnxruntime's u8 x s8 ``QLinearConv`` and ``QGemm`` sum products exactly on this CPU,
    else what they computed instead (one line).

    Decides where a ``cpu="vnni"`` file can be checked as it is. The probe is the kernels' worst case:
    inputs of 255 against weights of 127 and -128, whose pair sums (64770, -65280) pass int16; an
    exact kernel returns the reference codes, a saturating one about half of the accumulator.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    channels, rows = 64, 8
    w = np.full((rows, channels), 127, np.int8)
    w[1] = -128
    acc = 255.0 * w.astype(np.float64).sum(1)  # each row's exact accumulator on inputs of 255
    y_scale, y_zero = np.float32(255.0 * channels * 127 / 120), 128
    expected = np.clip(np.round(acc / np.float64(y_scale)) + y_zero, 0, 255).astype(np.uint8)
    consts = {"xs": np.array(1.0, np.float32), "xz": np.array(0, np.uint8), "ws": np.array(1.0, np.float32),
              "wz": np.array(0, np.int8), "ys": np.array(y_scale), "yz": np.array(y_zero, np.uint8),
              "w4": w.reshape(rows, channels, 1, 1), "w2": w, "rows": np.array([-1, channels], np.int64)}
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w4", "ws", "wz", "ys", "yz"], ["conv"]),
             helper.make_node("Reshape", ["x", "rows"], ["x2"]),
             helper.make_node("QGemm", ["x2", "xs", "xz", "w2", "ws", "wz", "", "ys", "yz"], ["gemm"],
                              domain=_MS, transB=1)]
    graph = helper.make_graph(
        nodes, "u8s8_probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [4, channels, 1, 1])],
        [helper.make_tensor_value_info("conv", TensorProto.UINT8, [4, rows, 1, 1]),
         helper.make_tensor_value_info("gemm", TensorProto.UINT8, [4, rows])],
        initializer=[numpy_helper.from_array(a, n) for n, a in consts.items()])
    opsets = [helper.make_opsetid("", DEPLOY_OPSET), helper.make_opsetid(_MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets[:1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        conv, gemm = session.run(None, {"x": np.full((4, channels, 1, 1), 255, np.uint8)})
    except Exception as exc:  # a runtime that cannot even run the probe cannot be trusted with the file
        return f"onnxruntime could not run the u8 x s8 probe here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    for op, got in (("QLinearConv", conv.reshape(4, rows)), ("QGemm", gemm)):
        if not np.array_equal(got, np.broadcast_to(expected, got.shape)):
            return (f"onnxruntime {ort.__version__}'s u8 x s8 {op} saturates on this CPU (255 x 127 over 64 channels "
                    f"gave code {int(got[0, 0])}, exact is {int(expected[0])}): no VNNI")
    return None


def integer_difference(model: Any, twin: Any) -> str | None:
    """None when two deploy files compute the same integers: the same nodes, the same constants, and
    weights whose codes minus their zero points are equal (int8 at 0 in one, uint8 at 128 in the
    other); else the first difference.

    A ``cpu="vnni"`` file differs from its ``cpu="any"`` twin only in how some weights are stored, so
    on a CPU whose u8 x s8 kernels saturate the twin is what runs, and this says that its results
    are the file's.
    """
    from onnx import numpy_helper

    if [n.SerializeToString() for n in model.graph.node] != [n.SerializeToString() for n in twin.graph.node]:
        return "their nodes differ"
    a = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in twin.graph.initializer}
    if set(a) != set(b):
        return f"their constants differ: {sorted(set(a) ^ set(b))[:5]}"
    for name, x in a.items():
        y = b[name]
        if name.endswith(".weight.q"):
            base = name[: -len(".q")]
            zx, zy = (z[f"{base}.zero"].astype(np.int64) for z in (a, b))
            shape = (-1,) + (1,) * (x.ndim - 1)
            x, y = x.astype(np.int64) - zx.reshape(shape), y.astype(np.int64) - zy.reshape(shape)
        elif name.endswith((".weight.zero", ".weight.zero.tensor")):
            continue  # compared through the codes they shift
        if x.shape != y.shape or not np.array_equal(x, y):
            return f"constant {name!r} differs"
    return None


def fits_int8(codes: np.ndarray, limit: int) -> bool:
    """Whether integer weight ``codes`` are int8 codes of magnitude at most ``limit``."""
    return codes.size == 0 or (int(codes.min()) >= -limit and int(codes.max()) <= min(limit, 127))


def code_multiplier(codes: np.ndarray | Tensor) -> int:
    """The largest integer m with |code * m| <= INT8_CODE_MAX (1 for codes already beyond it, e.g. 8-bit ones).

    The deployed layer stores ``code * m`` at scale ``s_w / m``: the same products, an int32 bias
    unit ``s_x * s_w / m`` that is m times finer (see ``IntegerGraph.layer``).
    """
    values = codes.numpy() if isinstance(codes, Tensor) else codes
    peak = int(np.abs(values).max()) if values.size else 0
    return max(1, INT8_CODE_MAX // max(1, peak))


class IntegerGraph(OnnxEmitter):
    """The integer graph's build: each value's encoding so far, and :data:`INTEGER_LOWERINGS` per op."""

    def __init__(self, graph: Graph, plan: dict[str, Encoding | None], error: type[Exception],
                 opset: int, cpu: str = "any") -> None:
        super().__init__(graph, opset, error)
        self.cpu = cpu
        self.plan = plan
        self.enc: dict[str, Encoding | None] = {graph.input_name: None}
        self.stats: Counter[str] = Counter()
        self.dequantized: dict[str, str] = {}
        # requantized residual sums (and ReLU/clamp of them): how to rebuild them in another encoding
        self.recipes: dict[str, tuple[str, Any, Node]] = {}
        self.consumers = graph.consumers()
        # spatial subsamplings left for the channel pad that reads them: (their input, strides); see subsample_pad
        self.deferred: dict[str, tuple[str, list[int]]] = {}

    def scale_zero(self, name: str, enc: Encoding) -> tuple[str, str]:
        return (self.tensor(f"{name}.scale", np.array(enc.scale, np.float32)),
                self.tensor(f"{name}.zero", np.array(enc.zero, np.uint8)))

    def clip(self, value: str, enc: Encoding, lo: int, hi: int, name: str) -> tuple[str, Encoding]:
        """Narrow a uint8 value's codes to [lo, hi] (no-op if they already lie there)."""
        lo, hi = max(lo, enc.lo), min(hi, enc.hi)
        if (lo, hi) == (enc.lo, enc.hi):
            return value, enc
        out = self.node("Clip", [value, self.tensor(f"{name}.lo", np.array(lo, np.uint8)),
                                 self.tensor(f"{name}.hi", np.array(hi, np.uint8))], name)
        return out, Encoding(enc.scale, enc.zero, lo, hi, enc.exact)

    def dequantize(self, value: str) -> str:
        enc = self.enc[value]
        if enc is None:
            return value
        if value not in self.dequantized:
            s, z = self.scale_zero(f"{value}.dq", enc)
            self.dequantized[value] = self.node("DequantizeLinear", [value, s, z], f"{value}.dq")
        return self.dequantized[value]

    def quantize(self, value: str, target: Encoding, name: str, channels_dim1: bool = False) -> tuple[str, Encoding]:
        """``value`` (float or uint8 in any encoding) in ``target``'s encoding, codes within its range.

        ``channels_dim1``: ``value`` is an NCHW feature map (a conv's input), so a change of grid can
        run as a 1x1 identity conv; a linear layer's input (features last) takes the Q/DQ pair.
        """
        enc = self.enc[value]
        if enc is not None and not enc.same_grid(target):
            recomputed = self.recompute(value, target, name)
            if recomputed is not None:
                self.stats["recomputed_in_layer_encoding"] += 1
                return recomputed
        if enc is None or not enc.same_grid(target):
            if enc is not None:
                self.stats["requantize_8bit_to_layer"] += 1
            grid = Encoding(target.scale, target.zero, 0, 255, target.exact)
            shape = self.shapes.get(value)
            if enc is not None and channels_dim1 and shape is not None and len(shape) == 4 \
                    and shape[1] <= IDENTITY_CONV_MAX_CHANNELS:
                value = self.identity_conv(value, enc, grid, int(shape[1]), int(shape[1]), 0, [1, 1], f"{name}.q")
            else:
                s, z = self.scale_zero(f"{name}.q", target)
                value = self.node("QuantizeLinear", [self.dequantize(value), s, z], f"{name}.q")
            enc = grid
        return self.clip(value, enc, target.lo, target.hi, f"{name}.clip")

    def identity_conv(self, value: str, enc: Encoding, out: Encoding, channels: int, out_channels: int, offset: int,
                      strides: list[int], name: str) -> str:
        """A 1x1 ``QLinearConv`` whose weight copies input channel ``c`` to output channel ``offset + c``.

        Integer arithmetic with weight 1 at scale 1: the accumulator is ``code - zero`` exactly, so with
        ``out`` on the input's grid the copy is exact. On another grid it is one rounding of
        ``(code - zero) * s_in / s_out`` (``DequantizeLinear -> QuantizeLinear`` in one node, without a
        float tensor between them): the same codes as that pair where the 8-bit step is the layer's
        step over an odd k (no value is near a tie, see :func:`_calibrated`), and otherwise up to the
        float32 rounding of the multiplier at exact ties. Output channels no input maps hold the zero code.
        """
        w = np.zeros((out_channels, channels, 1, 1), np.int8)
        w[np.arange(channels) + offset, np.arange(channels)] = 1
        self.stats["identity_convs"] += 1
        xs, xz = self.scale_zero(f"{name}.x", enc)
        ys, yz = self.scale_zero(f"{name}.y", out)
        return self.node("QLinearConv", [value, xs, xz, self.tensor(f"{name}.w", w),
                                         self.tensor(f"{name}.w.scale", np.array(1.0, np.float32)),
                                         self.tensor(f"{name}.w.zero", np.array(0, np.int8)), ys, yz],
                         name, kernel_shape=[1, 1], strides=strides, pads=[0, 0, 0, 0])

    def subsample(self, ir: Node) -> list[int] | None:
        """The strides of a slice that only subsamples a 4-D value's height and width from 0 (``x[:, :, ::2, ::2]``,
        a ResNet's option-A shortcut), or None."""
        shape = self.shapes.get(ir.inputs[0])
        if shape is None or len(shape) != 4:
            return None
        strides = [1, 1]
        for dim, start, stop, step in ir.attrs["slices"]:
            if dim not in (2, 3) or start not in (None, 0) or (stop is not None and stop < shape[dim]) \
                    or (step is not None and step < 1):
                return None
            strides[dim - 2] = step or 1
        return strides

    @staticmethod
    def channel_pad(ir: Node) -> tuple[int, int] | None:
        """(before, after) of a zero pad of a 4-D value's channels only, or None."""
        pad = list(ir.attrs["pad"])
        if len(pad) != 6 or any(pad[:4]) or min(pad[4:]) < 0 or ir.attrs.get("value", 0.0) != 0.0:
            return None
        return pad[4], pad[5]

    def subsample_pad(self, ir: Node) -> None:
        """A channel zero pad of a deferred spatial subsampling (option-A shortcut) as one strided identity conv.

        ``Slice`` with steps and ``Pad`` are generic copies in onnxruntime; one 1x1 ``QLinearConv``
        of stride 2 with an identity weight computes the same codes exactly (see :meth:`identity_conv`)
        on the integer conv kernel, in a fraction of their time.
        """
        x, strides = self.deferred.pop(ir.inputs[0])
        before, after = self.channel_pad(ir)  # checked when the subsampling was deferred for this pad
        enc, channels = self.enc[x], int(self.shapes[x][1])
        self.identity_conv(x, enc, enc, channels, channels + before + after, before, strides, ir.name)
        self.stats["shortcut_convs"] += 1
        self.enc[ir.name] = _with_zero(enc)

    def recompute(self, value: str, target: Encoding, name: str) -> tuple[str, Encoding] | None:
        """``value`` rebuilt straight in ``target``'s encoding, if it is a residual sum (through ReLU/clamp).

        A sum read by the next block's first conv and by the next shortcut is kept at 8 bits for the
        shortcut; the conv needs it on its own grid. A second ``QLinearAdd`` of the same two inputs with
        the conv's encoding as output does that in one node instead of ``DequantizeLinear ->
        QuantizeLinear``, and rounds the sum once, straight to the conv's grid, as the fake-quant model
        does (:func:`simulate_deploy` feeds quantized layers the unrequantized sum for the same reason).
        """
        recipe = self.recipes.get(value)
        if recipe is None:
            return None
        op, source, attrs = recipe
        if op == "add":
            (a, b), out = source, Encoding(target.scale, target.zero, 0, 255, target.exact)
            sa, za = self.scale_zero(f"{name}.a", self.enc[a])
            sb, zb = self.scale_zero(f"{name}.b", self.enc[b])
            sc, zc = self.scale_zero(f"{name}.sum", out)
            y = self.node("QLinearAdd", [a, sa, za, b, sb, zb, sc, zc], f"{name}.sum", domain=_MS)
            return self.clip(y, out, target.lo, target.hi, f"{name}.sum.clip")
        inner = self.recompute(source, target, name)
        if inner is None:
            return None
        y, enc = inner
        lo, hi = enc.clamp_codes(op, attrs)
        return self.clip(y, enc, lo, hi, f"{name}.{op}")

    def emit_float(self, ir: Node) -> None:
        """A node without an integer form: its float lowering on dequantized inputs."""
        self.lower_float(ir, [self.dequantize(i) for i in ir.inputs])
        self.counter += 1
        self.enc[ir.name] = None
        self.stats["float_nodes"] += 1

    def emit(self, ir: Node) -> None:
        encs = [self.enc[i] for i in ir.inputs]
        if ir.quantized:
            self.layer(ir)
        elif all(e is None for e in encs) or integer_kind(ir) not in (PASS, REQUANTIZE):
            self.emit_float(ir)
        else:
            INTEGER_LOWERINGS.get(ir.op, IntegerGraph.emit_float)(self, ir)
        self.shapes[ir.name] = ir.shape

    # ---------------------------------------------------------------------------- integer lowerings
    def clamp(self, ir: Node) -> None:
        x, enc = ir.inputs[0], self.enc[ir.inputs[0]]
        assert enc is not None
        self.passthrough(ir.name, *self.clip(x, enc, *enc.clamp_codes(ir.op, ir.attrs), ir.name))
        if x in self.recipes:
            self.recipes[ir.name] = (ir.op, x, ir.attrs)

    def slice(self, ir: Node) -> None:
        strides = self.fusable_subsample(ir)
        if strides is None:
            self.shape_op(ir)
            return
        self.deferred[ir.name] = (ir.inputs[0], strides)
        self.enc[ir.name] = self.enc[ir.inputs[0]]

    def pad(self, ir: Node) -> None:
        if ir.inputs[0] in self.deferred:
            self.subsample_pad(ir)
        else:
            self.shape_op(ir)

    def add(self, ir: Node) -> None:
        name, inputs = ir.name, ir.inputs
        encs = [self.enc[i] for i in inputs]
        out = self.plan.get(name)
        if len(inputs) != 2 or any(e is None for e in encs) or not out:
            self.emit_float(ir)
            return
        sa, za = self.scale_zero(f"{name}.a", encs[0])  # type: ignore[arg-type]
        sb, zb = self.scale_zero(f"{name}.b", encs[1])  # type: ignore[arg-type]
        sc, zc = self.scale_zero(f"{name}.out", out)
        y = self.node("QLinearAdd", [inputs[0], sa, za, inputs[1], sb, zb, sc, zc], f"{name}.raw", domain=_MS)
        if not out.exact:
            self.recipes[name] = ("add", (inputs[0], inputs[1]), {})
        self.passthrough(name, *self.clip(y, Encoding(out.scale, out.zero, 0, 255, out.exact), out.lo, out.hi,
                                          f"{name}.clip"))

    def pool(self, ir: Node) -> None:
        name, inputs, attrs = ir.name, ir.inputs, ir.attrs
        enc, out = self.enc[inputs[0]], self.plan.get(name)
        if enc is None or not out:
            self.emit_float(ir)
            return
        sx, zx = self.scale_zero(f"{name}.x", enc)
        sy, zy = self.scale_zero(f"{name}.y", out)
        if ir.op == "adaptive_avg_pool2d":
            y = self.node("QLinearGlobalAveragePool", [inputs[0], sx, zx, sy, zy], f"{name}.raw", domain=_MS,
                          channels_last=0)
        else:
            ph, pw = attrs["padding"]
            y = self.node("QLinearAveragePool", [inputs[0], sx, zx, sy, zy], f"{name}.raw", domain=_MS,
                          kernel_shape=attrs["kernel_size"], strides=attrs["stride"], pads=[ph, pw, ph, pw],
                          ceil_mode=int(attrs["ceil_mode"]), count_include_pad=int(attrs["count_include_pad"]))
        self.passthrough(name, *self.clip(y, Encoding(out.scale, out.zero, 0, 255, out.exact), out.lo, out.hi,
                                          f"{name}.clip"))

    def fusable_subsample(self, ir: Node) -> list[int] | None:
        """The strides of a subsampling whose one reader is a channel zero pad (emitted together by
        :meth:`subsample_pad`), or None."""
        users = self.consumers.get(ir.name, [])
        strides = self.subsample(ir)
        if strides is None or ir.name == self.graph.output or len(users) != 1 \
                or users[0].op != "pad" or self.channel_pad(users[0]) is None \
                or self.shapes[ir.inputs[0]][1] > IDENTITY_CONV_MAX_CHANNELS:
            return None
        return strides

    def passthrough(self, name: str, value: str, enc: Encoding) -> None:
        if value != name:
            self.node("Identity", [value], name)
        self.enc[name] = enc

    def shape_op(self, ir: Node) -> None:
        """A shape/selection op on uint8 codes: its float lowering, with the zero code as pad value."""
        enc = self.enc[ir.inputs[0]]
        assert enc is not None
        first = len(self.initializers)
        self.lower_float(ir, list(ir.inputs))
        self.counter += 1
        if ir.op == "pad":
            from onnx import numpy_helper

            for i in range(first, len(self.initializers)):
                if self.initializers[i].name == f"{ir.name}.value":
                    self.initializers[i] = numpy_helper.from_array(np.array(enc.zero, np.uint8), f"{ir.name}.value")
        self.enc[ir.name] = _with_zero(enc) if ir.op == "pad" else enc

    def layer(self, ir: Node) -> None:
        name, attrs, spec = ir.name, ir.attrs, ir.weight
        t = self.graph.tensors
        target = _input_encoding(ir, t)
        x, x_enc = self.quantize(ir.inputs[0], target, f"{name}.input", ir.op == "conv2d")
        codes = t[f"{name}.weight.codes"].numpy().astype(np.int32)
        w_scale = t[f"{name}.weight.scale"].float().numpy().reshape(-1)
        # the int32 bias has the accumulator's unit s_x * s_w, which at low bit-widths is coarse next to
        # the output step; scaling the codes by an integer m (and the scale by 1/m) computes the same
        # products exactly while making that unit m times finer, up to INT8_CODE_MAX (going on to the
        # layer's own int8 limit on narrow inputs measured no better: docs/export.md, the int32 bias)
        m = code_multiplier(codes)
        codes, w_scale = codes * m, (w_scale / np.float32(m)).astype(np.float32)
        self.stats["code_multiplier_max"] = max(self.stats["code_multiplier_max"], m)
        out_channels = int(spec.shape[0])
        per_channel = w_scale.size > 1
        # codes past the int8 limit of the layer's input range (8-bit weights on inputs whose codes pass
        # 128, where m is 1) would saturate the int16 pair sums, so such a layer's weights travel as
        # uint8 with zero point 128 (the same codes, shifted): the u8 x u8 kernels widen before summing
        # and compute it exactly on every x86 CPU. A file for VNNI CPUs, whose u8 x s8 kernels sum in
        # int32, keeps every weight int8
        limit = 128 if self.cpu == "vnni" else int8_code_limit(target.max_code)
        wide = not fits_int8(codes, limit)
        self.stats["uint8_weight_layers"] += int(wide)
        dtype, zero = (np.uint8, 128) if wide else (np.int8, 0)
        w = self.tensor(f"{name}.weight.q", (codes + zero).astype(dtype))
        ws = self.tensor(f"{name}.weight.scale", w_scale if per_channel else np.array(w_scale[0], np.float32))
        wz = self.tensor(f"{name}.weight.zero", np.full(w_scale.size, zero, dtype) if per_channel else np.array(zero, dtype))
        xs, xz = self.scale_zero(f"{name}.input", x_enc)
        bias = t.get(f"{name}.bias") if ir.bias else None
        unit = (np.float32(x_enc.scale) * np.broadcast_to(w_scale, (out_channels,))).astype(np.float32)
        bias_q = np.zeros(out_channels, np.int32) if bias is None else np.round(
            bias.float().numpy() / unit).astype(np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)
        out = self.plan.get(name)
        # a quantized output needs the bias in the int32 accumulator (at the unit s_x * s_w / m); a float
        # output (read only by float ops) gets the float32 bias added after scaling, as the fake-quant
        # model adds it: no bias rounding at all
        b = self.tensor(f"{name}.bias.q", bias_q) if out is not None else ""

        def float_bias(y: str, shape: tuple[int, ...]) -> None:
            if bias is None:
                self.node("Identity", [y], name)
            else:
                self.node("Add", [y, self.tensor(f"{name}.bias", bias.float().numpy().reshape(shape))], name)
            self.enc[name] = None

        if ir.op == "conv2d":
            kh, kw = spec.shape[2:]
            ph, pw = attrs["padding"]
            conv = {"kernel_shape": [kh, kw], "strides": attrs["stride"], "pads": [ph, pw, ph, pw],
                    "dilations": attrs["dilation"], "group": attrs["groups"]}
            self.stats["integer_convs"] += 1
            if out is None:
                # read only in float (a ViT's patch embedding, a conv before SiLU): QLinearConv's output
                # would be an 8-bit requantization the fake-quant model does not have, so the int32
                # accumulator of ConvInteger is scaled to float instead
                # ConvInteger takes one weight zero point for the whole tensor (the codes' shift is uniform);
                # given even where it is 0, so that the int8 and uint8 forms of a layer differ only in values
                w_zero = self.tensor(f"{name}.weight.zero.tensor", np.array(zero, dtype))
                acc = self.node("Cast", [self.node("ConvInteger", [x, w, xz, w_zero], f"{name}.acc", **conv)], f"{name}.acc.f",
                                to=1)  # FLOAT
                float_bias(self.node("Mul", [acc, self.tensor(f"{name}.unit", unit.reshape(-1, 1, 1))],
                                     f"{name}.nobias"), (-1, 1, 1))
                return
            ys, yz = self.scale_zero(f"{name}.out", out)
            y = self.node("QLinearConv", [x, xs, xz, w, ws, wz, ys, yz, b], f"{name}.raw", **conv)
        else:
            # QGemm takes matrices: a [B, ..., in] input (a transformer's tokens) is viewed as
            # [B * ..., in] codes (a reshape of uint8 codes, exact) and the result viewed back
            rank = len(self.shapes[ir.inputs[0]])
            if rank != 2:
                x = self.node("Reshape", [x, self.tensor(f"{name}.rows", np.array([-1, int(spec.shape[1])], np.int64))],
                              f"{name}.input.rows")
            inputs = [x, xs, xz, w, ws, wz, b]
            if out is not None:
                inputs += list(self.scale_zero(f"{name}.out", out))
            y = self.node("QGemm", inputs, f"{name}.raw", domain=_MS, transB=1)
            if rank != 2:
                y = self.node("Reshape", [y, self.tensor(f"{name}.tokens", np.array([-1, *ir.shape[1:]], np.int64))],
                              f"{name}.unrows")
            self.stats["integer_gemms"] += 1
            if out is None:
                float_bias(y, (-1,))
                return
        if not out.exact:
            self.stats["requantized_outputs"] += 1
        self.passthrough(name, *self.clip(y, Encoding(out.scale, out.zero, 0, 255, out.exact), out.lo, out.hi,
                                          f"{name}.clip"))


# the integer graph's per-op lowerings (ops whose integer semantics is PASS or REQUANTIZE, on integer inputs);
# quantized layers are IntegerGraph.layer, every other op its float lowering (qdq.LOWERINGS) on dequantized inputs
INTEGER_LOWERINGS: dict[str, Callable[[IntegerGraph, Node], None]] = {
    "relu": IntegerGraph.clamp,
    "clamp": IntegerGraph.clamp,
    "slice": IntegerGraph.slice,
    "pad": IntegerGraph.pad,
    "identity": IntegerGraph.shape_op,
    "flatten": IntegerGraph.shape_op,
    "reshape": IntegerGraph.shape_op,
    "max_pool2d": IntegerGraph.shape_op,
    "permute": IntegerGraph.shape_op,
    "select": IntegerGraph.shape_op,
    "add": IntegerGraph.add,
    "adaptive_avg_pool2d": IntegerGraph.pool,
    "avg_pool2d": IntegerGraph.pool,
}


def build_deploy_onnx(graph: Graph, calibration: list[Tensor] | None = None, *,
                      ranges: dict[str, Encoding] | None = None, opset: int = DEPLOY_OPSET, cpu: str = "any",
                      error: type[Exception] = ValueError) -> tuple[Any, dict[str, Any], dict[str, Encoding | None]]:
    """The deployable integer ONNX model of ``graph`` and what its build decided.

    ``calibration`` is a list of input batches whose ranges set the 8-bit requantizations the
    fake-quant model does not have (see the module docstring); ``ranges`` instead takes them from a
    kept plan (:func:`plan_from_dict`), so the file is the one whose accuracy the calibrate stage
    measured. Returns ``(onnx.ModelProto, info, plan)``: ``info`` counts integer layers, exact and
    requantized values and float nodes left; ``plan`` is every value's encoding (for
    :func:`simulate_deploy`, :func:`plan_to_dict`). ``cpu`` (:data:`DEPLOY_CPUS`) is where the file
    must be exact: ``"any"`` x86 CPU, or only ``"vnni"`` ones, every weight int8 (faster there).
    Call :func:`deploy_blocker` first: this assumes symmetric integer weights.
    """
    if cpu not in DEPLOY_CPUS:
        raise error(f"--cpu is {cpu!r}; allowed: {', '.join(DEPLOY_CPUS)}")
    import onnx
    from onnx import helper

    if ranges is None:
        if calibration is None:
            raise TypeError("build_deploy_onnx needs calibration batches or kept ranges")
        plan = plan_encodings(graph, value_samples(graph, calibration))
    else:
        try:
            plan = plan_encodings(graph, ranges=ranges)
        except ValueError as exc:
            raise error(f"{exc}; the plan was made for another subnet or export setting. Recalibrate the subnet "
                        "(`eqtools calibrate`) to keep a new one") from None
    b = IntegerGraph(graph, plan, error, opset, cpu)
    for ir in graph.nodes:
        b.emit(ir)
    b.node("Identity", [b.dequantize(graph.output)], "output")
    model = b.model("eqtools_deploy", "eqtools deployable integer ONNX (QLinearConv/QGemm/QLinearAdd); see docs/export.md",
                    [helper.make_opsetid("", opset), helper.make_opsetid(_MS, 1)])
    if cpu == "vnni":  # the file is wrong elsewhere: say so where any reader of the file can see it
        helper.set_model_props(model, {REQUIRES_KEY: _VNNI_REQUIREMENT})
    onnx.checker.check_model(model)
    exact_values = sum(1 for e in plan.values() if e is not None and e.exact)
    info = {
        "opset": opset,
        "cpu": cpu,
        "integer_convs": b.stats["integer_convs"],
        "integer_gemms": b.stats["integer_gemms"],
        "exact_values": exact_values,
        "requantized_values": sum(1 for e in plan.values() if e is not None and not e.exact),
        "float_nodes": b.stats["float_nodes"],
        "weight_code_multiplier_max": b.stats["code_multiplier_max"],
        "uint8_weight_layers": b.stats["uint8_weight_layers"],
        "layer_input_requantizations": b.stats["requantize_8bit_to_layer"],
        "layer_input_recomputations": b.stats["recomputed_in_layer_encoding"],
        "identity_convs": b.stats["identity_convs"],
        "shortcut_convs": b.stats["shortcut_convs"],
    }
    return model, info, plan


def _session(model_bytes: bytes, threads: int) -> Any:
    import onnxruntime as ort

    from eqtools.export import ExportError

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unsupported graphs
        raise ExportError(
            f"onnxruntime {ort.__version__} cannot load the exported ONNX graph ({type(exc).__name__}: "
            f"{str(exc)[:300]}); try an older --opset (17 avoids INT4) or --format int"
        ) from None


def run_onnx(model_bytes: bytes, batches: list[Tensor], threads: int = 2) -> Tensor:
    """Logits of ``model_bytes`` in onnxruntime (CPU, default graph optimizations) over ``batches``."""
    session = _session(model_bytes, threads)
    return torch.cat([torch.from_numpy(session.run(["output"], {"input": x.numpy()})[0]) for x in batches])


def run_onnx_teacher_forced(model_bytes: bytes, x: Tensor, reference: dict[str, Tensor],
                            threads: int = 2) -> tuple[dict[str, Tensor], Tensor]:
    """Run a ``teacher_forced`` build: ``(what arrived at each quantized layer, logits)``."""
    session = _session(model_bytes, threads)
    feeds = {"input": x.numpy()}
    for i in session.get_inputs():
        if i.name.endswith(".reference"):
            feeds[i.name] = reference[i.name[: -len(".reference")]].numpy()
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds)))
    arrived = {n[: -len(".arrived")]: torch.from_numpy(v) for n, v in values.items() if n.endswith(".arrived")}
    return arrived, torch.from_numpy(values["output"])



def optimized_ops(model_bytes: bytes, threads: int = 2) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (CPU, ``ORT_ENABLE_ALL``), read back from
    ``SessionOptions.optimized_model_filepath``: what decides whether a conv runs on integer kernels."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3  # not the warning that an optimised model is machine-specific: it is read, not kept
        try:
            ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception:
            # onnxruntime reports a failed write of the optimised model only as "Protobuf serialization
            # failed"; writing as many bytes here names the operating system's reason (a full disk)
            probe = os.path.join(tmp, "probe")
            try:
                with open(probe, "wb") as fh:
                    fh.write(model_bytes)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:  # a failed write() names no file: say which
                raise OSError(exc.errno, exc.strerror, probe) from None
            raise
        optimized = onnx.load(options.optimized_model_filepath)
    return dict(Counter(n.op_type for n in optimized.graph.node))


@torch.no_grad()
def simulate_deploy(graph: Graph, plan: dict[str, Encoding | None], batches: list[Tensor], *,
                    requantize: bool | set[str] = True, int32_bias: bool = True, bias_multiplier: bool = True,
                    recompute_sums: bool = True,
                    observe: Callable[[str, str, list[Tensor]], None] | None = None) -> Tensor:
    """Logits of the deployed arithmetic simulated in PyTorch, one rounding at a time if asked.

    ``requantize`` (all, none, or the names of the values to round) applies the deployment's own
    8-bit requantizations; ``int32_bias`` rounds the bias of each quantized layer with a quantized
    output to int32 at the deployed accumulator's unit ``s_x * s_w / m`` (:func:`code_multiplier`;
    a layer with a float output adds its float bias). With both on this is what the integer ONNX graph computes (up to float
    rounding), so the cost of each rounding is measured separately, on the same images.
    ``recompute_sums=False`` feeds a layer a requantized residual sum as its 8-bit value (a file that does not
    compute the sum again on the layer's grid). ``bias_multiplier=False`` takes the unit ``s_x * s_w`` (files whose weight codes are not scaled by m:
    LiteRT, ExecuTorch). ``observe(name, op, inputs)`` sees every node's inputs as the simulation computes them (what a
    batch-norm node receives under the deployed arithmetic, for instance).
    """
    tensors = dict(graph.tensors)
    if int32_bias:
        for node in graph.layers():
            name = node.name
            if node.input_quant is None or not node.bias or plan.get(name) is None:
                continue  # a layer with a float output adds its float bias (see IntegerGraph.layer)
            m = code_multiplier(tensors[f"{name}.weight.codes"]) if bias_multiplier else 1
            unit = (tensors[f"{name}.input.scale"] * tensors[f"{name}.weight.scale"] / m).abs()
            bias = tensors[f"{name}.bias"]
            unit = unit.expand_as(bias) if unit.numel() == 1 else unit
            tensors[f"{name}.bias"] = torch.round(bias / unit) * unit
    # in float64: the integer graph accumulates exactly in int32, so a float32 simulation would put its own
    # summation error (not the deployment's) next to every rounding boundary
    model = build_model(Graph(graph.nodes, tensors, graph.output, graph.input_shape, graph.input_name)).double()
    points = {n: e for n, e in plan.items() if e is not None and not e.exact
              and (requantize is True or (isinstance(requantize, set) and n in requantize))}
    integer_layers = {n.name for n in graph.layers() if n.quantized}
    # a requantized residual sum as it was before the 8-bit rounding, and ReLU/clamp of it: the integer
    # graph hands a quantized layer the sum rounded once, to the layer's own grid (IntegerGraph.recompute)
    unrounded: dict[str, Tensor] = {}

    def before(node: Node, args: list[Tensor]) -> list[Tensor]:
        if recompute_sums and node.name in integer_layers and node.inputs[0] in unrounded:
            args = [unrounded[node.inputs[0]], *args[1:]]
        if observe is not None:
            observe(node.name, node.op, args)
        return args

    def after(node: Node, args: list[Tensor], y: Tensor) -> Tensor:
        enc = points.get(node.name)
        if node.op in ("relu", "clamp") and node.inputs[0] in unrounded:
            unrounded[node.name] = OPS[node.op].run(unrounded[node.inputs[0]], **node.attrs)  # type: ignore[misc]
        if enc is not None:
            if node.op == "add":
                unrounded[node.name] = y
            y = (torch.clamp(torch.round(y / enc.scale) + enc.zero, 0, 255) - enc.zero) * enc.scale
        return y

    out = []
    for x in batches:
        unrounded.clear()
        out.append(model.run(x.double(), before=before, after=after).float())
    return torch.cat(out)
