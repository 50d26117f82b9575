"""Quantized convs on oneDNN's int8 kernel (eqtools.quant.integer): the same numbers as the float conv."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eqtools.artifacts import read_artifact
from eqtools.errors import ConfigError
from eqtools.models import get_model
from eqtools.quant import QConv2d, quantize_model
from eqtools.quant import integer as integer_mod
from eqtools.quant.integer import int8_conv_support, int8_forward, int8_kernel_missing, pack_int8, unpack_int8
from eqtools.sample import draw_configs

needs_kernel = pytest.mark.skipif(int8_conv_support() is not None, reason=f"no exact int8 conv: {int8_conv_support()}")

SETTINGS = {"first_layer": {"w_bits": 8, "a_bits": 8}, "last_layer": {"w_bits": 8, "a_bits": 8}}


def _dwnet():
    """Depthwise, grouped (with bias), 1x1 and strided convs; signed and unsigned inputs."""
    torch.manual_seed(0)
    model = get_model("tiny_dwnet", num_classes=10, in_channels=1)
    x = torch.randn(12, 1, 12, 12)
    supernet = quantize_model(model, SETTINGS, x[:1])
    supernet.init_from_data([x])
    return supernet.eval(), x


_NET = _dwnet()


@needs_kernel
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), offset_scale=st.sampled_from([0.0, 3.0, 40.0]))
def test_every_packed_conv_computes_the_fake_quant_conv(seed, offset_scale):
    """Layer by layer, fed the fake-quant model's own inputs, for random subnets of every form and
    zero points far from 0 (the code shifts and their border corrections are all exercised)."""
    supernet, x = _NET
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    saved = {k: v.clone() for k, v in supernet.state_dict().items()}
    try:
        with torch.no_grad():
            for m in supernet.modules():
                for name in ("offset", "offset_per_channel", "offset_per_tensor"):
                    p = getattr(m, name, None)
                    if isinstance(p, torch.nn.Parameter):
                        p.add_(offset_scale * torch.randn(p.shape, generator=gen))
        supernet.apply(supernet.space.random(rng))
        convs = [m for m in supernet.modules() if isinstance(m, QConv2d)]
        inputs: dict = {}
        hooks = [c.register_forward_hook(lambda m, i, o: inputs.__setitem__(m, (i[0], o))) for c in convs]
        with torch.no_grad():
            supernet(x)
        for h in hooks:
            h.remove()
        assert pack_int8(supernet) == len(convs)
        with torch.no_grad():
            for conv in convs:
                given_input, reference = inputs[conv]
                out = int8_forward(conv, given_input)
                scale = float(reference.abs().max()) or 1.0
                assert float((out - reference).abs().max()) <= 1e-5 * scale, (conv.layer_name, conv.groups)
    finally:
        unpack_int8(supernet)
        supernet.load_state_dict(saved)


@needs_kernel
def test_a_packed_model_gives_the_fake_quant_logits_and_unpacking_restores_the_float_path():
    supernet, x = _NET
    config = supernet.space.uniform(4, 4, "per-tensor", "asym", "asym")
    supernet.apply(config)
    with torch.no_grad():
        reference = supernet(x)
        pack_int8(supernet)
        packed = supernet(x)
        unpack_int8(supernet)
        assert all(getattr(m, "_int8", None) is None for m in supernet.modules())
        supernet.apply(supernet.space.uniform(2, 2, "per-channel", "sym", "sym"))
        other = supernet(x)
    assert torch.allclose(packed, reference, rtol=0, atol=1e-4 * float(reference.abs().max()))
    assert not torch.allclose(other, reference)  # another subnet, computed by the float path again


@pytest.mark.skipif(int8_kernel_missing() is not None, reason=f"{int8_kernel_missing()}")
def test_the_probe_refuses_a_kernel_that_saturates(monkeypatch):
    """Without VNNI, u8s8 kernels sum pairs of products in int16 with saturation: the probe must see it."""
    real = integer_mod._qconv

    def saturating(u, packed, layer, ones, zeros):
        return real(u, packed, layer, ones, zeros).clamp(-32768 * 36, 32767 * 36)

    monkeypatch.setattr(integer_mod, "_qconv", saturating)
    reason = int8_conv_support.__wrapped__()
    assert reason is not None and "VNNI" in reason


@needs_kernel
def test_subnet_meter_integer_matches_the_float_meter_and_leaves_nothing_packed(
        tiny_supernet_artifact, digits_spec, digits_splits):
    from eqtools.build import load_supernet
    from eqtools.evaluation import BatchSource, SubnetMeter, calibration_source

    art = read_artifact(tiny_supernet_artifact)
    calib = calibration_source(digits_splits, 96, 48, digits_spec.seed)
    evaluation = BatchSource(digits_splits.val, 64)
    floating = SubnetMeter(load_supernet(art), calib, evaluation)
    integer = SubnetMeter(load_supernet(art), calib, evaluation, integer=True)
    assert integer.integer and not floating.integer and floating.integer_note
    for config in draw_configs(art.space, 6, seed=5):
        a = floating.measure(config, per_image=True)
        b = integer.measure(config, per_image=True)
        assert int((a["correct"] != b["correct"]).sum()) <= 1, config.condition  # float rounding only
        # a value within float rounding of a quantizer's step boundary can land on the other side
        # (as in the compiled float path); most images are untouched and the mean barely moves
        assert float(np.median(abs(b["image_loss"] - a["image_loss"]))) <= 1e-5
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3)
        assert all(getattr(m, "_int8", None) is None for m in integer.supernet.modules())


def test_asking_for_integer_convs_where_they_cannot_run_is_refused(monkeypatch, tiny_supernet_artifact,
                                                                  digits_spec, digits_splits):
    from eqtools.build import load_supernet
    from eqtools.evaluation import BatchSource, SubnetMeter, calibration_source

    monkeypatch.setattr(integer_mod, "int8_conv_support", lambda: "no VNNI here (test)")
    art = read_artifact(tiny_supernet_artifact)
    calib = calibration_source(digits_splits, 48, 48, digits_spec.seed)
    evaluation = BatchSource(digits_splits.val, 64)
    with pytest.raises(ConfigError, match="no VNNI here"):
        SubnetMeter(load_supernet(art), calib, evaluation, integer=True)
    auto = SubnetMeter(load_supernet(art), calib, evaluation, compile=True)  # auto: falls back to float
    assert not auto.integer and "no VNNI here" in auto.integer_note


@needs_kernel
@pytest.mark.slow
def test_compiled_integer_meter_never_recompiles_across_forms(tiny_supernet_artifact, digits_spec, digits_splits):
    from eqtools.build import load_supernet
    from eqtools.evaluation import BatchSource, SubnetMeter, calibration_source, compile_available

    if not compile_available():
        pytest.skip("no C++ compiler for inductor")
    art = read_artifact(tiny_supernet_artifact)
    calib = calibration_source(digits_splits, 96, 48, digits_spec.seed)
    evaluation = BatchSource(digits_splits.val, 64)
    meter = SubnetMeter(load_supernet(art).use_channels_last(), calib, evaluation, compile=True)
    floating = SubnetMeter(load_supernet(art), calib, evaluation)
    assert meter.integer
    for config in draw_configs(art.space, 9, seed=1):  # every form and more
        compiled, eager = meter.measure(config), floating.measure(config)
        assert compiled["loss"] == pytest.approx(eager["loss"], rel=2e-3), config.condition
        assert abs(compiled["top1"] - eager["top1"]) <= 2 / evaluation.images, config.condition
    assert meter.recompiles == 0


@needs_kernel
def test_a_nan_input_stays_nan():
    supernet, x = _NET
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "sym", "asym"))
    bad = x.clone()
    bad[3, 0, 5, 5] = float("nan")
    try:
        pack_int8(supernet)
        with torch.no_grad():
            out = supernet(bad)
    finally:
        unpack_int8(supernet)
    assert torch.isnan(out[3]).all() and not torch.isnan(out[[0, 1, 2, 4]]).any()


@needs_kernel
def test_cli_sample_int8_convs_is_recorded_and_refused_where_it_cannot_run(monkeypatch, tiny_supernet_artifact,
                                                                           tmp_path):
    from typer.testing import CliRunner

    from eqtools.cli.app import app

    runner = CliRunner()
    base = ["sample", "--from", str(tiny_supernet_artifact), "-n", "8", "--subset", "60", "--calib-images", "32",
            "--no-compile", "--no-progress"]
    ok = runner.invoke(app, [*base, "--int8-convs", "--out", str(tmp_path / "int8")])
    assert ok.exit_code == 0, ok.output
    assert read_artifact(tmp_path / "int8").metrics["integer_convs"] is True
    plain = runner.invoke(app, [*base, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0 and read_artifact(tmp_path / "plain").metrics["integer_convs"] is False
    monkeypatch.setattr(integer_mod, "int8_conv_support", lambda: "no VNNI here (test)")
    refused = runner.invoke(app, [*base, "--int8-convs", "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "no VNNI here" in " ".join(refused.output.split())
    assert not (tmp_path / "refused").exists()
