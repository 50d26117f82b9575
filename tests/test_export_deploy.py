"""The deployable integer ONNX form: onnxruntime runs every quantized conv/gemm on integer kernels.

Contracts: the graph onnxruntime optimises keeps no float Conv/Gemm for a quantized layer; the
PyTorch simulation of the deployed roundings equals what onnxruntime computes (so the measured
cost of each rounding is the cost of what ships); the 8-bit requantization grid nests the next
layer's grid (no double rounding); the int32 bias unit is fine enough at low bit-widths;
asymmetric weights fall back to the exact form with one line; the gate refuses a form below its
threshold and writes nothing.

Fidelity on the digits fixture (tiny_cnn trained for 150 steps, 300 held-out digits; 2-bit top-1
is ~30-50 %, so many predictions sit near a tie) is asserted at the levels measured there; the
issue's targets (99.5 % at >= 4 bits, 99 % at 2-3 bits) are the export gate's defaults and are
measured on ResNet-20 in BENCHMARKS.md.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eqtools.artifacts import read_artifact
from eqtools.cli.app import app
from eqtools.errors import ConfigError
from eqtools.export import ExportError, build_deploy_onnx, deploy_blocker, export_subnet, extract_graph, optimized_ops
from eqtools.export._stage import parity
from eqtools.export.backends.onnxruntime import (
    FLOAT_MATMUL_OPS,
    _calibrated,
    plan_encodings,
    plan_from_dict,
    plan_to_dict,
    run_onnx,
    simulate_deploy,
    value_samples,
)


@pytest.fixture(scope="module")
def tiny(tiny_supernet_artifact, digits_splits):
    """The trained digits supernet, 300 held-out digits and 256 training digits for the 8-bit ranges."""
    from eqtools.build import load_supernet

    supernet = load_supernet(read_artifact(tiny_supernet_artifact, "supernet")).eval()
    calibration = [x for x, _ in digits_splits.train.batches(128, limit=2)]
    return supernet, list(digits_splits.val.batches(150)), calibration


def _deploy(supernet, batches, calibration):
    graph = extract_graph(supernet, batches[0][0][:2])
    model, info, plan = build_deploy_onnx(graph, calibration)
    return graph, model.SerializeToString(), info, plan


def _reference(supernet, batches):
    with torch.no_grad():
        return torch.cat([supernet(x) for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("bits,granularity", [(2, "per-tensor"), (4, "per-channel"), (8, "per-tensor")])
def test_every_quantized_layer_runs_on_integer_kernels(tiny, bits, granularity):
    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(bits, bits, granularity, "sym"))
    _, data, info, _ = _deploy(supernet, batches, calibration)
    ops = optimized_ops(data)  # what onnxruntime runs, read back via SessionOptions.optimized_model_filepath
    assert not [op for op in FLOAT_MATMUL_OPS if ops.get(op)], ops
    # the layers' convs, and the identity convs that requantize an 8-bit value to a layer's grid
    assert ops.get("QLinearConv") == 3 + info["identity_convs"] and ops.get("QGemm") == 1, ops
    assert info["identity_convs"] == info["layer_input_requantizations"]
    assert "DequantizeLinear" not in ops, ops  # no float tensor between integer ops (QGemm returns the logits)
    assert ops.get("QLinearAdd") == 1 and ops.get("QLinearGlobalAveragePool") == 1, ops
    assert info["integer_convs"] == 3 and info["float_nodes"] == 0


@pytest.mark.parametrize("bits", [2, 8])
def test_resnet_shortcuts_and_requantizations_run_as_identity_convs(bits, monkeypatch):
    """ResNet-20's option-A shortcuts (a strided slice, then a channel pad) and the 8-bit stem output
    requantized to the first block's grid run as 1x1 ``QLinearConv`` with an identity weight: no
    ``Slice``, ``Pad`` or ``DequantizeLinear -> QuantizeLinear`` is left, and the codes are the same
    as those generic ops compute (the same file built without the rewrites), to the bit."""
    from conftest import random_supernet

    import eqtools.export.backends.onnxruntime as deploy

    supernet, batches = random_supernet("resnet20", 1, 15, n=96)  # odd sizes: 15 -> 8 -> 4 at the shortcuts
    supernet.apply(supernet.space.uniform(bits, bits, "per-channel", "sym", "asym"))
    xs = [x for x, _ in batches]
    graph = extract_graph(supernet, xs[0][:2])
    model, info, plan = build_deploy_onnx(graph, xs[:1])
    data = model.SerializeToString()
    ops = optimized_ops(data)
    assert info["shortcut_convs"] == 2 and info["integer_convs"] == 19, info
    assert ops.get("QLinearConv") == 19 + info["identity_convs"], ops
    assert not {"Slice", "Pad", "DequantizeLinear"} & set(ops), ops
    logits = run_onnx(data, xs)
    assert parity(simulate_deploy(graph, plan, xs), logits)["top1_agreement"] == 1.0

    monkeypatch.setattr(deploy, "IDENTITY_CONV_MAX_CHANNELS", 0)  # the generic Slice/Pad and DQ -> Q copies
    generic, generic_info, _ = build_deploy_onnx(graph, ranges={n: e for n, e in plan.items() if e and not e.exact})
    assert generic_info["identity_convs"] == 0 and {"Slice", "Pad"} <= set(optimized_ops(generic.SerializeToString()))
    assert torch.equal(run_onnx(generic.SerializeToString(), xs), logits)


@pytest.mark.parametrize("w_bits,a_bits,a_symmetry,signed", [(2, 2, "asym", False), (8, 8, "asym", False),
                                                            (8, 7, "asym", False), (8, 4, "sym", True)])
def test_no_int8_weight_can_saturate_an_avx2_kernel(w_bits, a_bits, a_symmetry, signed):
    """onnxruntime's u8 x s8 kernels on x86 CPUs without VNNI add pairs of products in int16 with
    saturation, so an int8 layer is exact only while 2 * x * |w| <= 2^15 - 1 for its largest input code x
    (at x = 255: |w| <= 64). Wider layers travel as uint8 weights around zero point 128, computed exactly
    by the u8 x u8 kernels, but only where int8 would saturate: 8-bit weights on inputs of 7 bits or
    fewer (codes <= 127, 127 * 127 * 2 < 2^15) stay int8. A structural check against the layers' own
    quantizer ranges, so that it fails on a VNNI machine too, where the saturation would not show; then
    every integer op's codes against its exact formula (on an AVX2 CPU that runs the int16 sums).
    ``signed``: every activation quantizer made signed, so that signed 4-bit codes must travel as 0..15
    (shifted by 8, not 128) for the 8-bit weights beside them to stay int8."""
    from conftest import random_supernet
    from onnx import numpy_helper

    bits = (2, 4, 7, 8)
    supernet, batches = random_supernet("resnet20", 1, 16, n=64, space={"w_bits": bits, "a_bits": bits})
    supernet.apply(supernet.space.uniform(w_bits, a_bits, "per-channel", "sym", a_symmetry))
    quantizers = [m for m in supernet.modules() if hasattr(m, "is_signed")]
    assert quantizers
    for m in quantizers if signed else []:
        m.is_signed.fill_(True)
    xs = [x for x, _ in batches]
    graph = extract_graph(supernet, xs[0][:2])
    if signed:
        assert all(n.input_quant.signed for n in graph.layers())
    model, info, _ = build_deploy_onnx(graph, xs[:1])
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = {n.name: n for n in graph.layers()}
    weighted = [n for n in model.graph.node if n.op_type in ("QLinearConv", "QGemm") and n.output[0].endswith(".raw")]
    assert len(weighted) == info["integer_convs"] + info["integer_gemms"] >= 20
    wide = 0
    for node in weighted:
        name = node.output[0].removesuffix(".raw")
        quant = layers[name].input_quant
        # the largest uint8 code the kernel multiplies: the input range's top or the zero point it pads with
        zero = int(inits[node.input[2]])
        assert zero - int(graph.tensors[f"{name}.input.zero_point"].reshape(-1)[0]) == -quant.qmin, name  # from 0
        x_max = max(quant.qmax - quant.qmin, zero)
        codes, w_zero = inits[node.input[3]].astype(np.int32), inits[node.input[5]]
        if inits[node.input[3]].dtype == np.uint8:
            wide += 1
            assert np.all(w_zero == 128), name
            assert 2 * x_max * np.abs(codes - 128).max() > 32767, name  # int8 would have saturated
        else:
            assert np.all(w_zero == 0) and 2 * x_max * np.abs(codes).max() <= 32767, name
    assert wide == info["uint8_weight_layers"] == (len(weighted) if a_bits == 8 == w_bits else 2)  # else the 8-bit stem, head
    _assert_kernels_exact(model, xs)


def _vnni_cpu() -> bool | None:
    """Whether this x86 CPU has int32-summing u8 x s8 dot products (VNNI/AMX), from /proc/cpuinfo; None off x86 Linux."""
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine().lower() not in ("x86_64", "amd64") or not cpuinfo.exists():
        return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def _integer_op_errors(model, xs: list[torch.Tensor]) -> dict[str, tuple[int, int]]:
    """For each QLinearConv, QGemm and QLinearAdd of ``model``: (codes that differ from the op's formula
    evaluated exactly, int64 sums and float64 scales, on the very inputs onnxruntime gave the node; how
    many of those the exact value's nearness to a .5 tie does not explain).

    Checks the kernels, not the network: a saturating int16 pair sum shows as codes far off, away from
    any tie, while onnxruntime's float32 requantization moves a code by 1 only where the exact value sits
    within float32 rounding of a .5 tie (often at low bits, where sums of coarse grids land on ties).
    Whole-network logits cannot tell the two apart on a random ResNet-20, whose top-1 margins are so thin
    that one such code can flip a prediction, and flips or not depending on the CPU's float sums in
    calibration (on a Xeon with AVX512-VNNI and AMX, W8A8 flipped one image with every kernel exact)."""
    from onnx import helper, numpy_helper

    from eqtools.export.backends.onnxruntime import _session

    probe = type(model)()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in node.output if o not in known)
    session = _session(probe.SerializeToString(), threads=2)  # as run_onnx runs the file
    names = [o.name for o in session.get_outputs()]
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    values.update(zip(names, session.run(names, {"input": torch.cat(xs).numpy()})))

    def attr(node, key, default):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)

    def centred(codes, zero, axis_shape):
        zero = np.asarray(zero, np.float64)
        return torch.from_numpy(codes.astype(np.float64) - (zero.reshape(axis_shape) if zero.ndim else zero))

    errors = {}
    for node in model.graph.node:
        if node.op_type not in ("QLinearConv", "QGemm", "QLinearAdd"):
            continue
        arg = [values[i] if i else None for i in node.input] + [None] * 9
        if node.op_type == "QLinearAdd":
            real = (arg[0].astype(np.float64) - arg[2]) * arg[1] + (arg[3].astype(np.float64) - arg[5]) * arg[4]
            out_scale, out_zero = arg[6], arg[7]
        elif node.op_type == "QLinearConv":
            assert set(attr(node, "dilations", [1, 1])) == {1} and attr(node, "auto_pad", b"NOTSET") == b"NOTSET"
            pads = attr(node, "pads", [0, 0, 0, 0])
            x = torch.nn.functional.pad(centred(arg[0], arg[2], ()), (pads[1], pads[3], pads[0], pads[2]))
            acc = torch.nn.functional.conv2d(x, centred(arg[3], arg[5], (-1, 1, 1, 1)),
                                             stride=attr(node, "strides", [1, 1]), groups=attr(node, "group", 1))
            acc = acc.numpy() + (0 if arg[8] is None else arg[8].astype(np.float64).reshape(1, -1, 1, 1))
            real = acc * (np.float64(arg[1]) * np.asarray(arg[4], np.float64).reshape(1, -1, 1, 1))
            out_scale, out_zero = arg[6], arg[7]
        else:
            a = centred(arg[0], arg[2], ())
            b = centred(arg[3], arg[5], (-1, 1) if attr(node, "transB", 0) else (1, -1))
            a = a.T if attr(node, "transA", 0) else a
            acc = (a @ (b.T if attr(node, "transB", 0) else b)).numpy()
            acc = acc + (0 if arg[6] is None else arg[6].astype(np.float64))
            real = acc * np.float64(arg[1]) * np.asarray(arg[4], np.float64) * attr(node, "alpha", 1.0)
            out_scale, out_zero = arg[7], arg[8]
        got = values[node.output[0]].astype(np.float64)
        if out_scale is None:  # a float output: only float32 rounding of the same sum may differ
            wrong = int((np.abs(got - real) > 1e-5 * max(1.0, float(np.abs(real).max()))).sum())
            errors[node.output[0]] = (wrong, wrong)
            continue
        limits = np.iinfo(out_zero.dtype)
        unclipped = real / np.float64(out_scale) + np.float64(out_zero)
        diff = np.abs(got - np.clip(np.round(unclipped), limits.min, limits.max))
        tie = np.abs(unclipped - np.floor(unclipped) - 0.5) < 1e-3  # float32 carries ~7 digits of a code <= 2^8
        errors[node.output[0]] = (int((diff > 0).sum()), int(((diff > 1) | ((diff > 0) & ~tie)).sum()))
    return errors


def _assert_kernels_exact(model, xs: list[torch.Tensor]) -> None:
    """Every integer op computes its formula, but for codes 1 off where the exact value is a float32
    rounding away from a .5 tie."""
    errors = _integer_op_errors(model, xs)
    assert len(errors) >= 20, errors
    wrong = {name: e for name, e in errors.items() if e[1]}
    assert not wrong, wrong


def test_the_u8s8_probe_sees_what_the_cpu_flags_say():
    """onnxruntime's x86 u8 x s8 kernels sum in int32 with VNNI (vpdpbusd) or AMX, and in saturating
    int16 pairs (vpmaddubsw) without: the probe must tell the two apart as the CPU's flags do."""
    from eqtools.export.backends.onnxruntime import u8s8_saturation

    vnni = _vnni_cpu()
    if vnni is None:
        pytest.skip("the VNNI flags are read from an x86 Linux /proc/cpuinfo")
    why = u8s8_saturation()
    assert (why is None) == vnni, why
    if why is not None:
        assert "saturates" in why and "VNNI" in why


def test_a_vnni_file_keeps_every_weight_int8_and_the_integers_of_its_twin():
    """``cpu="vnni"`` stores every weight as int8 and says in its metadata what it needs; its ``cpu="any"``
    twin stores the same integers (uint8 codes minus 128), which :func:`integer_difference` confirms and a
    changed code breaks. Where the kernels saturate, the vnni file itself computes something else, which
    is why the export checks it through the twin there; where they do not, the two files agree to the bit."""
    from conftest import random_supernet
    from onnx import helper, numpy_helper

    from eqtools.export.backends.onnxruntime import REQUIRES_KEY, integer_difference, u8s8_saturation

    supernet, batches = random_supernet("resnet20", 1, 16, n=64)
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym", "asym"))
    xs = [x for x, _ in batches]
    graph = extract_graph(supernet, xs[0][:2])
    vnni, info, plan = build_deploy_onnx(graph, xs[:1], cpu="vnni")
    kept = {n: e for n, e in plan.items() if e is not None and not e.exact}
    twin, twin_info, _ = build_deploy_onnx(graph, ranges=kept, cpu="any")
    weights = [t for t in vnni.graph.initializer if t.name.endswith(".weight.q")]
    assert len(weights) >= 20 and all(numpy_helper.to_array(t).dtype == np.int8 for t in weights)
    assert info["uint8_weight_layers"] == 0 and info["cpu"] == "vnni" and twin_info["uint8_weight_layers"] >= 19
    assert "VNNI" in {p.key: p.value for p in vnni.metadata_props}[REQUIRES_KEY]
    assert REQUIRES_KEY not in {p.key for p in twin.metadata_props}
    assert integer_difference(vnni, twin) is None

    changed = type(twin)()
    changed.CopyFrom(twin)
    name = next(t.name for t in twin.graph.initializer if numpy_helper.to_array(t).dtype == np.uint8
                and t.name.endswith(".weight.q"))
    index = next(i for i, t in enumerate(changed.graph.initializer) if t.name == name)
    codes = numpy_helper.to_array(changed.graph.initializer[index]).copy()
    codes.flat[0] = codes.flat[0] + 1 if codes.flat[0] < 255 else codes.flat[0] - 1
    changed.graph.initializer[index].CopyFrom(numpy_helper.from_array(codes, name))
    assert integer_difference(vnni, changed) == f"constant {name!r} differs"
    moved = type(twin)()
    moved.CopyFrom(twin)
    moved.graph.node[0].CopyFrom(helper.make_node("Identity", ["input"], [moved.graph.node[0].output[0]]))
    assert integer_difference(vnni, moved) == "their nodes differ"

    _assert_kernels_exact(twin, xs)
    direct = run_onnx(vnni.SerializeToString(), xs)
    if u8s8_saturation() is None:
        assert torch.equal(direct, run_onnx(twin.SerializeToString(), xs))
    else:  # 8-bit weights on 8-bit inputs saturate here: the file cannot be checked as it is
        assert parity(simulate_deploy(graph, plan, xs), direct)["top1_agreement"] < 0.99
        assert any(unexplained for _, unexplained in _integer_op_errors(vnni, xs).values())


def test_export_for_vnni_checks_what_it_can_and_records_how(tiny, tmp_path, monkeypatch):
    """The stage writes the vnni file, every weight int8, gated at the usual thresholds: run as it is on a
    CPU with VNNI, through its twin elsewhere, and the metrics say which. Which of the two files the gate
    runs follows the probe (told either answer, on any CPU)."""
    import onnx
    from onnx import numpy_helper

    import eqtools.export._stage as stage
    from eqtools.export.backends.onnxruntime import REQUIRES_KEY, u8s8_saturation

    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym"))
    lines: list[str] = []
    metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration,
                            deploy_cpu="vnni", log=lines.append)
    deploy = metrics["onnx"]["deploy"]
    saturation = u8s8_saturation()
    assert deploy["cpu"] == "vnni" and deploy["uint8_weight_layers"] == 0
    assert metrics["onnx"]["parity"]["top1_agreement"] == 1.0
    if saturation is None:
        assert deploy["checked_as"] == "the file"
    else:
        assert deploy["checked_as"].startswith("its --cpu any twin") and saturation in deploy["checked_as"]
        assert any("checked through its --cpu any twin" in line for line in lines)
    written = onnx.load(tmp_path / "model.onnx")
    assert REQUIRES_KEY in {p.key for p in written.metadata_props}
    assert all(numpy_helper.to_array(t).dtype == np.int8 for t in written.graph.initializer if t.name.endswith(".weight.q"))

    with pytest.raises(ConfigError, match=r"--cpu is 'arm'; allowed: \['auto', 'any', 'vnni'\]"):
        export_subnet(supernet, batches, tmp_path / "arm", formats=("onnx",), calibration=calibration, deploy_cpu="arm")

    real, ran = stage.run_onnx, []
    monkeypatch.setattr(stage, "run_onnx", lambda data, xs, threads=2: ran.append(data) or real(data, xs, threads))
    for claim in (None, "saturates (test)"):  # which file runs follows the probe, whatever this CPU is
        monkeypatch.setattr(stage, "u8s8_saturation", lambda claim=claim: claim)
        ran.clear()
        try:
            export_subnet(supernet, batches, tmp_path / "claim", formats=("onnx",), calibration=calibration,
                          deploy_cpu="vnni")
        except ExportError as exc:  # the vnni file run on a CPU without VNNI may saturate past the gate
            assert claim is None and saturation is not None and "deployed arithmetic" in str(exc)
        ran_vnni = REQUIRES_KEY in {p.key for p in onnx.load_from_string(ran[0]).metadata_props}
        assert ran_vnni == (claim is None)


