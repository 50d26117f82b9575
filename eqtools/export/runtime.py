"""The export IR, its op table and its interpreter; and the packed-integer file (``model.int.safetensors``).

This module imports only ``torch``, ``safetensors`` and the standard library (``eqtools.errors`` is
used for the error type when eqtools is installed, and nothing else of eqtools), so a deployment can
copy this one file and call :func:`load_int` without installing eqtools. That is why the IR lives
here and not in a module of its own: the graph the exporter builds, the graph the file stores and
the graph the loader runs are one typed structure, and the interpreter that runs it is the one the
exporter uses for its own checks (range sampling, the deployed-arithmetic simulation).

The IR
------
A :class:`Graph` is a list of :class:`Node` in execution order, each ``op`` one of :data:`OPS`, its
``inputs`` the names of earlier nodes (or the graph input, ``"input"``), its ``attrs`` plain JSON
values and its ``shape`` with the batch as ``None``. A conv/linear node carries its weight's
quantization (:class:`WeightQuant`) and its input activation's (:class:`ActQuant`). Tensors are kept
beside the nodes, named ``<node>.<field>`` (below). :data:`OPS` declares every op once: its float
semantics (what the fake-quant model computes), its integer semantics (how it acts on 8-bit codes,
which the integer backends read) and its shape rule. Backends (``eqtools.export.backends``) lower
the IR, one table of per-op lowerings each.

The file
--------
One safetensors file. Its header metadata holds the graph as JSON under the key ``eqtools_int``
(format ``eqtools-int``, version 1): the input, the output and a list of nodes in execution order,
each ``{"name", "op", "inputs", "attrs"}`` plus, for conv/linear layers, ``"weight"``,
``"input_quant"`` and ``"bias"`` sections. Tensors are named ``<node>.<field>``:

- quantized weight: ``<node>.weight.packed`` (uint8, the bit stream below),
  ``<node>.weight.scale`` (float32, ``[C_out]`` or ``[1]``), ``<node>.weight.zero_point``
  (int32, ``[C_out]`` or ``[1]``); the weight is ``scale * (code - zero_point)`` with the scale
  broadcast along axis 0. A scale may be negative where a negative batch-norm gamma was folded in.
- quantized input activation: ``<node>.input.scale`` (float32 ``[1]``), ``<node>.input.zero_point``
  (int32 ``[1]``); the layer sees ``scale * (clip(round(x / scale) + zero_point, qmin, qmax) - zero_point)``.
- float weight (layers kept in floating point): ``<node>.weight`` (float32).
- ``<node>.bias`` (float32), batch norm kept unfolded: ``<node>.mean/.var/.weight/.bias``,
  layer norm: ``<node>.weight/.bias`` (float32, absent without an affine part),
  constants: ``<node>.value``.

Transformer ops (``layer_norm``, ``gelu``, ``softmax``, ``matmul`` of two activations,
``permute``, ``select``, ``expand_batch``) are float in the file, as in the fake-quant model; every
dimension but the first (the batch) is fixed by the graph.

Packing: the integer codes of a weight (``qmin <= code <= qmax``, row-major over the weight's
shape) are offset to ``u = code - qmin`` (``0 <= u < 2**bits``) and written as one little-endian
bit stream: value ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``, least significant bit first,
and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``; the last byte is zero-padded. A 2-bit
weight therefore takes a quarter of the bytes of an 8-bit one, and 4-bit codes sit two to a byte,
low nibble first (the order ONNX uses for INT4).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # inside eqtools the CLI turns this into a one-line error (exit 2); standalone it is a ValueError
    from eqtools.errors import ArtifactError as _ErrorBase
except ImportError:  # pragma: no cover - exercised by the standalone-load test in a subprocess
    _ErrorBase = ValueError  # type: ignore[misc,assignment]

__all__ = [
    "FILE_NAME",
    "FORMAT",
    "LAYER",
    "LAYER_OPS",
    "METADATA_KEY",
    "OPS",
    "PASS",
    "REQUANTIZE",
    "VERSION",
    "ActQuant",
    "DeployedModel",
    "Graph",
    "IntFormatError",
    "Node",
    "Op",
    "WeightQuant",
    "build_model",
    "infer_shape",
    "integer_kind",
    "load_int",
    "pack_codes",
    "read_int",
    "unpack_codes",
]

FORMAT = "eqtools-int"
VERSION = 1
METADATA_KEY = "eqtools_int"
FILE_NAME = "model.int.safetensors"
_CHUNK = 8 * 65536  # elements per packing chunk: a multiple of 8, so every chunk ends on a byte boundary


class IntFormatError(_ErrorBase):  # type: ignore[misc,valid-type]
    """The file is not a readable eqtools integer export."""


# ------------------------------------------------------------------------------------------ packing
def pack_codes(codes: Tensor, bits: int, qmin: int) -> Tensor:
    """Pack integer ``codes`` (any shape, values in ``[qmin, qmin + 2**bits - 1]``) into uint8 [ceil(n*bits/8)]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    u = codes.reshape(-1).to(torch.int64) - qmin
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= 2**bits):
        raise ValueError(f"codes outside [{qmin}, {qmin + 2**bits - 1}] cannot be packed at {bits} bits")
    n = u.numel()
    out = torch.zeros(math.ceil(n * bits / 8), dtype=torch.uint8)
    shifts = torch.arange(bits, dtype=torch.int64)
    byte_weights = (1 << torch.arange(8, dtype=torch.int32))
    for start in range(0, n, _CHUNK):
        part = u[start : start + _CHUNK]
        stream = ((part[:, None] >> shifts) & 1).to(torch.int32).reshape(-1)
        pad = (-stream.numel()) % 8
        if pad:
            stream = torch.cat([stream, stream.new_zeros(pad)])
        packed = (stream.view(-1, 8) * byte_weights).sum(dim=1).to(torch.uint8)
        first = start * bits // 8
        out[first : first + packed.numel()] = packed
    return out


