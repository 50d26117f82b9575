"""The IR as a PT2E-style quantized PyTorch graph: what LiteRT's and ExecuTorch's converters take.

PyTorch's PT2E flow ends in a graph of float ops between ``quantized_decomposed`` quantize/dequantize
pairs; both ``litert-torch`` and ExecuTorch's XNNPACK partitioner turn such a graph into integer
kernels. Rather than let a PT2E quantizer re-calibrate the float network (its scales would not be
the subnet's), the graph is written directly from the IR with the subnet's own quantization:

- a quantized layer reads its input quantized to its own grid, int8 (the uint8 codes of
  :class:`~eqtools.export.backends.onnxruntime.Encoding` shifted by -128: the same values), its
  weight is int8 codes in [-127, 127] at zero point 0 (per channel) scaled by the integer m of
  :func:`~eqtools.export.backends.onnxruntime.code_multiplier` (the same products, a finer bias unit), its
  float bias is left to the converter, which stores it as int32 at ``s_x * s_w / m``;
- every value the integer graph carries in integer is quantized where onnxruntime's integer graph
  quantizes it (the same plan, :func:`~eqtools.export.backends.onnxruntime.plan_encodings`), so the
  two files compute the same roundings; a layer whose output is read only in float (the logits) gets
  an 8-bit output grid of its own, since these runtimes' int8 conv/linear kernels have an int8 output;
- a b-bit value sits at the top of its int8 container (:func:`top_shift`: codes and zero point moved
  up together, the same real values), so the quantize's saturation is its upper bound; a layer read
  only by ReLUs applies the ReLU before its output quantize (the converters fuse it into the conv), so
  the zero point is the lower one. Every value carries the int8 codes it is known to lie in
  (:class:`Placed`), and an explicit ``clamp`` between two quantize/dequantize pairs is written only on
  a side the codes can cross: these converters keep a tensor's scale and zero point, not its range,
  and each clamp is an int8 MINIMUM/MAXIMUM that cuts LiteRT's XNNPACK delegate in two. The plan's
  encodings (uint8 codes, what grids are compared on) are not moved: only this graph places them;
- a value read by a layer on another grid (a residual sum on its 8-bit grid, a wider layer's output)
  reaches it through a 1x1 identity conv (or linear) whose output is the layer's grid, never through a
  bare quantize of a quantized value (:meth:`Pt2eGraph.requantize` says why); that grid's step is the
  layer's over an odd k where the plan can nest them, so the two roundings are the one the fake-quant
  model does (onnxruntime's file computes the sum a second time instead; the converter would merge two
  equal sums into one float ADD).

:func:`deployed_arithmetic` is the PyTorch simulation of what such a file computes
(:func:`~eqtools.export.backends.onnxruntime.simulate_deploy` with this plan, int32 biases at
``s_x * s_w / m``, and residual sums reaching layers through their 8-bit grids).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import Tensor, nn

from eqtools.export.backends.onnxruntime import (
    Encoding,
    _calibrated,
    _input_encoding,
    _with_zero,
    code_multiplier,
    plan_encodings,
    simulate_deploy,
    value_samples,
)
from eqtools.export.runtime import OPS, PASS, REQUANTIZE, Graph, Node, build_model, integer_kind

__all__ = ["Pt2eGraph", "deployed_arithmetic", "pt2e_plan"]


def pt2e_plan(graph: Graph, calibration: list[Tensor]) -> dict[str, Encoding | None]:
    """onnxruntime's plan, plus an 8-bit output grid for every quantized layer whose output it keeps float."""
    samples = value_samples(graph, calibration)
    plan = plan_encodings(graph, samples)
    for node in graph.layers():
        if node.quantized and plan.get(node.name) is None:
            plan[node.name] = _calibrated(samples[node.name], None)
    return plan


def deployed_arithmetic(graph: Graph, plan: dict[str, Encoding | None], batches: list[Tensor]) -> Tensor:
    """What the PT2E file computes, simulated in float64 (int32 biases at ``s_x * s_w``, the plan's roundings)."""
    return simulate_deploy(graph, plan, batches, recompute_sums=False)


FULL = (-128, 127)  # the int8 codes a quantize can give


def top_shift(e: Encoding) -> int:
    """How far ``e``'s codes move up in the int8 container so that its top code is 127.

    The real values an encoding represents do not depend on where its codes sit in the container (codes
    and zero point move together), and at the top the int8 quantize's own saturation is the upper
    bound, so no clamp op is needed for it. An encoding whose top code is below its zero point (every
    value negative) would need a zero point above 127: it stays where it is."""
    return 255 - int(e.hi) if int(e.zero) <= int(e.hi) else 0