def test_auto_cpu_writes_the_vnni_file_only_where_this_cpu_computes_it_and_it_differs(tiny, tmp_path, monkeypatch):
    """``--cpu auto`` follows the probe (told either answer, on any CPU): the vnni file, every weight
    int8 and run as it is, where the kernels are exact; the any file, with its uint8 layers, where they
    saturate; and the metrics and the log say what was asked, what was chosen and why."""
    import onnx
    from onnx import numpy_helper

    import eqtools.export._stage as stage
    from eqtools.export.backends.onnxruntime import REQUIRES_KEY, u8s8_saturation

    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym"))
    saturation = u8s8_saturation()
    for claim in (None, "saturates (test)"):
        monkeypatch.setattr(stage, "u8s8_saturation", lambda claim=claim: claim)
        lines: list[str] = []
        out = tmp_path / ("exact" if claim is None else "saturating")
        try:
            metrics = export_subnet(supernet, batches, out, formats=("onnx",), calibration=calibration, log=lines.append)
        except ExportError as exc:  # told "exact" on a CPU without VNNI, the vnni file may saturate past the gate
            assert claim is None and saturation is not None and "deployed arithmetic" in str(exc)
            continue
        deploy = metrics["onnx"]["deploy"]
        chosen = "vnni" if claim is None else "any"
        assert deploy["cpu_requested"] == "auto" and deploy["cpu"] == chosen and deploy["checked_as"] == "the file"
        assert (deploy["uint8_weight_layers"] == 0) == (chosen == "vnni")
        assert claim is None or claim in deploy["cpu_choice"]
        assert any(line.startswith(f"onnx: --cpu auto chose {chosen}: ") for line in lines)
        written = onnx.load(out / "model.onnx")
        assert (REQUIRES_KEY in {p.key for p in written.metadata_props}) == (chosen == "vnni")
        weights = {numpy_helper.to_array(t).dtype for t in written.graph.initializer if t.name.endswith(".weight.q")}
        assert (np.dtype(np.uint8) in weights) == (chosen == "any")


