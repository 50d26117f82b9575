"""The exact QDQ ONNX lowering of the IR: one table of per-op lowerings, shared by every ONNX backend.

Why build rather than ``torch.onnx.export`` and rewrite: both torch exporters refuse sub-8-bit
ranges in their fake-quant ops (``../shared/reference/NOTES.md``), so a rewrite would have to find
each layer again in the exported graph by name-matching, and would still depend on what a given
torch version emits. Building from the same graph the integer file stores gives one source of
truth for both formats, exact control of where Q/DQ pairs go, and INT4 types.

The form (standard QDQ, as onnxruntime's quantization tools write it):

- activations: ``QuantizeLinear -> [Clip] -> DequantizeLinear`` in front of each quantized layer,
  per tensor. 8-bit values use int8/uint8 (by the quantizer's signedness); fewer bits use the same
  8-bit types with a ``Clip`` to the bit-width's range between Q and DQ ("QCDQ"), or, with
  ``clip="float"`` (OpenVINO's file), a float ``Clip`` to the range's real bounds in front of the Q
  ("CQDQ"): the same codes (rounding is monotone and the bounds are grid points), and OpenVINO's CPU
  plugin folds a clamp in front of a FakeQuantize into its crop bounds, where the integer ``Clip``
  after it stays an op of its own (decision 0220). At opset >= 21,
  exactly-4-bit activations use INT4/UINT4 (ONNX's ``Clip`` takes no 4-bit types, so 2- and 3-bit
  values stay in 8-bit containers).
- weights: the integer codes are stored as an initializer and dequantized by
  ``DequantizeLinear`` (``axis=0`` where the scale is per channel). A Q on a constant is folded by
  every runtime, so the file stores codes, not floats: int8 (uint8 at 8 bits, see ``weight``), or at
  opset >= 21 INT4 for weights of at most 4 bits (two codes per byte).
- INT2/UINT2 (opset 25) are not used: onnxruntime 1.32 runs them in QuantizeLinear/DequantizeLinear,
  but its QDQ fusion turns ``DQ(int2) -> Gemm`` into a QGemm node that its own type check then
  rejects, so such a model does not load.
- biases and batch-norm shifts folded into them stay float32, so the graph computes exactly what
  the fake-quant model does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from eqtools.export.runtime import Graph, Node

__all__ = ["CLIPS", "INT4_OPSET", "LOWERINGS", "MIN_OPSET", "OnnxEmitter", "build_onnx", "weight_codes"]

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
INT4_OPSET = 21
_INT64_MAX = 2**63 - 1
CLIPS = ("codes", "float")  # where a b-bit activation's range clip goes: on the Q's codes, or on its float input


def _ranges() -> dict[int, tuple[int, int]]:
    from onnx import TensorProto as T

    return {T.INT8: (-128, 127), T.UINT8: (0, 255), T.INT4: (-8, 7), T.UINT4: (0, 15)}


def _pack_narrow(values: np.ndarray, bits: int) -> bytes:
    """Two's-complement ``bits``-bit fields, first value in the lowest bits (the ONNX INT4 layout)."""
    per_byte = 8 // bits
    v = (values.reshape(-1).astype(np.int16) & ((1 << bits) - 1)).astype(np.uint8)
    if v.size % per_byte:
        v = np.concatenate([v, np.zeros(per_byte - v.size % per_byte, np.uint8)])
    v = v.reshape(-1, per_byte)
    out = np.zeros(v.shape[0], np.uint8)
    for i in range(per_byte):
        out |= v[:, i] << (bits * i)
    return out.tobytes()


