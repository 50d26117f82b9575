"""Elastic quantizers against the paper's formula and hand-derived LSQ/LSQ+ gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eqtools.errors import ConfigError
from eqtools.quant import ActQuantizer, WeightQuantizer, lp_search, quant_range
from eqtools.quant.quantizer import _FakeQuantize, _FakeQuantizeRecompute, fake_quantize

BITS = (2, 3, 4, 5, 6, 7, 8)
GRANS = ("per-channel", "per-tensor")
SYMS = ("sym", "asym")


def reference(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """Paper Eq. 1: x_hat = clip(round(x/s) + z, Qn, Qp); x_bar = s (x_hat - z)."""
    x_hat = torch.clamp(torch.round(x / s) + z, qn, qp)
    return s * (x_hat - z)


@pytest.mark.parametrize("bits", BITS)
def test_quant_range_exact(bits):
    assert quant_range(bits, signed=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert quant_range(bits, signed=False) == (0, 2**bits - 1)


def _filled_weight_quantizer(c: int, numel: int, seed: int) -> WeightQuantizer:
    g = torch.Generator().manual_seed(seed)
    q = WeightQuantizer(c, numel, BITS, GRANS, SYMS)
    with torch.no_grad():
        q.step_per_channel.copy_(torch.rand(q.step_per_channel.shape, generator=g) * 0.2 + 0.01)
        q.step_per_tensor.copy_(torch.rand(q.step_per_tensor.shape, generator=g) * 0.2 + 0.01)
        q.offset_per_channel.copy_(torch.randint(-2, 3, q.offset_per_channel.shape, generator=g).float())
        q.offset_per_tensor.copy_(torch.randint(-2, 3, q.offset_per_tensor.shape, generator=g).float())
    q.mark_initialized()
    return q


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("sym", SYMS)
def test_weight_quantizer_equals_paper_formula(bits, gran, sym):
    q = _filled_weight_quantizer(6, 6 * 3 * 3 * 3, seed=bits)
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.5
    q.activate(bits, gran, sym)
    bi, si = BITS.index(bits), SYMS.index(sym)
    form = bi * 2 + si
    if gran == "per-channel":
        s = q.step_per_channel[form].detach().view(6, 1, 1, 1)
        z = q.offset_per_channel[bi].detach().view(6, 1, 1, 1)
    else:
        s = q.step_per_tensor[form].detach().view(1, 1, 1, 1)
        z = q.offset_per_tensor[bi].detach().view(1, 1, 1, 1)
    if sym == "sym":
        z = torch.zeros_like(z)
    qn, qp = quant_range(bits, True)
    assert torch.equal(q(w).detach(), reference(w, s, z, qn, qp).expand_as(w))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", SYMS)
@pytest.mark.parametrize("signed", [True, False])
def test_activation_quantizer_equals_paper_formula(bits, sym, signed):
    q = ActQuantizer(32, BITS, SYMS)
    with torch.no_grad():
        q.step.copy_(torch.linspace(0.02, 0.3, q.step.numel()))
        q.offset.copy_(torch.tensor([1.0, -1.0, 2.0, 0.0, 3.0, -2.0, 1.0]))
        q.is_signed.fill_(signed)
    q.mark_initialized()
    q.activate(bits, sym)
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(bits)) * 2
    if not signed:
        x = x.relu()
    bi = BITS.index(bits)
    s = q.step[bi * 2 + SYMS.index(sym)].detach()
    z = q.offset[bi].detach() if sym == "asym" else torch.tensor(0.0)
    qn, qp = quant_range(bits, signed)
    assert torch.equal(q(x).detach(), reference(x, s, z, qn, qp))


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), gran=st.sampled_from(GRANS), sym=st.sampled_from(SYMS),
       seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_at_most_2_pow_b_levels_per_channel(bits, gran, sym, seed, scale):
    q = _filled_weight_quantizer(4, 4 * 200, seed)
    q.activate(bits, gran, sym)
    w = torch.randn(4, 200, generator=torch.Generator().manual_seed(seed)) * scale
    out = q(w).detach()
    for row in out:
        assert len(torch.unique(row)) <= 2**bits
    if gran == "per-tensor":
        assert len(torch.unique(out)) <= 2**bits


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(BITS), sym=st.sampled_from(SYMS), seed=st.integers(0, 10_000))
def test_lp_search_is_no_worse_than_full_range(bits, sym, seed):
    x = torch.randn(3, 500, generator=torch.Generator().manual_seed(seed)) ** 3  # heavy tails
    qn, qp = quant_range(bits, True)
    s, z = lp_search(x, qn, qp, asym=sym == "asym")
    assert torch.all(s > 0) and torch.equal(z, z.round())
    if sym == "sym":
        assert torch.all(z == 0)
        full = x.abs().amax(1) / qp
        err = lambda step: (reference(x, step[:, None], z[:, None], qn, qp) - x).abs().pow(2.4).sum(1)  # noqa: E731
        assert torch.all(err(s) <= err(full) * (1 + 1e-5))


def _hand_grads(x, s, z, qn, qp, g, gscale):
    """d/dx, d/ds, d/dz of s (clip(round(x/s) + z, Qn, Qp) - z) with LSQ's straight-through estimator."""
    v = x / s
    below, above = v < qn - z, v > qp - z
    inside = ~(below | above)
    dx = g * inside
    ds = (g * torch.where(inside, torch.round(v) - v, torch.where(below, qn - z, qp - z))).sum()
    dz = (g * (~inside) * -s).sum()
    return dx, ds * gscale, dz * gscale


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", SYMS)
def test_activation_gradients_match_lsq_by_hand(bits, sym):
    q = ActQuantizer(50, (bits,), ("sym", "asym"))
    s0, z0 = 0.15, 2.0
    with torch.no_grad():
        q.step.fill_(s0)
        q.offset.fill_(z0)
        q.is_signed.fill_(True)
    q.mark_initialized()
    q.activate(bits, sym)
    gen = torch.Generator().manual_seed(bits)
    x = (torch.randn(2, 50, generator=gen) * 0.6).requires_grad_()
    g = torch.randn(2, 50, generator=gen)
    q(x).backward(g)
    qn, qp = quant_range(bits, True)
    z = z0 if sym == "asym" else 0.0
    dx, ds, dz = _hand_grads(x.detach(), torch.tensor(s0), torch.tensor(z), qn, qp, g, 1 / math.sqrt(50 * qp))
    assert torch.allclose(x.grad, dx)
    si = ("sym", "asym").index(sym)
    assert q.step.grad[si].item() == pytest.approx(ds.item(), rel=1e-4, abs=1e-6)
    assert q.step.grad[1 - si].item() == 0.0  # the other form is untouched
    assert q.offset.grad.item() == pytest.approx(dz.item() if sym == "asym" else 0.0, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("gran", GRANS)
def test_weight_gradients_match_lsq_by_hand(gran):
    bits = 3
    q = WeightQuantizer(3, 3 * 40, (bits,), GRANS, SYMS)
    steps = torch.tensor([0.1, 0.2, 0.05])
    with torch.no_grad():
        q.step_per_channel[:] = steps
        q.step_per_tensor.fill_(0.12)
        q.offset_per_channel[:] = torch.tensor([1.0, -1.0, 0.0])
        q.offset_per_tensor.fill_(1.0)
    q.mark_initialized()
    q.activate(bits, gran, "asym")
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(3, 40, generator=gen) * 0.4).requires_grad_()
    g = torch.randn(3, 40, generator=gen)
    q(w).backward(g)
    qn, qp = quant_range(bits, True)
    if gran == "per-channel":
        for c in range(3):
            z = q.offset_per_channel[0, c].detach()
            dx, ds, dz = _hand_grads(w[c].detach(), steps[c], z, qn, qp, g[c], 1 / math.sqrt(40 * qp))
            assert torch.allclose(w.grad[c], dx)
            assert q.step_per_channel.grad[1, c].item() == pytest.approx(ds.item(), rel=1e-4, abs=1e-6)
            assert q.offset_per_channel.grad[0, c].item() == pytest.approx(dz.item(), rel=1e-4, abs=1e-6)
        assert torch.all(q.step_per_tensor.grad == 0)
    else:
        dx, ds, dz = _hand_grads(w.detach(), torch.tensor(0.12), torch.tensor(1.0), qn, qp, g, 1 / math.sqrt(120 * qp))
        assert torch.allclose(w.grad, dx)
        assert q.step_per_tensor.grad[1, 0].item() == pytest.approx(ds.item(), rel=1e-4)
        assert q.offset_per_tensor.grad[0, 0].item() == pytest.approx(dz.item(), rel=1e-4, abs=1e-6)
        assert torch.all(q.step_per_channel.grad == 0)
    assert torch.all(q.step_per_channel.grad[0] == 0) and torch.all(q.step_per_tensor.grad[0] == 0)  # sym rows


