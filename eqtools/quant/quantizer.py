"""Elastic LSQ/LSQ+ quantizers: one module per tensor, one learnable step (and offset) per form.

The math is paper Eq. 1 with Qn/Qp from the bit-width and signedness::

    x_hat = clip(round(x / s) + z, Qn, Qp)         (integer code)
    x_bar = s * (x_hat - z)                          (what the network sees)

- Gradients use the straight-through estimator with the clip mask taken *before* rounding, as in
  LSQ: an input half a step outside the range gets no gradient (PyTorch's built-in learnable
  fake-quant ops mask after rounding and let it through).
- Step and offset gradients are scaled by ``1 / sqrt(n * Qp)`` (LSQ), with ``n`` the number of values that
  share the step: weights per output channel (per-channel) or the whole tensor (per-tensor), and
  the per-sample input features for activations.
- Asymmetric forms learn an offset ``z`` (LSQ+) that is rounded with a straight-through estimator
  in the forward pass, so the zero point the network trains with is already the integer zero point
  that export writes (paper: z in Z). Export is therefore exact rather than "round and hope".
- Symmetric forms have z = 0.

Every (bit-width, granularity, symmetry) form has its own step; the per-tensor step is learned
independently of the per-channel ones (paper Table 4). All tables are Parameters created in
``__init__`` with fixed shapes, so ``state_dict`` round-trips strictly and an optimiser built
before :func:`init_from_data` sees the same tensors after it.

Switching the active form only writes into small index/constant buffers (non-persistent: the
active subnet is not part of the weights). The forward reads them as tensors, so a compiled graph
never specialises on a bit-width and switching subnets does not recompile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from eqtools.errors import ConfigError

__all__ = [
    "ActQuantizer",
    "IntView",
    "WeightQuantizer",
    "fake_quantize",
    "lp_search",
    "quant_range",
]


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Qn, Qp): [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass(frozen=True)
class IntView:
    """The active form of a quantizer as integers: what a deployment stores and computes with.

    ``value = scale * (code - zero_point)`` with ``qmin <= code <= qmax``. ``scale`` and
    ``zero_point`` are [C_out] for per-channel weights and [1] otherwise (float32 / int32);
    ``codes`` (int32, the weight's shape) only for weights. ``symmetric`` is read from the
    zero points themselves (all 0), not from the form's name, so a deployment decides from what
    it will actually compute.
    """

    scale: Tensor
    zero_point: Tensor
    qmin: int
    qmax: int
    bits: int
    signed: bool
    granularity: str
    symmetry: str
    codes: Tensor | None = None

    @property
    def symmetric(self) -> bool:
        return not bool(self.zero_point.any())


def _wide(x: Tensor) -> Tensor:
    """fp32 for a mixed-precision (bf16/fp16) tensor, anything else as it is: quantizers divide, clip
    and round in fp32 against the fp32 step, so a value's code does not depend on the autocast dtype
    (bf16 has 8 significant bits: x/s would round before round())."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


def _lsq_backward(ctx, grad: Tensor, v: Tensor, q: Tensor, inside: Tensor, step: Tensor, grad_scale: Tensor):
    """Gradients of ``q·s`` (q = clipped, rounded ``v = x/s``) w.r.t. x, s and z, as derived below."""
    grad_x = torch.where(inside, grad, 0.0)
    grad_step = grad_zero = None
    if ctx.needs_input_grad[1]:
        grad_step = ((grad * q).sum_to_size(step.shape) - (grad_x * v).sum_to_size(step.shape)) * grad_scale
    if ctx.needs_input_grad[2]:
        grad_zero = step * (grad_x.sum_to_size(step.shape) - grad.sum_to_size(step.shape)) * grad_scale
    return grad_x, grad_step, grad_zero, None, None, None


class _FakeQuantize(torch.autograd.Function):
    """Fused forward and a hand-derived LSQ/LSQ+ backward.

    Autograd through ``clamp`` with tensor bounds costs about eight full passes over the tensor in
    the backward; this needs four. With ``v = x/s`` and the in-range mask ``m``:
    ``dL/dx = g·m``, ``dL/ds = Σ g·q − Σ (g·m)·v`` (which is ``round(v) − v`` inside the range and the
    clipped code outside), ``dL/dz = s·(Σ g·m − Σ g)``. ``q`` is the code minus the zero point.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, zero_point: Tensor, qn: Tensor, qp: Tensor, grad_scale: Tensor) -> Tensor:
        v = x / step
        u = torch.clamp(v, qn - zero_point, qp - zero_point)
        inside = u == v  # clipping before rounding: LSQ's straight-through mask
        q = u.round_()
        ctx.save_for_backward(v, q, inside, step, grad_scale)
        return q * step

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, q, inside, step, grad_scale = ctx.saved_tensors
        return _lsq_backward(ctx, grad, v, q, inside, step, grad_scale)


class _FakeQuantizeRecompute(torch.autograd.Function):
    """The same math, saving only the input: for compiled graphs.

    Inductor fuses the recomputation of ``v``, the mask and ``q`` into the backward kernel, so
    the forward writes one tensor instead of four; in eager mode those would be extra passes. A
    bf16/fp16 input (mixed precision) is saved as it came and widened inside both kernels: the
    same fp32 arithmetic, half the bytes kept for the backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, zero_point: Tensor, qn: Tensor, qp: Tensor, grad_scale: Tensor) -> Tensor:
        ctx.save_for_backward(x, step, zero_point, qn, qp, grad_scale)
        u = torch.clamp(_wide(x) / step, qn - zero_point, qp - zero_point)
        return torch.round(u) * step

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, step, zero_point, qn, qp, grad_scale = ctx.saved_tensors
        v = _wide(x) / step
        u = torch.clamp(v, qn - zero_point, qp - zero_point)
        inside = u == v
        return _lsq_backward(ctx, grad, v, torch.round(u), inside, step, grad_scale)