class OnnxEmitter:
    """The state of one ONNX build: nodes and initializers so far, value shapes, and how to emit a node.

    Backends that write ONNX (the exact QDQ form, onnxruntime's integer graph, OpenVINO's and
    TensorRT's QDQ) share it; each brings its own table of per-op lowerings, falling back to
    :data:`LOWERINGS` for the ops it writes as float.
    """

    def __init__(self, graph: Graph, opset: int, error: type[Exception]) -> None:
        self.graph = graph
        self.opset = opset
        self.error = error
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.shapes: dict[str, list[Any] | None] = {graph.input_name: graph.input_shape}
        self.counter = 0

    def node(self, op: str, inputs: list[str], output: str | None = None, domain: str | None = None,
             **attrs: Any) -> str:
        from onnx import helper

        self.counter += 1
        output = output or f"{op}_{self.counter}"
        extra = {"domain": domain} if domain else {}
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{self.counter}", **extra, **attrs))
        return output

    def const(self, name: str, array: np.ndarray) -> str:
        """A float or int64 initializer of at least one dimension (a scalar becomes ``[1]``)."""
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def tensor(self, name: str, array: np.ndarray) -> str:
        """An initializer of exactly ``array``'s shape: 0-d stays 0-d (the integer ops' scalar scales and zero
        points, a ``Gather`` index that drops its axis)."""
        from onnx import numpy_helper

        array = np.asarray(array)
        self.initializers.append(numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(), name))
        return name

    def typed(self, name: str, dtype: int, dims: list[int], values: np.ndarray) -> str:
        """An integer initializer of ONNX type ``dtype`` (INT4/UINT4 packed, others plain)."""
        from onnx import TensorProto as T
        from onnx import helper, numpy_helper

        if dtype in (T.INT4, T.UINT4):
            self.initializers.append(helper.make_tensor(name, dtype, dims, _pack_narrow(values, 4), raw=True))
        else:
            np_type = {T.INT8: np.int8, T.UINT8: np.uint8, T.INT32: np.int32}[dtype]
            self.initializers.append(numpy_helper.from_array(values.astype(np_type).reshape(dims), name))
        return name

    def rank(self, value: str) -> int:
        shape = self.shapes.get(value)
        if shape is None:
            raise self.error(f"the exported graph lost the shape of {value!r}; cannot build the ONNX node that reads it")
        return len(shape)

    def lower_float(self, ir: Node, inputs: list[str]) -> None:
        """``ir`` in float ONNX ops (its float semantics), reading ``inputs``, writing ``ir.name``."""
        lowering = LOWERINGS.get(ir.op)
        if lowering is None:
            raise self.error(f"node {ir.name!r}: op {ir.op!r} has no ONNX lowering")
        lowering(self, ir, inputs, ir.name)
        self.shapes[ir.name] = ir.shape

    def model(self, name: str, doc: str, opsets: list[Any], extra_inputs: list[Any] = (),  # type: ignore[assignment]
              extra_outputs: list[Any] = ()) -> Any:  # type: ignore[assignment]
        """The ``onnx.ModelProto`` (checked) with input ``input`` [batch, ...] and output ``output``."""
        from onnx import TensorProto, helper

        from eqtools import __version__

        g = self.graph
        in_shape = ["batch", *g.input_shape[1:]]
        out_shape = g.node(g.output).shape
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape), *extra_inputs],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                           None if out_shape is None else ["batch", *out_shape[1:]]), *extra_outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=opsets, producer_name="eqtools", producer_version=__version__)
        model.ir_version = helper.find_min_ir_version_for(opsets[:1])
        model.doc_string = doc
        return model


