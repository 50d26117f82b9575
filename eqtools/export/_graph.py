"""From a supernet with an active subnet to a deployable graph (the one both export formats write).

The model is traced with ``torch.fx`` (quantized layers and torch.nn layers are leaves) and shape-
propagated on an example batch; every node is then mapped to one op of a small, documented
vocabulary (``eqtools.export.runtime.OPS``) that both the integer file's loader and the ONNX
builder implement. A model that uses anything else is refused with the op's name, so an export
never silently drops a computation.

Quantized layers are read from the active form of their quantizers through ``int_view()``: the
quantizer owns its integer view (the step and zero point its forward uses, the codes from the
forward's own formula), so ``scale * (code - zero_point)`` reproduces the fake-quantized weight
bit for bit (checked there, not hoped for).

Batch norm after a conv/linear (whose output nothing else reads) is folded into it, which is what a
deployment runtime expects. The factor ``k = gamma / sqrt(var + eps)`` is per output channel:

- per-channel weights, and float weights: ``k`` goes into the scale (``w``); codes and zero points
  are unchanged, so the fold is exact up to float rounding.
- per-tensor weights: one scale cannot absorb a per-channel ``k``. ``bn_fold="scale"`` (default)
  keeps the per-tensor codes and zero point and writes the folded scale as a per-channel vector
  (exact; needs a runtime with per-channel weight scales, which every mainstream one has);
  ``bn_fold="requantize"`` requantizes the folded weight per tensor at the same bit-width (a truly
  per-tensor layer, at a measured accuracy cost: the folded weight is not what was trained).
- ``bn_fold="none"`` keeps every batch norm as its own op: bit-identical to the fake-quant model.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from eqtools.errors import ModelError
from eqtools.export.runtime import FORMAT, VERSION
from eqtools.quant import QuantLayer, Supernet, lp_search
from eqtools.vocab import BN_FOLD_MODES

__all__ = ["BN_FOLD_MODES", "DeployGraph", "extract_graph"]



@dataclass
class DeployGraph:
    """The runtime's graph schema (JSON-able) plus its tensors.

    Quantized weights are held as unpacked int32 codes under ``<node>.weight.codes``; the integer
    writer packs them and the ONNX builder stores them as int8/int4 initializers.
    """

    graph: dict[str, Any]
    tensors: dict[str, Tensor]

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return self.graph["nodes"]

    def layers(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n["op"] in ("conv2d", "linear")]


class _Tracer(fx.Tracer):
    """Quantized layers and torch.nn layers stay whole; torchvision's StochasticDepth too."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, QuantLayer) or type(m).__name__ == "StochasticDepth":
            return True
        return super().is_leaf_module(m, qualname)


# ------------------------------------------------------------------------------- vocabulary maps
_ELEMENTWISE_MODULES: tuple[tuple[type, str], ...] = (
    (nn.ReLU, "relu"),
    (nn.SiLU, "silu"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Hardswish, "hardswish"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.Tanh, "tanh"),
)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)
_BINARY_FUNCTIONS = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
}
_BINARY_METHODS = {"add": "add", "add_": "add", "sub": "sub", "mul": "mul", "mul_": "mul", "div": "div"}
_UNARY_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.tanh: "tanh", F.tanh: "tanh",
}
_UNARY_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout2d, F.alpha_dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}


def _pair(value: Any) -> list[int]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return [int(value[0])] * 2
        return [int(v) for v in value]
    return [int(value)] * 2


