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

import functools
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
from eqtools.export.runtime import ActQuant, Graph, Node, WeightQuant, infer_shape
from eqtools.quant import QuantLayer, Supernet, lp_search
from eqtools.quant.attention import PackedInProjection, RoutedMultiheadAttention
from eqtools.vocab import BN_FOLD_MODES

__all__ = ["BN_FOLD_MODES", "DeployGraph", "Graph", "bn_folds_that_move_codes", "extract_graph"]

DeployGraph = Graph  # the name other stages and benchmarks import


class _Tracer(fx.Tracer):
    """Quantized layers and torch.nn layers stay whole; torchvision's StochasticDepth too.

    A rewritten ``nn.MultiheadAttention`` is traced through :func:`_attention_for_export` instead
    of its forward, whose branches on the input's rank and layout cannot be traced symbolically.
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, QuantLayer) or type(m).__name__ == "StochasticDepth":
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if isinstance(m, RoutedMultiheadAttention):
            forward = functools.partial(_attention_for_export, m, self.path_of_module(m))
        return super().call_module(m, forward, args, kwargs)


def _attention_for_export(
    mha: RoutedMultiheadAttention,
    name: str,
    query: Any,
    key: Any,
    value: Any,
    key_padding_mask: Any = None,
    need_weights: bool = True,
    attn_mask: Any = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Any, Any]:
    """What :class:`RoutedMultiheadAttention` computes for batch-first self-attention without masks,
    written without branches on tensor shapes so that ``torch.fx`` can trace it.

    The ops are the routed forward's explicit path (q scaled by 1/sqrt(head_dim), Q·Kᵀ, softmax,
    attention·V), kept batch-first throughout: (B, L, E) -> (B, H, L, D) -> (B, L, E). The routed
    forward runs ``scaled_dot_product_attention`` when no weights are asked for; the two differ by
    float rounding only (the export's layer-by-layer check measures it). Anything else is refused
    with what it was, so an export never computes another attention than the model's.
    """
    what = None
    if not mha.batch_first:
        what = "batch_first=False (sequence-first inputs; export keeps the batch as the first dimension)"
    elif not (query is key and key is value):
        what = "cross-attention (query, key and value differ); export supports self-attention"
    elif key_padding_mask is not None or attn_mask is not None or is_causal:
        what = "an attention or key-padding mask (or is_causal)"
    if what is not None:
        raise ModelError(f"cannot export attention {name!r}: {what}; see docs/transformers.md")
    embed, heads, head_dim = mha.embed_dim, mha.num_heads, mha.head_dim
    qkv = mha.in_proj(query)  # (B, L, 3E)

    def split(part: int) -> Any:  # (B, L, E) -> (B, H, L, D)
        return qkv[:, :, part * embed:(part + 1) * embed].unflatten(2, (heads, head_dim)).permute(0, 2, 1, 3)

    q, k, v = split(0), split(1), split(2)
    scores = (q * (1.0 / math.sqrt(head_dim))) @ k.transpose(-2, -1)
    weights = scores.softmax(dim=-1)
    out = (weights @ v).permute(0, 2, 1, 3).flatten(2)
    out = mha.out_proj(out)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


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
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}
_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax}
_SIZE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                   operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.neg}
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


def _is_tensor(node: fx.Node) -> bool:
    kind = node.meta.get("type")
    return isinstance(kind, type) and issubclass(kind, Tensor)


@dataclass(frozen=True)
class _Size:
    """A Python value the model computed from tensor shapes (an int, a torch.Size, a bool), and
    whether it depends on the batch size: export fixes every dimension but the batch."""

    value: Any
    batch_dependent: bool
    is_batch: bool = False  # exactly the batch size (a tensor's first dimension)


class _Extractor:
    """Walks the traced graph once and emits IR nodes."""

    def __init__(self, gm: fx.GraphModule, supernet: Supernet, bn_fold: str, quantized: bool, batch: int,
                 keep_bn: frozenset[str] = frozenset()) -> None:
        self.keep_bn = keep_bn
        self.gm = gm
        self.supernet = supernet
        self.bn_fold = bn_fold
        self.quantized = quantized
        self.batch = batch
        self.nodes: list[Node] = []
        self.tensors: dict[str, Tensor] = {}
        self.values: dict[fx.Node, str] = {}
        self.by_name: dict[str, Node] = {}
        self.layer_of: dict[fx.Node, Node] = {}  # fx node -> its conv/linear IR node
        self.sizes: dict[fx.Node, _Size] = {}  # shape arithmetic, resolved on the example batch
        self.input_name: str | None = None
        self.input_shape: list[int] | None = None
        self.output: str | None = None

    # ---------------------------------------------------------------------------- helpers
    def fail(self, node: fx.Node, what: str) -> ModelError:
        return ModelError(
            f"cannot export node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)}): {what}; "
            "export supports conv/linear/batch-norm/layer-norm layers, ReLU/ReLU6/hardtanh/clamp, SiLU, GELU, "
            "sigmoid, hard-swish/sigmoid, tanh, softmax, add/sub/mul/div, matmul, avg/max/adaptive-avg pooling, "
            "flatten/view/reshape/unflatten, permute/transpose (batch kept first), cat, mean, constant pad, "
            "slicing and integer indexing, expanding a [1, ...] tensor over the batch, batch-first self-attention "
            "and dropout/identity (see docs/export.md)"
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
             name: str | None = None, shape: list[int] | None = None, **extra: Any) -> Node:
        shape = _shape(node) if shape is None else shape
        ir = Node(self.unique(name or node.name), op, inputs, attrs or {},
                  None if shape is None else [None, *shape[1:]], **extra)
        self.nodes.append(ir)
        self.by_name[ir.name] = ir
        self.values[node] = ir.name
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
                ir.shape = [int(d) for d in value.shape]  # a constant has no batch dimension
                self.tensors[f"{ir.name}.value"] = value.detach().float().clone()
            elif node.op == "call_module":
                self.module(node, self.gm.get_submodule(str(node.target)))
            elif node.op in ("call_function", "call_method") and not _is_tensor(node):
                self.size(node)
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
        elif isinstance(m, (nn.Conv2d, nn.Linear, PackedInProjection)):
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
        elif isinstance(m, nn.LayerNorm):
            self.layer_norm(node, node.args[0], m.normalized_shape, m.weight, m.bias, m.eps, name)
        elif isinstance(m, nn.GELU):
            self.emit(node, "gelu", [self.ref(node, node.args[0])], {"approximate": m.approximate}, name=name)
        elif isinstance(m, nn.Softmax):
            self.softmax(node, node.args[0], m.dim, name)
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
        elif fn is F.gelu:
            self.emit(node, "gelu", [self.ref(node, node.args[0])], {"approximate": _argument(node, 1, "approximate", "none")})
        elif fn in _SOFTMAX_FUNCTIONS:
            if _argument(node, 3 if fn is F.softmax else 2, "dtype") is not None:
                raise self.fail(node, "softmax with a dtype")
            self.softmax(node, node.args[0], _argument(node, 1, "dim"))
        elif fn in _MATMUL_FUNCTIONS:
            self.matmul(node, node.args[0], node.args[1])
        elif fn is F.layer_norm:
            weight, bias = _argument(node, 2, "weight"), _argument(node, 3, "bias")
            for t in (weight, bias):
                if t is not None and (not isinstance(t, fx.Node) or t.op != "get_attr"):
                    raise self.fail(node, "layer_norm whose weight or bias is computed, not a parameter")
            self.layer_norm(node, node.args[0], _argument(node, 1, "normalized_shape"),
                            None if weight is None else self.attribute(weight),
                            None if bias is None else self.attribute(bias), _argument(node, 4, "eps", 1e-5))
        elif fn is torch.permute:
            self.permute(node, node.args[0], _argument(node, 1, "dims"))
        elif fn is torch.transpose:
            self.transpose(node, node.args[0], node.args[1], node.args[2])
        elif fn is torch.unflatten:
            self.reshape(node, node.args[0])
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
        elif name == "unflatten":
            self.reshape(node, self_arg)
        elif name == "permute":
            dims = node.args[1:] if len(node.args) > 2 or not isinstance(_argument(node, 1, "dims"), (tuple, list)) \
                else _argument(node, 1, "dims")
            self.permute(node, self_arg, dims)
        elif name == "transpose":
            self.transpose(node, self_arg, node.args[1], node.args[2])
        elif name == "softmax":
            if _argument(node, 2, "dtype") is not None:
                raise self.fail(node, "softmax with a dtype")
            self.softmax(node, self_arg, _argument(node, 1, "dim"))
        elif name == "matmul":
            self.matmul(node, self_arg, node.args[1])
        elif name == "expand":
            self.expand(node, self_arg, node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (tuple, list))
                        else node.args[1])
        else:
            raise self.fail(node, "this tensor method is not supported")

    # ---------------------------------------------------------------------------- shape arithmetic
    def resolve(self, node: fx.Node, value: Any) -> Any:
        """``value`` with every shape-arithmetic node replaced by its (static) value."""
        if isinstance(value, fx.Node):
            if value not in self.sizes:
                raise self.fail(node, f"expected a number or a size, got the tensor {value.name!r}")
            size = self.sizes[value]
            if size.batch_dependent:
                raise self.fail(node, f"a value computed from the batch size ({value.name!r}) used in arithmetic or "
                                "an op other than reshape/view/expand (export fixes every dimension but the batch)")
            return size.value
        if isinstance(value, (tuple, list)):
            return type(value)(self.resolve(node, v) for v in value)
        return value

    def size(self, node: fx.Node) -> None:
        """A node whose result is not a tensor: sizes and the arithmetic and asserts on them.

        Nothing is emitted: every dimension but the batch is fixed by the example input, so these
        are constants of the graph (a reshape/view takes its target shape from shape propagation).
        """
        target, args = node.target, node.args
        x = args[0] if args else None
        tensor_arg = isinstance(x, fx.Node) and x in self.values and x not in self.sizes
        shape_of = node.op == "call_function" and target is getattr and tensor_arg and args[1] == "shape"
        if shape_of or (node.op == "call_method" and target == "size" and tensor_arg):
            shape = torch.Size(_shape(x) or [])
            dim = _argument(node, 1, "dim") if node.op == "call_method" else None
            if dim is None:
                self.sizes[node] = _Size(shape, batch_dependent=True)
            else:
                dim = int(dim) % len(shape)
                self.sizes[node] = _Size(shape[dim], batch_dependent=dim == 0, is_batch=dim == 0)
        elif node.op == "call_method" and target in ("dim", "ndimension") and tensor_arg:
            self.sizes[node] = _Size(len(_shape(x) or []), batch_dependent=False)
        elif node.op == "call_function" and target is operator.getitem and isinstance(x, fx.Node) and x in self.sizes:
            whole, index = self.sizes[x], args[1]
            value = whole.value[index]
            first = index == 0 or (isinstance(index, slice) and (index.start or 0) == 0 and index.stop != 0)
            self.sizes[node] = _Size(value, whole.batch_dependent and first,
                                     is_batch=whole.batch_dependent and index == 0)
        elif node.op == "call_function" and target in _SIZE_FUNCTIONS:
            values = [self.sizes[a].value if isinstance(a, fx.Node) and a in self.sizes else a for a in args]
            if any(isinstance(a, fx.Node) and a not in self.sizes for a in args):
                raise self.fail(node, "arithmetic that mixes a tensor and a size")
            depends = any(isinstance(a, fx.Node) and self.sizes[a].batch_dependent for a in args)
            self.sizes[node] = _Size(target(*values), depends)
        elif node.op == "call_function" and target is torch._assert:
            self.sizes[node] = _Size(None, False)  # the model's own check; it held on the example input
        else:
            raise self.fail(node, "this op returns no tensor and is not shape arithmetic export understands")

    # ---------------------------------------------------------------------------- ops
    def binary(self, node: fx.Node, op: str, a: Any, b: Any) -> None:
        a = self.resolve(node, a) if isinstance(a, fx.Node) and a in self.sizes else a
        b = self.resolve(node, b) if isinstance(b, fx.Node) and b in self.sizes else b
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
        """Basic indexing: slices (``x[:, a:b:c]``) and integer indices (``x[:, 0]``), batch untouched."""
        x, index = node.args
        shape = _shape(x) if isinstance(x, fx.Node) else None
        if shape is None or x not in self.values:
            raise self.fail(node, "indexing something other than a tensor")
        items = list(index) if isinstance(index, tuple) else [index]
        if items.count(Ellipsis) > 1:
            raise self.fail(node, "indexing with more than one Ellipsis")
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at:at + 1] = [slice(None)] * (len(shape) - len(items) + 1)
        items = [self.resolve(node, i) if isinstance(i, fx.Node) else i for i in items]
        if len(items) > len(shape) or not all(isinstance(i, (slice, int)) and not isinstance(i, bool) for i in items):
            raise self.fail(node, "only basic indexing (slices and integers, e.g. x[:, 0] or x[:, :, a:b:c]) of a "
                            "tensor is supported")
        slices, selects = [], []
        for dim, s in enumerate(items):
            if s == slice(None):
                continue
            if dim == 0:
                raise self.fail(node, "indexing the batch dimension")
            if isinstance(s, int):
                selects.append((dim, s))
                continue
            for v in (s.start, s.stop, s.step):
                if v is not None and not isinstance(v, int):
                    raise self.fail(node, "slice bounds must be integers")
            if s.step is not None and s.step <= 0:
                raise self.fail(node, "slices with a non-positive step")
            slices.append([dim, s.start, s.stop, s.step])
        source = self.ref(node, x)
        if not selects:
            self.emit(node, "slice", [source], {"slices": slices})
            return
        meta = torch.empty(shape, device="meta")
        if slices:
            meta = meta[tuple(slice(None) if s == slice(None) or isinstance(s, int) else s for s in items)]
            source = self.emit(node, "slice", [source], {"slices": slices}, name=f"{node.name}.slice",
                               shape=list(meta.shape)).name
        for i, (dim, value) in enumerate(sorted(selects, reverse=True)):  # highest dimension first: no renumbering
            meta = meta.select(dim, value)
            last = i == len(selects) - 1
            source = self.emit(node, "select", [source], {"dim": dim, "index": value},
                               name=None if last else f"{node.name}.select{dim}", shape=list(meta.shape)).name

    def attribute(self, node: fx.Node) -> Tensor:
        value: Any = self.gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value

    def layer_norm(self, node: fx.Node, x: Any, normalized_shape: Any, weight: Tensor | None, bias: Tensor | None,
                   eps: float, name: str | None = None) -> None:
        dims = [int(d) for d in ((normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape)]
        ir = self.emit(node, "layer_norm", [self.ref(node, x)], {"normalized_shape": dims, "eps": float(eps)},
                       name=name)
        if weight is not None:
            self.tensors[f"{ir.name}.weight"] = weight.detach().float().clone()
        if bias is not None:
            self.tensors[f"{ir.name}.bias"] = bias.detach().float().clone()

    def softmax(self, node: fx.Node, x: Any, dim: Any, name: str | None = None) -> None:
        if dim is None:
            raise self.fail(node, "softmax without an explicit dim")
        rank = len(_shape(x) or [])
        dim = int(self.resolve(node, dim)) % rank
        if dim == 0:
            raise self.fail(node, "softmax over the batch dimension")
        self.emit(node, "softmax", [self.ref(node, x)], {"dim": dim}, name=name)

    def matmul(self, node: fx.Node, a: Any, b: Any) -> None:
        # an activation-activation matmul (Q·Kᵀ, attention·V) or a product with a float constant: both
        # stay float; weight matmuls are conv/linear layers
        ranks = [len(_shape(v) or []) if isinstance(v, fx.Node) else 0 for v in (a, b)]
        if min(ranks) < 2:
            raise self.fail(node, "a matmul with a vector operand")
        self.emit(node, "matmul", [self.ref(node, a), self.ref(node, b)])

    def permute(self, node: fx.Node, x: Any, dims: Any) -> None:
        rank = len(_shape(x) or [])
        dims = [int(d) % rank for d in self.resolve(node, list(dims))]
        if sorted(dims) != list(range(rank)):
            raise self.fail(node, f"permute dims {dims} are not a permutation of {rank} dimensions")
        if dims[0] != 0:
            raise self.fail(node, "a permute/transpose that moves the batch dimension")
        self.emit(node, "permute", [self.ref(node, x)], {"dims": dims})

    def transpose(self, node: fx.Node, x: Any, a: Any, b: Any) -> None:
        rank = len(_shape(x) or [])
        dims = list(range(rank))
        a, b = int(self.resolve(node, a)) % rank, int(self.resolve(node, b)) % rank
        dims[a], dims[b] = dims[b], dims[a]
        self.permute(node, x, dims)

    def expand(self, node: fx.Node, x: Any, sizes: Any) -> None:
        """``t.expand(batch, -1, ...)`` of a tensor with a leading 1 (a class token): the only expand export
        needs, and the only one whose result has the batch as its first dimension."""
        in_shape, out_shape = _shape(x) or [], _shape(node) or []
        sizes = list(sizes)
        first = sizes[0] if sizes else None
        if not (isinstance(first, fx.Node) and first in self.sizes and self.sizes[first].is_batch):
            raise self.fail(node, "an expand whose first size is not the batch size (x.shape[0])")
        rest = [self.resolve(node, v) for v in sizes[1:]]
        if len(in_shape) != len(out_shape) or in_shape[0] != 1 or \
                any(int(v) not in (-1, d) for v, d in zip(rest, in_shape[1:])):
            raise self.fail(node, "an expand other than of a [1, ...] tensor over the batch (dims other than the "
                            "first kept)")
        self.emit(node, "expand_batch", [self.ref(node, x), "input"])

    # ---------------------------------------------------------------------------- layers
    def layer(self, node: fx.Node, m: nn.Module, name: str, quantize: bool) -> None:
        if len(node.args) + len(node.kwargs) != 1:
            raise self.fail(node, "a layer called with more than its input (e.g. one part of a packed q/k/v "
                            "projection)")
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
        spec = WeightQuant(list(weight.shape), "float" if not quantize else "int")
        ir = self.emit(node, op, [x], attrs, name=name, weight=spec, input_quant=None, bias=m.bias is not None)
        name = ir.name
        if m.bias is not None:
            self.tensors[f"{name}.bias"] = m.bias.detach().float().clone()
        if not quantize:
            self.tensors[f"{name}.weight"] = weight.float().clone()
        else:
            self.quantized_weight(ir, m)  # type: ignore[arg-type]
        self.layer_of[node] = ir

    def quantized_weight(self, ir: Node, m: QuantLayer) -> None:
        # the quantizers hand out their integer view (codes checked against the fake-quant weight);
        # granularity and symmetry are each quantizer's own active form, not the config's names
        name, spec = ir.name, ir.weight
        assert spec is not None
        try:
            w = m.weight_quant.int_view(m.weight)  # type: ignore[attr-defined]
            a = m.act_quant.int_view()
        except RuntimeError as exc:
            raise RuntimeError(f"layer {name!r}: {exc}") from None  # a bug, not a user error
        spec.bits, spec.qmin, spec.qmax, spec.granularity, spec.symmetry = w.bits, w.qmin, w.qmax, w.granularity, \
            w.symmetry
        self.tensors[f"{name}.weight.codes"] = w.codes
        self.tensors[f"{name}.weight.scale"] = w.scale
        self.tensors[f"{name}.weight.zero_point"] = w.zero_point
        ir.input_quant = ActQuant(a.bits, a.signed, a.qmin, a.qmax, a.symmetry)
        self.tensors[f"{name}.input.scale"] = a.scale
        self.tensors[f"{name}.input.zero_point"] = a.zero_point

    def batch_norm(self, node: fx.Node, bn: nn.BatchNorm1d | nn.BatchNorm2d, name: str) -> None:
        if bn.running_mean is None or bn.running_var is None:
            raise self.fail(node, "batch norm without running statistics (track_running_stats=False)")
        source = node.args[0]
        layer = self.layer_of.get(source) if isinstance(source, fx.Node) else None
        if self.bn_fold != "none" and layer is not None and len(source.users) == 1 and layer.name not in self.keep_bn:
            self.fold(layer, bn)
            self.values[node] = layer.name
            layer.shape = [None, *(_shape(node) or [])[1:]]
            return
        ir = self.emit(node, "batch_norm", [self.ref(node, source)], {"eps": float(bn.eps)}, name=name)
        n = ir.name
        self.tensors[f"{n}.mean"] = bn.running_mean.detach().float().clone()
        self.tensors[f"{n}.var"] = bn.running_var.detach().float().clone()
        if bn.weight is not None:
            self.tensors[f"{n}.weight"] = bn.weight.detach().float().clone()
            self.tensors[f"{n}.bias"] = bn.bias.detach().float().clone()

    def fold(self, layer: Node, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        name = layer.name
        spec = layer.weight
        assert spec is not None
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
        layer.bias = True
        view = (-1,) + (1,) * (len(spec.shape) - 1)
        if spec.dtype == "float":
            t[f"{name}.weight"] = t[f"{name}.weight"] * k.view(view)
            spec.bn = "folded-into-weight"
            return
        if spec.granularity == "per-channel":
            t[f"{name}.weight.scale"] = t[f"{name}.weight.scale"] * k
            spec.bn = "folded-into-scale"
        elif self.bn_fold == "scale":
            t[f"{name}.weight.scale"] = t[f"{name}.weight.scale"] * k  # [1] * [C] -> a per-channel vector
            spec.bn = "folded-into-scale"
        else:  # requantize: a per-tensor layer again, at the cost measured by the export
            codes = t[f"{name}.weight.codes"]
            folded = (codes.float() - t[f"{name}.weight.zero_point"].float()) * t[f"{name}.weight.scale"]
            folded = folded * k.view(view)
            qn, qp = int(spec.qmin or 0), int(spec.qmax or 0)
            step, zero = lp_search(folded.reshape(1, -1), qn, qp, spec.symmetry == "asym")
            t[f"{name}.weight.codes"] = torch.clamp(torch.round(folded / step) + zero, qn, qp).to(torch.int32)
            t[f"{name}.weight.scale"] = step.float()
            t[f"{name}.weight.zero_point"] = zero.to(torch.int32)
            spec.bn = "folded-requantized"


def _check_shapes(graph: Graph) -> None:
    """Every node's traced shape against its op's shape rule: an extractor that maps a torch op to an IR op
    with other semantics fails here, at export, not in a runtime."""
    shapes: dict[str, list[int]] = {graph.input_name: [1, *graph.input_shape[1:]]}  # type: ignore[list-item]
    for node in graph.nodes:
        if node.shape is None or any(i not in shapes for i in node.inputs):
            continue
        got = infer_shape(node, [shapes[i] for i in node.inputs])
        want = [int(d) for d in node.shape] if node.op == "constant" else [1, *node.shape[1:]]
        if got != want:
            raise RuntimeError(f"node {node.name!r} ({node.op}): the traced shape {want} is not the op's shape rule's "
                               f"{got}; this is a bug in eqtools' export")
        shapes[node.name] = got


def extract_graph(
    supernet: Supernet,
    example_input: Tensor,
    *,
    bn_fold: str = "scale",
    quantized: bool = True,
    keep_bn: frozenset[str] | set[str] = frozenset(),
) -> Graph:
    """The active subnet of ``supernet`` as an IR :class:`~eqtools.export.runtime.Graph`.

    ``example_input`` is a batch of at least 2 inputs of the deployment shape [B, C, H, W] (a
    batch of 2 lets a reshape's batch dimension be told apart from a fixed one). ``quantized=False``
    gives the float model (original weights, batch norm folded) that the benchmarks compare against.
    ``keep_bn`` names layers whose batch norm stays its own op whatever ``bn_fold`` says
    (:func:`bn_folds_that_move_codes`).
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
            try:
                ShapeProp(gm).propagate(example_input)
            except Exception as exc:
                raise ModelError(
                    f"cannot export {type(model).__name__}: running its traced forward on an example batch "
                    f"{list(example_input.shape)} failed ({type(exc).__name__}: {str(exc)[:300]})"
                ) from None
            extractor = _Extractor(gm, supernet, bn_fold, quantized, int(example_input.shape[0]), frozenset(keep_bn))
            extractor.run()
    finally:
        supernet.train(was_training)
    assert extractor.output is not None and extractor.input_shape is not None
    # keep what the output depends on (e.g. attention weights the model discards are dropped)
    producers = {n.name: n for n in extractor.nodes}
    needed, todo = set(), [extractor.output]
    while todo:
        name = todo.pop()
        if name in needed or name not in producers:
            continue
        needed.add(name)
        todo += producers[name].inputs
    nodes = [n for n in extractor.nodes if n.name in needed]
    keep = {n.name for n in nodes}
    tensors = {k: v for k, v in extractor.tensors.items() if any(k.startswith(f"{n}.") for n in keep)}
    graph = Graph(nodes, tensors, extractor.output, [None, *extractor.input_shape[1:]], quantized=quantized,
                  bn_fold=bn_fold, config=supernet.config.to_dict())
    _check_shapes(graph)
    return graph


@torch.no_grad()
def bn_folds_that_move_codes(folded: Graph, unfolded: Graph, batches: list[Tensor]) -> set[str]:
    """The layers whose folded batch norm moves a code the next quantized layer reads, on ``batches``.

    Teacher forced: every quantized layer of the folded graph is fed the unfolded graph's input to it,
    so a difference at a layer's input codes is made between the quantized layers just upstream of it,
    and those layers' folds are the ones to undo. A fold changes float rounding only (codes and zero
    points stay); where that rounding puts a value on the other side of a rounding boundary of the
    next quantizer, the exact files keep that batch norm as its own op.
    """
    from eqtools.export.runtime import build_model

    reference_model, model = build_model(unfolded), build_model(folded)
    quantized = [n.name for n in folded.layers() if n.quantized]
    producers = {n.name: n for n in folded.nodes}
    moved: set[str] = set()
    reference: dict[str, Tensor] = {}
    arrived: dict[str, Tensor] = {}

    def record(node: Node, args: list[Tensor]) -> list[Tensor]:
        if node.name in quantized:
            reference[node.name] = args[0]
        return args

    def force(node: Node, args: list[Tensor]) -> list[Tensor]:
        if node.name in reference:
            arrived[node.name] = args[0]
            return [reference[node.name], *args[1:]]
        return args

    for x in batches:
        reference.clear()
        arrived.clear()
        reference_model.run(x, before=record)
        model.run(x, before=force)
        for name in quantized:
            fq = model.layer(name)[0]  # the layer's input quantizer (FakeQuant)
            if torch.equal(fq(arrived[name]), fq(reference[name])):
                continue
            todo, seen = list(producers[name].inputs), set()  # back to the quantized layers upstream
            while todo:
                value = todo.pop()
                if value in seen or value not in producers:
                    continue
                seen.add(value)
                node = producers[value]
                if node.is_layer and node.weight is not None and node.weight.bn:
                    moved.add(node.name)
                elif not node.is_layer:
                    todo += node.inputs
    return moved


def weight_bytes(graph: DeployGraph) -> dict[str, int]:
    """Bytes of conv/linear weights: packed integer codes (or float32 for float layers) vs all-float32."""
    packed = fp32 = 0
    for node in graph.layers():
        spec = node.weight
        assert spec is not None
        n = math.prod(spec.shape)
        fp32 += 4 * n
        packed += 4 * n if spec.dtype == "float" else math.ceil(n * int(spec.bits or 0) / 8)
    return {"packed_weight_bytes": packed, "fp32_weight_bytes": fp32}
