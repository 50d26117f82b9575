"""Loader for eqtools' packed-integer export (``model.int.safetensors``), free of eqtools' training code.

This module imports only ``torch``, ``safetensors`` and the standard library (``eqtools.errors`` is
used for the error type when eqtools is installed, and nothing else of eqtools), so a deployment can
copy this one file and call :func:`load_int` without installing eqtools. It is also where the file
format is defined: packing, tensor names and the graph schema live here, next to the code that
reads them, so the writer in :mod:`eqtools.export` cannot drift from the reader.

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
from collections.abc import Mapping
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
    "METADATA_KEY",
    "VERSION",
    "DeployedModel",
    "IntFormatError",
    "build_model",
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


_FUNCTIONS: dict[str, Any] = {
    "identity": lambda x: x,
    "relu": F.relu,
    "clamp": lambda x, min=None, max=None: torch.clamp(x, min, max),
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "tanh": torch.tanh,
    "add": _binary(operator.add),
    "sub": _binary(operator.sub),
    "mul": _binary(operator.mul),
    "div": _binary(operator.truediv),
    "adaptive_avg_pool2d": lambda x, output_size: F.adaptive_avg_pool2d(x, output_size),
    "avg_pool2d": lambda x, kernel_size, stride, padding, ceil_mode=False, count_include_pad=True: F.avg_pool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad
    ),
    "max_pool2d": lambda x, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False: F.max_pool2d(
        x, kernel_size, stride, padding, dilation, ceil_mode
    ),
    "flatten": lambda x, start_dim=0, end_dim=-1: torch.flatten(x, start_dim, end_dim),
    "reshape": _reshape,
    "concat": lambda *xs, dim: torch.cat(xs, dim),
    "mean": lambda x, dims, keepdim=False: x.mean(dims, keepdim=keepdim),
    "pad": lambda x, pad, value=0.0: F.pad(x, pad, "constant", value),
    "slice": _slice,
    "select": lambda x, dim, index: x.select(dim, index),
    "permute": lambda x, dims: x.permute(dims),
    "expand_batch": _expand_batch,
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "softmax": lambda x, dim: torch.softmax(x, dim),
    "matmul": torch.matmul,
}

OPS = ("input", "conv2d", "linear", "batch_norm", "layer_norm", "constant", *sorted(_FUNCTIONS))


def _tensor(tensors: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in tensors:
        raise IntFormatError(f"{where}: tensor {key!r} is missing from the file")
    return tensors[key]


def _weight(node: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Tensor:
    """The float weight a layer computes with: dequantized codes, or the stored float weight."""
    name = node["name"]
    spec = node["weight"]
    shape = [int(s) for s in spec["shape"]]
    if spec.get("dtype") == "float":
        w = _tensor(tensors, f"{name}.weight", f"layer {name!r}").float()
        if list(w.shape) != shape:
            raise IntFormatError(f"layer {name!r}: weight has shape {list(w.shape)}, the graph says {shape}")
        return w
    key = f"{name}.weight"
    if f"{key}.codes" in tensors:  # in-memory graphs (never written) carry unpacked codes
        codes = tensors[f"{key}.codes"].to(torch.int32).reshape(shape)
    else:
        codes = unpack_codes(_tensor(tensors, f"{key}.packed", f"layer {name!r}"), int(spec["bits"]),
                             int(spec["qmin"]), shape)
    scale = _tensor(tensors, f"{key}.scale", f"layer {name!r}").float()
    zero_point = _tensor(tensors, f"{key}.zero_point", f"layer {name!r}").float()
    for what, t in (("scale", scale), ("zero_point", zero_point)):
        if t.numel() not in (1, shape[0]):
            raise IntFormatError(f"layer {name!r}: weight {what} has {t.numel()} values; expected 1 or {shape[0]}")
    view = (-1,) + (1,) * (len(shape) - 1)
    return (codes.float() - zero_point.view(view)) * scale.view(view)


def _layer(node: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> nn.Module:
    name = node["name"]
    weight = _weight(node, tensors)
    bias = tensors.get(f"{name}.bias") if node.get("bias") else None
    attrs = node.get("attrs", {})
    if node["op"] == "conv2d":
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
    quant = node.get("input_quant")
    if quant is None:
        return layer
    fq = FakeQuant(
        _tensor(tensors, f"{name}.input.scale", f"layer {name!r}"),
        _tensor(tensors, f"{name}.input.zero_point", f"layer {name!r}"),
        int(quant["qmin"]),
        int(quant["qmax"]),
    )
    return nn.Sequential(fq, layer)


def _module_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class DeployedModel(nn.Module):
    """A plain float model rebuilt from an exported graph: it runs the nodes in order.

    Quantized layers are ``nn.Sequential(FakeQuant, nn.Conv2d | nn.Linear)`` with the dequantized
    (and, where chosen, batch-norm-folded) weights; the rest are torch functions. ``graph`` is the
    parsed JSON the model was built from.
    """

    def __init__(self, graph: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.graph = dict(graph)
        self.layers = nn.ModuleDict()
        self.input_name = graph["input"]["name"]
        self.output_name = graph["output"]
        self._steps: list[tuple[str, str, tuple[str, ...], dict[str, Any], str | None]] = []
        self._keys: dict[str, str] = {}
        known = {self.input_name}
        for node in graph["nodes"]:
            name, op = node["name"], node["op"]
            inputs = tuple(node.get("inputs", ()))
            for i in inputs:
                if i not in known:
                    raise IntFormatError(f"node {name!r} reads {i!r}, which no earlier node produces")
            attrs = dict(node.get("attrs", {}))
            key = None
            if op in ("conv2d", "linear", "batch_norm", "layer_norm", "constant"):
                key = _module_key(name)
                while key in self.layers:
                    key += "_"
                if op == "batch_norm":
                    self.layers[key] = BatchNorm(
                        _tensor(tensors, f"{name}.mean", name), _tensor(tensors, f"{name}.var", name),
                        tensors.get(f"{name}.weight"), tensors.get(f"{name}.bias"), float(attrs["eps"]),
                    )
                elif op == "layer_norm":
                    self.layers[key] = LayerNorm(attrs["normalized_shape"], tensors.get(f"{name}.weight"),
                                                 tensors.get(f"{name}.bias"), float(attrs["eps"]))
                elif op == "constant":
                    self.layers[key] = Constant(_tensor(tensors, f"{name}.value", name))
                else:
                    self.layers[key] = _layer(node, tensors)
                attrs = {}
                self._keys[name] = key
            elif op not in _FUNCTIONS:
                raise IntFormatError(f"node {name!r} has unknown op {op!r}; this loader knows {list(OPS)}")
            self._steps.append((name, op, inputs, attrs, key))
            known.add(name)
        if self.output_name not in known:
            raise IntFormatError(f"the graph's output {self.output_name!r} is not produced by any node")
        # free each intermediate after its last use: peak memory stays that of the float model
        last_use: dict[str, int] = {}
        for i, (_, _, inputs, _, _) in enumerate(self._steps):
            for name in inputs:
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

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = {self.input_name: x}
        for (name, op, inputs, attrs, key), dead in zip(self._steps, self._free):
            args = [env[i] for i in inputs]
            if key is not None:
                env[name] = self.layers[key](*args)
            else:
                env[name] = _FUNCTIONS[op](*args, **attrs)
            for n in dead:
                env.pop(n, None)
        return env[self.output_name]


def build_model(graph: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> DeployedModel:
    """A :class:`DeployedModel` in eval mode from a graph dict and its tensors."""
    if graph.get("format") != FORMAT:
        raise IntFormatError(f"graph format is {graph.get('format')!r}, expected {FORMAT!r}")
    version = graph.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise IntFormatError(
            f"graph version {version!r} is newer than this loader reads (up to {VERSION}); upgrade the loader"
        )
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
