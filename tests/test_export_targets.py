"""A file per deployment target, checked in that target's runtime; target constraints checked before building.

Contracts: each target's file runs its quantized conv/linear layers on integer kernels by the runtime's
own executed-graph report and agrees with the arithmetic it describes; a subnet a target cannot run
is refused with what to search for, before anything is built; ``--target all`` writes every file the
subnet allows and records why the others were skipped; the IR, its interpreter and the backends'
lowering tables cover the same ops.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eqtools.artifacts import read_artifact
from eqtools.cli.app import app
from eqtools.errors import ConfigError
from eqtools.export import export_subnet, extract_graph
from eqtools.export.backends.onnxruntime import INTEGER_LOWERINGS
from eqtools.export.backends.qdq import LOWERINGS
from eqtools.export.runtime import LAYER, OPS, PASS, REQUANTIZE, build_model, infer_shape, integer_kind
from eqtools.export.targets import TARGETS, narrow_weights, target_blocker


@pytest.fixture(scope="module")
def tiny(tiny_supernet_artifact, digits_splits):
    from eqtools.build import load_supernet

    supernet = load_supernet(read_artifact(tiny_supernet_artifact, "supernet")).eval()
    return supernet, list(digits_splits.val.batches(150))


# ------------------------------------------------------------------------------------------ the IR
def test_every_op_has_a_float_lowering_and_integer_lowerings_only_where_its_semantics_allow():
    assert set(LOWERINGS) == set(OPS)
    for op in INTEGER_LOWERINGS:
        kinds = {OPS[op].integer(attrs) for attrs in ({}, {"output_size": [1, 1]}, {"value": 0.0})
                 if _safe(OPS[op].integer, attrs)}
        assert kinds & {PASS, REQUANTIZE}, (op, kinds)
    assert {op for op in OPS if OPS[op].integer({"output_size": [1, 1]}) == LAYER} == {"conv2d", "linear"}


def _safe(fn, attrs):
    try:
        fn(attrs)
    except KeyError:
        return False
    return True


def test_shape_rules_agree_with_the_interpreter(tiny):
    """Every node's shape rule gives the shape the interpreter's float semantics produce."""
    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "sym", "asym"))
    x = batches[0][0][:3]
    graph = extract_graph(supernet, x[:2])
    seen = {}

    def record(node, args, y):
        seen[node.name] = (list(y.shape), [list(a.shape) for a in args])
        return y

    build_model(graph).run(x, after=record)
    assert len(seen) == len(graph.nodes)
    for node in graph.nodes:
        shape, inputs = seen[node.name]
        assert infer_shape(node, inputs) == shape, node.name


def test_the_interpreter_is_the_loader_and_hooks_see_every_node(tiny):
    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(2, 2, "per-tensor", "sym", "asym"))
    x = batches[0][0][:8]
    graph = extract_graph(supernet, x[:2])
    model = build_model(graph)
    order = []
    out = model.run(x, before=lambda node, args: (order.append(node.name), args)[1])
    assert order == [n.name for n in graph.nodes]
    assert torch.equal(out, model(x)) and torch.equal(out, supernet(x))
    assert integer_kind(graph.node(graph.output)) == LAYER


# ------------------------------------------------------------------------------------------ constraints
def test_a_target_refuses_a_subnet_it_cannot_run_with_what_to_search_for(tiny, tmp_path):
    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "asym", "asym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    for name in ("openvino", "tensorrt", "tflite", "xnnpack"):
        reason = target_blocker(graph, TARGETS[name])
        assert reason is not None and "asymmetric weights" in reason and f"--preset {name}" in reason, reason
    with pytest.raises(ConfigError, match=r"--target openvino cannot run this subnet.*--preset openvino"):
        export_subnet(supernet, batches, tmp_path, formats=("onnx",), targets=("openvino",))
    assert not list(tmp_path.iterdir())  # refused before anything was built or written


def test_tensorrt_needs_signed_symmetric_activations(tiny):
    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "sym", "asym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    assert "asymmetric activation quantizer" in target_blocker(graph, TARGETS["tensorrt"])
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym", "sym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    assert "8-bit unsigned activation codes" in target_blocker(graph, TARGETS["tensorrt"])
    assert target_blocker(graph, TARGETS["openvino"]) is None


def test_narrow_weights_move_only_the_code_minus_128(tiny):
    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(8, 8, "per-channel", "sym", "asym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    first = f"{graph.layers()[0].name}.weight.codes"
    graph.tensors[first] = graph.tensors[first].clone()
    graph.tensors[first].view(-1)[:3] = -128  # the code a symmetric 8-bit quantizer gives its most negative weights
    codes = {n.name: graph.tensors[f"{n.name}.weight.codes"] for n in graph.layers()}
    narrowed, moved = narrow_weights(graph)
    assert moved == sum(int((c == -128).sum()) for c in codes.values()) > 0
    for name, c in codes.items():
        new = narrowed.tensors[f"{name}.weight.codes"]
        assert int(new.min()) >= -127 and torch.equal(new[c != -128], c[c != -128])
    assert all(int(graph.tensors[f"{n}.weight.codes"].min()) == -128 for n in codes if int(codes[n].min()) == -128)


# ------------------------------------------------------------------------------------------ OpenVINO
@pytest.mark.parametrize("bits,granularity", [(8, "per-channel"), (4, "per-tensor"), (2, "per-channel")])
def test_openvino_runs_every_quantized_layer_in_int8(tiny, tmp_path, bits, granularity):
    pytest.importorskip("openvino")
    import onnx
    from onnx import numpy_helper

    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(bits, bits, granularity, "sym", "asym"))
    metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), targets=("openvino",))
    entry = metrics["targets"]["openvino"]
    # counted in OpenVINO's executed graph (layerType / runtimePrecision), not in the file
    assert entry["integer_layers"] == entry["quantized_layers"] == 4, entry["runtime_report"]
    assert entry["agreement"] >= 0.99 and entry["runtime_report"]["inference_precision"] == "f32"
    model = onnx.load(tmp_path / "model.openvino.onnx")
    assert not [n for n in model.graph.node if n.domain]  # never onnxruntime's com.microsoft integer graph
    assert not [n for n in model.graph.node if n.op_type.startswith("QLinear")]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if ".weight." in i.name}
    assert all(w.dtype == np.int8 for n, w in weights.items() if n.endswith(".weight.q"))
    assert all(not w.any() for n, w in weights.items() if n.endswith(".weight.zero_point"))
    assert not (tmp_path / "model.onnx").exists()


@pytest.fixture(scope="module")
def resnet20():
    from conftest import random_supernet

    return random_supernet("resnet20", 1, 16, n=64)


def _executed(supernet, batches, tmp_path, bits):
    supernet.apply(supernet.space.uniform(bits, bits, "per-channel", "sym", "asym"))
    entry = export_subnet(supernet, batches, tmp_path / str(bits), formats=("onnx",), targets=("openvino",))["targets"]
    return entry["openvino"]


def test_openvino_runs_a_low_bit_residual_net_with_the_8_bit_files_layers(resnet20, tmp_path):
    """Below 8 bits, each activation's range costs OpenVINO no op of its own (decision 0220): a residual
    sum's quantize is a FakeQuantize of its own, and an integer Clip after it ran as a Clamp on the codes;
    the float clip in front of it folds into its crop bounds. Counted in OpenVINO's executed graph, so this
    pins the installed OpenVINO's fusions: after an OpenVINO upgrade, a failure here may be its change, not ours."""
    pytest.importorskip("openvino")
    supernet, batches = resnet20
    eight = _executed(supernet, batches, tmp_path, 8)["runtime_report"]["executed"]
    for bits in (4, 2):
        entry = _executed(supernet, batches, tmp_path, bits)
        executed = entry["runtime_report"]["executed"]
        on_codes = {k: v for k, v in executed.items() if k not in ("Const", "Input", "Output")
                    and set(v) & {"u8", "i8"} and k not in ("Convolution", "FullyConnected", "Reorder")}
        assert not on_codes, (bits, executed)
        assert sum(map(sum, (v.values() for v in executed.values()))) == \
            sum(map(sum, (v.values() for v in eight.values()))), (bits, executed, eight)
        assert entry["integer_layers"] == entry["quantized_layers"]
        assert entry["agreement"] >= (0.995 if bits >= 4 else 0.99)