def unpack_codes(packed: Tensor, bits: int, qmin: int, shape: tuple[int, ...] | list[int]) -> Tensor:
    """Inverse of :func:`pack_codes`: int32 codes of ``shape``."""
    n = math.prod(shape)
    need = math.ceil(n * bits / 8)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        raise IntFormatError(
            f"packed weight has {packed.numel()} {packed.dtype} values; {n} codes at {bits} bits need {need} uint8 bytes"
        )
    out = torch.empty(n, dtype=torch.int32)
    shifts = torch.arange(8, dtype=torch.int32)
    value_weights = (1 << torch.arange(bits, dtype=torch.int32))
    for start in range(0, n, _CHUNK):
        count = min(_CHUNK, n - start)
        first = start * bits // 8
        part = packed[first : first + math.ceil(count * bits / 8)].to(torch.int32)
        stream = ((part[:, None] >> shifts) & 1).reshape(-1)[: count * bits]
        out[start : start + count] = (stream.view(count, bits) * value_weights).sum(dim=1) + qmin
    return out.view(*shape)


# ------------------------------------------------------------------------------------------ the IR
LAYER_OPS = ("conv2d", "linear")


@dataclass
class WeightQuant:
    """A conv/linear weight: float, or integer codes with ``scale * (code - zero_point)`` per output channel
    (``granularity`` per-channel) or for the whole tensor. ``bn`` says how a batch norm was folded in."""

    shape: list[int]
    dtype: str  # "int" | "float"
    bits: int | None = None
    qmin: int | None = None
    qmax: int | None = None
    granularity: str | None = None
    symmetry: str | None = None
    bn: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(self.shape), "bn": self.bn, "dtype": self.dtype}
        if self.dtype == "int":
            out.update(bits=self.bits, qmin=self.qmin, qmax=self.qmax, granularity=self.granularity,
                       symmetry=self.symmetry)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WeightQuant:
        return cls([int(s) for s in d["shape"]], str(d.get("dtype", "int")), d.get("bits"), d.get("qmin"),
                   d.get("qmax"), d.get("granularity"), d.get("symmetry"), d.get("bn"))