def test_auto_cpu_keeps_the_portable_file_where_vnni_would_change_nothing(monkeypatch):
    """With no 8-bit weight on 8-bit inputs the two files are one: auto writes it for any CPU without
    asking the probe, so a low-bit file never carries a needless VNNI requirement."""
    from conftest import random_supernet

    import eqtools.export._stage as stage
    from eqtools.export.backends.onnxruntime import REQUIRES_KEY

    low = {"w_bits": 4, "a_bits": 4}
    supernet, batches = random_supernet("resnet20", 1, 16, n=64, space={"w_bits": (2, 4), "a_bits": (2, 4),
                                                                       "first_layer": low, "last_layer": low})
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "sym"))
    xs = [x for x, _ in batches]
    graph = extract_graph(supernet, xs[0][:2])
    monkeypatch.setattr(stage, "u8s8_saturation", lambda: pytest.fail("the probe was asked"))
    lines: list[str] = []
    with torch.no_grad():
        reference = torch.cat([supernet(x) for x in xs])
    metrics = stage._deploy_onnx(graph, batches, xs[:1], None, reference, None, "the fake-quant subnet", 21, 0.0, 1.0,
                                 1, lines.append, cpu="auto")
    deploy = metrics["deploy"]
    assert deploy["cpu"] == "any" and deploy["uint8_weight_layers"] == 0
    assert "no layer has 8-bit weights on 8-bit inputs" in deploy["cpu_choice"]
    assert REQUIRES_KEY not in {p.key for p in __import__("onnx").load_from_string(metrics["_data"]).metadata_props}