def fake_quantize(
    x: Tensor, step: Tensor, zero_point: Tensor, qn: Tensor, qp: Tensor, grad_scale: Tensor | None = None
) -> Tensor:
    """``s * (clip(round(x/s) + z, Qn, Qp) - z)`` with the LSQ straight-through estimator.

    ``step`` and ``zero_point`` have the same shape and broadcast against ``x``; ``zero_point``
    must hold integers (it is rounded upstream) so clipping before rounding equals the paper's
    round-then-clip exactly. ``qn``/``qp`` are 0-dim tensors so bit-widths stay data.
    ``grad_scale`` multiplies the step and zero-point gradients (LSQ); it lives in the backward
    so the forward uses the step bit-exactly (export relies on that).
    """
    zero_point = zero_point.expand_as(step)
    if not torch.is_grad_enabled() or not (x.requires_grad or step.requires_grad or zero_point.requires_grad):
        # evaluation and BN calibration: no mask, nothing saved (identical values, less work per call)
        return torch.clamp(_wide(x) / step, qn - zero_point, qp - zero_point).round_().mul_(step)
    if grad_scale is None:
        grad_scale = torch.ones((), device=x.device)
    if torch.compiler.is_compiling():
        return _FakeQuantizeRecompute.apply(x, step, zero_point, qn, qp, grad_scale)  # widens inside
    return _FakeQuantize.apply(_wide(x), step, zero_point, qn, qp, grad_scale)