@dataclass(frozen=True)
class ActQuant:
    """A layer's input quantizer (per tensor): ``clip(round(x / scale) + zero_point, qmin, qmax)``."""

    bits: int
    signed: bool
    qmin: int
    qmax: int
    symmetry: str

    def to_json(self) -> dict[str, Any]:
        return {"bits": self.bits, "signed": self.signed, "qmin": self.qmin, "qmax": self.qmax,
                "symmetry": self.symmetry}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ActQuant:
        return cls(int(d["bits"]), bool(d["signed"]), int(d["qmin"]), int(d["qmax"]), str(d["symmetry"]))


@dataclass
class Node:
    """One op of the graph. ``weight``, ``input_quant`` and ``bias`` belong to conv/linear nodes only."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: list[int | None] | None = None
    weight: WeightQuant | None = None
    input_quant: ActQuant | None = None
    bias: bool = False

    @property
    def is_layer(self) -> bool:
        return self.op in LAYER_OPS

    @property
    def quantized(self) -> bool:
        """A conv/linear with integer weights and a quantized input: what integer kernels run."""
        return self.weight is not None and self.weight.dtype == "int" and self.input_quant is not None

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "op": self.op, "inputs": list(self.inputs), "attrs": self.attrs, "shape": self.shape}
        if self.is_layer:
            out.update(weight=None if self.weight is None else self.weight.to_json(),
                       input_quant=None if self.input_quant is None else self.input_quant.to_json(), bias=self.bias)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Node:
        weight, quant = d.get("weight"), d.get("input_quant")
        return cls(str(d["name"]), str(d["op"]), [str(i) for i in d.get("inputs", ())], dict(d.get("attrs") or {}),
                   d.get("shape"), None if weight is None else WeightQuant.from_json(weight),
                   None if quant is None else ActQuant.from_json(quant), bool(d.get("bias", False)))


@dataclass
class Graph:
    """The exported subnet: nodes in execution order, the tensors they read, and what it was made from.

    Quantized weights made by the exporter are held as unpacked int32 codes under
    ``<node>.weight.codes``; the integer file stores them packed (``<node>.weight.packed``).
    """

    nodes: list[Node]
    tensors: dict[str, Tensor]
    output: str
    input_shape: list[int | None]
    input_name: str = "input"
    quantized: bool = True
    bn_fold: str | None = None
    config: dict[str, Any] | None = None

    def layers(self) -> list[Node]:
        return [n for n in self.nodes if n.is_layer]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def shapes(self) -> dict[str, list[int | None] | None]:
        """Every value's shape (batch as None), the graph input's included."""
        return {self.input_name: self.input_shape, **{n.name: n.shape for n in self.nodes}}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            for i in node.inputs:
                out.setdefault(i, []).append(node)
        return out

    def to_json(self) -> dict[str, Any]:
        """The graph schema the integer file stores in its header (key order kept: the file is byte-stable)."""
        return {"format": FORMAT, "version": VERSION,
                "input": {"name": self.input_name, "shape": self.input_shape, "dtype": "float32"},
                "output": self.output, "nodes": [n.to_json() for n in self.nodes], "quantized": self.quantized,
                "bn_fold": self.bn_fold, "config": self.config}

    @property
    def graph(self) -> dict[str, Any]:
        return self.to_json()

    @classmethod
    def from_json(cls, d: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Graph:
        return cls([Node.from_json(n) for n in d["nodes"]], dict(tensors), str(d["output"]),
                   list(d["input"]["shape"]), str(d["input"]["name"]), bool(d.get("quantized", True)),
                   d.get("bn_fold"), d.get("config"))


# ------------------------------------------------------------------------------------------ modules
class FakeQuant(nn.Module):
    """``scale * (clip(round(x / scale) + zero_point, qmin, qmax) - zero_point)``, per tensor.

    Written with the same operations as the training quantizer's forward pass, so on the same
    input it returns bit-identical values.
    """

    def __init__(self, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().float().reshape(1).clone())
        self.register_buffer("zero_point", zero_point.detach().float().reshape(1).clone())
        self.qmin = int(qmin)
        self.qmax = int(qmax)

    def forward(self, x: Tensor) -> Tensor:
        code = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        return (code - self.zero_point) * self.scale

    def extra_repr(self) -> str:
        return f"qmin={self.qmin}, qmax={self.qmax}"


class BatchNorm(nn.Module):
    """Inference batch norm over dim 1 (any rank), for layers exported with BN left unfolded."""

    def __init__(self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> None:
        super().__init__()
        self.register_buffer("running_mean", mean.float().clone())
        self.register_buffer("running_var", var.float().clone())
        self.weight = None if weight is None else nn.Parameter(weight.float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.float().clone())
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class LayerNorm(nn.Module):
    """Layer norm over the trailing ``normalized_shape`` dimensions (float, as in the fake-quant model)."""

    def __init__(self, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None, eps: float) -> None:
        super().__init__()
        self.normalized_shape = tuple(int(d) for d in normalized_shape)
        self.weight = None if weight is None else nn.Parameter(weight.float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.float().clone())
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Constant(nn.Module):
    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.clone())

    def forward(self) -> Tensor:
        return self.value


def _binary(fn: Any) -> Any:
    def apply(*args: Tensor, scalar: float | None = None, reverse: bool = False) -> Tensor:
        if scalar is None:
            return fn(args[0], args[1])
        return fn(scalar, args[0]) if reverse else fn(args[0], scalar)

    return apply


def _slice(x: Tensor, slices: list[list[Any]]) -> Tensor:
    index: list[Any] = [slice(None)] * x.dim()
    for dim, start, stop, step in slices:
        index[dim] = slice(start, stop, step)
    return x[tuple(index)]


def _reshape(x: Tensor, shape: list[int]) -> Tensor:
    return x.reshape(shape)


def _expand_batch(x: Tensor, like: Tensor) -> Tensor:
    """A ``[1, ...]`` tensor (a class token) repeated over the batch of ``like`` (the model input)."""
    return x.expand(like.shape[0], *x.shape[1:])


# ------------------------------------------------------------------------------------------ the op table
# integer semantics: how an op acts on 8-bit codes (what the integer backends may do with it)
PASS = "pass"  # it commutes with a monotone per-tensor quantizer: run on the codes, exact, same grid out
REQUANTIZE = "requantize"  # integer inputs, an output rounded to an 8-bit grid of its own (sum, average)
LAYER = "layer"  # codes times weight codes, accumulated in int32 (conv, linear)


@dataclass(frozen=True)
class Op:
    """One op of the IR, declared once.

    ``run`` is the float semantics, ``fn(*inputs, **attrs)``, or None for ops that read the node's
    tensors (their semantics are a module, ``module(node, tensors)``). ``integer(attrs)`` is the
    integer semantics (:data:`PASS`, :data:`REQUANTIZE`, :data:`LAYER`, or None: float only).
    ``shape(input_shapes, node)`` is the shape rule (batch as 1); None derives it from ``run`` on
    meta tensors, so it cannot disagree with the float semantics.
    """

    run: Callable[..., Tensor] | None = None
    integer: Callable[[Mapping[str, Any]], str | None] = lambda attrs: None
    shape: Callable[[list[list[int]], Node], list[int]] | None = None
    module: Callable[[Node, Mapping[str, Tensor]], nn.Module] | None = None


def _always(kind: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda attrs: kind


def _same_shape(shapes: list[list[int]], node: Node) -> list[int]:
    return list(shapes[0])


def _conv_shape(shapes: list[list[int]], node: Node) -> list[int]:
    assert node.weight is not None
    w = torch.empty(node.weight.shape, device="meta")
    a = node.attrs
    y = F.conv2d(torch.empty(shapes[0], device="meta"), w, None, a["stride"], a["padding"], a["dilation"], a["groups"])
    return list(y.shape)


def _linear_shape(shapes: list[list[int]], node: Node) -> list[int]:
    assert node.weight is not None
    return [*shapes[0][:-1], int(node.weight.shape[0])]


OPS: dict[str, Op] = {
    "conv2d": Op(integer=_always(LAYER), shape=_conv_shape, module=lambda n, t: _layer(n, t)),
    "linear": Op(integer=_always(LAYER), shape=_linear_shape, module=lambda n, t: _layer(n, t)),
    "batch_norm": Op(shape=_same_shape, module=lambda n, t: BatchNorm(
        _tensor(t, f"{n.name}.mean", n.name), _tensor(t, f"{n.name}.var", n.name), t.get(f"{n.name}.weight"),
        t.get(f"{n.name}.bias"), float(n.attrs["eps"]))),
    "layer_norm": Op(shape=_same_shape, module=lambda n, t: LayerNorm(
        n.attrs["normalized_shape"], t.get(f"{n.name}.weight"), t.get(f"{n.name}.bias"), float(n.attrs["eps"]))),
    "constant": Op(shape=lambda shapes, n: [int(d) for d in n.shape or []],
                   module=lambda n, t: Constant(_tensor(t, f"{n.name}.value", n.name))),
    "identity": Op(lambda x: x, _always(PASS)),
    "relu": Op(F.relu, _always(PASS)),
    "clamp": Op(lambda x, min=None, max=None: torch.clamp(x, min, max), _always(PASS)),
    "sigmoid": Op(torch.sigmoid),
    "silu": Op(F.silu),
    "hardswish": Op(F.hardswish),
    "hardsigmoid": Op(F.hardsigmoid),
    "tanh": Op(torch.tanh),
    # a sum of two integer values is a QLinearAdd; with a scalar, or of a float value, it is float
    "add": Op(_binary(operator.add), lambda attrs: REQUANTIZE if attrs.get("scalar") is None else None),
    "sub": Op(_binary(operator.sub)),
    "mul": Op(_binary(operator.mul)),
    "div": Op(_binary(operator.truediv)),
    "adaptive_avg_pool2d": Op(lambda x, output_size: F.adaptive_avg_pool2d(x, output_size),
                              lambda attrs: REQUANTIZE if list(attrs["output_size"]) == [1, 1] else None),
    "avg_pool2d": Op(lambda x, kernel_size, stride, padding, ceil_mode=False, count_include_pad=True: F.avg_pool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad), _always(REQUANTIZE)),
    "max_pool2d": Op(lambda x, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False: F.max_pool2d(
        x, kernel_size, stride, padding, dilation, ceil_mode), _always(PASS)),
    "flatten": Op(lambda x, start_dim=0, end_dim=-1: torch.flatten(x, start_dim, end_dim), _always(PASS)),
    "reshape": Op(_reshape, _always(PASS)),
    "concat": Op(lambda *xs, dim: torch.cat(xs, dim)),
    "mean": Op(lambda x, dims, keepdim=False: x.mean(dims, keepdim=keepdim)),
    # a zero pad writes the zero code; any other value is not a code of the grid
    "pad": Op(lambda x, pad, value=0.0: F.pad(x, pad, "constant", value),
              lambda attrs: PASS if attrs.get("value", 0.0) == 0.0 else None),
    "slice": Op(_slice, _always(PASS)),
    "select": Op(lambda x, dim, index: x.select(dim, index), _always(PASS)),
    "permute": Op(lambda x, dims: x.permute(dims), _always(PASS)),
    "expand_batch": Op(_expand_batch),
    "gelu": Op(lambda x, approximate="none": F.gelu(x, approximate=approximate)),
    "softmax": Op(lambda x, dim: torch.softmax(x, dim)),
    "matmul": Op(torch.matmul),
}


def integer_kind(node: Node) -> str | None:
    """The op's integer semantics for this node (:data:`PASS`, :data:`REQUANTIZE`, :data:`LAYER` or None)."""
    return OPS[node.op].integer(node.attrs)