@pytest.mark.parametrize("bits", [4, 2])
def test_openvino_float_range_clip_gives_the_integer_clips_logits(resnet20, bits):
    """The float clip in front of the quantize and the integer clip on its codes are the same arithmetic: in
    OpenVINO itself, the two files give equal logits (the range's bounds are grid points)."""
    pytest.importorskip("openvino")
    from eqtools.export.backends import openvino
    from eqtools.export.backends.qdq import build_onnx

    supernet, batches = resnet20
    supernet.apply(supernet.space.uniform(bits, bits, "per-channel", "sym", "asym"))
    graph = extract_graph(supernet, batches[0][0][:2])
    xs = [x for x, _ in batches]
    files = {clip: build_onnx(graph, openvino.OPSET, narrow_types=False, weight_form="int8", clip=clip)
             for clip in ("codes", "float")}
    assert sum(n.op_type == "Clip" for n in files["codes"].graph.node) > 0
    codes, _ = openvino.run(files["codes"].SerializeToString(), xs)
    floats, _ = openvino.run(files["float"].SerializeToString(), xs)
    assert torch.equal(codes, floats)


def test_tensorrt_file_is_symmetric_int8_in_the_narrow_range_and_checked_for_onnx_semantics(tiny):
    """The backend on its own (the fixture's 8-bit head reads unsigned codes, which the stage refuses for
    TensorRT): int8 weights in [-127, 127] at zero point 0, and onnxruntime computes the IR's arithmetic."""
    import onnx
    from onnx import numpy_helper

    from eqtools.export.backends import tensorrt

    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "sym", "sym"))
    graph, _ = narrow_weights(extract_graph(supernet, batches[0][0][:2]))
    data = tensorrt.build(graph).data
    model = onnx.load_from_string(data)
    for i in model.graph.initializer:
        a = numpy_helper.to_array(i)
        if i.name.endswith(".weight.q"):
            assert a.dtype == np.int8 and a.min() >= -127
        if i.name.endswith("zero_point"):
            assert not a.any()
    xs = [x for x, _ in batches]
    logits, report = tensorrt.run(data, xs)
    assert report["integer_layers"] is None and "TensorRT unchecked" in tensorrt.version()
    with torch.no_grad():
        expected = torch.cat([build_model(graph)(x) for x in xs])
    assert (logits.argmax(1) == expected.argmax(1)).float().mean() >= 0.99