def test_wide_feature_maps_keep_the_generic_copies(monkeypatch):
    """A dense identity conv costs C multiply-adds per value: past the channel cap the generic ops stay."""
    from conftest import random_supernet

    import eqtools.export.backends.onnxruntime as deploy

    supernet, batches = random_supernet("resnet20", 1, 16, n=64)
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym", "asym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    monkeypatch.setattr(deploy, "IDENTITY_CONV_MAX_CHANNELS", 8)  # below ResNet-20's 16 channels
    monkeypatch.setattr(deploy, "SHARED_GRID_MAX_CLIPPED", -1.0)  # the stem output on its own grid: a copy is left
    model, info, _ = build_deploy_onnx(graph, [batches[0][0]])
    assert info["identity_convs"] == info["shortcut_convs"] == 0 and info["layer_input_requantizations"] >= 1
    assert {"Slice", "Pad", "DequantizeLinear", "QuantizeLinear"} <= set(optimized_ops(model.SerializeToString()))


@pytest.mark.parametrize("slices,strides", [
    ([[2, None, None, 2], [3, None, None, 2]], [2, 2]),
    ([[3, 0, 15, 3]], [1, 3]),
    ([[2, 1, None, 2]], None),        # starts at 1: not a subsampling from the first row
    ([[2, None, 12, 2]], None),       # stops early
    ([[1, None, None, 2]], None),     # channels
])
def test_only_plain_spatial_subsamplings_become_strided_convs(slices, strides):
    from eqtools.export.backends.onnxruntime import IntegerGraph
    from eqtools.export.runtime import Graph, Node

    builder = IntegerGraph(Graph([], {}, "input", [None, 16, 15, 15]), {}, ValueError, 13)
    assert builder.subsample(Node("x.sub", "slice", ["input"], {"slices": slices})) == strides


@pytest.mark.parametrize("pad,pads", [
    ([0, 0, 0, 0, 8, 8], (8, 8)),
    ([0, 0, 0, 0, 0, 4], (0, 4)),
    ([1, 1, 0, 0, 8, 8], None),       # pads the width too
    ([0, 0, 0, 0, -2, 0], None),      # crops channels
    ([0, 0, 8, 8], None),             # no channel entry
])
def test_only_zero_pads_of_the_channels_fold_into_the_shortcut_conv(pad, pads):
    from eqtools.export.backends.onnxruntime import IntegerGraph
    from eqtools.export.runtime import Node

    assert IntegerGraph.channel_pad(Node("p", "pad", ["x"], {"pad": pad, "value": 0.0})) == pads
    assert IntegerGraph.channel_pad(Node("p", "pad", ["x"], {"pad": pad, "value": 1.0})) is None


def test_a_zero_pad_after_a_raised_clamp_records_its_zero_code(digits_splits):
    """A clamp with a positive minimum narrows a value's codes to above the zero code; a zero pad after
    it writes the zero code, so the padded value's recorded range must hold it again (a later range
    ``Clip`` built from that record would otherwise lift the padding). Checked on the builder's record,
    and the file still computes what the PyTorch simulation of its arithmetic computes."""
    import torch.nn.functional as F

    from eqtools.export.backends.onnxruntime import IntegerGraph
    from eqtools.quant import quantize_model

    class RaisedClampPad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 10)

        def forward(self, x):
            y = F.pad(torch.clamp(self.conv1(x), min=2.0), (0, 0, 0, 0, 2, 2))
            return self.fc(F.relu(self.conv2(y)).mean((2, 3)))

    torch.manual_seed(0)
    x = digits_splits.val.images[:128].float() / 16
    supernet = quantize_model(RaisedClampPad(), {"w_bits": (2,), "a_bits": (2,)}, x[:1])
    supernet.init_from_data([x])
    supernet.apply(supernet.space.uniform(2, 2, "per-tensor", "sym", "asym"))
    supernet.eval()
    graph = extract_graph(supernet, x[:2])
    model, _, plan = build_deploy_onnx(graph, [x])
    builder = IntegerGraph(graph, plan, ValueError, 13)  # the same build, step by step, to read its record
    for node in graph.nodes:
        builder.emit(node)
    clamp = next(n.name for n in graph.nodes if n.op == "clamp")
    pad = next(n.name for n in graph.nodes if n.op == "pad")
    raised, padded = builder.enc[clamp], builder.enc[pad]
    assert raised.lo > raised.zero  # the clamp's minimum lies above the zero code on this grid
    assert padded.lo <= padded.zero <= padded.hi
    assert torch.allclose(simulate_deploy(graph, plan, [x]), run_onnx(model.SerializeToString(), [x]), atol=1e-4)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