def infer_shape(node: Node, shapes: list[list[int]]) -> list[int]:
    """``node``'s output shape from its inputs' (batch as 1), by the op's shape rule."""
    op = OPS[node.op]
    if op.shape is not None:
        return op.shape(shapes, node)
    assert op.run is not None
    return list(op.run(*(torch.empty(s, device="meta") for s in shapes), **node.attrs).shape)


def _tensor(tensors: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in tensors:
        raise IntFormatError(f"{where}: tensor {key!r} is missing from the file")
    return tensors[key]


def _weight(node: Node, tensors: Mapping[str, Tensor]) -> Tensor:
    """The float weight a layer computes with: dequantized codes, or the stored float weight."""
    name = node.name
    spec = node.weight
    if spec is None:
        raise IntFormatError(f"layer {name!r} has no weight section")
    shape = [int(s) for s in spec.shape]
    if spec.dtype == "float":
        w = _tensor(tensors, f"{name}.weight", f"layer {name!r}").float()
        if list(w.shape) != shape:
            raise IntFormatError(f"layer {name!r}: weight has shape {list(w.shape)}, the graph says {shape}")
        return w
    key = f"{name}.weight"
    if f"{key}.codes" in tensors:  # in-memory graphs (never written) carry unpacked codes
        codes = tensors[f"{key}.codes"].to(torch.int32).reshape(shape)
    else:
        codes = unpack_codes(_tensor(tensors, f"{key}.packed", f"layer {name!r}"), int(spec.bits or 0),
                             int(spec.qmin or 0), shape)
    scale = _tensor(tensors, f"{key}.scale", f"layer {name!r}").float()
    zero_point = _tensor(tensors, f"{key}.zero_point", f"layer {name!r}").float()
    for what, t in (("scale", scale), ("zero_point", zero_point)):
        if t.numel() not in (1, shape[0]):
            raise IntFormatError(f"layer {name!r}: weight {what} has {t.numel()} values; expected 1 or {shape[0]}")
    view = (-1,) + (1,) * (len(shape) - 1)
    return (codes.float() - zero_point.view(view)) * scale.view(view)


def _layer(node: Node, tensors: Mapping[str, Tensor]) -> nn.Module:
    name = node.name
    weight = _weight(node, tensors)
    bias = tensors.get(f"{name}.bias") if node.bias else None
    attrs = node.attrs
    if node.op == "conv2d":
        out_c, in_per_group, kh, kw = weight.shape
        groups = int(attrs.get("groups", 1))
        layer: nn.Module = nn.Conv2d(
            in_per_group * groups, out_c, (kh, kw), tuple(attrs.get("stride", (1, 1))),
            tuple(attrs.get("padding", (0, 0))), tuple(attrs.get("dilation", (1, 1))), groups, bias is not None,
        )
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.float())
    quant = node.input_quant
    if quant is None:
        return layer
    fq = FakeQuant(
        _tensor(tensors, f"{name}.input.scale", f"layer {name!r}"),
        _tensor(tensors, f"{name}.input.zero_point", f"layer {name!r}"),
        quant.qmin,
        quant.qmax,
    )
    return nn.Sequential(fq, layer)