def _calibrated(tmp_path, supernet_artifact, form):
    """A `calibrated` artifact as `eqtools calibrate` writes it (BN statistics left as trained)."""
    from eqtools.build import load_supernet, save_supernet
    from eqtools.specs import parse_spec

    art = read_artifact(supernet_artifact, "supernet")
    supernet = load_supernet(art)
    config = supernet.space.uniform(4, 4, *form)
    supernet.apply(config)
    out = tmp_path / "artifacts" / "digits-test" / "calibrated-test"
    save_supernet(supernet, out, parse_spec(art.spec), kind="calibrated", parents=[art], metrics={"top1": 0.0},
                  extra={"config": config.to_dict()}, files={"config.json": config.to_json()})
    return out


def test_cli_target_all_writes_every_file_the_subnet_allows(tiny_supernet_artifact, tmp_path):
    pytest.importorskip("openvino")
    cal = _calibrated(tmp_path, tiny_supernet_artifact, ("per-channel", "sym", "asym"))
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["export", "--from", str(cal), "--target", "all", "--out", str(out),
                                      "--check-images", "300", "--min-deploy-agreement", "0.95", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    targets = manifest["metrics"]["targets"]
    assert {"onnxruntime", "openvino"} <= set(targets)
    for entry in targets.values():
        assert (out / entry["file"]).is_file() and entry["file_bytes"] == (out / entry["file"]).stat().st_size
        assert entry["runtime_version"] and 0.0 <= entry["agreement"] <= 1.0 and entry["top1"] is not None
    skipped = manifest["metrics"]["targets_skipped"]
    assert {"snpe", "qnn", "tflite-uint8", "tensorrt"} <= set(skipped)  # tensorrt: asymmetric activations
    assert "asymmetric activation" in skipped["tensorrt"]


def test_cli_refuses_an_unknown_or_impossible_target(tiny_supernet_artifact, tmp_path):
    result = CliRunner().invoke(app, ["export", "--from", str(tiny_supernet_artifact), "--target", "coreml"])
    assert result.exit_code == 2 and "--target 'coreml' is not known" in result.output
    cal = _calibrated(tmp_path, tiny_supernet_artifact, ("per-tensor", "asym", "asym"))
    result = CliRunner().invoke(app, ["export", "--from", str(cal), "--target", "openvino",
                                      "--out", str(tmp_path / "exp")])
    assert result.exit_code == 2 and "--preset openvino" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------------------------ LiteRT
@pytest.mark.parametrize("bits,granularity", [(8, "per-channel"), (4, "per-tensor"), (2, "per-channel")])
def test_litert_file_runs_int8_convs_and_fully_connected_in_litert(tiny, tmp_path, bits, granularity):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(bits, bits, granularity, "sym", "asym"))
    metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), targets=("tflite",),
                            deploy_agreement_min=0.0)
    entry = metrics["targets"]["tflite"]
    executed = entry["runtime_report"]["executed"]
    # the interpreter's own op list: every conv and the linear layer take int8 inputs, nothing float
    assert entry["integer_layers"] == entry["quantized_layers"] == 4 and entry["runtime_report"]["float_layers"] == 0
    assert "float32" not in executed.get("CONV_2D", {}) and executed.get("FULLY_CONNECTED") == {"int8": 1}
    # a value moves to a layer's grid through an identity conv, never an int8 -> int8 QUANTIZE (XNNPACK computes
    # that with an 8-bit multiplier) nor a merged quantize chain
    assert "int8" not in executed.get("QUANTIZE", {}), executed
    # the targets: 99.5 % at >= 4 bits, 99 % at 2-3 bits
    assert entry["agreement"] >= {8: 0.995, 4: 0.995, 2: 0.99}[bits], entry["parity"]
    assert (tmp_path / "model.tflite").stat().st_size == entry["file_bytes"]