def test_deploy_agreement_and_simulated_roundings(tiny, bits, granularity):
    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(bits, bits, granularity, "sym"))
    reference, labels = _reference(supernet, batches)
    graph, data, _, plan = _deploy(supernet, batches, calibration)
    xs = [x for x, _ in batches]
    logits = run_onnx(data, xs)
    # the PyTorch simulation of the deployed arithmetic is what onnxruntime computes, image for image
    assert parity(simulate_deploy(graph, plan, xs), logits)["top1_agreement"] == 1.0
    free = parity(reference, logits, labels)
    # measured on this fixture (trained over the 8 forms), whose weights follow the CPU's float sums: on an
    # AVX2 EPYC 98.0 % at 2 bits, 99.0-99.3 % at 3, 99.3-99.7 % at 4, 99.7 % at 8 per-channel but 98.7 % at 8
    # per-tensor (4 of 300 digits; accuracy unchanged), which the export gate's 99.5 % refuses; on a Xeon with
    # AVX512-VNNI and AMX 97.7 / 98.0 / 98.7 / 99.7 % per-channel at 2 / 3 / 4 / 8 bits and 99.7-100 %
    # per-tensor. These bounds hold the fixture's levels on both, the gate holds the targets
    assert free["top1_agreement"] >= {2: 0.97, 3: 0.975, 4: 0.98, 8: 0.985}[bits], free
    assert abs(free["accuracy_change"]) <= {2: 0.01, 3: 0.01, 4: 0.007, 8: 0.004}[bits], free
    # without any deploy-time rounding the simulation is the fake-quant model itself
    exact = simulate_deploy(graph, plan, xs, requantize=False, int32_bias=False)
    assert parity(reference, exact)["top1_agreement"] == 1.0


def test_int32_bias_unit_is_fine_at_two_bits(tiny, monkeypatch):
    """Codes scaled by m (|code * m| <= 64) make the int32 bias unit s_x * s_w / m fine enough.

    With m = 1 the int32 biases alone moved top-1 on 9-11 % of the digits at 2 bits.
    """
    import eqtools.export.backends.onnxruntime as deploy

    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(2, 2, "per-channel", "sym"))
    reference, labels = _reference(supernet, batches)
    graph, data, info, plan = _deploy(supernet, batches, calibration)
    assert info["weight_code_multiplier_max"] >= 32
    xs = [x for x, _ in batches]
    bias_only = parity(reference, simulate_deploy(graph, plan, xs, requantize=False), labels)
    assert bias_only["top1_agreement"] >= 0.975, bias_only
    logits = run_onnx(data, xs)
    assert parity(reference, logits)["top1_agreement"] >= 0.975
    codes = graph.tensors["conv2.weight.codes"]
    assert deploy.code_multiplier(codes) * int(codes.abs().max()) <= 64


def test_8bit_grid_nests_the_next_layers_grid():
    """Rounding to the 8-bit step s_b / k (k odd) and then to s_b equals rounding straight to s_b."""
    values = torch.linspace(-1.0, 7.0, 200001)
    for align in (0.9, 0.37, 0.05):
        enc = _calibrated(values, align)
        k = round(align / enc.scale)
        assert k % 2 == 1 and abs(align / k - enc.scale) <= 1e-6 * enc.scale
        assert enc.scale * 255 >= 8.0 * (1 - 1e-6)  # the range is covered
        eight = torch.clamp(torch.round(values / enc.scale) + enc.zero, 0, 255) - enc.zero
        twice = torch.round(eight * np.float32(enc.scale) / np.float32(align))
        once = torch.round(values / align)
        inside = (values > -enc.zero * enc.scale) & (values < (255 - enc.zero) * enc.scale)
        tie = ((values / align).frac().abs() - 0.5).abs() < 1e-4  # exactly halfway: either rounding is right
        assert torch.equal(twice[inside & ~tie], once[inside & ~tie])
    # a grid finer than 8 bits can cover (0.011 * 255 < 8): no odd k exists, the range decides the step
    assert _calibrated(values, 0.011).scale == pytest.approx(8.0 / 255)


def test_a_value_shares_its_8bit_readers_grid_only_where_that_clips_next_to_nothing():
    """A sum read by an 8-bit conv and a shortcut takes the conv's encoding where the conv's range clips at
    most SHARED_GRID_MAX_CLIPPED of it and its step is no coarser; narrower or coarser readers do not."""
    from eqtools.export.backends.onnxruntime import SHARED_GRID_MAX_CLIPPED, Encoding, _shared

    values = torch.cat([torch.linspace(0.0, 10.0, 100000), torch.full((int(100000 * SHARED_GRID_MAX_CLIPPED / 2),), 15.0)])
    calibrated = _calibrated(values, None)
    reader = Encoding(10.0 / 255, 0)  # covers [0, 10]: only the outliers at 15 are clipped
    shared = _shared(values, reader, calibrated)
    assert shared == Encoding(reader.scale, 0, 0, 255, exact=False)  # an 8-bit requantization for the shortcut
    many = torch.cat([values, torch.full((int(100000 * SHARED_GRID_MAX_CLIPPED),), 15.0)])
    assert _shared(many, reader, _calibrated(many, None)) is None  # past the bound: the calibrated grid
    assert _shared(values, Encoding(10.0 / 15, 0, 0, 15), calibrated) is None  # a 4-bit reader: its step is coarse
    coarse = Encoding(20.0 / 255, 0)  # covers [0, 20], every value, but at a step coarser than the calibrated one
    assert _shared(values, coarse, calibrated) is None


@pytest.mark.parametrize("bits", [8, 2])
def test_shared_grids_drop_the_second_sum_and_the_file_computes_the_simulated_arithmetic(bits, monkeypatch):
    """With sharing at its default bound, an 8-bit ResNet-20 computes each residual sum once
    (no second QLinearAdd, no stem requantization), and the file still computes what simulate_deploy
    simulates, also rebuilt from the plan calibrate keeps (through JSON); below 8 bits nothing is shared."""
    from conftest import random_supernet

    import eqtools.export.backends.onnxruntime as deploy

    supernet, batches = random_supernet("resnet20", 1, 16, n=64)
    supernet.apply(supernet.space.uniform(bits, bits, "per-channel", "sym", "asym"))
    xs = [x for x, _ in batches]
    graph = extract_graph(supernet, xs[0][:2])
    adds = sum(node.op == "add" for node in graph.nodes)

    def build(bound: float):
        monkeypatch.setattr(deploy, "SHARED_GRID_MAX_CLIPPED", bound)
        model, _, plan = build_deploy_onnx(graph, xs[:1])
        return model, plan, optimized_ops(model.SerializeToString())

    default = deploy.SHARED_GRID_MAX_CLIPPED
    _, separate_plan, separate_ops = build(-1.0)
    model, plan, ops = build(default)  # this fixture's conv ranges clip none of the ReLU'd sums
    grids = [deploy._input_encoding(node, graph.tensors) for node in graph.layers() if node.input_quant]
    shared = [n for n, e in plan.items() if e is not None and not e.exact and any(e == replace(g, exact=False) for g in grids)]
    if bits == 8:  # the stem output and the 8 sums a next block reads; the last sum feeds the pooling
        assert len(shared) == adds and separate_ops["QLinearAdd"] > adds and ops["QLinearAdd"] == adds, ops
        assert ops["QLinearConv"] == separate_ops["QLinearConv"] - 1  # no identity conv to requantize the stem
    else:
        assert plan == separate_plan and ops == separate_ops
    logits = run_onnx(model.SerializeToString(), xs)
    assert parity(simulate_deploy(graph, plan, xs), logits)["top1_agreement"] == 1.0
    kept_plan = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))  # as calibrate keeps it
    kept, _, _ = build_deploy_onnx(graph, ranges=kept_plan)
    assert torch.equal(run_onnx(kept.SerializeToString(), xs), logits)