def _module_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


# hooks of the interpreter: before(node, args) -> args, after(node, args, output) -> output
Before = Callable[[Node, list[Tensor]], list[Tensor]]
After = Callable[[Node, list[Tensor], Tensor], Tensor]


class DeployedModel(nn.Module):
    """A plain float model rebuilt from an exported graph: the IR's interpreter.

    Quantized layers are ``nn.Sequential(FakeQuant, nn.Conv2d | nn.Linear)`` with the dequantized
    (and, where chosen, batch-norm-folded) weights; the other ops are their :data:`OPS` float
    semantics. :meth:`run` is the one loop over the graph: the loader's forward, the exporter's range
    sampling and its deployed-arithmetic simulation all call it, with hooks. ``ir`` is the
    :class:`Graph` the model was built from, ``graph`` its JSON.
    """

    def __init__(self, graph: Graph, tensors: Mapping[str, Tensor] | None = None) -> None:
        super().__init__()
        tensors = graph.tensors if tensors is None else tensors
        self.ir = graph
        self.graph = graph.to_json()
        self.layers = nn.ModuleDict()
        self.input_name = graph.input_name
        self.output_name = graph.output
        self._steps: list[tuple[Node, str | None]] = []
        self._keys: dict[str, str] = {}
        known = {self.input_name}
        for node in graph.nodes:
            for i in node.inputs:
                if i not in known:
                    raise IntFormatError(f"node {node.name!r} reads {i!r}, which no earlier node produces")
            op = OPS.get(node.op)
            if op is None:
                raise IntFormatError(f"node {node.name!r} has unknown op {node.op!r}; this loader knows {sorted(OPS)}")
            key = None
            if op.module is not None:
                key = _module_key(node.name)
                while key in self.layers:
                    key += "_"
                self.layers[key] = op.module(node, tensors)
                self._keys[node.name] = key
            self._steps.append((node, key))
            known.add(node.name)
        if self.output_name not in known:
            raise IntFormatError(f"the graph's output {self.output_name!r} is not produced by any node")
        # free each intermediate after its last use: peak memory stays that of the float model
        last_use: dict[str, int] = {}
        for i, (node, _) in enumerate(self._steps):
            for name in node.inputs:
                last_use[name] = i
        self._free = [
            tuple(n for n, last in last_use.items() if last == i and n != self.output_name)
            for i in range(len(self._steps))
        ]

    def layer(self, name: str) -> nn.Module:
        """The module of graph node ``name`` (a conv/linear layer, batch or layer norm, or constant)."""
        if name not in self._keys:
            raise KeyError(f"graph node {name!r} has no module; nodes with modules: {sorted(self._keys)[:8]}")
        return self.layers[self._keys[name]]

    def run(self, x: Tensor, *, before: Before | None = None, after: After | None = None) -> Tensor:
        """The graph on ``x``; ``before`` may replace a node's inputs, ``after`` its output."""
        env: dict[str, Tensor] = {self.input_name: x}
        for (node, key), dead in zip(self._steps, self._free):
            args = [env[i] for i in node.inputs]
            if before is not None:
                args = before(node, args)
            if key is not None:
                y = self.layers[key](*args)
            else:
                y = OPS[node.op].run(*args, **node.attrs)  # type: ignore[misc]
            env[node.name] = y if after is None else after(node, args, y)
            for n in dead:
                env.pop(n, None)
        return env[self.output_name]

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)