def _argument(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _shape(node: fx.Node) -> list[int] | None:
    meta = node.meta.get("tensor_meta")
    return None if meta is None or not hasattr(meta, "shape") else [int(s) for s in meta.shape]


class _Builder:
    """Walks the traced graph once and emits runtime nodes."""

    def __init__(self, gm: fx.GraphModule, supernet: Supernet, bn_fold: str, quantized: bool, batch: int) -> None:
        self.gm = gm
        self.supernet = supernet
        self.bn_fold = bn_fold
        self.quantized = quantized
        self.batch = batch
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, Tensor] = {}
        self.values: dict[fx.Node, str] = {}
        self.by_name: dict[str, dict[str, Any]] = {}
        self.layer_of: dict[fx.Node, dict[str, Any]] = {}  # fx node -> its conv/linear runtime node
        self.input_name: str | None = None
        self.input_shape: list[int] | None = None
        self.output: str | None = None

    # ---------------------------------------------------------------------------- helpers
    def fail(self, node: fx.Node, what: str) -> ModelError:
        return ModelError(
            f"cannot export node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)}): {what}; "
            "export supports conv/linear/batch-norm layers, ReLU/ReLU6/hardtanh/clamp, SiLU, sigmoid, hard-swish/"
            "sigmoid, tanh, add/sub/mul/div, avg/max/adaptive-avg pooling, flatten/view/reshape, cat, mean, constant "
            "pad, slicing and dropout/identity (see docs/export.md)"
        )

    def ref(self, node: fx.Node, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or arg not in self.values:
            raise self.fail(node, f"expected a tensor input, got {arg!r}")
        return self.values[arg]

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.by_name or name == self.input_name:
            i += 1
            name = f"{base}#{i}"
        return name

    def emit(self, node: fx.Node, op: str, inputs: list[str], attrs: dict[str, Any] | None = None,
             name: str | None = None, **extra: Any) -> dict[str, Any]:
        shape = _shape(node)
        ir = {"name": self.unique(name or node.name), "op": op, "inputs": inputs, "attrs": attrs or {},
              "shape": None if shape is None else [None, *shape[1:]], **extra}
        self.nodes.append(ir)
        self.by_name[ir["name"]] = ir
        self.values[node] = ir["name"]
        return ir

    def alias(self, node: fx.Node, source: Any) -> None:
        self.values[node] = self.ref(node, source)

    # ---------------------------------------------------------------------------- walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.input_name is not None:
                    raise self.fail(node, "the model takes more than one input")
                self.input_name = "input"
                self.input_shape = _shape(node)
                self.values[node] = "input"
            elif node.op == "output":
                out = node.args[0]
                if isinstance(out, (tuple, list)):
                    if len(out) != 1:
                        raise self.fail(node, "the model returns several outputs; export supports one")
                    out = out[0]
                self.output = self.ref(node, out)
            elif node.op == "get_attr":
                value = self.gm
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                if not isinstance(value, Tensor):
                    raise self.fail(node, "the attribute is not a tensor")
                ir = self.emit(node, "constant", [], name=str(node.target))
                self.tensors[f"{ir['name']}.value"] = value.detach().float().clone()
            elif node.op == "call_module":
                self.module(node, self.gm.get_submodule(str(node.target)))
            elif node.op == "call_function":
                self.function(node)
            elif node.op == "call_method":
                self.method(node)
            else:  # pragma: no cover - fx has no other node kinds
                raise self.fail(node, "unknown node kind")

    def module(self, node: fx.Node, m: nn.Module) -> None:
        name = str(node.target)
        if isinstance(m, QuantLayer) and self.quantized:
            self.layer(node, m, name, quantize=True)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            self.layer(node, m, name, quantize=False)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self.batch_norm(node, m, name)
        elif isinstance(m, nn.Hardtanh):  # ReLU6 included
            self.emit(node, "clamp", [self.ref(node, node.args[0])], {"min": float(m.min_val), "max": float(m.max_val)},
                      name=name)
        elif isinstance(m, _IDENTITY_MODULES) or type(m).__name__ == "StochasticDepth":
            self.alias(node, node.args[0])
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.adaptive_pool(node, node.args[0], m.output_size, name)
        elif isinstance(m, nn.AvgPool2d):
            self.avg_pool(node, node.args[0], m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                          m.divisor_override, name)
        elif isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise self.fail(node, "max pooling that returns indices")
            self.max_pool(node, node.args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, name)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, node.args[0], m.start_dim, m.end_dim, name)
        else:
            for cls, op in _ELEMENTWISE_MODULES:
                if isinstance(m, cls):
                    self.emit(node, op, [self.ref(node, node.args[0])], name=name)
                    return
            raise self.fail(node, f"module type {type(m).__name__} is not supported")

    def function(self, node: fx.Node) -> None:
        fn = node.target
        if fn in _BINARY_FUNCTIONS:
            if fn is torch.add or fn is torch.sub:
                if node.kwargs.get("alpha", 1) != 1:
                    raise self.fail(node, "add/sub with alpha != 1")
            self.binary(node, _BINARY_FUNCTIONS[fn], node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs["other"])
        elif fn in _UNARY_FUNCTIONS:
            self.emit(node, _UNARY_FUNCTIONS[fn], [self.ref(node, node.args[0])])
        elif fn in _IDENTITY_FUNCTIONS:
            self.alias(node, node.args[0])
        elif fn is F.relu6:
            self.emit(node, "clamp", [self.ref(node, node.args[0])], {"min": 0.0, "max": 6.0})
        elif fn is F.hardtanh:
            self.emit(node, "clamp", [self.ref(node, node.args[0])],
                      {"min": float(_argument(node, 1, "min_val", -1.0)), "max": float(_argument(node, 2, "max_val", 1.0))})
        elif fn in (torch.clamp, torch.clip):
            self.clamp(node, node.args[0], _argument(node, 1, "min"), _argument(node, 2, "max"))
        elif fn is F.adaptive_avg_pool2d:
            self.adaptive_pool(node, node.args[0], _argument(node, 1, "output_size"))
        elif fn is F.avg_pool2d:
            self.avg_pool(node, node.args[0], _argument(node, 1, "kernel_size"), _argument(node, 2, "stride"),
                          _argument(node, 3, "padding", 0), _argument(node, 4, "ceil_mode", False),
                          _argument(node, 5, "count_include_pad", True), _argument(node, 6, "divisor_override"))
        elif fn is F.max_pool2d:
            if _argument(node, 6, "return_indices", False):
                raise self.fail(node, "max pooling that returns indices")
            self.max_pool(node, node.args[0], _argument(node, 1, "kernel_size"), _argument(node, 2, "stride"),
                          _argument(node, 3, "padding", 0), _argument(node, 4, "dilation", 1),
                          _argument(node, 5, "ceil_mode", False))
        elif fn is torch.flatten:
            self.flatten(node, node.args[0], _argument(node, 1, "start_dim", 0), _argument(node, 2, "end_dim", -1))
        elif fn is torch.reshape:
            self.reshape(node, node.args[0])
        elif fn in (torch.cat, torch.concat):
            tensors = _argument(node, 0, "tensors")
            dim = _argument(node, 1, "dim", 0)
            rank = len(_shape(node) or [])
            self.emit(node, "concat", [self.ref(node, t) for t in tensors], {"dim": dim % rank if rank else dim})
        elif fn is torch.mean:
            self.mean(node, node.args[0], _argument(node, 1, "dim"), _argument(node, 2, "keepdim", False))
        elif fn is F.pad:
            mode = _argument(node, 2, "mode", "constant")
            if mode != "constant":
                raise self.fail(node, f"padding mode {mode!r} (only constant padding is supported)")
            value = _argument(node, 3, "value", None)
            self.emit(node, "pad", [self.ref(node, node.args[0])],
                      {"pad": [int(p) for p in _argument(node, 1, "pad")], "value": float(value or 0.0)})
        elif fn is operator.getitem:
            self.getitem(node)
        else:
            raise self.fail(node, "this function is not supported")

    def method(self, node: fx.Node) -> None:
        name = str(node.target)
        self_arg = node.args[0]
        if name in _BINARY_METHODS:
            if node.kwargs.get("alpha", 1) != 1:
                raise self.fail(node, "add/sub with alpha != 1")
            self.binary(node, _BINARY_METHODS[name], self_arg, node.args[1] if len(node.args) > 1 else node.kwargs["other"])
        elif name in _UNARY_METHODS:
            self.emit(node, _UNARY_METHODS[name], [self.ref(node, self_arg)])
        elif name in _IDENTITY_METHODS:
            self.alias(node, self_arg)
        elif name in ("clamp", "clip", "clamp_"):
            self.clamp(node, self_arg, _argument(node, 1, "min"), _argument(node, 2, "max"))
        elif name == "flatten":
            self.flatten(node, self_arg, _argument(node, 1, "start_dim", 0), _argument(node, 2, "end_dim", -1))
        elif name in ("view", "reshape"):
            self.reshape(node, self_arg)
        elif name == "mean":
            self.mean(node, self_arg, _argument(node, 1, "dim"), _argument(node, 2, "keepdim", False))
        elif name == "size":
            if not all((u.op == "call_method" and u.target in ("view", "reshape")) or
                       (u.op == "call_function" and u.target is torch.reshape) for u in node.users):
                raise self.fail(node, "tensor sizes are only supported as arguments of view/reshape")
        else:
            raise self.fail(node, "this tensor method is not supported")

    # ---------------------------------------------------------------------------- ops
    def binary(self, node: fx.Node, op: str, a: Any, b: Any) -> None:
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            self.emit(node, op, [self.ref(node, a), self.ref(node, b)])
        elif isinstance(a, fx.Node) and isinstance(b, (int, float)):
            self.emit(node, op, [self.ref(node, a)], {"scalar": float(b), "reverse": False})
        elif isinstance(b, fx.Node) and isinstance(a, (int, float)):
            self.emit(node, op, [self.ref(node, b)], {"scalar": float(a), "reverse": True})
        else:
            raise self.fail(node, f"operands {a!r}, {b!r}")

    def clamp(self, node: fx.Node, x: Any, lo: Any, hi: Any) -> None:
        for v in (lo, hi):
            if v is not None and not isinstance(v, (int, float)):
                raise self.fail(node, "clamp bounds must be numbers")
        self.emit(node, "clamp", [self.ref(node, x)],
                  {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)})

    def adaptive_pool(self, node: fx.Node, x: Any, output_size: Any, name: str | None = None) -> None:
        in_shape = _shape(x) if isinstance(x, fx.Node) else None
        size = list(output_size) if isinstance(output_size, (tuple, list)) else [output_size, output_size]
        if in_shape is not None:
            size = [in_shape[2 + i] if s is None else int(s) for i, s in enumerate(size)]
        self.emit(node, "adaptive_avg_pool2d", [self.ref(node, x)], {"output_size": size}, name=name)

    def avg_pool(self, node: fx.Node, x: Any, kernel: Any, stride: Any, padding: Any, ceil_mode: bool,
                 count_include_pad: bool, divisor_override: Any, name: str | None = None) -> None:
        if divisor_override is not None:
            raise self.fail(node, "average pooling with divisor_override")
        stride = kernel if stride is None or stride == [] else stride
        self.emit(node, "avg_pool2d", [self.ref(node, x)],
                  {"kernel_size": _pair(kernel), "stride": _pair(stride), "padding": _pair(padding),
                   "ceil_mode": bool(ceil_mode), "count_include_pad": bool(count_include_pad)}, name=name)

    def max_pool(self, node: fx.Node, x: Any, kernel: Any, stride: Any, padding: Any, dilation: Any,
                 ceil_mode: bool, name: str | None = None) -> None:
        stride = kernel if stride is None or stride == [] else stride
        self.emit(node, "max_pool2d", [self.ref(node, x)],
                  {"kernel_size": _pair(kernel), "stride": _pair(stride), "padding": _pair(padding),
                   "dilation": _pair(dilation), "ceil_mode": bool(ceil_mode)}, name=name)

    def flatten(self, node: fx.Node, x: Any, start: int, end: int, name: str | None = None) -> None:
        rank = len(_shape(x) or []) if isinstance(x, fx.Node) else 0
        start, end = (start % rank, end % rank) if rank else (start, end)
        if start == 0:
            raise self.fail(node, "flattening the batch dimension")
        self.emit(node, "flatten", [self.ref(node, x)], {"start_dim": start, "end_dim": end}, name=name)

    def reshape(self, node: fx.Node, x: Any) -> None:
        shape = _shape(node)
        if shape is None or shape[0] != self.batch:
            raise self.fail(node, "a reshape that does not keep the batch as its first dimension")
        self.emit(node, "reshape", [self.ref(node, x)], {"shape": [-1, *shape[1:]]})

    def mean(self, node: fx.Node, x: Any, dims: Any, keepdim: bool) -> None:
        rank = len(_shape(x) or [])
        if dims is None:
            raise self.fail(node, "a mean over every dimension (the batch included)")
        dims = [int(d) % rank for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        if 0 in dims:
            raise self.fail(node, "a mean over the batch dimension")
        self.emit(node, "mean", [self.ref(node, x)], {"dims": dims, "keepdim": bool(keepdim)})

    def getitem(self, node: fx.Node) -> None:
        x, index = node.args
        rank = len(_shape(x) or []) if isinstance(x, fx.Node) else 0
        items = index if isinstance(index, tuple) else (index,)
        if not isinstance(x, fx.Node) or not all(isinstance(i, slice) for i in items) or len(items) > rank:
            raise self.fail(node, "only basic slicing (x[:, :, a:b:c]) of a tensor is supported")
        slices = []
        for dim, s in enumerate(items):
            if s == slice(None):
                continue
            for v in (s.start, s.stop, s.step):
                if v is not None and not isinstance(v, int):
                    raise self.fail(node, "slice bounds must be integers")
            if dim == 0:
                raise self.fail(node, "slicing the batch dimension")
            if s.step is not None and s.step <= 0:
                raise self.fail(node, "slices with a non-positive step")
            slices.append([dim, s.start, s.stop, s.step])
        self.emit(node, "slice", [self.ref(node, x)], {"slices": slices})

    # ---------------------------------------------------------------------------- layers
    def layer(self, node: fx.Node, m: nn.Module, name: str, quantize: bool) -> None:
        x = self.ref(node, node.args[0])
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise self.fail(node, f"conv padding_mode {m.padding_mode!r} (only zeros)")
            if isinstance(m.padding, str):
                raise self.fail(node, f"conv padding {m.padding!r} given as a string; give integers")
            op = "conv2d"
            attrs = {"stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation),
                     "groups": int(m.groups)}
        else:
            op, attrs = "linear", {}
        weight = m.weight.detach()
        spec: dict[str, Any] = {"shape": list(weight.shape), "bn": None}
        ir = self.emit(node, op, [x], attrs, name=name, weight=spec, input_quant=None, bias=m.bias is not None)
        name = ir["name"]
        if m.bias is not None:
            self.tensors[f"{name}.bias"] = m.bias.detach().float().clone()
        if not quantize:
            spec["dtype"] = "float"
            self.tensors[f"{name}.weight"] = weight.float().clone()
        else:
            self.quantized_weight(name, m, spec)  # type: ignore[arg-type]
        self.layer_of[node] = ir

    def quantized_weight(self, name: str, m: QuantLayer, spec: dict[str, Any]) -> None:
        # the quantizers hand out their integer view (codes checked against the fake-quant weight);
        # granularity and symmetry are each quantizer's own active form, not the config's names
        try:
            w = m.weight_quant.int_view(m.weight)  # type: ignore[attr-defined]
            a = m.act_quant.int_view()
        except RuntimeError as exc:
            raise RuntimeError(f"layer {name!r}: {exc}") from None  # a bug, not a user error
        spec.update({"dtype": "int", "bits": w.bits, "qmin": w.qmin, "qmax": w.qmax, "granularity": w.granularity,
                     "symmetry": w.symmetry})
        self.tensors[f"{name}.weight.codes"] = w.codes
        self.tensors[f"{name}.weight.scale"] = w.scale
        self.tensors[f"{name}.weight.zero_point"] = w.zero_point
        self.by_name[name]["input_quant"] = {"bits": a.bits, "signed": a.signed, "qmin": a.qmin, "qmax": a.qmax,
                                             "symmetry": a.symmetry}
        self.tensors[f"{name}.input.scale"] = a.scale
        self.tensors[f"{name}.input.zero_point"] = a.zero_point

    def batch_norm(self, node: fx.Node, bn: nn.BatchNorm1d | nn.BatchNorm2d, name: str) -> None:
        if bn.running_mean is None or bn.running_var is None:
            raise self.fail(node, "batch norm without running statistics (track_running_stats=False)")
        source = node.args[0]
        layer = self.layer_of.get(source) if isinstance(source, fx.Node) else None
        if self.bn_fold != "none" and layer is not None and len(source.users) == 1:
            self.fold(layer, bn)
            self.values[node] = layer["name"]
            layer["shape"] = [None, *(_shape(node) or [])[1:]]
            return
        ir = self.emit(node, "batch_norm", [self.ref(node, source)], {"eps": float(bn.eps)}, name=name)
        n = ir["name"]
        self.tensors[f"{n}.mean"] = bn.running_mean.detach().float().clone()
        self.tensors[f"{n}.var"] = bn.running_var.detach().float().clone()
        if bn.weight is not None:
            self.tensors[f"{n}.weight"] = bn.weight.detach().float().clone()
            self.tensors[f"{n}.bias"] = bn.bias.detach().float().clone()

    def fold(self, layer: dict[str, Any], bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        name = layer["name"]
        spec = layer["weight"]
        t = self.tensors
        mean, var = bn.running_mean.detach().float(), bn.running_var.detach().float()
        gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(mean)
        # the same float32 operations as torch's CPU inference batch norm (x * k + shift), so an output
        # that is exactly zero before the fold (a zero accumulator) gives bit-identical values after it
        k = (1.0 / torch.sqrt(var + bn.eps)) * gamma
        shift = beta - mean * k
        bias = t.get(f"{name}.bias")
        t[f"{name}.bias"] = shift if bias is None else bias * k + shift
        layer["bias"] = True
        view = (-1,) + (1,) * (len(spec["shape"]) - 1)
        if spec["dtype"] == "float":
            t[f"{name}.weight"] = t[f"{name}.weight"] * k.view(view)
            spec["bn"] = "folded-into-weight"
            return
        if spec["granularity"] == "per-channel":
            t[f"{name}.weight.scale"] = t[f"{name}.weight.scale"] * k
            spec["bn"] = "folded-into-scale"
        elif self.bn_fold == "scale":
            t[f"{name}.weight.scale"] = t[f"{name}.weight.scale"] * k  # [1] * [C] -> a per-channel vector
            spec["bn"] = "folded-into-scale"
        else:  # requantize: a per-tensor layer again, at the cost measured by the export
            codes = t[f"{name}.weight.codes"]
            folded = (codes.float() - t[f"{name}.weight.zero_point"].float()) * t[f"{name}.weight.scale"]
            folded = folded * k.view(view)
            qn, qp = spec["qmin"], spec["qmax"]
            step, zero = lp_search(folded.reshape(1, -1), qn, qp, spec["symmetry"] == "asym")
            t[f"{name}.weight.codes"] = torch.clamp(torch.round(folded / step) + zero, qn, qp).to(torch.int32)
            t[f"{name}.weight.scale"] = step.float()
            t[f"{name}.weight.zero_point"] = zero.to(torch.int32)
            spec["bn"] = "folded-requantized"


def extract_graph(
    supernet: Supernet,
    example_input: Tensor,
    *,
    bn_fold: str = "scale",
    quantized: bool = True,
) -> DeployGraph:
    """The active subnet of ``supernet`` as a :class:`DeployGraph`.

    ``example_input`` is a batch of at least 2 inputs of the deployment shape [B, C, H, W] (a
    batch of 2 lets a reshape's batch dimension be told apart from a fixed one). ``quantized=False``
    gives the float model (original weights, batch norm folded) that the benchmarks compare against.
    """
    if bn_fold not in BN_FOLD_MODES:
        raise ValueError(f"bn_fold must be one of {BN_FOLD_MODES}, got {bn_fold!r}")
    if example_input.shape[0] < 2:
        example_input = torch.cat([example_input, example_input])
    model = supernet.model
    try:
        traced = _Tracer().trace(model)
    except Exception as exc:
        raise ModelError(
            f"cannot trace model {type(model).__name__} with torch.fx for export ({type(exc).__name__}: {exc}); "
            "export needs a forward pass without data-dependent control flow"
        ) from None
    gm = fx.GraphModule(model, traced)
    was_training = supernet.training
    supernet.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
            builder = _Builder(gm, supernet, bn_fold, quantized, int(example_input.shape[0]))
            builder.run()
    finally:
        supernet.train(was_training)
    assert builder.output is not None and builder.input_shape is not None
    used = {i for n in builder.nodes for i in n["inputs"]} | {builder.output}
    nodes = [n for n in builder.nodes if n["name"] in used or n["name"] == builder.output]
    graph = {
        "format": FORMAT,
        "version": VERSION,
        "input": {"name": "input", "shape": [None, *builder.input_shape[1:]], "dtype": "float32"},
        "output": builder.output,
        "nodes": nodes,
        "quantized": quantized,
        "bn_fold": bn_fold,
        "config": supernet.config.to_dict(),
    }
    keep = {n["name"] for n in nodes}
    tensors = {k: v for k, v in builder.tensors.items() if any(k.startswith(f"{n}.") for n in keep)}
    return DeployGraph(graph, tensors)


def weight_bytes(graph: DeployGraph) -> dict[str, int]:
    """Bytes of conv/linear weights: packed integer codes (or float32 for float layers) vs all-float32."""
    packed = fp32 = 0
    for node in graph.layers():
        spec = node["weight"]
        n = math.prod(spec["shape"])
        fp32 += 4 * n
        packed += 4 * n if spec["dtype"] == "float" else math.ceil(n * spec["bits"] / 8)
    return {"packed_weight_bytes": packed, "fp32_weight_bytes": fp32}