def test_a_shared_grid_with_a_nonzero_zero_point_keeps_the_relu_as_a_clip():
    """A reader whose 8-bit range starts below zero (zero code 6): the sum shares its grid, but
    QLinearAdd saturates at code 0, not at the zero code, so the block's ReLU stays as a Clip to
    [6, 255] (one node, where the separate grid had a second QLinearAdd) and the file still computes
    the simulated arithmetic."""
    from conftest import random_supernet
    from onnx import numpy_helper


    supernet, batches = random_supernet("resnet20", 1, 16, n=64)
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym", "asym"))
    xs = [x for x, _ in batches]
    graph = extract_graph(supernet, xs[0][:2])
    sums = {n.name for n in graph.nodes if n.op == "add"}
    consumers = graph.consumers()
    by_name = {n.name: n for n in graph.nodes}
    readers = set()
    for node in graph.layers():  # the first conv of a block reads ReLU(sum) of the block before
        relu = by_name.get(node.inputs[0])
        if relu is not None and relu.op == "relu" and relu.inputs[0] in sums and node.input_quant:
            graph.tensors[f"{node.name}.input.zero_point"] = torch.full_like(
                graph.tensors[f"{node.name}.input.zero_point"], 6)
            readers.add(node.name)
    assert len(readers) == 8
    model, _, plan = build_deploy_onnx(graph, xs[:1])
    shared = [n for n in sums if plan[n] is not None and plan[n].zero == 6]
    assert len(shared) == len(readers), {n: plan[n] for n in sums}  # this fixture's ranges clip none of them
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    lows = {int(inits[c.input[1]]) for c in clips}
    assert len(clips) == len(shared) and lows == {6}, [c.output[0] for c in clips]
    assert all(any(u.op == "relu" for u in consumers[n]) for n in shared)
    ops = optimized_ops(model.SerializeToString())
    assert ops["QLinearAdd"] == len(sums), ops  # each sum computed once
    logits = run_onnx(model.SerializeToString(), xs)
    assert parity(simulate_deploy(graph, plan, xs), logits)["top1_agreement"] == 1.0


def test_asymmetric_weights_fall_back_to_the_exact_form(tiny, tmp_path):
    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "asym"))
    lines: list[str] = []
    metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration, log=lines.append)
    why = [line for line in lines if "exact" in line and "asymmetric weights" in line]
    assert len(why) == 1, lines
    assert metrics["onnx"]["form"] == "exact" and "asymmetric weights" in metrics["onnx"]["deploy_fallback"]
    assert metrics["onnx"]["teacher_forced"]["max_layer_error"] <= 1e-4  # the exact form, with its checks


def test_symmetric_weights_with_asymmetric_activations_deploy(tiny, tmp_path):
    """Weight-sym / activation-asym (the eight-forms vocabulary), set by hand on the quantizers."""
    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "sym"))
    for layer in supernet.model.modules():
        if hasattr(layer, "act_quant") and hasattr(layer, "weight_quant"):
            bits, _ = layer.act_quant._active
            layer.act_quant.activate(bits, "asym")
    graph = extract_graph(supernet, batches[0][0][:2])
    assert any(int(graph.tensors[f"{n.name}.input.zero_point"]) != 0 for n in graph.layers()
               if n.input_quant)  # at least one activation really has a non-zero zero point
    assert deploy_blocker(graph) is None
    metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration,
                            deploy_agreement_min=0.99)
    assert metrics["onnx"]["form"] == "deploy" and metrics["onnx"]["deploy_fallback"] is None
    assert metrics["onnx"]["parity"]["top1_agreement"] >= 0.99
    assert not [op for op in FLOAT_MATMUL_OPS if metrics["onnx"]["deploy"]["optimized_ops"].get(op)]


def test_deploy_gate_refuses_and_writes_nothing(tiny, tmp_path, monkeypatch):
    import eqtools.export._stage as stage

    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym"))
    real = stage.run_onnx
    monkeypatch.setattr(stage, "run_onnx", lambda data, xs, threads=2: real(data, xs, threads).flip(1))
    with pytest.raises(ExportError, match=r"deployed arithmetic.*below the required 99\.50%.*--onnx-form exact"):
        export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration)
    assert not (tmp_path / "model.onnx").exists()


def test_deploy_gate_catches_a_graph_that_differs_from_the_deployed_arithmetic(tiny, tmp_path, monkeypatch):
    """The agreement gate compares onnxruntime with an independent PyTorch simulation: a graph whose int32
    biases are built at another unit than the simulation's (m = 1 in the graph only) is refused."""
    import eqtools.export.backends.onnxruntime as deploy

    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(2, 2, "per-channel", "sym"))
    real = deploy.code_multiplier
    # the builder hands numpy codes, the simulation torch tensors: break only the graph
    monkeypatch.setattr(deploy, "code_multiplier", lambda codes: 1 if isinstance(codes, np.ndarray) else real(codes))
    with pytest.raises(ExportError, match=r"agrees with the deployed arithmetic.*bug in eqtools"):
        export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration)
    assert not (tmp_path / "model.onnx").exists()


def _lose(logits, labels, k):
    """``logits`` with the first ``k`` correctly predicted images made wrong (top-1 moved to another class)."""
    out = logits.clone()
    right = (out.argmax(1) == labels).nonzero().flatten()[:k]
    out[right, labels[right]] = out[right].min(1).values - 1.0
    return out


@pytest.mark.parametrize("lost,refused", [(0, False), (4, False), (45, True)])
def test_deploy_accuracy_gate_refuses_a_costly_arithmetic(tiny, tmp_path, monkeypatch, lost, refused):
    """What the deployed arithmetic costs is gated on accuracy against the fake-quant subnet, beyond noise:
    a drop counts only where it exceeds the allowed 0.3 points by twice its paired standard error
    (4 of 300 images lost: 1.33 points, se 0.67, kept; 45 lost: 15 points, se 2.2, refused)."""
    import eqtools.export._stage as stage

    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym"))
    labels = torch.cat([y for _, y in batches])
    real_run, real_sim = stage.run_onnx, stage.simulate_deploy
    # file and simulation agree with each other, and both lose `lost` right predictions of the fake-quant subnet
    monkeypatch.setattr(stage, "run_onnx", lambda data, xs, threads=2: _lose(real_run(data, xs, threads), labels, lost))
    monkeypatch.setattr(stage, "simulate_deploy",
                        lambda *a, **k: _lose(real_sim(*a, **k), labels, lost) if len(k) == 0 else real_sim(*a, **k))
    if refused:
        with pytest.raises(ExportError, match=r"points below the fake-quant subnet's.*standard error"
                                              r".*--max-deploy-accuracy-drop"):
            export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration)
        assert not (tmp_path / "model.onnx").exists()
        metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration,
                                deploy_accuracy_drop_max=1.0)
        assert metrics["onnx"]["accuracy_drop_max"] == 1.0
    else:
        metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration)
        assert metrics["onnx"]["accuracy_drop_max"] == 0.003
    assert (tmp_path / "model.onnx").exists()
    assert metrics["onnx"]["parity"]["top1_agreement"] == 1.0  # against the (equally changed) deployed arithmetic