def build_model(graph: Graph | Mapping[str, Any], tensors: Mapping[str, Tensor] | None = None) -> DeployedModel:
    """A :class:`DeployedModel` in eval mode from a :class:`Graph` (or its JSON and tensors)."""
    if not isinstance(graph, Graph):
        if graph.get("format") != FORMAT:
            raise IntFormatError(f"graph format is {graph.get('format')!r}, expected {FORMAT!r}")
        version = graph.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise IntFormatError(
                f"graph version {version!r} is newer than this loader reads (up to {VERSION}); upgrade the loader"
            )
        try:
            graph = Graph.from_json(graph, tensors or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise IntFormatError(f"the graph is malformed ({type(exc).__name__}: {exc})") from None
    try:
        return DeployedModel(graph, tensors).eval()
    except (KeyError, TypeError) as exc:
        raise IntFormatError(f"the graph is malformed ({type(exc).__name__}: {exc})") from None


def read_int(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The graph (parsed JSON) and tensors of an integer export file, or of an export artifact directory."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise IntFormatError(f"integer export {str(path)!r} does not exist")
    try:
        tensors: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises several types for a malformed file
        raise IntFormatError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if METADATA_KEY not in metadata:
        raise IntFormatError(f"{path} has no {METADATA_KEY!r} metadata: it is not an eqtools integer export")
    try:
        graph = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise IntFormatError(f"{path}: the graph metadata is not valid JSON ({exc})") from None
    return graph, tensors


def load_int(path: str | Path) -> DeployedModel:
    """Rebuild the exported subnet as a plain float PyTorch model (eval mode).

    ``path`` is a ``model.int.safetensors`` file or an export artifact directory holding one. The
    model's outputs match the calibrated fake-quant subnet it was exported from (see
    ``docs/export.md`` for the measured agreement).
    """
    graph, tensors = read_int(path)
    return build_model(graph, tensors)