def weight_codes(graph: Graph, ir: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A quantized layer's (codes int64, scale float32 [C] or [1], zero points int64 of the scale's size)."""
    t = graph.tensors
    codes = t[f"{ir.name}.weight.codes"].to(torch.int64).numpy()
    scale = t[f"{ir.name}.weight.scale"].float().numpy().reshape(-1)
    zero = t[f"{ir.name}.weight.zero_point"].to(torch.int64).numpy().reshape(-1)
    if scale.size > 1 and zero.size == 1:
        zero = np.full(scale.size, zero[0])  # per-tensor codes with a BN-folded per-channel scale
    return codes, scale, zero


# ------------------------------------------------------------------------------------------ float lowerings
Lowering = Callable[[OnnxEmitter, Node, list[str], str], None]


def _batch_norm(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    t, name = b.graph.tensors, ir.name
    mean = t[f"{name}.mean"].numpy()
    gamma = t[f"{name}.weight"].numpy() if f"{name}.weight" in t else np.ones_like(mean)
    beta = t[f"{name}.bias"].numpy() if f"{name}.bias" in t else np.zeros_like(mean)
    b.node("BatchNormalization", [inputs[0], b.const(f"{name}.gamma", gamma), b.const(f"{name}.beta", beta),
                                  b.const(f"{name}.mean", mean), b.const(f"{name}.var", t[f"{name}.var"].numpy())],
           out, epsilon=float(ir.attrs["eps"]))


def _constant(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    b.const(out, b.graph.tensors[f"{ir.name}.value"].numpy())


def _plain(onnx_op: str, **fixed: Any) -> Lowering:
    return lambda b, ir, inputs, out: (b.node(onnx_op, inputs, out, **fixed), None)[1]


def _clamp(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    attrs, name = ir.attrs, ir.name
    lo = "" if attrs.get("min") is None else b.const(f"{name}.min", np.array(attrs["min"], np.float32))
    hi = "" if attrs.get("max") is None else b.const(f"{name}.max", np.array(attrs["max"], np.float32))
    b.node("Clip", [inputs[0], lo, hi], out)


def _silu(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    b.node("Mul", [inputs[0], b.node("Sigmoid", inputs)], out)


def _hardswish(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    if b.opset >= 14:
        b.node("HardSwish", inputs, out)
    else:
        b.node("Mul", [inputs[0], b.node("HardSigmoid", inputs, alpha=1.0 / 6.0, beta=0.5)], out)


def _arithmetic(onnx_op: str) -> Lowering:
    def lower(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
        if ir.attrs.get("scalar") is None:
            b.node(onnx_op, inputs, out)
        else:
            c = b.const(f"{ir.name}.scalar", np.array(ir.attrs["scalar"], np.float32))
            b.node(onnx_op, [c, inputs[0]] if ir.attrs.get("reverse") else [inputs[0], c], out)

    return lower


def _adaptive_avg_pool2d(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    size = ir.attrs["output_size"]
    in_shape = b.shapes.get(ir.inputs[0]) or [None, None, None, None]
    h, w = in_shape[2], in_shape[3]
    if list(size) == [1, 1]:
        b.node("GlobalAveragePool", inputs, out)
    elif h and w and h % size[0] == 0 and w % size[1] == 0:
        k = [h // size[0], w // size[1]]
        b.node("AveragePool", inputs, out, kernel_shape=k, strides=k)
    else:
        raise b.error(
            f"node {ir.name!r}: adaptive average pooling from {h}x{w} to {size[0]}x{size[1]} has no fixed "
            "ONNX kernel (the input size must be a multiple of the output size)"
        )


def _avg_pool2d(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    attrs = ir.attrs
    ph, pw = attrs["padding"]
    b.node("AveragePool", inputs, out, kernel_shape=attrs["kernel_size"], strides=attrs["stride"],
           pads=[ph, pw, ph, pw], ceil_mode=int(attrs["ceil_mode"]), count_include_pad=int(attrs["count_include_pad"]))


def _max_pool2d(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    attrs = ir.attrs
    ph, pw = attrs["padding"]
    b.node("MaxPool", inputs, out, kernel_shape=attrs["kernel_size"], strides=attrs["stride"],
           pads=[ph, pw, ph, pw], dilations=attrs["dilation"], ceil_mode=int(attrs["ceil_mode"]))


def _flatten(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    rank = b.rank(ir.inputs[0])
    if ir.attrs["start_dim"] == 1 and ir.attrs["end_dim"] == rank - 1:
        b.node("Flatten", inputs, out, axis=1)
    else:
        shape = [0, *[int(s) for s in (ir.shape or [])[1:]]]
        b.node("Reshape", [inputs[0], b.const(f"{ir.name}.shape", np.array(shape, np.int64))], out)


def _reshape(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    b.node("Reshape", [inputs[0], b.const(f"{ir.name}.shape", np.array(ir.attrs["shape"], np.int64))], out)


def _concat(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    b.node("Concat", inputs, out, axis=int(ir.attrs["dim"]))


def _mean(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    if b.opset >= 18:
        axes = b.const(f"{ir.name}.axes", np.array(ir.attrs["dims"], np.int64))
        b.node("ReduceMean", [inputs[0], axes], out, keepdims=int(ir.attrs["keepdim"]))
    else:
        b.node("ReduceMean", inputs, out, axes=list(ir.attrs["dims"]), keepdims=int(ir.attrs["keepdim"]))


def _pad(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    rank = b.rank(ir.inputs[0])
    begin, end = [0] * rank, [0] * rank
    pad = ir.attrs["pad"]
    for i in range(len(pad) // 2):
        begin[rank - 1 - i], end[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    b.node("Pad", [inputs[0], b.const(f"{ir.name}.pads", np.array(begin + end, np.int64)),
                   b.const(f"{ir.name}.value", np.array(ir.attrs.get("value", 0.0), np.float32))], out, mode="constant")


def _slice(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    rows = ir.attrs["slices"]
    starts = [0 if s is None else s for _, s, _, _ in rows]
    ends = [_INT64_MAX if e is None else e for _, _, e, _ in rows]
    steps = [1 if st is None else st for _, _, _, st in rows]
    axes = [d for d, _, _, _ in rows]
    b.node("Slice", [inputs[0], *(b.const(f"{ir.name}.{k}", np.array(v, np.int64))
                                  for k, v in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)))],
           out)


def _select(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    index = b.tensor(f"{ir.name}.index", np.array(ir.attrs["index"], np.int64))  # 0-d: Gather drops the axis
    b.node("Gather", [inputs[0], index], out, axis=int(ir.attrs["dim"]))


def _permute(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    b.node("Transpose", inputs, out, perm=[int(d) for d in ir.attrs["dims"]])


def _expand_batch(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    # the model input's batch, then ones: Expand broadcasts the [1, ...] tensor over it
    rank = b.rank(ir.inputs[0])
    batch = b.node("Slice", [b.node("Shape", [inputs[1]]), b.const(f"{ir.name}.start", np.array([0], np.int64)),
                             b.const(f"{ir.name}.end", np.array([1], np.int64))])
    shape = b.node("Concat", [batch, b.const(f"{ir.name}.ones", np.ones(rank - 1, np.int64))], axis=0)
    b.node("Expand", [inputs[0], shape], out)


def _softmax(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    b.node("Softmax", inputs, out, axis=int(ir.attrs["dim"]))


def _gelu(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    x, approximate = inputs[0], ir.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise b.error(f"node {out!r}: GELU approximation {approximate!r} is not known")
    if b.opset >= 20:
        b.node("Gelu", [x], out, approximate=approximate)
        return
    half = b.const(f"{out}.half", np.array(0.5, np.float32))
    one = b.const(f"{out}.one", np.array(1.0, np.float32))
    if approximate == "none":  # x/2 * (1 + erf(x / sqrt 2))
        inner = b.node("Erf", [b.node("Mul", [x, b.const(f"{out}.c", np.array(1 / np.sqrt(2), np.float32))])])
    else:  # x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        cube = b.node("Mul", [b.node("Mul", [x, x]), x])
        poly = b.node("Add", [x, b.node("Mul", [cube, b.const(f"{out}.k", np.array(0.044715, np.float32))])])
        inner = b.node("Tanh", [b.node("Mul", [poly, b.const(f"{out}.c", np.array(np.sqrt(2 / np.pi), np.float32))])])
    b.node("Mul", [b.node("Mul", [x, half]), b.node("Add", [inner, one])], out)


def _layer_norm(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    name, attrs, x = ir.name, ir.attrs, inputs[0]
    t = b.graph.tensors
    dims = [int(d) for d in attrs["normalized_shape"]]
    eps = float(attrs["eps"])
    gamma = t[f"{name}.weight"].float().numpy() if f"{name}.weight" in t else np.ones(dims, np.float32)
    beta = t[f"{name}.bias"].float().numpy() if f"{name}.bias" in t else np.zeros(dims, np.float32)
    if b.opset >= 17:
        b.node("LayerNormalization", [x, b.const(f"{name}.gamma", gamma), b.const(f"{name}.beta", beta)],
               out, axis=-len(dims), epsilon=eps)
        return
    axes = list(range(-len(dims), 0))
    mean = b.node("ReduceMean", [x], axes=axes, keepdims=1)
    centred = b.node("Sub", [x, mean])
    var = b.node("ReduceMean", [b.node("Mul", [centred, centred])], axes=axes, keepdims=1)
    std = b.node("Sqrt", [b.node("Add", [var, b.const(f"{name}.eps", np.array(eps, np.float32))])])
    scaled = b.node("Mul", [b.node("Div", [centred, std]), b.const(f"{name}.gamma", gamma)])
    b.node("Add", [scaled, b.const(f"{name}.beta", beta)], out)


def _float_layer(b: OnnxEmitter, ir: Node, inputs: list[str], out: str) -> None:
    """A layer kept in floating point (pinned float, or the float model)."""
    w = b.const(f"{ir.name}.weight", b.graph.tensors[f"{ir.name}.weight"].float().numpy())
    conv_or_gemm(b, ir, inputs[0], w, out)


def conv_or_gemm(b: OnnxEmitter, ir: Node, x: str, w: str, out: str) -> None:
    """``Conv``/``Gemm``/``MatMul`` of ``x`` by the (dequantized) weight ``w``, then the float bias as its own ``Add``.

    A separate float Add, not the Conv/Gemm bias input: onnxruntime's WeightBiasQuantization would
    requantize a bias input to int32 at input_scale * weight_scale, which is not what the fake-quant
    model computes.
    """
    name, attrs = ir.name, ir.attrs
    assert ir.weight is not None
    y = f"{name}.nobias" if ir.bias else out
    if ir.op == "conv2d":
        kh, kw = ir.weight.shape[2:]
        ph, pw = attrs["padding"]
        b.node("Conv", [x, w], y, kernel_shape=[kh, kw], strides=attrs["stride"], pads=[ph, pw, ph, pw],
               dilations=attrs["dilation"], group=attrs["groups"])
    elif b.rank(ir.inputs[0]) == 2:
        b.node("Gemm", [x, w], y, transB=1)
    else:
        b.node("MatMul", [x, b.node("Transpose", [w], f"{name}.weight.t", perm=[1, 0])], y)
    if ir.bias:
        bias = b.graph.tensors[f"{name}.bias"].float().numpy()
        if ir.op == "conv2d":
            bias = bias.reshape(-1, 1, 1)
        b.node("Add", [y, b.const(f"{name}.bias", bias)], out)


# every op's float lowering; the QDQ backends lower quantized layers themselves (ExactQdq.layer)
LOWERINGS: dict[str, Lowering] = {
    "conv2d": _float_layer,
    "linear": _float_layer,
    "batch_norm": _batch_norm,
    "constant": _constant,
    "identity": _plain("Identity"),
    "relu": _plain("Relu"),
    "sigmoid": _plain("Sigmoid"),
    "tanh": _plain("Tanh"),
    "clamp": _clamp,
    "silu": _silu,
    "hardsigmoid": _plain("HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
    "hardswish": _hardswish,
    "add": _arithmetic("Add"),
    "sub": _arithmetic("Sub"),
    "mul": _arithmetic("Mul"),
    "div": _arithmetic("Div"),
    "adaptive_avg_pool2d": _adaptive_avg_pool2d,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "flatten": _flatten,
    "reshape": _reshape,
    "concat": _concat,
    "mean": _mean,
    "pad": _pad,
    "slice": _slice,
    "select": _select,
    "permute": _permute,
    "expand_batch": _expand_batch,
    "softmax": _softmax,
    "matmul": _plain("MatMul"),
    "gelu": _gelu,
    "layer_norm": _layer_norm,
}


# ------------------------------------------------------------------------------------------ the exact QDQ form
class ExactQdq(OnnxEmitter):
    """The exact QDQ form: float lowerings, and each quantized layer as Q -> [Clip] -> DQ -> Conv/Gemm.

    ``weight_form`` decides how weight codes are stored (:meth:`weight`): ``"ort"`` as today's
    onnxruntime file (8-bit codes as uint8 + 128, see there), ``"int8"`` int8 codes at zero point 0
    (what OpenVINO and TensorRT fuse into int8 convolutions; needs symmetric weights).
    """

    def __init__(self, graph: Graph, opset: int, narrow: bool, error: type[Exception], teacher_forced: bool,
                 weight_form: str = "ort", clip: str = "codes") -> None:
        super().__init__(graph, opset, error)
        self.clip_form = clip
        self.teacher_forced = teacher_forced
        self.extra_inputs: list[Any] = []
        self.extra_outputs: list[Any] = []
        self.int4 = narrow and opset >= INT4_OPSET
        self.weight_form = weight_form

    def quantize_input(self, ir: Node, x: str) -> str:
        from onnx import TensorProto as T

        name, quant = ir.name, ir.input_quant
        assert quant is not None
        t = self.graph.tensors
        bits, signed = quant.bits, quant.signed
        qmin, qmax = quant.qmin, quant.qmax
        zero = int(t[f"{name}.input.zero_point"].reshape(-1)[0])
        scale = t[f"{name}.input.scale"].reshape(-1)[0].item()
        candidates = []
        if self.int4 and bits == 4:
            candidates.append(T.INT4 if signed else T.UINT4)
        candidates.append(T.INT8 if signed else T.UINT8)
        ranges = _ranges()
        dtype = next((d for d in candidates if ranges[d][0] <= zero <= ranges[d][1]), None)
        if dtype is None:
            raise self.error(
                f"layer {name!r}: its {bits}-bit activation zero point {zero} does not fit an 8-bit ONNX type "
                f"{ranges[candidates[-1]]}; export this subnet with --format int"
            )
        if self.teacher_forced:  # quantize the reference's own input; expose what arrived here instead
            from onnx import helper

            shape = ["batch", *(self.shapes.get(x) or [None])[1:]]
            self.extra_outputs.append(helper.make_tensor_value_info(self.node("Identity", [x], f"{name}.arrived"),
                                                                    T.FLOAT, shape))
            x = f"{name}.reference"
            self.extra_inputs.append(helper.make_tensor_value_info(x, T.FLOAT, shape))
        lo, hi = ranges[dtype]
        clip = (qmin, qmax) != (lo, hi)  # fewer bits than the container
        if clip and self.clip_form == "float":
            # the range's bounds are grid points ((q - zero) * scale rounds back to q) and rounding is monotone,
            # so clipping the float to them gives the codes clipping the codes does
            x = self.node("Clip", [x, self.const(f"{name}.input.lo", np.array((qmin - zero) * scale, np.float32)),
                                   self.const(f"{name}.input.hi", np.array((qmax - zero) * scale, np.float32))],
                          f"{name}.input.clip")
            clip = False
        s = self.const(f"{name}.input.scale", np.array(scale, np.float32))
        z = self.typed(f"{name}.input.zero_point", dtype, [], np.array(zero))
        q = self.node("QuantizeLinear", [x, s, z], f"{name}.input.q")
        if clip:
            q = self.node("Clip", [q, self.typed(f"{name}.input.qmin", dtype, [], np.array(qmin)),
                                   self.typed(f"{name}.input.qmax", dtype, [], np.array(qmax))], f"{name}.input.clip")
        return self.node("DequantizeLinear", [q, s, z], f"{name}.input.dq")

    def weight(self, ir: Node) -> str:
        from onnx import TensorProto as T

        name, spec = ir.name, ir.weight
        assert spec is not None and spec.bits is not None
        shape = [int(s) for s in spec.shape]
        codes, scale, zero = weight_codes(self.graph, ir)
        per_axis = scale.size > 1
        ranges = _ranges()
        candidates = ([T.INT4] if self.int4 and spec.bits <= 4 else []) + [T.INT8]
        dtype = next(
            (d for d in candidates
             if ranges[d][0] <= min(codes.min(), zero.min()) and max(codes.max(), zero.max()) <= ranges[d][1]),
            None,
        )
        if dtype == T.INT8 and spec.bits == 8 and self.weight_form == "ort":
            # the same values as uint8 (code + 128, zero point + 128): onnxruntime fuses DQ->Gemm into an
            # integer kernel, and its u8s8 form on AVX2 CPUs without VNNI sums pairs of products in int16
            # with saturation; u8u8 has no such shortcut. Weights of at most 7 bits stay int8: |code| <= 64
            # cannot saturate.
            dtype, codes, zero = T.UINT8, codes + 128, zero + 128
        if dtype is None:  # a zero point outside int8 (possible after long asymmetric training): int32, zp folded in
            dtype = T.INT32
            codes = codes - (zero.reshape((-1,) + (1,) * (codes.ndim - 1)) if per_axis else zero[0])
            zero = np.zeros_like(zero)
        w = self.typed(f"{name}.weight.q", dtype, shape, codes)
        s = self.const(f"{name}.weight.scale", scale.astype(np.float32) if per_axis else np.array(scale[0], np.float32))
        zdims = [scale.size] if per_axis else []
        inputs = [w, s]
        if dtype != T.INT32:
            inputs.append(self.typed(f"{name}.weight.zero_point", dtype, zdims, zero if per_axis else np.array(zero[0])))
        attrs = {"axis": 0} if per_axis else {}
        return self.node("DequantizeLinear", inputs, f"{name}.weight.dq", **attrs)

    def layer(self, ir: Node) -> None:
        x = ir.inputs[0]
        if ir.input_quant is not None:
            x = self.quantize_input(ir, x)
        conv_or_gemm(self, ir, x, self.weight(ir), ir.name)

    def emit(self, ir: Node) -> None:
        if ir.is_layer and ir.weight is not None and ir.weight.dtype == "int":
            self.layer(ir)
            self.shapes[ir.name] = ir.shape
        else:
            self.lower_float(ir, list(ir.inputs))


def build_onnx(graph: Graph, opset: int = 21, *, narrow_types: bool = True,
               error: type[Exception] = ValueError, teacher_forced: bool = False, weight_form: str = "ort",
               clip: str = "codes") -> Any:
    """The exact QDQ form of ``graph`` as an ``onnx.ModelProto`` (checked with ``onnx.checker``).

    With ``narrow_types`` (default), opset >= 21 stores weights of at most 4 bits as INT4 and
    quantizes exactly-4-bit activations to INT4/UINT4; without, every value is carried in 8-bit
    types. Input ``input`` [batch, C, H, W], output ``output``. ``weight_form`` (:class:`ExactQdq`)
    is how weight codes are stored; ``clip`` (:data:`CLIPS`) where a b-bit activation is clipped to its
    range in the 8-bit container: ``"codes"``, an integer ``Clip`` between Q and DQ, or ``"float"``, a
    float ``Clip`` in front of the Q (see the module docstring).

    ``teacher_forced`` builds the checking variant: every quantized layer quantizes an extra graph
    input ``<layer>.reference`` (the reference model's own input to that layer) and exposes what
    its own upstream computed as output ``<layer>.arrived``, so each layer is compared on identical
    inputs and a rounding-boundary flip upstream cannot cascade.
    """
    import onnx
    from onnx import helper

    if clip not in CLIPS:
        raise error(f"clip {clip!r} is not one of {', '.join(CLIPS)}")
    b = ExactQdq(graph, opset, narrow_types, error, teacher_forced, weight_form, clip)
    for ir in graph.nodes:
        b.emit(ir)
    b.node("Identity", [graph.output], "output")
    model = b.model("eqtools_export", "eqtools QDQ export; see docs/export.md", [helper.make_opsetid("", opset)],
                    b.extra_inputs, b.extra_outputs)
    onnx.checker.check_model(model)
    return model