def test_cli_deploy_is_the_default_and_exact_stays_available(tiny_supernet_artifact, tmp_path):
    from test_export import _calibrated

    art = read_artifact(tiny_supernet_artifact, "supernet")
    from eqtools.build import load_supernet

    config = load_supernet(art).space.uniform(8, 8, "per-channel", "sym")
    calibrated = _calibrated(tmp_path, tiny_supernet_artifact, config)
    result = CliRunner().invoke(app, ["export", "--from", str(calibrated), "--format", "onnx", "--out",
                                      str(tmp_path / "deploy")])
    assert result.exit_code == 0, result.output
    assert "deploy form" in result.stdout and "QLinearConv" in result.stdout
    out = read_artifact(tmp_path / "deploy", "export")
    assert out.extra["onnx_form"] == "deploy" and out.metrics["onnx"]["form"] == "deploy"
    deploy = out.metrics["onnx"]["deploy"]
    assert deploy["calibration"]["split"] == "train" and set(deploy["roundings"]) >= {"int32_bias", "requantize_8bit"}
    assert out.metrics["onnx"]["agreement_min"] == 0.995
    from eqtools.export.backends.onnxruntime import u8s8_saturation

    assert deploy["cpu_requested"] == "auto" and deploy["cpu"] == ("vnni" if u8s8_saturation() is None else "any")
    assert ("onnx  for x86 CPUs with VNNI only" if deploy["cpu"] == "vnni" else "onnx  for any x86 CPU (--cpu auto)") \
        in result.stdout
    assert out.path.name == "deploy"

    result = CliRunner().invoke(app, ["export", "--from", str(calibrated), "--format", "onnx", "--onnx-form", "exact",
                                      "--out", str(tmp_path / "exact")])
    assert result.exit_code == 0, result.output
    exact = read_artifact(tmp_path / "exact", "export")
    assert exact.extra["onnx_form"] == "exact" and exact.metrics["onnx"]["teacher_forced"]["max_layer_error"] <= 1e-4
    assert exact.metrics["onnx"]["parity"]["top1_agreement"] >= 0.999

    bad = CliRunner().invoke(app, ["export", "--from", str(calibrated), "--onnx-form", "fast"])
    assert bad.exit_code == 2 and "allowed" in bad.output
    bad = CliRunner().invoke(app, ["export", "--from", str(calibrated), "--cpu", "arm"])
    assert bad.exit_code == 2 and "--cpu is 'arm'; allowed: auto, any, vnni" in " ".join(bad.output.split())
    assert "Traceback" not in bad.output


def test_plan_produces_values_in_the_reader_encoding(tiny):
    """conv1 -> relu -> conv2 is rounded once, as the fake-quant model rounds it; the residual path is 8-bit."""
    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(3, 3, "per-channel", "sym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    plan = plan_encodings(graph, value_samples(graph, calibration))
    assert plan["conv1"].exact and plan["conv1"].hi - plan["conv1"].lo == 7  # conv2's 3-bit unsigned input
    assert not plan["conv3"].exact and not plan["add"].exact  # a conv feeding the residual add, and the sum
    assert plan["fc"] is None  # the logits leave QGemm in float


@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
@pytest.mark.parametrize("symmetry", ["sym", "asym"])
def test_quantizers_hand_out_their_integer_view(tiny, granularity, symmetry):
    """``int_view`` is what export stores: codes that reproduce the fake-quant weight, the active range."""
    supernet, _, _ = tiny
    supernet.apply(supernet.space.uniform(3, 3, granularity, symmetry, symmetry))
    layer = supernet.model.conv2
    w = layer.weight_quant.int_view(layer.weight)
    view = (-1, 1, 1, 1)
    with torch.no_grad():
        assert torch.equal((w.codes.float() - w.zero_point.float().view(view)) * w.scale.view(view),
                           layer.weight_quant(layer.weight))
    assert (w.bits, w.qmin, w.qmax, w.granularity) == (3, -4, 3, granularity)
    assert w.scale.numel() == (16 if granularity == "per-channel" else 1)
    assert w.symmetric == (symmetry == "sym" or not bool(w.zero_point.any()))
    a = layer.act_quant.int_view()
    assert a.codes is None and a.bits == 3 and (a.qmin, a.qmax) == ((-4, 3) if a.signed else (0, 7))
    assert a.symmetry == symmetry and (symmetry == "asym" or int(a.zero_point) == 0)


def test_linear_on_a_sequence_runs_on_qgemm(digits_splits, tmp_path):
    """A linear layer on a rank-4 input runs as QGemm on its codes viewed as rows, not as a float MatMul."""
    from eqtools.quant import quantize_model

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.mix = torch.nn.Linear(8, 8)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):
            t = torch.relu(self.conv(x))  # [B, 8, 8, 8]; the linear mixes the last dimension
            return self.fc(self.mix(t).mean((2, 3)))

    x = torch.cat([x for x, _ in digits_splits.val.batches(150)])[:64]
    supernet = quantize_model(Tokens(), {"w_bits": (4, 8), "a_bits": (4, 8)}, x[:1])
    supernet.init_from_data([x])
    supernet.eval().apply(supernet.space.uniform(4, 4, "per-channel", "sym"))
    assert deploy_blocker(extract_graph(supernet, x[:2])) is None
    metrics = export_subnet(supernet, [(x, None)], tmp_path, formats=("onnx",))
    onnx_metrics = metrics["onnx"]
    assert onnx_metrics["form"] == "deploy" and onnx_metrics["deploy_fallback"] is None
    deploy = onnx_metrics["deploy"]
    assert deploy["integer_gemms"] == 2 and deploy["integer_convs"] == 1
    ops = deploy["optimized_ops"]
    assert ops.get("QGemm") == 2 and not any(ops.get(op) for op in FLOAT_MATMUL_OPS), ops


def test_roundings_are_charged_against_the_exact_fake_quant_subnet(tiny, tmp_path):
    """The manifest measures the file and each rounding against the fake-quant subnet computed exactly
    (float64, no deploy rounding), and reports how far the float32 fake-quant model itself is from it."""
    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(2, 2, "per-channel", "sym"))
    reference, labels = _reference(supernet, batches)
    onnx = export_subnet(supernet, batches, tmp_path, formats=("onnx",), calibration=calibration,
                         deploy_agreement_min=0.0, deploy_accuracy_drop_max=1.0)["onnx"]
    graph = extract_graph(supernet, batches[0][0][:2])
    _, _, plan = build_deploy_onnx(graph, calibration)
    xs = [x for x, _ in batches]
    exact = simulate_deploy(graph, plan, xs, requantize=False, int32_bias=False)
    logits = run_onnx((tmp_path / "model.onnx").read_bytes(), xs)
    vs_exact = onnx["parity_vs_exact_fake_quant"]
    assert vs_exact == parity(exact, logits, labels)
    roundings = onnx["deploy"]["roundings"]
    # onnxruntime computes the simulated deployed arithmetic, so both are equally far from the exact subnet
    assert vs_exact["top1_agreement"] == roundings["both"]["top1_agreement"]
    assert roundings["both"] == parity(exact, simulate_deploy(graph, plan, xs), labels)
    assert roundings["float32_fake_quant"]["top1_agreement"] == parity(exact, reference)["top1_agreement"]