def test_litert_keeps_b_bit_values_in_range_without_clamp_ops(tiny, tmp_path):
    """Below 8 bits a value's codes sit at the top of the int8 container (the quantize's saturation is its upper
    bound) and a ReLU after a layer fuses into it, so the file holds no int8 MINIMUM, MAXIMUM or RELU op (each
    cut XNNPACK's delegate in two) and the delegate takes it in as many partitions as the W8A8 file; the
    file still agrees with the deployed arithmetic."""
    import random

    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    supernet, batches = tiny
    form = ("per-channel", "sym", "asym")
    subnets = {"W8A8": supernet.space.uniform(8, 8, *form), "W4A4": supernet.space.uniform(4, 4, *form),
               "W2A2 signed": supernet.space.uniform(2, 2, "per-tensor", "sym", "sym"),
               "mixed": supernet.space.random(random.Random(3), *form)}
    delegates = {}
    for label, config in subnets.items():
        supernet.apply(config)
        metrics = export_subnet(supernet, batches, tmp_path / label, formats=("onnx",), targets=("tflite",),
                                deploy_agreement_min=0.0)
        entry = metrics["targets"]["tflite"]
        executed = entry["runtime_report"]["executed"]
        assert not {"MINIMUM", "MAXIMUM", "RELU", "RELU_N1_TO_1", "RELU6"} & set(executed), (label, executed)
        delegates[label] = sum(executed["DELEGATE"].values())
        assert entry["integer_layers"] == entry["quantized_layers"] == 4, (label, executed)
        assert entry["agreement"] >= (0.995 if "W2" not in label else 0.99), (label, entry["parity"])
    assert len(set(delegates.values())) == 1, delegates



# ------------------------------------------------------------------------------------------ ExecuTorch
@pytest.mark.parametrize("bits,granularity", [(8, "per-channel"), (8, "per-tensor"), (4, "per-channel"),
                                              (2, "per-tensor")])
def test_executorch_delegates_every_quantized_layer_to_xnnpack(tiny, tmp_path, bits, granularity):
    """Below 8 bits a value read by a residual add and by the identity conv that moves it to a layer's grid
    must not share one dequantize, or XNNPACK's partitioner finds a cycle between partitions."""
    pytest.importorskip("executorch")
    supernet, batches = tiny
    supernet.apply(supernet.space.uniform(bits, bits, granularity, "sym", "asym"))
    metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",), targets=("xnnpack",),
                            deploy_agreement_min=0.0)
    entry = metrics["targets"]["xnnpack"]
    delegation = entry["delegation"]
    assert entry["integer_layers"] == entry["quantized_layers"] == 4 and delegation["float_layers"] == 0, delegation
    # a b-bit value's range is the int8 saturation and fused ReLUs, not clamp ops inside the partition
    assert "aten_clamp_default" not in delegation["delegated"], delegation
    # the targets: 99.5 % at >= 4 bits, 99 % at 2-3 bits
    assert entry["agreement"] >= {8: 0.995, 4: 0.995, 2: 0.99}[bits], entry["parity"]
    assert (tmp_path / "model.pte").stat().st_size == entry["file_bytes"]


def test_the_default_target_is_the_searchs_preset():
    from eqtools.export._stage import default_targets

    class Source:  # the one method default_targets asks of an artifact
        def __init__(self, search):
            self.search = search

        def ancestor(self, kind):
            return self.search if kind == "search" else None

    class Search:
        def __init__(self, preset):
            self.metrics = {"preset": preset}

    assert default_targets(Source(Search("openvino"))) == ("openvino",)
    assert default_targets(Source(Search(None))) == ("onnxruntime",)
    assert default_targets(Source(None)) == ("onnxruntime",)


@pytest.mark.parametrize("target, fragment", [("snpe", "no SNPE/QNN runtime or converter runs here"),
                                              ("tflite", "needs its runtime (litert)"),
                                              ("bogus", "is not known; targets: onnxruntime")])
def test_a_named_target_no_subnet_can_pass_here_is_refused_before_any_work(tiny, tmp_path, monkeypatch, target,
                                                                           fragment):
    """No runtime (or no backend at all) is known before the subnet runs: the refusal comes first, not after the
    reference logits, the graph and the integer file were computed."""
    from eqtools.export.backends import litert

    monkeypatch.setattr(litert, "version", lambda: None)  # litert not installed, as in the default extras

    def batches():
        raise AssertionError("the check images were read before the refusal")
        yield

    class Once:
        def __iter__(self):
            return batches()

    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        export_subnet(tiny, Once(), out, formats=("int", "onnx"), targets=(target,))
    assert not out.exists()