def non_negative(e: Encoding) -> tuple[int, int]:
    """The int8 codes a non-negative value can take on ``e``'s grid, top-placed: from the zero point up
    (rounding maps 0 to the zero point and is monotone)."""
    return int(e.zero) + top_shift(e) - 128, 127


@dataclasses.dataclass(frozen=True)
class Placed:
    """A value in the int8 graph: its plan encoding ``enc`` (uint8 codes, what grids are compared on), its
    int8 zero point ``zero`` (``enc.zero - 128`` moved by the placement), and the int8 codes ``[lo, hi]``
    it is known to lie in (what decides whether a clamp can change it)."""

    enc: Encoding
    zero: int
    lo: int
    hi: int

    @property
    def shift(self) -> int:
        return self.zero - (int(self.enc.zero) - 128)

    def code(self, c: int) -> int:
        """The int8 code of ``enc``'s uint8 code ``c`` here."""
        return int(c) - 128 + self.shift


class Pt2eGraph(nn.Module):
    """The graph as float ops between int8 quantize/dequantize pairs (exportable with ``torch.export``)."""

    def __init__(self, graph: Graph, plan: dict[str, Encoding | None], int8_weights: bool = True,
                 identity_requantize: bool = True) -> None:
        """``int8_weights``: weights as int8 buffers read by ``dequantize_per_channel`` (what PT2E's convert step
        leaves, ExecuTorch's form); False: float buffers of the same values quantized in the graph (the
        form litert-torch folds into int8 constants). ``identity_requantize``: a layer input on another
        grid is moved to the layer's by an identity layer (:meth:`requantize`), not a bare quantize."""
        super().__init__()
        self.int8_weights = int8_weights
        self.identity_requantize = identity_requantize
        self.identity_layers: set[str] = set()  # layers whose input an identity layer requantized (set by forward)
        self.ir = graph
        self.plan = plan
        self.trace: dict[str, Tensor] | None = None  # every node's output, when set to a dict (checks, tests)
        whole = build_model(graph)
        # batch/layer norms and constants keep their float modules; quantized layers are built below
        self.float_ops = nn.ModuleDict({whole._keys[n.name]: whole.layer(n.name) for n in graph.nodes
                                        if n.name in whole._keys and not n.quantized})
        self._float_keys = {n.name: whole._keys[n.name] for n in graph.nodes if n.name in whole._keys and not n.quantized}
        t = graph.tensors
        # identity weights (code 1, scale 1) for every layer input width, for requantize(); buffers in the layer's
        # own weight shape, since the converters take a constant read by the dequantize (XNNPACK's partitioner
        # leaves a conv whose weight passes through a view in float), not tensors made in the graph
        shapes = graph.shapes()
        for node in graph.layers():
            shape = shapes.get(node.inputs[0]) or []
            if node.quantized and len(shape) >= 2:
                channels = int(shape[1] if len(shape) == 4 else shape[-1])
                key = f"eye{channels}d{4 if len(shape) == 4 else 2}"
                if not hasattr(self, f"{key}_w"):
                    eye = torch.eye(channels)
                    eye = eye.view(channels, channels, 1, 1) if len(shape) == 4 else eye
                    self.register_buffer(f"{key}_w", eye.to(torch.int8) if int8_weights else eye)
                    self.register_buffer(f"{key}_s", torch.ones(channels))
                    self.register_buffer(f"{key}_z", torch.zeros(channels, dtype=torch.int64))
        self._keys: dict[str, str] = {}
        self._inputs = {n.name: _input_encoding(n, t) for n in graph.layers() if n.quantized}
        for i, node in enumerate(graph.layers()):
            if not node.quantized:
                continue
            key = f"l{i}"
            self._keys[node.name] = key
            # codes scaled by m, the scale by 1/m: the same products, and an int32 bias unit s_x * s_w / m fine
            # enough at low bit-widths (as onnxruntime's file does, IntegerGraph.layer)
            m = code_multiplier(t[f"{node.name}.weight.codes"])
            codes = t[f"{node.name}.weight.codes"] * m
            scale = t[f"{node.name}.weight.scale"].float().reshape(-1) / m
            channels = codes.shape[0]
            scale = scale.expand(channels).contiguous() if scale.numel() == 1 else scale
            # int8 codes, as PT2E's convert step leaves a weight; converters read scales and zero points from
            # buffers (placeholders), not computed nodes
            if int8_weights:
                self.register_buffer(f"{key}_w", codes.to(torch.int8))
            else:
                self.register_buffer(f"{key}_w", codes.float() * scale.view((-1,) + (1,) * (codes.dim() - 1)))
            self.register_buffer(f"{key}_s", scale)
            self.register_buffer(f"{key}_z", torch.zeros(channels, dtype=torch.int64))
            bias = t.get(f"{node.name}.bias") if node.bias else None
            self.register_buffer(f"{key}_b", None if bias is None else bias.float().clone())

        # a layer whose output only ReLUs read computes the ReLU before its output's quantize (see forward)
        consumers = graph.consumers()
        self.relu_first = {n.name for n in graph.layers() if n.quantized and n.name != graph.output
                           and consumers.get(n.name) and all(c.op == "relu" for c in consumers[n.name])
                           and plan.get(n.name) is not None and plan[n.name].zero <= plan[n.name].hi}

    def qdq(self, x: Tensor, e: Encoding, shift: int, known: tuple[int, int] = FULL) -> tuple[Tensor, Placed]:
        """``x`` rounded to ``e``'s grid as an int8 tensor (``e``'s codes moved up by ``shift``), kept in ``e``'s
        code range by an explicit clamp on each side that ``known`` (the int8 codes the rounding can give) crosses.

        The clamp reads the rounded value (quantize -> dequantize -> clamp -> quantize), so every converter
        sees it as an op on a quantized tensor: XNNPACK's partitioner leaves a conv whose float output goes
        to a clamp before its quantize outside the delegate. A clamp is an int8 MINIMUM or MAXIMUM that
        LiteRT's XNNPACK delegate does not take (each one cuts the delegate in two), hence the placement
        (:func:`top_shift`) and the known intervals that leave out every clamp the codes cannot cross."""
        placed = Placed(e, int(e.zero) + shift - 128, *known)
        lo, hi = placed.code(e.lo), placed.code(e.hi)
        x = self._round(x, float(e.scale), placed.zero)
        low, high = (lo if known[0] < lo else None), (hi if known[1] > hi else None)
        if low is not None or high is not None:
            x = self._clip(x, placed, low, high)
        return x, dataclasses.replace(placed, lo=max(known[0], lo), hi=min(known[1], hi))

    @staticmethod
    def _round(x: Tensor, scale: float, zero: int) -> Tensor:
        qd = torch.ops.quantized_decomposed
        return qd.dequantize_per_tensor(qd.quantize_per_tensor(x, scale, zero, -128, 127, torch.int8),
                                        scale, zero, -128, 127, torch.int8)

    def _clip(self, x: Tensor, p: Placed, low: int | None, high: int | None) -> Tensor:
        """Codes of ``x`` (rounded, placed as ``p``) clipped to [low, high] (None: that side is not clipped):
        a ReLU where the lower bound is the zero point and there is no upper one, else a clamp."""
        scale = float(p.enc.scale)
        if low == p.zero and high is None:
            x = F.relu(x)
        else:
            x = torch.clamp(x, None if low is None else scale * (low - p.zero),
                            None if high is None else scale * (high - p.zero))
        return self._round(x, scale, p.zero)

    def requantize(self, x: Tensor, p: Placed, target: Encoding) -> tuple[Tensor, Placed]:
        """``x`` (codes placed as ``p``) moved to ``target``'s grid by an identity layer (1x1 conv or linear).

        A bare quantize of a quantized value (quantize -> dequantize -> quantize) goes wrong twice:
        litert-torch's static mode merges the chain into its first quantize, so the layer reads the value
        on the grid before while its int32 bias is scaled for the layer's grid; and where a converter keeps
        it as an int8 -> int8 requantization, XNNPACK (LiteRT's and ExecuTorch's CPU kernels) computes that
        with a multiplier of 8 fractional bits (``xnn_init_qs8_cvt_scalar_params``), which at a ratio of
        1/9 between two nested grids moves large codes by up to a third of a step. An identity layer is a
        conv/linear whose output is requantized at float32 precision, so the value is rounded once to
        ``target``'s grid, as the simulation rounds it. Its accumulator is the input's code minus its zero
        point, and the requantization is monotone and maps 0 to the zero point: a value known to be
        non-negative stays at or above ``target``'s zero point, so no lower clamp is needed.
        """
        qd = torch.ops.quantized_decomposed
        channels = x.shape[1] if x.dim() == 4 else x.shape[-1]
        key = f"eye{channels}d{4 if x.dim() == 4 else 2}"
        eye, ones, zeros = (getattr(self, f"{key}_{part}") for part in ("w", "s", "z"))
        if not self.int8_weights:
            eye = qd.quantize_per_channel(eye, ones, zeros, 0, -127, 127, torch.int8)
        w = qd.dequantize_per_channel(eye, ones, zeros, 0, -127, 127, torch.int8)
        y = F.conv2d(x, w) if x.dim() == 4 else F.linear(x, w)
        return self.qdq(y, target, top_shift(target), non_negative(target) if p.lo >= p.zero else FULL)

    def _layer(self, node: Node, x: Tensor, p: Placed | None = None) -> Tensor:
        qd = torch.ops.quantized_decomposed
        key = self._keys[node.name]
        target = self._inputs[node.name]
        if p is not None and p.enc.same_grid(target):
            # the producer's placement (the same grid: its codes are the layer's), clipped to the layer's range
            # only where the value can leave it
            x, _ = self.qdq(x, target, p.shift, (p.lo, p.hi))
        elif self.identity_requantize and p is not None:
            x, _ = self.requantize(x, p, target)
            self.identity_layers.add(node.name)
        else:
            x, _ = self.qdq(x, target, top_shift(target))
        s, z = getattr(self, f"{key}_s"), getattr(self, f"{key}_z")
        w = getattr(self, f"{key}_w")
        if not self.int8_weights:
            w = qd.quantize_per_channel(w, s, z, 0, -127, 127, torch.int8)
        w = qd.dequantize_per_channel(w, s, z, 0, -127, 127, torch.int8)
        b = getattr(self, f"{key}_b")
        if node.op == "conv2d":
            a = node.attrs
            return F.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])
        return F.linear(x, w, b)

    def _pass(self, node: Node, args: list[Tensor], p: Placed) -> tuple[Tensor, Placed]:
        """A pass-through op on codes placed as ``p``: the output keeps the placement; a ReLU or clamp is
        written only for the sides of its interval that the codes can cross (none: no op at all)."""
        x = args[0]
        if node.op in ("relu", "clamp"):
            lo, hi = p.enc.clamp_codes(node.op, node.attrs)
            lo, hi = max(lo, p.enc.lo), min(hi, p.enc.hi)
            lo8, hi8 = p.code(lo), p.code(hi)
            low, high = (lo8 if p.lo < lo8 else None), (hi8 if p.hi > hi8 else None)
            if low is not None or high is not None:
                x = self._clip(x, p, low, high)
            return x, Placed(dataclasses.replace(p.enc, lo=lo, hi=hi), p.zero, max(p.lo, lo8), min(p.hi, hi8))
        y = self._round(OPS[node.op].run(*args, **node.attrs), float(p.enc.scale), p.zero)  # type: ignore[misc]
        if node.op == "pad":  # a zero pad writes the zero code
            return y, Placed(_with_zero(p.enc), p.zero, min(p.lo, p.zero), max(p.hi, p.zero))
        return y, p

    def forward(self, x: Tensor) -> Tensor:
        graph, plan = self.ir, self.plan
        env: dict[str, Tensor] = {graph.input_name: x}
        placed: dict[str, Placed | None] = {graph.input_name: None}
        for node in graph.nodes:
            args = [env[i] for i in node.inputs]
            kind = integer_kind(node)
            p: Placed | None = None
            if node.quantized:
                y = self._layer(node, args[0], placed.get(node.inputs[0]))
                out = plan[node.name]
                if out is not None:
                    known = FULL
                    if node.name in self.relu_first:
                        # clamp(round(y/s) + z, max(lo, z), hi) == max(clamp(round(y/s) + z, lo, hi), z) for
                        # z <= hi, and round(relu(y)/s) + z == max(round(y/s) + z, z): the converters fuse the
                        # ReLU into the conv, which leaves the codes at or above the zero point
                        y = F.relu(y)
                        known = non_negative(out)
                    y, p = self.qdq(y, out, top_shift(out), known)
            elif node.name in self._float_keys:
                y = self.float_ops[self._float_keys[node.name]](*args)
            else:
                ins = [placed.get(i) for i in node.inputs]
                if kind == PASS and ins and ins[0] is not None:
                    y, p = self._pass(node, args, ins[0])
                else:
                    y = OPS[node.op].run(*args, **node.attrs)  # type: ignore[misc]
                    out = plan.get(node.name)
                    if kind == REQUANTIZE and all(e is not None for e in ins) and out is not None:
                        y, p = self.qdq(y, out, top_shift(out))
            env[node.name] = y
            placed[node.name] = p
            if self.trace is not None:
                self.trace[node.name] = y
        return env[graph.output]