def lp_search(
    x: Tensor,
    qn: int,
    qp: int,
    asym: bool,
    p: float = 2.4,
    grid: int = 10,
    max_values: int = 1 << 16,
) -> tuple[Tensor, Tensor]:
    """Per-row step and integer zero point minimising the L_p quantization error.

    ``x`` is [rows, n]. Candidate clip ranges shrink the observed range by a factor in (0, 1],
    searched coarse-to-fine (``grid`` factors, then ``grid`` more around the best); ``p = 2.4``
    follows the reference implementation's initialisation. Rows longer than ``max_values / rows``
    are strided-subsampled for the error estimate (the range still comes from every value).
    Returns float tensors ``step`` [rows] (positive) and ``zero_point`` [rows] (integers; zero
    when symmetric).
    """
    x = x.detach().float()
    levels = qp - qn
    if asym:
        lo = x.amin(dim=1).clamp(max=0.0)
        hi = x.amax(dim=1).clamp(min=0.0)
        width = (hi - lo).clamp(min=1e-8)
        zero_point = torch.round(qn - lo * levels / width).clamp(qn, qp)
        base = width / levels
    else:
        zero_point = torch.zeros(x.shape[0], device=x.device)
        peak = x.abs().amax(dim=1) if qn < 0 else x.amax(dim=1)
        base = peak.clamp(min=1e-8) / qp
    per_row = max(256, max_values // x.shape[0])
    if x.shape[1] > per_row:
        x = x[:, :: x.shape[1] // per_row]
    z = zero_point[None, :, None]

    def errors(alphas: Tensor) -> Tensor:  # alphas [a, rows] -> error [a, rows]
        s = (alphas * base[None, :])[:, :, None]
        xq = torch.clamp(torch.round(x[None] / s) + z, qn, qp)
        return ((xq - z) * s - x[None]).abs().pow(p).sum(dim=2)

    rows = x.shape[0]
    coarse = torch.linspace(1.0 / grid, 1.0, grid, device=x.device)[:, None].expand(grid, rows)
    best = coarse.gather(0, errors(coarse).argmin(dim=0, keepdim=True))  # [1, rows]
    offsets = torch.linspace(-1.0 / grid, 1.0 / grid, grid + 1, device=x.device)[:, None]
    fine = (best + offsets).clamp(1.0 / (4 * grid), 1.0)
    best = fine.gather(0, errors(fine).argmin(dim=0, keepdim=True))[0]
    return base * best, zero_point


class _ElasticQuantizer(nn.Module):
    """State and switching shared by weight and activation quantizers."""

    def __init__(self, bits: Sequence[int], symmetries: Sequence[str], numel: int) -> None:
        super().__init__()
        self.bits = tuple(sorted(bits))
        self.symmetries = tuple(symmetries)
        self.numel = int(numel)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # active-form selectors: data, not code, so compiled graphs never specialise on them
        self.register_buffer("form_index", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("bit_index", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("asym", torch.zeros(()), persistent=False)
        self.register_buffer("qn", torch.zeros(()), persistent=False)
        self.register_buffer("qp", torch.ones(()), persistent=False)
        self.register_buffer("step_grad_scale", torch.ones(()), persistent=False)
        self.enabled = True  # False: pass-through (observing data for initialisation)
        self._ready = False
        self._active: tuple = ()
        self.register_load_state_dict_post_hook(_after_load)

    # -- helpers -------------------------------------------------------------------------------
    def _bit_position(self, bits: int) -> int:
        if bits not in self.bits:
            raise ConfigError(f"{bits}-bit is not a form of this quantizer; it has {list(self.bits)}")
        return self.bits.index(bits)

    def _sym_position(self, symmetry: str) -> int:
        if symmetry not in self.symmetries:
            raise ConfigError(f"symmetry {symmetry!r} is not a form of this quantizer; it has {list(self.symmetries)}")
        return self.symmetries.index(symmetry)

    def _check_ready(self) -> None:
        if not self._ready:
            raise RuntimeError(
                "quantizer is not initialised: run Supernet.init_from_data(batches) (or load a trained "
                "supernet's weights) before running a quantized forward pass"
            )

    @property
    def signed(self) -> bool:  # overridden by activations
        return True

    def _set_common(self, bits: int, symmetry: str, n: int) -> None:
        qn, qp = quant_range(bits, self.signed)
        self.bit_index.fill_(self._bit_position(bits))
        self.form_index.fill_(self._bit_position(bits) * len(self.symmetries) + self._sym_position(symmetry))
        self.asym.fill_(1.0 if symmetry == "asym" else 0.0)
        self.qn.fill_(qn)
        self.qp.fill_(qp)
        self.step_grad_scale.fill_(1.0 / math.sqrt(n * qp))

    @property
    def ready(self) -> bool:
        """Initialised (from data or a loaded state): a quantized forward may run."""
        return self._ready

    def mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self._ready = True
        if self._active:
            self.activate(*self._active)

    def activate(self, *args) -> None:  # pragma: no cover - abstract
        raise TypeError("use a concrete quantizer")


def _after_load(module: _ElasticQuantizer, incompatible_keys) -> None:
    module._ready = bool(module.initialized.item())
    if module._active:
        module.activate(*module._active)


class WeightQuantizer(_ElasticQuantizer):
    """Quantizer for one weight tensor [C_out, ...]: forms = bits × granularities × symmetries."""

    def __init__(
        self,
        out_channels: int,
        numel: int,
        bits: Sequence[int],
        granularities: Sequence[str],
        symmetries: Sequence[str],
    ) -> None:
        super().__init__(bits, symmetries, numel)
        self.out_channels = int(out_channels)
        self.granularities = tuple(granularities)
        n_forms = len(self.bits) * len(self.symmetries)
        has_asym = "asym" in self.symmetries
        self.step_per_channel = self.step_per_tensor = None
        self.offset_per_channel = self.offset_per_tensor = None
        if "per-channel" in self.granularities:
            self.step_per_channel = nn.Parameter(torch.ones(n_forms, self.out_channels))
            if has_asym:
                self.offset_per_channel = nn.Parameter(torch.zeros(len(self.bits), self.out_channels))
        if "per-tensor" in self.granularities:
            self.step_per_tensor = nn.Parameter(torch.ones(n_forms, 1))
            if has_asym:
                self.offset_per_tensor = nn.Parameter(torch.zeros(len(self.bits), 1))
        self.register_buffer("per_channel", torch.zeros((), dtype=torch.bool), persistent=False)
        self.activate(self.bits[-1], self.granularities[0], self.symmetries[0])

    def activate(self, bits: int, granularity: str, symmetry: str) -> None:
        if granularity not in self.granularities:
            raise ConfigError(
                f"granularity {granularity!r} is not a form of this quantizer; it has {list(self.granularities)}"
            )
        per_channel = granularity == "per-channel"
        n = self.numel // self.out_channels if per_channel else self.numel
        self._set_common(bits, symmetry, n)
        self.per_channel.fill_(per_channel)
        self._active = (bits, granularity, symmetry)

    def step_and_zero_point(self) -> tuple[Tensor, Tensor]:
        """Active step (positive) and integer zero point, both [C_out] (broadcast if per-tensor)."""
        steps = []
        if self.step_per_channel is not None:
            steps.append(self.step_per_channel.index_select(0, self.form_index)[0])
        if self.step_per_tensor is not None:
            steps.append(self.step_per_tensor.index_select(0, self.form_index)[0].expand(self.out_channels))
        step = steps[0] if len(steps) == 1 else torch.where(self.per_channel, steps[0], steps[1])
        step = step.abs()
        if self.offset_per_channel is None and self.offset_per_tensor is None:
            return step, torch.zeros_like(step)
        offsets = []
        if self.offset_per_channel is not None:
            offsets.append(self.offset_per_channel.index_select(0, self.bit_index)[0])
        if self.offset_per_tensor is not None:
            offsets.append(self.offset_per_tensor.index_select(0, self.bit_index)[0].expand(self.out_channels))
        offset = offsets[0] if len(offsets) == 1 else torch.where(self.per_channel, offsets[0], offsets[1])
        return step, _round_ste(offset) * self.asym

    def forward(self, w: Tensor) -> Tensor:
        if not self.enabled:
            return w
        self._check_ready()
        step, zero_point = self.step_and_zero_point()
        shape = (-1,) + (1,) * (w.dim() - 1)
        return fake_quantize(w, step.view(shape), zero_point.view(shape), self.qn, self.qp, self.step_grad_scale)

    @torch.no_grad()
    def int_view(self, w: Tensor) -> IntView:
        """The active form's integer codes, scale and zero point for weight ``w`` [C_out, ...].

        The codes come from the forward pass's own formula, and reproducing the fake-quantized
        weight from them is checked (a mismatch is a bug, raised as ``RuntimeError``), so
        whoever deploys the view computes exactly what the network was trained and measured with.
        """
        self._check_ready()
        bits, granularity, symmetry = self._active
        w = w.detach()
        step, zero_point = self.step_and_zero_point()
        if not torch.equal(zero_point, zero_point.round()):
            raise RuntimeError("the active weight zero point is not an integer")  # a bug upstream
        view = (-1,) + (1,) * (w.dim() - 1)
        qn, qp = quant_range(bits, True)
        q = torch.clamp(w / step.view(view), qn - zero_point.view(view), qp - zero_point.view(view)).round()
        codes = (q + zero_point.view(view)).to(torch.int32)
        if not torch.equal((codes.float() - zero_point.view(view)) * step.view(view), self(w)):
            raise RuntimeError("integer codes do not reproduce the fake-quantized weight")
        per_channel = granularity == "per-channel"
        return IntView(
            scale=(step if per_channel else step[:1]).detach().float().clone(),
            zero_point=(zero_point if per_channel else zero_point[:1]).detach().to(torch.int32),
            qmin=qn, qmax=qp, bits=bits, signed=True, granularity=granularity, symmetry=symmetry, codes=codes,
        )

    @torch.no_grad()
    def active_offset(self) -> Tensor | None:
        """The active asymmetric form's learned real-valued offset ([C_out] or [1]) before rounding; None if symmetric.

        Reports use it to say how far training left the offsets from the integer zero points
        that ``int_view`` (and every forward pass) uses.
        """
        if self._active[2] != "asym":
            return None
        table = self.offset_per_channel if self._active[1] == "per-channel" else self.offset_per_tensor
        return None if table is None else table.index_select(0, self.bit_index)[0].detach().clone()

    @torch.no_grad()
    def init_from_weight(self, w: Tensor, p: float = 2.4) -> None:
        """Set every form's step/offset by an L_p clipping search on the weight itself."""
        rows = w.detach().reshape(w.shape[0], -1)
        flat = rows.reshape(1, -1)
        for bi, bits in enumerate(self.bits):
            qn, qp = quant_range(bits, signed=True)
            for si, symmetry in enumerate(self.symmetries):
                form = bi * len(self.symmetries) + si
                asym = symmetry == "asym"
                if self.step_per_channel is not None:
                    s, z = lp_search(rows, qn, qp, asym, p)
                    self.step_per_channel[form].copy_(s)
                    if asym:
                        self.offset_per_channel[bi].copy_(z)
                if self.step_per_tensor is not None:
                    s, z = lp_search(flat, qn, qp, asym, p)
                    self.step_per_tensor[form].copy_(s)
                    if asym:
                        self.offset_per_tensor[bi].copy_(z)
        self.mark_initialized()

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, granularities={list(self.granularities)}, symmetries={list(self.symmetries)}"


class ActQuantizer(_ElasticQuantizer):
    """Per-tensor quantizer for a layer's input activation: forms = bits × symmetries.

    Signedness is decided from data at initialisation (unsigned [0, 2^b-1] if every observed
    value is >= 0, e.g. after ReLU; signed otherwise, e.g. the network input, a residual sum or
    a linear bottleneck) and persisted in the ``signed`` buffer.
    """

    def __init__(self, features: int, bits: Sequence[int], symmetries: Sequence[str]) -> None:
        super().__init__(bits, symmetries, features)
        n_forms = len(self.bits) * len(self.symmetries)
        self.step = nn.Parameter(torch.ones(n_forms))
        self.offset = nn.Parameter(torch.zeros(len(self.bits))) if "asym" in self.symmetries else None
        self.register_buffer("is_signed", torch.ones((), dtype=torch.bool))
        self._observed: list[Tensor] = []
        self._observed_min = math.inf
        self.activate(self.bits[-1], self.symmetries[0])

    @property
    def signed(self) -> bool:
        return bool(self.is_signed.item())

    def activate(self, bits: int, symmetry: str) -> None:
        self._set_common(bits, symmetry, self.numel)
        self._active = (bits, symmetry)

    def step_and_zero_point(self) -> tuple[Tensor, Tensor]:
        step = self.step.index_select(0, self.form_index).abs()
        if self.offset is None:
            return step, torch.zeros_like(step)
        return step, _round_ste(self.offset.index_select(0, self.bit_index)) * self.asym

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            if self._observing:
                self._observe(x)
            return x
        self._check_ready()
        step, zero_point = self.step_and_zero_point()
        return fake_quantize(x, step, zero_point, self.qn, self.qp, self.step_grad_scale)

    @torch.no_grad()
    def int_view(self) -> IntView:
        """The active form's scale [1], integer zero point [1] and code range (signedness included)."""
        self._check_ready()
        bits, symmetry = self._active
        step, zero_point = self.step_and_zero_point()
        if not torch.equal(zero_point, zero_point.round()):
            raise RuntimeError("the active activation zero point is not an integer")  # a bug upstream
        qn, qp = quant_range(bits, self.signed)
        return IntView(
            scale=step.detach().float().reshape(1).clone(), zero_point=zero_point.detach().reshape(1).to(torch.int32),
            qmin=qn, qmax=qp, bits=bits, signed=self.signed, granularity="per-tensor", symmetry=symmetry,
        )

    @torch.no_grad()
    def active_offset(self) -> Tensor | None:
        """The active asymmetric form's learned real-valued offset [1] before rounding; None if symmetric."""
        if self._active[1] != "asym" or self.offset is None:
            return None
        return self.offset.index_select(0, self.bit_index).detach().clone()

    # -- initialisation from data ------------------------------------------------------------
    _observing = False

    def stop_observing(self) -> None:
        """Leave observation without fitting (an interrupted initialisation): quantize again, keep no data."""
        self._observing = False
        self._observed = []
        self.enabled = True

    def start_observing(self) -> None:
        self._observed = []
        self._observed_min = math.inf
        self._observing = True
        self.enabled = False

    def _observe(self, x: Tensor, per_batch: int = 16384) -> None:
        flat = x.detach().reshape(-1).float()
        self._observed_min = min(self._observed_min, float(flat.min()))
        if flat.numel() > per_batch:
            # a seeded random subsample: reproducible, and unlike a strided one it cannot alias
            # onto a few channels or pixel positions of an NCHW tensor
            g = torch.Generator(device=flat.device).manual_seed(len(self._observed))
            flat = flat[torch.randperm(flat.numel(), generator=g, device=flat.device)[:per_batch]]
        self._observed.append(flat.cpu())

    @torch.no_grad()
    def finish_observing(self, p: float = 2.4) -> None:
        self._observing = False
        self.enabled = True
        if not self._observed:
            raise RuntimeError("activation quantizer saw no data during initialisation (layer never ran)")
        data = torch.cat(self._observed)[None, :]
        self._observed = []
        self.is_signed.fill_(self._observed_min < 0)
        for bi, bits in enumerate(self.bits):
            qn, qp = quant_range(bits, self.signed)
            for si, symmetry in enumerate(self.symmetries):
                asym = symmetry == "asym"
                s, z = lp_search(data, qn, qp, asym, p)
                self.step[bi * len(self.symmetries) + si] = s[0]
                if asym:
                    self.offset[bi] = z[0]
        self.mark_initialized()

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, symmetries={list(self.symmetries)}, features={self.numel}"
