"""Quantized convolutions on oneDNN's int8 kernels, for measuring subnets faster on CPU.

A fake-quantized conv multiplies values that are integers times a scale: the input is
``s_a * r_a`` and the weight ``s_w * r_w`` with integer ``r``. So the float conv equals
``s_a * s_w * conv(r_a, r_w)``, and ``conv(r_a, r_w)`` is an integer sum that oneDNN's u8s8 kernel
(``onednn::qconv2d_pointwise``, AVX512-VNNI/AMX on x86) computes exactly in int32, at a
fraction of the float conv's cost. The kernel wants unsigned 8-bit inputs and signed 8-bit weights
without zero points, so the codes are shifted into those ranges and the shifts are corrected
exactly (zero padding included, which is why the corrections are maps, not constants)::

    u   = r_a + z_a - qn_a        in [0, 2^b - 1]: r_a = u - p   (p = z_a - qn_a)
    c_w = r_w + k                 in [-128, 127]:  r_w = c_w - k (k = 0, or z_w for a channel beyond int8)
    conv(r_a, r_w) = conv(u, c_w) - k * box(u) - p * conv(1, c_w) + p * k * conv(1, 1)

``box(u)`` sums ``u`` over each output's receptive field (a channel sum and a k*k box filter, per
group), and ``conv(1, .)`` convolves an all-ones image, so the borders get what zero padding gives
them. Only the float rounding of the final scaling and of large correction terms differs from the
fake-quant conv; :func:`int8_conv_support` checks the kernel on the machine itself first.

Packing is per subnet (the weight codes depend on the active form) and is undone after use:
:func:`pack_int8` then :func:`unpack_int8`, as :class:`eqtools.evaluation.SubnetMeter` does. A packed
layer computes its packed form whatever form is active, so it must not outlive the subnet it
was packed for.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqtools.quant.quantizer import ActQuantizer, WeightQuantizer

__all__ = ["int8_conv_support", "pack_int8", "packable", "unpack_int8"]


def _qconv(u: Tensor, packed: Tensor, layer: nn.Conv2d, ones: Tensor, zeros: Tensor) -> Tensor:
    """conv(u, codes) as float32 (scales 1, zero points 0: the raw int32 sums)."""
    return torch.ops.onednn.qconv2d_pointwise(
        u, 1.0, 0, packed, ones, zeros, None, list(layer.stride), list(layer.padding), list(layer.dilation),
        layer.groups, 1.0, 0, torch.float32, "none", [], "")


def _prepack(codes: Tensor, layer: nn.Conv2d) -> Tensor:
    return torch.ops.onednn.qconv_prepack(
        codes.to(torch.int8), torch.ones(codes.shape[0]), 1.0, 0, list(layer.stride), list(layer.padding),
        list(layer.dilation), layer.groups, None)


def int8_kernel_missing() -> str | None:
    """Why this torch build has no oneDNN int8 conv to call at all, or None (whether it sums exactly is
    :func:`int8_conv_support`'s question)."""
    if not hasattr(torch.ops, "onednn") or not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        return "this torch build has no onednn::qconv2d_pointwise"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    return None


@functools.cache
def int8_conv_support() -> str | None:
    """None when the int8 kernel computes exact integer sums here, else why not (one line).

    The probe is the worst case of the u8s8 instruction sequence: every input 255 against weights
    of +-127. CPUs without VNNI sum pairs of such products in int16 with saturation (up to
    ``2 * 255 * 127 = 64770``); the probe sees that and the caller keeps the float conv.
    """
    missing = int8_kernel_missing()
    if missing is not None:
        return missing
    try:
        conv = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        codes = torch.tensor([127.0, -127.0, 127.0, 127.0]).view(4, 1, 1, 1).expand(4, 8, 3, 3).contiguous()
        codes[2, ::2] = -128.0
        u = torch.full((1, 8, 5, 5), 255, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        out = _qconv(u, _prepack(codes, conv), conv, torch.ones(4), torch.zeros(4, dtype=torch.long))
        ref = F.conv2d(u.double(), codes.double(), padding=1)
    except Exception as exc:  # any failure means: keep the float conv
        return f"the oneDNN int8 conv failed here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if not torch.equal(out.double(), ref):
        return ("the oneDNN int8 conv does not sum 8-bit products exactly on this CPU (no VNNI: pairs saturate "
                "in int16)")
    return None


def packable(layer: nn.Module) -> bool:
    """A quantized 2-D conv on CPU in float32 with zero padding and both quantizers on.

    Quantized means a conv whose forward honours ``_int8`` (``QConv2d``, which imports this module;
    recognised by the attribute so the import goes one way only).
    """
    return (isinstance(layer, nn.Conv2d) and hasattr(type(layer), "_int8")
            and isinstance(getattr(layer, "act_quant", None), ActQuantizer)
            and isinstance(getattr(layer, "weight_quant", None), WeightQuantizer)
            and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)
            and layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32
            and layer.act_quant.enabled and layer.weight_quant.enabled
            and max(layer.weight_quant.bits) <= 8 and max(layer.act_quant.bits) <= 8)


@torch.no_grad()
def pack_int8(model: nn.Module) -> int:
    """Pack every :func:`packable` conv of ``model`` for its active form; returns how many."""
    count = 0
    for layer in model.modules():
        if not packable(layer):
            continue
        # the weight quantizer's own codes (checked there to reproduce the fake-quantized weight)
        weights = layer.weight_quant.int_view(layer.weight)
        channels = layer.out_channels
        step, zero = weights.scale.expand(channels), weights.zero_point.float().expand(channels)
        view = (-1, 1, 1, 1)
        r = weights.codes.float() - zero.view(view)  # the weight is step * r
        # shift a channel's codes by its zero point only when they leave int8 (an asymmetric channel far
        # from 0): unshifted channels need no box-sum correction, which keeps large terms from cancelling
        rows = r.flatten(1)
        shift = torch.where((rows.amin(1) >= -128) & (rows.amax(1) <= 127), torch.zeros_like(zero), zero)
        codes = r + shift.view(view)
        layer._int8 = {
            "packed": _prepack(codes, layer),
            "codes": codes.float(),
            "w_scale": step.view(1, -1, 1, 1).float().clone(),
            "w_shift": shift.view(1, -1, 1, 1).float().clone(),
            "ones": torch.ones(channels),
            "zeros": torch.zeros(channels, dtype=torch.long),
        }
        count += 1
    return count


def unpack_int8(model: nn.Module) -> None:
    """Back to the float conv: the class default (None) again, not an instance attribute set to
    None, so compiled graphs guarding on the attribute see the state they were built with."""
    for layer in model.modules():
        layer.__dict__.pop("_int8", None)


def _box_sum(u: Tensor, layer: nn.Conv2d) -> Tensor:
    """Sum of ``u`` over each output position's receptive field, per group: [B, C_out, H', W'].

    ``u`` is the float copy of the codes: a NaN input, which has no uint8 code, stays NaN here and
    reaches every output it feeds (``0 * NaN`` too), as in the float conv, so a diverged subnet
    cannot be scored as a plausible one.

    A channel sum per group, then k*k strided slices of the zero-padded map added up (elementwise
    work the compiler fuses; a one-channel conv would run at a fraction of oneDNN's speed).
    """
    b, c, h, w = u.shape
    groups = layer.groups
    s = u.view(b, groups, c // groups, h, w).sum(2)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    s = F.pad(s, (pw, pw, ph, ph))
    ho = (s.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (s.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            tap = s[:, :, i * dh: i * dh + (ho - 1) * sh + 1: sh, j * dw: j * dw + (wo - 1) * sw + 1: sw]
            total = tap if total is None else total + tap
    return total.repeat_interleave(layer.out_channels // groups, dim=1) if groups > 1 else total


def int8_forward(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """What ``QConv2d.forward`` computes, with the conv's integer sums on the packed int8 kernel."""
    aq = layer.act_quant
    pack = layer._int8
    step, zero = aq.step_and_zero_point()
    # the activation quantizer's own formula (fake_quantize's evaluation path), as unsigned codes
    r = torch.clamp(x / step, aq.qn - zero, aq.qp - zero).round()
    shift = (zero - aq.qn).view(1, 1, 1, 1)
    codes = r + shift
    u = codes.to(torch.uint8).contiguous(memory_format=torch.channels_last)
    mask = torch.ones((1, *x.shape[1:]), dtype=torch.float32, device=x.device)
    border_w = F.conv2d(mask, pack["codes"], None, layer.stride, layer.padding, layer.dilation, layer.groups)
    ones_k = torch.ones((layer.groups, layer.in_channels // layer.groups, *layer.kernel_size))
    border_1 = F.conv2d(mask, ones_k, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if layer.groups > 1:
        border_1 = border_1.repeat_interleave(layer.out_channels // layer.groups, dim=1)
    w_shift = pack["w_shift"]
    sums = (_qconv(u, pack["packed"], layer, pack["ones"], pack["zeros"]) - w_shift * _box_sum(codes, layer)
            - shift * border_w + shift * w_shift * border_1)
    out = sums * (step.view(1, 1, 1, 1) * pack["w_scale"])
    if layer.bias is not None:
        out = out + layer.bias.view(1, -1, 1, 1)
    return out