def test_input_half_a_step_outside_the_range_gets_no_gradient():
    """LSQ clips before rounding; PyTorch's built-in learnable fake-quant lets this through."""
    q = ActQuantizer(1, (2,), ("sym",))
    with torch.no_grad():
        q.step.fill_(1.0)
        q.is_signed.fill_(False)
    q.mark_initialized()
    q.activate(2, "sym")
    x = torch.tensor([3.3], requires_grad=True)  # Qp = 3; rounds back to 3 but is outside
    q(x).sum().backward()
    assert x.grad.item() == 0.0


@pytest.mark.parametrize("shape,step_shape", [((4, 8, 5, 5), (1,)), ((6, 3, 3, 3), (6, 1, 1, 1))])
def test_compiled_path_function_matches_eager_function(shape, step_shape):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen)
    s = (torch.rand(step_shape, generator=gen) * 0.3 + 0.05).requires_grad_()
    z = torch.randint(-2, 3, step_shape, generator=gen).float().requires_grad_()
    qn, qp, gscale = torch.tensor(-8.0), torch.tensor(7.0), torch.tensor(0.3)
    outs = []
    for fn in (_FakeQuantize, _FakeQuantizeRecompute):
        xi = x.clone().requires_grad_()
        y = fn.apply(xi, s, z, qn, qp, gscale)
        grads = torch.autograd.grad(y, (xi, s, z), torch.ones_like(y))
        outs.append((y.detach(), *grads))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_fake_quantize_of_a_half_precision_input_is_the_eager_fp32_math(dtype):
    """Under torch.compile a bf16/fp16 input is kept as it came for the backward and widened inside;
    the output (fp32), the codes and every gradient are those of the eager path, which widens first."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 6, 5, 5, generator=gen) * 2).to(dtype)
    s = (torch.rand(1, 6, 1, 1, generator=gen) * 0.3 + 0.05).requires_grad_()
    z = torch.randint(0, 3, (1, 6, 1, 1), generator=gen).float().requires_grad_()
    qn, qp = torch.tensor(0.0), torch.tensor(15.0)
    gscale = torch.tensor(0.3)
    outs = []
    for fn in (fake_quantize, torch.compile(fake_quantize, fullgraph=True)):
        xi = x.clone().requires_grad_()
        y = fn(xi, s, z, qn, qp, gscale)
        grads = torch.autograd.grad(y, (xi, s, z), torch.linspace(-1, 1, y.numel()).view_as(y))
        outs.append((y.detach(), *grads))
    assert outs[1][0].dtype == torch.float32 and outs[1][1].dtype == dtype
    assert torch.equal(outs[0][0], outs[1][0])  # the same codes times the same step
    for a, b in zip(outs[0][1:], outs[1][1:]):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-5)


def test_uninitialised_quantizer_refuses_to_run():
    q = WeightQuantizer(2, 8, BITS, GRANS, SYMS)
    with pytest.raises(RuntimeError, match="not initialised"):
        q(torch.randn(2, 4))


def test_unknown_form_is_a_config_error():
    q = WeightQuantizer(2, 8, (4, 8), ("per-channel",), ("sym",))
    with pytest.raises(ConfigError, match=r"3-bit is not a form of this quantizer; it has \[4, 8\]"):
        q.activate(3, "per-channel", "sym")
    with pytest.raises(ConfigError, match="granularity 'per-tensor'"):
        q.activate(4, "per-tensor", "sym")


def test_state_exists_from_construction_and_init_keeps_keys():
    q = WeightQuantizer(4, 36, BITS, GRANS, SYMS)
    before = {k: tuple(v.shape) for k, v in q.state_dict().items()}
    assert set(before) == {"initialized", "step_per_channel", "step_per_tensor", "offset_per_channel",
                           "offset_per_tensor"}
    assert before["step_per_channel"] == (len(BITS) * 2, 4) and before["step_per_tensor"] == (len(BITS) * 2, 1)
    q.init_from_weight(torch.randn(4, 9))
    assert {k: tuple(v.shape) for k, v in q.state_dict().items()} == before


def test_activation_signedness_is_decided_from_data_and_persisted():
    q = ActQuantizer(10, (4,), SYMS)
    q.start_observing()
    q(torch.randn(5, 10))
    q.finish_observing()
    assert q.signed and q.qn.item() == -8
    fresh = ActQuantizer(10, (4,), SYMS)
    fresh.load_state_dict(q.state_dict(), strict=True)
    assert fresh.signed and fresh._ready and fresh.qn.item() == -8 and fresh.qp.item() == 7
    r = ActQuantizer(10, (4,), SYMS)
    r.start_observing()
    r(torch.rand(5, 10))
    r.finish_observing()
    assert not r.signed and (r.qn.item(), r.qp.item()) == (0, 15)
    # a new quantizer is signed until told otherwise, so only loading an *unsigned* state into it
    # shows that the flag travels with the weights
    reloaded = ActQuantizer(10, (4,), SYMS)
    assert reloaded.signed
    reloaded.load_state_dict(r.state_dict(), strict=True)
    assert not reloaded.signed and (reloaded.qn.item(), reloaded.qp.item()) == (0, 15)
    x = torch.rand(3, 10)
    assert torch.equal(reloaded(x), r(x))
