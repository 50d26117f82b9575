"""ONNX QDQ from the deployable graph, built node by node with ``onnx.helper``, and run in onnxruntime.

Why build rather than ``torch.onnx.export`` and rewrite: both torch exporters refuse sub-8-bit
ranges in their fake-quant ops (``../shared/reference/NOTES.md``), so a rewrite would have to find
each layer again in the exported graph by name-matching, and would still depend on what a given
torch version emits. Building from the same graph the integer file stores gives one source of
truth for both formats, exact control of where Q/DQ pairs go, and INT4 types.

The form (standard QDQ, as onnxruntime's quantization tools write it):

- activations: ``QuantizeLinear -> [Clip] -> DequantizeLinear`` in front of each quantized layer,
  per tensor. 8-bit values use int8/uint8 (by the quantizer's signedness); fewer bits use the same
  8-bit types with a ``Clip`` to the bit-width's range between Q and DQ ("QCDQ"). At opset >= 21,
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

from typing import Any

import numpy as np
import torch
from torch import Tensor

from eqtools.export._graph import DeployGraph

__all__ = ["MIN_OPSET", "build_onnx", "run_onnx", "run_onnx_teacher_forced"]

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
INT4_OPSET = 21
_INT64_MAX = 2**63 - 1


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


class _Builder:
    def __init__(self, dg: DeployGraph, opset: int, narrow: bool, error: type[Exception], teacher_forced: bool) -> None:
        self.dg = dg
        self.teacher_forced = teacher_forced
        self.extra_inputs: list[Any] = []
        self.extra_outputs: list[Any] = []
        self.opset = opset
        self.int4 = narrow and opset >= INT4_OPSET
        self.error = error
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.shapes: dict[str, list[Any] | None] = {"input": dg.graph["input"]["shape"]}
        self.counter = 0

    # ---------------------------------------------------------------------------- helpers
    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self.counter += 1
        output = output or f"{op}_{self.counter}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{self.counter}", **attrs))
        return output

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
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

    # ---------------------------------------------------------------------------- quantization
    def quantize_input(self, ir: dict[str, Any], x: str) -> str:
        from onnx import TensorProto as T

        name, quant = ir["name"], ir["input_quant"]
        t = self.dg.tensors
        bits, signed = int(quant["bits"]), bool(quant["signed"])
        qmin, qmax = int(quant["qmin"]), int(quant["qmax"])
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
        s = self.const(f"{name}.input.scale", np.array(scale, np.float32))
        z = self.typed(f"{name}.input.zero_point", dtype, [], np.array(zero))
        q = self.node("QuantizeLinear", [x, s, z], f"{name}.input.q")
        lo, hi = ranges[dtype]
        if (qmin, qmax) != (lo, hi):  # fewer bits than the container: QCDQ
            q = self.node("Clip", [q, self.typed(f"{name}.input.qmin", dtype, [], np.array(qmin)),
                                   self.typed(f"{name}.input.qmax", dtype, [], np.array(qmax))], f"{name}.input.clip")
        return self.node("DequantizeLinear", [q, s, z], f"{name}.input.dq")

    def weight(self, ir: dict[str, Any]) -> str:
        from onnx import TensorProto as T

        name, spec = ir["name"], ir["weight"]
        t = self.dg.tensors
        shape = [int(s) for s in spec["shape"]]
        if spec["dtype"] == "float":
            return self.const(f"{name}.weight", t[f"{name}.weight"].float().numpy())
        codes = t[f"{name}.weight.codes"].to(torch.int64).numpy()
        scale = t[f"{name}.weight.scale"].float().numpy().reshape(-1)
        zero = t[f"{name}.weight.zero_point"].to(torch.int64).numpy().reshape(-1)
        per_axis = scale.size > 1
        if per_axis and zero.size == 1:
            zero = np.full(scale.size, zero[0])  # per-tensor codes with a BN-folded per-channel scale
        ranges = _ranges()
        candidates = ([T.INT4] if self.int4 and spec["bits"] <= 4 else []) + [T.INT8]
        dtype = next(
            (d for d in candidates
             if ranges[d][0] <= min(codes.min(), zero.min()) and max(codes.max(), zero.max()) <= ranges[d][1]),
            None,
        )
        if dtype == T.INT8 and spec["bits"] == 8:
            # the same values as uint8 (code + 128, zero point + 128): onnxruntime fuses DQ->Gemm into an
            # integer kernel, and its u8s8 form on AVX2 CPUs without VNNI sums pairs of products in int16
            # with saturation (measured: 1.8 % logit error on an 8-bit head); u8u8 has no such shortcut.
            # Weights of at most 7 bits stay int8: |code| <= 64 cannot saturate.
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

    # ---------------------------------------------------------------------------- ops
    def emit(self, ir: dict[str, Any]) -> None:
        op, name, attrs = ir["op"], ir["name"], ir.get("attrs", {})
        inputs = list(ir["inputs"])
        t = self.dg.tensors
        out = name
        if op in ("conv2d", "linear"):
            x = inputs[0]
            if ir.get("input_quant") is not None:
                x = self.quantize_input(ir, x)
            w = self.weight(ir)
            y = f"{name}.nobias" if ir.get("bias") else out
            if op == "conv2d":
                kh, kw = ir["weight"]["shape"][2:]
                ph, pw = attrs["padding"]
                self.node("Conv", [x, w], y, kernel_shape=[kh, kw], strides=attrs["stride"], pads=[ph, pw, ph, pw],
                          dilations=attrs["dilation"], group=attrs["groups"])
            elif self.rank(inputs[0]) == 2:
                self.node("Gemm", [x, w], y, transB=1)
            else:
                self.node("MatMul", [x, self.node("Transpose", [w], f"{name}.weight.t", perm=[1, 0])], y)
            if ir.get("bias"):
                # a separate float Add, not the Conv/Gemm bias input: onnxruntime's WeightBiasQuantization
                # would requantize a bias input to int32 at input_scale * weight_scale, which is not what
                # the fake-quant model computes (measured: top-1 agreement 0.875-0.91 on a 2-bit tiny net)
                bias = t[f"{name}.bias"].float().numpy()
                if op == "conv2d":
                    bias = bias.reshape(-1, 1, 1)
                self.node("Add", [y, self.const(f"{name}.bias", bias)], out)
        elif op == "batch_norm":
            mean = t[f"{name}.mean"].numpy()
            gamma = t[f"{name}.weight"].numpy() if f"{name}.weight" in t else np.ones_like(mean)
            beta = t[f"{name}.bias"].numpy() if f"{name}.bias" in t else np.zeros_like(mean)
            self.node("BatchNormalization", [inputs[0], self.const(f"{name}.gamma", gamma), self.const(f"{name}.beta", beta),
                                             self.const(f"{name}.mean", mean), self.const(f"{name}.var", t[f"{name}.var"].numpy())],
                      out, epsilon=float(attrs["eps"]))
        elif op == "constant":
            self.const(out, t[f"{name}.value"].numpy())
        elif op == "identity":
            self.node("Identity", inputs, out)
        elif op in ("relu", "sigmoid", "tanh"):
            self.node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[op], inputs, out)
        elif op == "clamp":
            lo = "" if attrs.get("min") is None else self.const(f"{name}.min", np.array(attrs["min"], np.float32))
            hi = "" if attrs.get("max") is None else self.const(f"{name}.max", np.array(attrs["max"], np.float32))
            self.node("Clip", [inputs[0], lo, hi], out)
        elif op == "silu":
            self.node("Mul", [inputs[0], self.node("Sigmoid", inputs)], out)
        elif op == "hardsigmoid":
            self.node("HardSigmoid", inputs, out, alpha=1.0 / 6.0, beta=0.5)
        elif op == "hardswish":
            if self.opset >= 14:
                self.node("HardSwish", inputs, out)
            else:
                self.node("Mul", [inputs[0], self.node("HardSigmoid", inputs, alpha=1.0 / 6.0, beta=0.5)], out)
        elif op in ("add", "sub", "mul", "div"):
            onnx_op = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[op]
            if attrs.get("scalar") is None:
                self.node(onnx_op, inputs, out)
            else:
                c = self.const(f"{name}.scalar", np.array(attrs["scalar"], np.float32))
                self.node(onnx_op, [c, inputs[0]] if attrs.get("reverse") else [inputs[0], c], out)
        elif op == "adaptive_avg_pool2d":
            size = attrs["output_size"]
            in_shape = self.shapes.get(inputs[0]) or [None, None, None, None]
            h, w = in_shape[2], in_shape[3]
            if list(size) == [1, 1]:
                self.node("GlobalAveragePool", inputs, out)
            elif h and w and h % size[0] == 0 and w % size[1] == 0:
                k = [h // size[0], w // size[1]]
                self.node("AveragePool", inputs, out, kernel_shape=k, strides=k)
            else:
                raise self.error(
                    f"node {name!r}: adaptive average pooling from {h}x{w} to {size[0]}x{size[1]} has no fixed "
                    "ONNX kernel (the input size must be a multiple of the output size)"
                )
        elif op == "avg_pool2d":
            ph, pw = attrs["padding"]
            self.node("AveragePool", inputs, out, kernel_shape=attrs["kernel_size"], strides=attrs["stride"],
                      pads=[ph, pw, ph, pw], ceil_mode=int(attrs["ceil_mode"]),
                      count_include_pad=int(attrs["count_include_pad"]))
        elif op == "max_pool2d":
            ph, pw = attrs["padding"]
            self.node("MaxPool", inputs, out, kernel_shape=attrs["kernel_size"], strides=attrs["stride"],
                      pads=[ph, pw, ph, pw], dilations=attrs["dilation"], ceil_mode=int(attrs["ceil_mode"]))
        elif op == "flatten":
            rank = self.rank(inputs[0])
            if attrs["start_dim"] == 1 and attrs["end_dim"] == rank - 1:
                self.node("Flatten", inputs, out, axis=1)
            else:
                shape = [0, *[int(s) for s in ir["shape"][1:]]]
                self.node("Reshape", [inputs[0], self.const(f"{name}.shape", np.array(shape, np.int64))], out)
        elif op == "reshape":
            self.node("Reshape", [inputs[0], self.const(f"{name}.shape", np.array(attrs["shape"], np.int64))], out)
        elif op == "concat":
            self.node("Concat", inputs, out, axis=int(attrs["dim"]))
        elif op == "mean":
            if self.opset >= 18:
                axes = self.const(f"{name}.axes", np.array(attrs["dims"], np.int64))
                self.node("ReduceMean", [inputs[0], axes], out, keepdims=int(attrs["keepdim"]))
            else:
                self.node("ReduceMean", inputs, out, axes=list(attrs["dims"]), keepdims=int(attrs["keepdim"]))
        elif op == "pad":
            rank = self.rank(inputs[0])
            begin, end = [0] * rank, [0] * rank
            pad = attrs["pad"]
            for i in range(len(pad) // 2):
                begin[rank - 1 - i], end[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
            self.node("Pad", [inputs[0], self.const(f"{name}.pads", np.array(begin + end, np.int64)),
                              self.const(f"{name}.value", np.array(attrs.get("value", 0.0), np.float32))], out,
                      mode="constant")
        elif op == "slice":
            rows = attrs["slices"]
            starts = [0 if s is None else s for _, s, _, _ in rows]
            ends = [_INT64_MAX if e is None else e for _, _, e, _ in rows]
            steps = [1 if st is None else st for _, _, _, st in rows]
            axes = [d for d, _, _, _ in rows]
            self.node("Slice", [inputs[0], *(self.const(f"{name}.{k}", np.array(v, np.int64))
                                             for k, v in (("starts", starts), ("ends", ends), ("axes", axes),
                                                          ("steps", steps)))], out)
        elif op == "select":
            from onnx import numpy_helper

            index = f"{name}.index"  # 0-d (const() would make it 1-d): Gather then drops the axis
            self.initializers.append(numpy_helper.from_array(np.array(attrs["index"], np.int64), index))
            self.node("Gather", [inputs[0], index], out, axis=int(attrs["dim"]))
        elif op == "permute":
            self.node("Transpose", inputs, out, perm=[int(d) for d in attrs["dims"]])
        elif op == "expand_batch":
            # the model input's batch, then ones: Expand broadcasts the [1, ...] tensor over it
            rank = self.rank(inputs[0])
            batch = self.node("Slice", [self.node("Shape", [inputs[1]]), self.const(f"{name}.start", np.array([0], np.int64)),
                                        self.const(f"{name}.end", np.array([1], np.int64))])
            shape = self.node("Concat", [batch, self.const(f"{name}.ones", np.ones(rank - 1, np.int64))], axis=0)
            self.node("Expand", [inputs[0], shape], out)
        elif op == "softmax":
            self.node("Softmax", inputs, out, axis=int(attrs["dim"]))
        elif op == "matmul":
            self.node("MatMul", inputs, out)
        elif op == "gelu":
            self.gelu(inputs[0], attrs.get("approximate", "none"), out)
        elif op == "layer_norm":
            self.layer_norm(ir, inputs[0], out)
        else:
            raise self.error(f"node {name!r}: op {op!r} has no ONNX lowering")
        self.shapes[out] = ir.get("shape")

    def gelu(self, x: str, approximate: str, out: str) -> None:
        if approximate not in ("none", "tanh"):
            raise self.error(f"node {out!r}: GELU approximation {approximate!r} is not known")
        if self.opset >= 20:
            self.node("Gelu", [x], out, approximate=approximate)
            return
        half = self.const(f"{out}.half", np.array(0.5, np.float32))
        one = self.const(f"{out}.one", np.array(1.0, np.float32))
        if approximate == "none":  # x/2 * (1 + erf(x / sqrt 2))
            inner = self.node("Erf", [self.node("Mul", [x, self.const(f"{out}.c", np.array(1 / np.sqrt(2), np.float32))])])
        else:  # x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
            cube = self.node("Mul", [self.node("Mul", [x, x]), x])
            poly = self.node("Add", [x, self.node("Mul", [cube, self.const(f"{out}.k", np.array(0.044715, np.float32))])])
            inner = self.node("Tanh", [self.node("Mul", [poly, self.const(f"{out}.c", np.array(np.sqrt(2 / np.pi),
                                                                                                np.float32))])])
        self.node("Mul", [self.node("Mul", [x, half]), self.node("Add", [inner, one])], out)

    def layer_norm(self, ir: dict[str, Any], x: str, out: str) -> None:
        name, attrs = ir["name"], ir["attrs"]
        t = self.dg.tensors
        dims = [int(d) for d in attrs["normalized_shape"]]
        eps = float(attrs["eps"])
        gamma = t[f"{name}.weight"].float().numpy() if f"{name}.weight" in t else np.ones(dims, np.float32)
        beta = t[f"{name}.bias"].float().numpy() if f"{name}.bias" in t else np.zeros(dims, np.float32)
        if self.opset >= 17:
            self.node("LayerNormalization", [x, self.const(f"{name}.gamma", gamma), self.const(f"{name}.beta", beta)],
                      out, axis=-len(dims), epsilon=eps)
            return
        axes = list(range(-len(dims), 0))
        mean = self.node("ReduceMean", [x], axes=axes, keepdims=1)
        centred = self.node("Sub", [x, mean])
        var = self.node("ReduceMean", [self.node("Mul", [centred, centred])], axes=axes, keepdims=1)
        std = self.node("Sqrt", [self.node("Add", [var, self.const(f"{name}.eps", np.array(eps, np.float32))])])
        scaled = self.node("Mul", [self.node("Div", [centred, std]), self.const(f"{name}.gamma", gamma)])
        self.node("Add", [scaled, self.const(f"{name}.beta", beta)], out)


def build_onnx(dg: DeployGraph, opset: int = 21, *, narrow_types: bool = True,
               error: type[Exception] = ValueError, teacher_forced: bool = False) -> Any:
    """The graph as an ``onnx.ModelProto`` (checked with ``onnx.checker``).

    With ``narrow_types`` (default), opset >= 21 stores weights of at most 4 bits as INT4 and
    quantizes exactly-4-bit activations to INT4/UINT4; without, every value is carried in 8-bit
    types. Input ``input`` [batch, C, H, W], output ``output``.

    ``teacher_forced`` builds the checking variant: every quantized layer quantizes an extra graph
    input ``<layer>.reference`` (the reference model's own input to that layer) and exposes what
    its own upstream computed as output ``<layer>.arrived``, so each layer is compared on identical
    inputs and a rounding-boundary flip upstream cannot cascade.
    """
    import onnx
    from onnx import TensorProto, helper

    from eqtools import __version__

    b = _Builder(dg, opset, narrow_types, error, teacher_forced)
    for ir in dg.nodes:
        b.emit(ir)
    b.node("Identity", [dg.graph["output"]], "output")
    in_shape = ["batch", *dg.graph["input"]["shape"][1:]]
    out_shape = next((n.get("shape") for n in dg.nodes if n["name"] == dg.graph["output"]), None)
    graph = helper.make_graph(
        b.nodes, "eqtools_export",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape), *b.extra_inputs],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                       None if out_shape is None else ["batch", *out_shape[1:]]), *b.extra_outputs],
        initializer=b.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="eqtools", producer_version=__version__)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    model.doc_string = "eqtools QDQ export; see docs/export.md"
    onnx.checker.check_model(model)
    return model


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