# ------------------------------------------------------------------------------------------ what ships, measured at calibrate
def test_calibrate_measures_the_file_export_ships(tiny_supernet_artifact, digits_splits, tmp_path, monkeypatch):
    """calibrate records the accuracy of the integer graph and keeps its 8-bit ranges; export builds its file
    from them, so the exported model.onnx scores exactly the recorded top-1 on the calibrate split."""
    import eqtools.export._measure as measure
    from eqtools.calibrate import calibrate_artifact
    from eqtools.export import export_artifact

    real = measure.deploy_calibration
    # ranges from 128 train images at calibrate, so that export's own default (512) would build another file
    monkeypatch.setattr(measure, "deploy_calibration", lambda splits, seed: real(splits, seed, images=128))
    art = read_artifact(tiny_supernet_artifact, "supernet")
    config = art.space.uniform(3, 3, "per-channel", "sym")
    cal = calibrate_artifact(art, config, images=200, split="test", out=tmp_path / "cal")
    monkeypatch.setattr(measure, "deploy_calibration", real)
    deployed = cal.metrics["deployed"]
    assert "deploy_plan.json" in cal.manifest["files"]
    assert deployed["measured"] and deployed["images"] == len(digits_splits.test)
    assert deployed["calibration"] == {"split": "train", "images": 128}
    assert deployed["opset"] == 21 and deployed["export_form"] == "deploy"  # export's default opset
    assert deployed["top1_fake_quant"] == cal.metrics["top1"]  # paired: the same images as the fake-quant top-1

    kept = export_artifact(cal, formats=("onnx",), out=tmp_path / "kept", check_images=100)
    assert kept.metrics["onnx"]["deploy"]["calibration"] == {"source": "calibrated artifact", "split": "train",
                                                              "images": 128}
    test = list(digits_splits.test.batches(256))
    logits = run_onnx((kept.path / "model.onnx").read_bytes(), [x for x, _ in test])
    assert int((logits.argmax(1) == torch.cat([y for _, y in test])).sum()) / len(digits_splits.test) == deployed["top1"]

    here = export_artifact(cal, formats=("onnx",), out=tmp_path / "here", check_images=100,
                           deploy_calibration_images=512)
    assert here.metrics["onnx"]["deploy"]["calibration"]["source"] == "export"
    assert (here.path / "model.onnx").read_bytes() != (kept.path / "model.onnx").read_bytes()


def test_calibrate_skips_the_deployed_measure_for_asymmetric_weights(tiny_supernet_artifact, tmp_path):
    from eqtools.calibrate import calibrate_artifact

    art = read_artifact(tiny_supernet_artifact, "supernet")
    cal = calibrate_artifact(art, art.space.uniform(4, 4, "per-channel", "asym"), images=64, split="val",
                             out=tmp_path / "cal")
    deployed = cal.metrics["deployed"]
    assert not deployed["measured"] and "asymmetric weights" in deployed["blocker"]
    assert deployed["export_form"] == "exact"
    assert "deploy_plan.json" not in cal.manifest["files"]


def test_kept_plan_that_does_not_fit_the_graph_is_refused(tiny):
    supernet, batches, calibration = tiny
    supernet.apply(supernet.space.uniform(3, 3, "per-channel", "sym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    plan = plan_encodings(graph, value_samples(graph, calibration))
    ranges = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert plan_encodings(graph, ranges=ranges) == plan  # JSON keeps float32 scales exactly
    missing = {k: v for k, v in ranges.items() if k != "add"}
    with pytest.raises(ValueError, match="'add'"):
        plan_encodings(graph, ranges=missing)
    with pytest.raises(ValueError, match="'conv1'"):  # conv1 is rounded exactly, in conv2's own encoding
        plan_encodings(graph, ranges={**ranges, "conv1": ranges["add"]})
    with pytest.raises(ExportError, match="another subnet"):
        build_deploy_onnx(graph, ranges=missing, error=ExportError)
    for bad, why in [({"format": "other"}, "version-1"),
                     ({**plan_to_dict(plan), "requantizations": {"add": {"scale": 0.1}}}, "'add'"),
                     ({**plan_to_dict(plan), "requantizations": {"add": {"scale": -1, "zero": 0, "lo": 0, "hi": 9}}},
                      "positive"),
                     ({**plan_to_dict(plan), "requantizations": ["add"]}, "must map"),
                     ({**plan_to_dict(plan), "requantizations": {"add": {"scale": 0.1, "zero": float("inf"), "lo": 0,
                                                                         "hi": 9}}}, "'add'")]:
        with pytest.raises(ValueError, match=why):
            plan_from_dict(bad)


@settings(max_examples=50, deadline=None)
@given(scale=st.floats(2.0**-27, 1024.0, allow_nan=False, width=32), zero=st.integers(0, 255),
       bounds=st.tuples(st.integers(0, 255), st.integers(0, 255)).map(sorted))
def test_plan_document_round_trips_exactly(scale, zero, bounds):
    from eqtools.export.backends.onnxruntime import Encoding, plan_from_dict, plan_to_dict

    plan = {"v": Encoding(scale, zero, bounds[0], bounds[1], exact=False), "w": None,
            "x": Encoding(0.5, 3, exact=True)}
    back = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert back == {"v": plan["v"]}  # exact encodings are the layers' own quantizers: re-read, not stored


def test_cli_calibrate_reports_the_deployed_top1_and_can_skip_it(tiny_supernet_artifact, tmp_path):
    args = ["calibrate", "--from", str(tiny_supernet_artifact), "--w-bits", "4", "--granularity", "per-channel",
            "--symmetry", "sym", "--images", "64", "--split", "val"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "as the integer ONNX export runs it" in result.stdout
    exported = CliRunner().invoke(app, ["export", "--from", str(tmp_path / "a"), "--format", "onnx", "--check-images",
                                        "100", "--out", str(tmp_path / "a-export")])
    assert exported.exit_code == 0, exported.output
    assert "8-bit ranges kept by `eqtools calibrate`" in exported.stdout
    result = CliRunner().invoke(app, [*args, "--no-deployed", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    skipped = read_artifact(tmp_path / "b", "calibrated")
    assert "deployed" not in skipped.metrics and "deploy_plan.json" not in skipped.manifest["files"]


@pytest.mark.parametrize("where", ["extract_graph", "run_onnx"])
def test_calibrate_keeps_its_artifact_when_the_integer_graph_cannot_be_built(tiny_supernet_artifact, tmp_path,
                                                                              monkeypatch, where):
    """A model the export cannot write, or a graph onnxruntime refuses: the calibration is kept, the reason recorded."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    import eqtools.export._measure as measure
    from eqtools.calibrate import calibrate_artifact
    from eqtools.errors import ModelError

    def refuse(*args, **kwargs):
        raise ModelError("op 'roll' has no export lowering") if where == "extract_graph" else Fail("'roll' kernel")

    monkeypatch.setattr(measure, where, refuse)
    art = read_artifact(tiny_supernet_artifact, "supernet")
    cal = calibrate_artifact(art, art.space.uniform(4, 4, "per-channel", "sym"), images=64, split="val",
                             out=tmp_path / "cal")
    deployed = cal.metrics["deployed"]
    assert not deployed["measured"] and "'roll'" in deployed["blocker"] and cal.metrics["top1"] > 0
    assert deployed["export_form"] is None  # export does not fall back for this: it would refuse the model too
    assert "deploy_plan.json" not in cal.manifest["files"]
