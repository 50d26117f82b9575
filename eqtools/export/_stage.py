"""The export stage: calibrated subnet -> integer file and/or ONNX, each checked before it is kept.

Every check runs on held-out images before anything is written to the artifact, and a failed one
raises :class:`~eqtools.export.ExportError` (the CLI exits 2), so an export artifact on disk is
always one whose files passed. Each file is checked twice against the reference:

1. **Layer by layer** (on up to 64 check images, fewer where their activations would exceed
   256 MiB), the test of correctness: every quantized layer is fed the reference's own input to
   that layer ("teacher forcing"), and what the file's model computed up to each layer must equal
   what arrived in the reference to within
   ``LAYER_RTOL = 1e-4`` of the tensor's largest magnitude, and the logits to within
   ``LAYER_RTOL`` of the largest logit. Float rounding differs by ~1e-7 here; a wrong scale, zero
   point, axis, bias or op by the order of the values themselves.
2. **End to end** (all check images): top-1 agreement of the free-running file with the reference
   must be at least ``agreement_min`` (99.9 % by default). The free-running logits are reported
   (max, mean and relative difference) but not gated: two runtimes that sum a convolution in a
   different order put an occasional activation within ~1e-5 of a step on the other side of a
   rounding boundary, and that one-step change travels to the logits. How often depends on the
   model, not on the export: the reference itself, run in ``channels_last`` memory format (same
   math, another summation order), is reported as ``reference_self_agreement``; on a post-training
   quantized ResNet-20 it agreed with itself on 99.80 % of 2000 images, and on randomly initialised
   ResNets (which amplify every flip) on as little as 89 %.

The reference is the calibrated fake-quant subnet, except where ``bn_fold="requantize"`` requantized a layer, which
deliberately changes per-tensor weights: there the in-memory model of the exported graph is the
reference the files must match, and its distance from the fake-quant subnet is reported as the
folding cost.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eqtools.artifacts import (
    Artifact,
    Calibrated,
    claim_out,
    default_out,
    staging_prefix,
    staging_write_errors,
    write_artifact,
)
from eqtools.artifacts import Export as ExportArtifact
from eqtools.artifacts import Search as SearchArtifact
from eqtools.errors import ArtifactError, ConfigError
from eqtools.export import ExportError
from eqtools.export._graph import BN_FOLD_MODES, DeployGraph, bn_folds_that_move_codes, extract_graph, weight_bytes
from eqtools.export._measure import DEPLOY_CALIBRATION_IMAGES, batch_labels, deploy_calibration, parity
from eqtools.export.backends.onnxruntime import (
    FLOAT_MATMUL_OPS,
    Encoding,
    build_deploy_onnx,
    deploy_blocker,
    integer_difference,
    optimized_ops,
    plan_from_dict,
    run_onnx,
    run_onnx_teacher_forced,
    simulate_deploy,
    u8s8_saturation,
)
from eqtools.export.backends.qdq import INT4_OPSET, MIN_OPSET, build_onnx
from eqtools.export.runtime import FILE_NAME, METADATA_KEY, DeployedModel, build_model, load_int, pack_codes
from eqtools.export.targets import TARGETS, Target, backend, narrow_weights, target_blocker
from eqtools.quant import QuantLayer, Supernet
from eqtools.space import SubnetConfig
from eqtools.vocab import DEPLOY_CPU_CHOICES, EXPORT_FORMATS, ONNX_FORMS

__all__ = [
    "AGREEMENT_MIN",
    "DEFAULT_OPSET",
    "DEPLOY_ACCURACY_DROP_MAX",
    "DEPLOY_AGREEMENT_MIN",
    "FORMATS",
    "LAYER_RTOL",
    "ONNX_FILE",
    "ONNX_FORMS",
    "ExportOptions",
    "export_artifact",
    "export_subnet",
    "parity",
    "write_int",
]

FORMATS = EXPORT_FORMATS
DEFAULT_OPSET = INT4_OPSET
ONNX_FILE = ExportArtifact.ONNX
AGREEMENT_MIN = 0.999
# the deploy form's gate: the fidelity targets, by the subnet's narrowest quantized layer
DEPLOY_AGREEMENT_MIN = {2: 0.99, 3: 0.99, 4: 0.995}
# ... against the deployed arithmetic; and what that arithmetic may cost in top-1 points against the fake-quant subnet
DEPLOY_ACCURACY_DROP_MAX = {2: 0.01, 3: 0.003}
LAYER_RTOL = 1e-4
TEACHER_FORCED_IMAGES = 64
TEACHER_FORCED_BYTES = 256 << 20  # every quantized layer's input is held twice (reference, arrived)


# ------------------------------------------------------------------------------------------ parity
@torch.no_grad()
def _logits(model: nn.Module, batches: Iterable[tuple[Tensor, Any]], channels_last: bool = False,
            device: str = "cpu") -> Tensor:
    if device != "cpu":  # the PyTorch-side reference on an accelerator; the model itself stays where it is
        import copy

        model = copy.deepcopy(model).to(device)
        return torch.cat([model(x.to(device)).cpu() for x, _ in batches])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    try:
        return torch.cat([model(x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x)
                          for x, _ in batches])
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------------------ teacher forcing
def _layer_calls(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, Any]:
    """Hooks that record each layer's input per call, named as the graph names repeated calls (``name#2``)."""
    calls: dict[str, list[Tensor]] = {name: [] for name in layers}
    handles = [m.register_forward_hook(lambda mod, inputs, out, name=name: calls[name].append(inputs[0].detach()))
               for name, m in layers.items()]
    return {"calls": calls, "handles": handles}


@torch.no_grad()
def _reference_inputs(model: nn.Module, layers: dict[str, nn.Module], x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The input each quantized layer of ``model`` receives on ``x``, and the logits."""
    rec = _layer_calls(model, layers)
    try:
        logits = model(x)
    finally:
        for h in rec["handles"]:
            h.remove()
    inputs = {}
    for name, values in rec["calls"].items():
        for i, v in enumerate(values):
            inputs[name if i == 0 else f"{name}#{i + 1}"] = v
    return inputs, logits


def _forced_layers(graph: DeployGraph) -> list[str]:
    return [n.name for n in graph.layers() if n.input_quant is not None]


@torch.no_grad()
def _teacher_forced_torch(model: DeployedModel, graph: DeployGraph, reference: dict[str, Tensor],
                          x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    arrived: dict[str, Tensor] = {}
    handles = []
    for name in _forced_layers(graph):
        def force(module: nn.Module, inputs: tuple, name: str = name) -> tuple:
            arrived[name] = inputs[0].detach()
            return (reference[name],)

        handles.append(model.layer(name).register_forward_pre_hook(force))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return arrived, logits


def _teacher_forced_report(arrived: dict[str, Tensor], reference: dict[str, Tensor], logits: Tensor,
                           reference_logits: Tensor) -> dict[str, Any]:
    errors = {name: float((arrived[name] - reference[name]).abs().max() / reference[name].abs().max().clamp_min(1e-12))
              for name in arrived}
    worst = max(errors, key=errors.__getitem__) if errors else None
    return {
        "images": int(logits.shape[0]),
        "layers": len(errors),
        "max_layer_error": errors[worst] if worst else 0.0,
        "worst_layer": worst,
        "logit_error": float((logits - reference_logits).abs().max() / reference_logits.abs().max().clamp_min(1e-12)),
    }


def _gate(what: str, forced: dict[str, Any], free: dict[str, Any], agreement_min: float, against: str,
          self_agreement: float | None, bn_fold: str) -> None:
    if forced["max_layer_error"] > LAYER_RTOL or forced["logit_error"] > LAYER_RTOL:
        where = (f"layer {forced['worst_layer']!r} (relative error {forced['max_layer_error']:.3g})"
                 if forced["max_layer_error"] > LAYER_RTOL else f"the logits (relative error {forced['logit_error']:.3g})")
        raise ExportError(
            f"{what} computes something else than {against}: fed the reference's own input at every quantized "
            f"layer, {where} differs by more than {LAYER_RTOL:g} of its magnitude; nothing was written. This is a "
            "bug in eqtools' export (or an op whose ONNX lowering differs); try --opset 17 or --format int and "
            "report it"
        )
    if free["top1_agreement"] < agreement_min:
        floor = ("" if self_agreement is None else
                 f" For scale: the reference itself, run in channels_last memory format (same math, another float "
                 f"summation order), agrees with itself on {100 * self_agreement:.2f}% of these images.")
        # Folding batch norm into the weights reorders the float arithmetic; keeping it as its own op
        # computes exactly what the fake-quant model computes (measured: 99.85% -> 100.00% on a W8A8 subnet).
        unfold = ("" if bn_fold == "none" else
                  " Exporting with --bn-fold none keeps batch norm as its own op, in the fake-quant model's order of "
                  "operations (the integer file then matches it exactly), at the cost of one extra op per layer.")
        raise ExportError(
            f"{what} agrees with {against} on {100 * free['top1_agreement']:.2f}% of {free['images']} held-out "
            f"images (top-1), below the required {100 * agreement_min:.2f}%; nothing was written. Every layer matches "
            f"when fed the reference's own inputs (largest relative error {forced['max_layer_error']:.2g}), so the "
            "difference comes from activations within float rounding of a quantization boundary that round the "
            f"other way and travel to the logits.{floor}{unfold} If that is acceptable for this model, rerun with "
            "--min-agreement set to the agreement you accept (it is recorded in the artifact)"
        )


# ------------------------------------------------------------------------------------------ files
def write_int(graph: DeployGraph, path: Path | str) -> int:
    """Write the integer file (codes bit-packed, graph JSON in the header); return its size in bytes."""
    from safetensors.torch import save_file

    nodes = {n.name: n for n in graph.nodes}
    tensors: dict[str, Tensor] = {}
    for key, value in graph.tensors.items():
        if key.endswith(".weight.codes"):
            name = key[: -len(".weight.codes")]
            spec = nodes[name].weight
            assert spec is not None
            tensors[f"{name}.weight.packed"] = pack_codes(value, int(spec.bits or 0), int(spec.qmin or 0))
        else:
            tensors[key] = value.detach().contiguous().cpu()
    path = Path(path)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(graph.to_json(), separators=(",", ":"))})
    return path.stat().st_size


def _int32_bias(graph: DeployGraph) -> dict[str, Tensor]:
    """The graph's tensors with every quantized layer's bias rounded to int32 at input_scale * weight_scale.

    What an integer-only runtime that adds the bias to the int32 accumulator computes; reported,
    not used: the files keep float32 biases, as the fake-quant model has them.
    """
    tensors = dict(graph.tensors)
    for node in graph.layers():
        name = node.name
        if node.input_quant is None or not node.bias:
            continue
        unit = (tensors[f"{name}.input.scale"] * tensors[f"{name}.weight.scale"]).abs()
        bias = tensors[f"{name}.bias"]
        unit = unit.expand_as(bias) if unit.numel() == 1 else unit
        tensors[f"{name}.bias"] = torch.round(bias / unit) * unit
    return tensors


def _zero_point_report(supernet: Supernet) -> dict[str, Any]:
    """How far each active learned offset was from the integer zero point that training used and export writes."""
    worst = 0.0
    count = 0
    for q in supernet.quantizers():
        raw = q.active_offset()
        if raw is None:
            continue
        worst = max(worst, float((raw - raw.round()).abs().max()))
        count += raw.numel()
    return {"asymmetric_offsets": count, "max_offset_to_zero_point": worst}


def _narrowest_bits(graph: DeployGraph) -> int:
    bits = [min(int(n.weight.bits), n.input_quant.bits) for n in graph.layers()  # type: ignore[union-attr,arg-type]
            if n.quantized]
    return min(bits, default=8)


def _same_integers(graph: DeployGraph, plan: dict[str, Encoding | None], opset: int, cpu: str,
                   built: Any) -> tuple[Any, dict[str, Any]]:
    """The integer ONNX file of ``graph`` for ``cpu``, from the 8-bit ranges ``built`` was made with, and
    its build info; an :class:`ExportError` unless it stores the same integers as ``built``.

    The two files of one subnet (:data:`eqtools.vocab.DEPLOY_CPUS`) differ only in how some weights are stored, so
    what one computes on exact kernels is what the other computes: the check makes that a fact of
    this export, not an assumption, before either stands in for the other.
    """
    kept = {name: e for name, e in plan.items() if e is not None and not e.exact}
    model, info, _ = build_deploy_onnx(graph, ranges=kept, opset=opset, cpu=cpu, error=ExportError)
    difference = integer_difference(built, model)
    if difference is not None:
        raise ExportError(f"the --cpu vnni integer ONNX file and its --cpu any twin should store the same integers, "
                          f"but {difference}; nothing was written. This is a bug in eqtools' export; use --cpu any")
    return model, info


def _deploy_onnx(graph: DeployGraph, batches: Any, calibration: list[Tensor] | None,
                 ranges: dict[str, Encoding] | None, gate_reference: Tensor, labels: Tensor | None, against: str,
                 opset: int, agreement_min: float | None, accuracy_drop_max: float | None, threads: int,
                 log: Callable[[str], None], cpu: str = "auto") -> dict[str, Any]:
    """Build, run and gate the integer ONNX form; the metrics (and the bytes under ``_data``).

    Two gates, the issue's two fidelity targets. Agreement is measured against the calibrated subnet
    computing the *deployed* arithmetic (int32 biases, the graph's own 8-bit requantizations),
    simulated in PyTorch: that is the model that ships, and a file that disagrees with it is a wrong
    file. What the deployed arithmetic itself costs is gated on accuracy against the plain fake-quant
    subnet (the one training and search measured), since its roundings legitimately move single
    predictions; agreement with the plain subnet is reported next to it.

    A ``cpu="vnni"`` file is run as it is where this CPU's u8 x s8 kernels are exact. Elsewhere they
    would saturate on it, so its ``cpu="any"`` twin runs instead, after :func:`integer_difference`
    has shown that the two store the same integers; the metrics say which one ran. ``cpu="auto"``
    writes the vnni file only where it differs from the any one (a layer would store uint8 weights)
    and this CPU computes it exactly, since the file is mostly run where it was checked; the metrics
    record the request and why it resolved as it did.
    """
    log(f"building the integer ONNX graph (QLinearConv/QGemm, opset {opset}) and running it in onnxruntime")
    model, info, plan = build_deploy_onnx(graph, calibration, ranges=ranges, opset=opset,
                                          cpu="any" if cpu == "auto" else cpu, error=ExportError)
    saturation = u8s8_saturation() if cpu == "vnni" or info["uint8_weight_layers"] else None
    if cpu == "auto":
        layers = info["uint8_weight_layers"]
        if layers and saturation is None:
            model, info = _same_integers(graph, plan, opset, "vnni", model)
            choice = (f"this CPU's u8 x s8 kernels sum in int32 (VNNI), so the {layers} layer(s) with 8-bit weights on "
                      "8-bit inputs keep int8 weights, faster here; the file computes wrong values on CPUs without "
                      "VNNI (its metadata says so): --cpu any writes one that is exact on every x86 CPU")
        elif layers:
            choice = (f"{saturation}, so the {layers} layer(s) with 8-bit weights on 8-bit inputs store uint8 weights, "
                      "exact on every x86 CPU")
        else:
            choice = "no layer has 8-bit weights on 8-bit inputs, so the file for any x86 CPU is all int8 already"
        info.update(cpu_requested="auto", cpu_choice=choice)
        cpu = info["cpu"]
        log(f"onnx: --cpu auto chose {cpu}: {choice}")
    data = run = model.SerializeToString()
    info["checked_as"] = "the file"
    if cpu != "any" and saturation is not None:
        twin, _ = _same_integers(graph, plan, opset, "any", model)
        run = twin.SerializeToString()
        info["checked_as"] = f"its --cpu any twin (the same integers, uint8 where int8 would saturate): {saturation}"
        log(f"onnx: {saturation}; the --cpu {cpu} file is checked through its --cpu any twin, which stores the same "
            "integers")
    elif cpu == "any" and info["uint8_weight_layers"] and saturation is None:
        log(f"onnx: {info['uint8_weight_layers']} layer(s) store uint8 weights so that CPUs without VNNI compute them "
            "exactly; this CPU's u8 x s8 kernels are exact, and --cpu vnni (or auto) would keep them int8 (faster on "
            "such CPUs, wrong on others)")
    xs = [x for x, _ in batches]
    logits = run_onnx(run, xs, threads=threads)
    simulated = simulate_deploy(graph, plan, xs)  # the calibrated subnet with the deployed arithmetic
    free = parity(simulated, logits, labels)
    vs_fake_quant = parity(gate_reference, logits, labels)
    bits = _narrowest_bits(graph)
    threshold = DEPLOY_AGREEMENT_MIN[min(bits, 4)] if agreement_min is None else agreement_min
    drop_max = DEPLOY_ACCURACY_DROP_MAX[min(bits, 3)] if accuracy_drop_max is None else accuracy_drop_max
    ops = optimized_ops(data, threads)
    # float layers and activation-activation matmuls (Q·Kᵀ, attention·V) run in float by design
    float_layers = sum(1 for n in graph.layers() if n.weight is not None and n.weight.dtype == "float")
    float_layers += sum(1 for n in graph.nodes if n.op == "matmul")
    float_matmuls = sum(ops.get(op, 0) for op in FLOAT_MATMUL_OPS)
    if float_matmuls > float_layers:  # a quantized conv/gemm onnxruntime would run in float: a bug here
        raise ExportError(
            f"onnxruntime's optimised graph of the integer ONNX form runs {float_matmuls - float_layers} quantized "
            f"conv/gemm layer(s) in float ({ops}); nothing was written. This is a bug in eqtools' export; "
            "use --onnx-form exact and report it"
        )
    # what each deploy-time rounding costs on its own, simulated in PyTorch on the same images, against the
    # fake-quant subnet computed exactly (float64, no deploy rounding). The float32 model is itself only an
    # approximation of that function; how far it is from it is reported ("float32_fake_quant"), so that a
    # rounding's cost is never float32 summation noise in disguise
    exact = simulate_deploy(graph, plan, xs, requantize=False, int32_bias=False)
    vs_exact = parity(exact, logits, labels)
    roundings = {
        "int32_bias": parity(exact, simulate_deploy(graph, plan, xs, requantize=False), labels),
        "requantize_8bit": parity(exact, simulate_deploy(graph, plan, xs, int32_bias=False), labels),
        "both": parity(exact, simulated, labels),
        "float32_fake_quant": parity(exact, gate_reference, labels),
    }
    if free["top1_agreement"] < threshold:
        raise ExportError(
            f"the integer ONNX file agrees with the deployed arithmetic it should compute (the calibrated subnet "
            f"with int32 biases and the graph's 8-bit requantizations, simulated in PyTorch) on "
            f"{100 * free['top1_agreement']:.2f}% of {free['images']} held-out images (top-1), below the required "
            f"{100 * threshold:.2f}% for a subnet whose narrowest layer has {bits} bits; nothing was written. "
            "onnxruntime computes something else than the graph describes: this is a bug in eqtools' export (or "
            "a kernel that saturates, see docs/export.md). --onnx-form exact writes the QDQ file that matches the "
            "fake-quant model (its convs run in float); --min-deploy-agreement accepts a lower agreement "
            "knowingly (it is recorded in the artifact)"
        )
    drop = None if labels is None else -vs_fake_quant["accuracy_change"]
    # the standard error of a paired accuracy difference: only images whose prediction changed carry it
    changed = round((1.0 - vs_fake_quant["top1_agreement"]) * vs_fake_quant["images"])
    drop_se = math.sqrt(changed) / max(1, vs_fake_quant["images"])
    if drop is not None and drop - drop_max > 2.0 * drop_se + 1e-9:
        bias, requant = roundings["int32_bias"], roundings["requantize_8bit"]
        raise ExportError(
            f"the integer ONNX file's top-1 accuracy is {100 * drop:.2f} points below {against}'s on "
            f"{free['images']} held-out images ({100 * vs_fake_quant['reference_accuracy']:.2f}% -> "
            f"{100 * vs_fake_quant['accuracy']:.2f}%), more than the {100 * drop_max:.2f} allowed for a subnet whose "
            f"narrowest layer has {bits} bits by over twice the difference's standard error "
            f"({100 * drop_se:.2f} points, from the {changed} images whose prediction changed); nothing was written. Simulated one at a time, the int32 biases alone "
            f"change accuracy by {100 * bias['accuracy_change']:+.2f} points and the 8-bit requantizations the "
            f"integer graph adds (conv outputs feeding residual adds, the sums themselves) by "
            f"{100 * requant['accuracy_change']:+.2f}. --onnx-form exact writes the QDQ file that matches the "
            "fake-quant model (its convs run in float); --max-deploy-accuracy-drop accepts a larger drop knowingly "
            "(it is recorded in the artifact)"
        )
    return {"file": ONNX_FILE, "form": "deploy", "opset": opset, "int4": False, "file_bytes": len(data),
            "reference": "deployed arithmetic (calibrated subnet, simulated)", "agreement_min": threshold,
            "accuracy_drop_max": drop_max, "accuracy_drop_se": drop_se, "parity": free, "parity_vs_fake_quant": vs_fake_quant,
            "parity_vs_exact_fake_quant": vs_exact, "deploy": {**info, "narrowest_bits": bits, "optimized_ops": ops, "roundings": roundings},
            "_data": data}


# ------------------------------------------------------------------------------------------ other targets
def _runtime_version(name: str) -> str | None:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "unknown"))


def _ort_entry(onnx_metrics: dict[str, Any]) -> dict[str, Any]:
    """The onnxruntime target's manifest entry, from the ONNX file's own check."""
    o = onnx_metrics
    deployed = o["form"] == "deploy"
    ops = o["deploy"]["optimized_ops"] if deployed else None
    integer = None if ops is None else {k: v for k, v in ops.items() if k.startswith(("QLinear", "QGemm", "ConvInteger"))}
    return {"file": o["file"], "runtime": "onnxruntime", "runtime_version": _runtime_version("onnxruntime"),
            "checked": True, "form": o["form"], "file_bytes": o["file_bytes"],
            "agreement": o["parity"]["top1_agreement"],
            "agreement_against": "deployed arithmetic" if deployed else o.get("reference", "fake-quant subnet"),
            "top1": o["parity"].get("accuracy"),
            "top1_fake_quant": (o["parity_vs_fake_quant"] if deployed else o["parity"]).get("reference_accuracy"),
            "integer_ops": integer, "float_matmuls": None if ops is None else sum(ops.get(op, 0) for op in FLOAT_MATMUL_OPS),
            # the quantized conv/linear layers onnxruntime's optimised graph runs on integer kernels (identity convs
            # the build adds for copies are not layers of the subnet)
            "integer_layers": None if ops is None else ops.get("QLinearConv", 0) + ops.get("QGemm", 0)
            + ops.get("ConvInteger", 0) - o["deploy"]["identity_convs"],
            "quantized_layers": None if ops is None else o["deploy"]["integer_convs"] + o["deploy"]["integer_gemms"]}


def _target_file(target: Target, graph: DeployGraph, batches: Any, calibration: list[Tensor], gate_reference: Tensor,
                 labels: Tensor | None, against: str, agreement_min: float | None, accuracy_drop_max: float | None,
                 threads: int, log: Callable[[str], None]) -> tuple[dict[str, Any], bytes]:
    """Build ``target``'s file, run it in its runtime and gate it: ``(manifest entry, file bytes)``.

    The file's deployed arithmetic is what its backend says it computes (``Built.deployed``: the IR's float
    semantics for QDQ files, the plan's roundings for LiteRT/ExecuTorch), with int8 weight codes moved to
    [-127, 127] where the target takes no -128, computed in float64;
    the file must agree with it at :data:`DEPLOY_AGREEMENT_MIN`, cost at most
    :data:`DEPLOY_ACCURACY_DROP_MAX` top-1 against the fake-quant subnet, and run every quantized layer
    on integer kernels by its runtime's own report.
    """
    module = backend(target)
    version = module.version()  # installed: refuse_targets refused or skipped the target otherwise
    moved = 0
    if target.narrow_weights:
        graph, moved = narrow_weights(graph)
    log(f"{target.name}: building {target.file} and running it in {version if target.checked else module.RUNTIME}")
    built = module.build(graph, error=ExportError, calibration=calibration)
    data = built.data
    xs = [x for x, _ in batches]
    try:
        logits, report = module.run(data, xs, threads)
    except Exception as exc:  # each runtime raises its own types for a file it refuses
        raise ExportError(f"{module.RUNTIME} {version} cannot run the {target.name} file ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); nothing was written. This is a bug in eqtools' {target.name} backend") from None
    free = parity(built.deployed(xs), logits, labels)
    vs_fake_quant = parity(gate_reference, logits, labels)
    bits = _narrowest_bits(graph)
    threshold = DEPLOY_AGREEMENT_MIN[min(bits, 4)] if agreement_min is None else agreement_min
    drop_max = DEPLOY_ACCURACY_DROP_MAX[min(bits, 3)] if accuracy_drop_max is None else accuracy_drop_max
    quantized = sum(1 for n in graph.layers() if n.quantized)
    if free["top1_agreement"] < threshold:
        raise ExportError(
            f"the {target.name} file agrees with the arithmetic it describes (simulated in PyTorch) on "
            f"{100 * free['top1_agreement']:.2f}% of {free['images']} held-out images (top-1) in {module.RUNTIME}, "
            f"below the required {100 * threshold:.2f}% for a subnet whose narrowest layer has {bits} bits; nothing "
            "was written. --min-deploy-agreement accepts a lower agreement knowingly (it is recorded)")
    drop = None if labels is None else -vs_fake_quant["accuracy_change"]
    changed = round((1.0 - vs_fake_quant["top1_agreement"]) * vs_fake_quant["images"])
    drop_se = math.sqrt(changed) / max(1, vs_fake_quant["images"])
    if drop is not None and drop - drop_max > 2.0 * drop_se + 1e-9:
        raise ExportError(
            f"the {target.name} file's top-1 accuracy is {100 * drop:.2f} points below {against}'s on "
            f"{free['images']} held-out images, more than the {100 * drop_max:.2f} allowed for a subnet whose narrowest "
            f"layer has {bits} bits (by over twice the standard error, {100 * drop_se:.2f} points); nothing was "
            "written. --max-deploy-accuracy-drop accepts a larger drop knowingly (it is recorded)")
    integer = report.get("integer_layers")
    if integer is None and "delegation" in built.info:  # ExecuTorch: its delegation report, read when lowering
        integer = built.info["delegation"]["integer_layers"]
    if integer is not None:  # the identity layers a backend adds to requantize are not layers of the subnet
        integer -= built.info.get("identity_layers", 0)
    if target.checked and integer is not None and integer < quantized:
        raise ExportError(
            f"{module.RUNTIME} ran {integer} of the {target.name} file's {quantized} quantized conv/linear layers on "
            f"integer kernels (its executed graph: {report.get('executed')}); nothing was written. This is a bug in "
            f"eqtools' {target.name} backend")
    entry = {"file": target.file, "runtime": module.RUNTIME, "runtime_version": version, "checked": target.checked,
             "file_bytes": len(data), "agreement": free["top1_agreement"], "agreement_against": "deployed arithmetic",
             "agreement_min": threshold, "top1": free.get("accuracy"), "top1_fake_quant": vs_fake_quant.get("reference_accuracy"),
             "parity": free, "parity_vs_fake_quant": vs_fake_quant, "accuracy_drop_max": drop_max,
             "quantized_layers": quantized, "integer_layers": integer, "weight_codes_moved_to_127": moved,
             "runtime_report": report, **built.info}
    return entry, data


# ------------------------------------------------------------------------------------------ kept plan
def kept_deploy_ranges(source: Artifact) -> tuple[dict[str, Encoding], dict[str, Any]] | None:
    """The 8-bit ranges a ``calibrated`` artifact kept for its integer graph, with where they came
    from as the calibrate stage recorded it (for the export's manifest); None if it kept none."""
    document = Calibrated.deploy_plan(source) if source.kind == "calibrated" else None
    if document is None:
        return None
    try:
        ranges = plan_from_dict(document)  # refuses anything but a plan document first
        if document.get("bn_fold", "scale") != "scale":
            raise ValueError(f"it is for --bn-fold {document.get('bn_fold')!r}; export keeps plans for 'scale' only")
    except ValueError as exc:
        raise ArtifactError(f"{source.path}/{Calibrated.DEPLOY_PLAN}: {exc}; recalibrate the subnet "
                            "(`eqtools calibrate`) to write a new one") from None
    recorded = document.get("calibration")
    return ranges, recorded if isinstance(recorded, dict) else {}


# ------------------------------------------------------------------------------------------ export
def refuse_targets(targets: Sequence[str], onnx: bool, named: str = "--target") -> None:
    """Refuse an unknown target, and a named one that no subnet could pass here (no backend, or its runtime
    not installed), before anything is calibrated or built; ``all`` skips such targets instead. ``named``
    says where the target came from, for the message."""
    unknown = [t for t in targets if t != "all" and t not in TARGETS]
    if unknown:
        raise ConfigError(f"--target {unknown[0]!r} is not known; targets: {', '.join(TARGETS)} or all")
    if not onnx or "all" in targets:
        return
    for name in targets:
        if name == "onnxruntime":
            continue  # installed with eqtools; its integer form falls back to the exact one where it must
        target = TARGETS[name]
        if target.backend is None:
            raise ConfigError(f"{named} {name} cannot run this subnet: {target.why_not}")
        if backend(target).version() is None:
            raise ConfigError(f"{named} {name} needs its runtime ({backend(target).RUNTIME}) to check the file in, "
                              "and it is not installed: pip install 'eqtools[runtimes]'")


def export_subnet(
    supernet: Supernet,
    batches: Sequence[tuple[Tensor, Tensor | None]] | Iterable[tuple[Tensor, Tensor | None]],
    out_dir: Path | str,
    *,
    formats: Sequence[str] = ("int", "onnx"),
    opset: int = DEFAULT_OPSET,
    bn_fold: str = "scale",
    agreement_min: float = AGREEMENT_MIN,
    onnx_form: str = "deploy",
    deploy_agreement_min: float | None = None,
    deploy_accuracy_drop_max: float | None = None,
    calibration: Sequence[Tensor] | None = None,
    deploy_ranges: dict[str, Encoding] | None = None,
    deploy_cpu: str = "auto",
    targets: Sequence[str] = ("onnxruntime",),
    threads: int = 2,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export the active subnet of ``supernet`` into ``out_dir``; return the metrics.

    ``onnx_form="deploy"`` (default) writes the integer ONNX graph onnxruntime runs on integer
    kernels, gated at ``deploy_agreement_min`` against the deployed arithmetic simulated in PyTorch
    (default: :data:`DEPLOY_AGREEMENT_MIN` for the subnet's narrowest layer) and at
    ``deploy_accuracy_drop_max`` top-1 points against the fake-quant subnet
    (:data:`DEPLOY_ACCURACY_DROP_MAX`), and falling back to the exact form, with one logged line, where the
    kernels cannot run the subnet (asymmetric weights); ``"exact"`` writes the QDQ graph that
    reproduces the fake-quant model, gated at ``agreement_min``. ``calibration`` (input batches,
    default: the check images) sets the ranges of the deployment's own 8-bit requantizations;
    ``deploy_ranges`` (a plan the calibrate stage kept, :func:`eqtools.export.backends.onnxruntime.plan_from_dict`)
    takes them from there instead, so the file is the one whose accuracy was measured.
    ``deploy_cpu`` (:data:`DEPLOY_CPU_CHOICES`) is where the integer form must be exact: ``"any"`` x86
    CPU, or only CPUs with VNNI, whose kernels then run every weight as int8; ``"auto"`` (default)
    picks vnni where this CPU has exact u8 x s8 kernels and the choice changes the file, else any.

    ``batches`` is a re-iterable of held-out ``(images [B, C, H, W], labels [B] or None)``: every
    file is checked on it against the fake-quant subnet (see the module docstring) and an
    :class:`ExportError` is raised, before anything is returned, if one does not pass. Writes
    ``model.int.safetensors`` (``"int"`` in ``formats``) and, with ``"onnx"``, each of ``targets``' files
    (:data:`eqtools.export.targets.TARGETS`; ``"all"``: every target this subnet allows and this machine
    can build, the others recorded with why): ``model.onnx`` for onnxruntime, ``model.openvino.onnx``...
    A named target that cannot run the subnet is refused (``ConfigError``) before anything is built.
    ``device`` runs the fake-quant reference logits there (the layer-by-layer reference stays on the CPU,
    whose float arithmetic the files are compared with to 1e-4).
    """
    log = log or (lambda message: None)
    formats = tuple(dict.fromkeys(("int", "onnx") if "all" in formats else formats))
    for f in formats:
        if f not in ("int", "onnx"):
            raise ConfigError(f"export format {f!r} is not known; allowed: {list(FORMATS)}")
    if bn_fold not in BN_FOLD_MODES:
        raise ConfigError(f"--bn-fold is {bn_fold!r}; allowed: {list(BN_FOLD_MODES)}")
    if onnx_form not in ONNX_FORMS:
        raise ConfigError(f"--onnx-form is {onnx_form!r}; allowed: {list(ONNX_FORMS)}")
    if deploy_cpu not in DEPLOY_CPU_CHOICES:
        raise ConfigError(f"--cpu is {deploy_cpu!r}; allowed: {list(DEPLOY_CPU_CHOICES)}")
    if deploy_agreement_min is not None and not 0.0 <= deploy_agreement_min <= 1.0:
        raise ConfigError(f"--min-deploy-agreement is {deploy_agreement_min}; it is a fraction between 0 and 1")
    if deploy_accuracy_drop_max is not None and not 0.0 <= deploy_accuracy_drop_max <= 1.0:
        raise ConfigError(f"--max-deploy-accuracy-drop is {deploy_accuracy_drop_max}; it is a fraction between 0 "
                          "and 1 (default 0.003, or 0.01 when a quantized layer has 2 bits)")
    if not 0.0 <= agreement_min <= 1.0:
        raise ConfigError(f"--min-agreement is {agreement_min}; it is a fraction between 0 and 1 (default 0.999)")
    import onnx

    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise ConfigError(f"--opset is {opset}; this export supports opsets {MIN_OPSET}..{max_opset} "
                          f"(INT4 weights and 4-bit activations need {INT4_OPSET} or later)")
    every = "all" in targets
    refuse_targets(targets, "onnx" in formats)
    targets = tuple(TARGETS) if every else tuple(dict.fromkeys(targets))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    supernet = supernet.eval()
    if iter(batches) is batches:  # a one-shot iterator: every check needs another pass
        batches = list(batches)
    first = next(iter(batches), None)
    if first is None:
        raise ConfigError("export needs at least one batch of held-out images to check the exported files on")
    example = first[0][:2]
    per_image = 8 * sum(layer.act_elems for layer in supernet.space.quantized_layers)
    forced_x = first[0][: max(1, min(TEACHER_FORCED_IMAGES, TEACHER_FORCED_BYTES // max(1, per_image)))]
    labels = batch_labels(batches)
    config = supernet.config

    log("running the fake-quant subnet on the check images")
    reference = _logits(supernet, batches, device=device)
    self_agreement = parity(reference, _logits(supernet, batches, channels_last=True))["top1_agreement"]
    metrics: dict[str, Any] = {
        "config": {"condition": config.condition, **dict(zip(("avg_w_bits", "avg_a_bits"),
                                                              supernet.space.avg_bits(config)))},
        "check": {"images": int(reference.shape[0]), "reference_classes": int(reference.argmax(1).unique().numel()),
                  "agreement_min": agreement_min, "layer_rtol": LAYER_RTOL, "teacher_forced_images": len(forced_x),
                  "reference_self_agreement": self_agreement},
    }
    if labels is not None:
        metrics["check"]["reference_accuracy"] = float((reference.argmax(1) == labels).float().mean())

    # the exact variant (BN kept as its own op) isolates what the integer form itself changes
    exact = extract_graph(supernet, example, bn_fold="none")
    exact_logits = _logits(build_model(exact), batches)
    exact_parity = parity(reference, exact_logits, labels)
    metrics["zero_points"] = {**_zero_point_report(supernet), "accuracy_change": exact_parity.get("accuracy_change"),
                              "bit_identical": exact_parity["bit_identical"], "unfolded_parity": exact_parity}
    graph = exact if bn_fold == "none" else extract_graph(supernet, example, bn_fold=bn_fold)
    # each target's constraints, checked before anything is built
    skipped: dict[str, str] = {}
    if "onnx" in formats:
        for name in targets:
            if name == "onnxruntime":
                continue  # where its integer kernels cannot run the subnet, the exact form is written (below)
            target = TARGETS[name]
            reason = target.why_not if target.backend is None else target_blocker(graph, target)
            if reason is None and every and backend(target).version() is None:
                reason = f"its runtime ({backend(target).RUNTIME}) is not installed here: pip install 'eqtools[runtimes]'"
            if reason is None:
                continue
            if not every:
                raise ConfigError(f"--target {name} cannot run this subnet: {reason}")
            skipped[name] = reason
            log(f"{name}: skipped: {reason}")
    in_memory = build_model(graph)
    graph_logits = exact_logits if graph is exact else _logits(in_memory, batches)
    metrics["bn_fold"] = {
        "mode": bn_fold,
        "layers_folded": sum(1 for n in graph.layers() if n.weight is not None and n.weight.bn),
        "batch_norms_unfolded": sum(1 for n in graph.nodes if n.op == "batch_norm"),
        "requantized_layers": sum(1 for n in graph.layers() if n.weight is not None
                                  and n.weight.bn == "folded-requantized"),
        "parity_vs_unfolded": parity(exact_logits, graph_logits, labels),
        "parity_vs_fake_quant": parity(reference, graph_logits, labels),
    }
    # the exact files (the integer file, the exact ONNX form) keep a batch norm unfolded where its fold moves a
    # code the next quantized layer reads (on the calibration images): there folding is not exact
    exact_files = graph
    if bn_fold == "scale" and graph is not exact:
        probe = list(calibration) if calibration is not None else [x for x, _ in batches][:2]
        kept = sorted(bn_folds_that_move_codes(graph, exact, probe))
        if kept:
            exact_files = extract_graph(supernet, example, bn_fold=bn_fold, keep_bn=set(kept))
            log(f"batch norm kept unfolded in the exact files for {len(kept)} layer(s) whose fold moves a code")
        metrics["bn_fold"]["kept_unfolded_in_exact_files"] = kept
    sizes = weight_bytes(graph)
    metrics["sizes"] = {**sizes, "weight_compression": sizes["fp32_weight_bytes"] / max(1, sizes["packed_weight_bytes"])}

    quant_layers = {name: m for name, m in supernet.model.named_modules() if isinstance(m, QuantLayer)}
    if metrics["bn_fold"]["requantized_layers"]:  # the requantized model is what the files must reproduce
        gate_reference, against = graph_logits, "the requantized integer model"
        keyed = {name: in_memory.layer(name) for name in _forced_layers(graph)}
        forced_ref, forced_ref_logits = _reference_inputs(in_memory, keyed, forced_x)
    else:
        gate_reference, against = reference, "the fake-quant subnet"
        forced_ref, forced_ref_logits = _reference_inputs(supernet, quant_layers, forced_x)
    metrics["check"]["reference"] = against

    if "int" in formats:
        path = out_dir / FILE_NAME
        log(f"writing {path.name} and reloading it with the standalone loader")
        size = write_int(exact_files, path)
        model = load_int(path)
        free = parity(gate_reference, _logits(model, batches), labels)
        arrived, forced_logits = _teacher_forced_torch(model, exact_files, forced_ref, forced_x)
        forced = _teacher_forced_report(arrived, forced_ref, forced_logits, forced_ref_logits)
        _gate("the integer file's model", forced, free, agreement_min, against, self_agreement, bn_fold)
        int32_bias = parity(reference, _logits(build_model(graph, _int32_bias(graph)), batches), labels)
        metrics["int"] = {"file": FILE_NAME, "file_bytes": size, "parity": free, "teacher_forced": forced,
                          "int32_bias_parity": int32_bias}
        metrics["sizes"]["int_file_bytes"] = size

    if "onnx" in formats and "onnxruntime" in targets:
        form, fallback = onnx_form, deploy_blocker(graph) if onnx_form == "deploy" else None
        if fallback is not None:
            log(f"onnx: writing the exact QDQ form, not the integer one: {fallback}")
            form = "exact"
        if form == "deploy":
            calib = None if deploy_ranges is not None else (
                [x for x, _ in batches] if calibration is None else list(calibration))
            metrics["onnx"] = _deploy_onnx(graph, batches, calib, deploy_ranges, gate_reference, labels, against,
                                           opset, deploy_agreement_min, deploy_accuracy_drop_max, threads, log,
                                           cpu=deploy_cpu)
            data = metrics["onnx"].pop("_data")
        else:
            log(f"building the exact ONNX QDQ graph (opset {opset}) and running it in onnxruntime")
            data = build_onnx(exact_files, opset, error=ExportError).SerializeToString()
            free = parity(gate_reference, run_onnx(data, [x for x, _ in batches], threads=threads), labels)
            checking = build_onnx(exact_files, opset, error=ExportError, teacher_forced=True).SerializeToString()
            arrived, forced_logits = run_onnx_teacher_forced(checking, forced_x, forced_ref, threads=threads)
            forced = _teacher_forced_report(arrived, forced_ref, forced_logits, forced_ref_logits)
            _gate(f"the ONNX file (opset {opset})", forced, free, agreement_min, against, self_agreement, bn_fold)
            metrics["onnx"] = {"file": ONNX_FILE, "form": "exact", "opset": opset, "int4": opset >= INT4_OPSET,
                               "file_bytes": len(data), "agreement_min": agreement_min,
                               "parity": free, "teacher_forced": forced}
        metrics["onnx"]["deploy_fallback"] = fallback
        (out_dir / ONNX_FILE).write_bytes(data)
        fp32 = build_onnx(extract_graph(supernet, example, bn_fold="scale", quantized=False), opset, error=ExportError)
        metrics["sizes"]["onnx_file_bytes"] = len(data)
        metrics["sizes"]["fp32_onnx_file_bytes"] = len(fp32.SerializeToString())
        metrics.setdefault("targets", {})["onnxruntime"] = _ort_entry(metrics["onnx"])
    if "onnx" in formats:
        for name in targets:
            if name == "onnxruntime" or name in skipped:
                continue
            calib = [x for x, _ in batches] if calibration is None else list(calibration)
            try:
                entry, data = _target_file(TARGETS[name], graph, batches, calib, gate_reference, labels, against,
                                           deploy_agreement_min, deploy_accuracy_drop_max, threads, log)
            except ExportError as exc:
                if not every:
                    raise
                skipped[name] = f"its file was not written: {exc}"  # --target all: the other files still are
                log(f"{name}: skipped: {exc}")
                continue
            (out_dir / entry["file"]).write_bytes(data)
            metrics.setdefault("targets", {})[name] = entry
        if skipped:
            metrics["targets_skipped"] = skipped
    return metrics


# ------------------------------------------------------------------------------------------ artifacts
def _subnet_of(source: Artifact, log: Callable[[str], None] | None,
               device: str = "cpu") -> tuple[Supernet, SubnetConfig, list[Artifact]]:
    """The subnet to export, BN-calibrated, with the artifacts it comes from.

    A ``calibrated`` artifact is read as it is. A ``search`` artifact's best config is calibrated
    in memory by the shared library (:func:`eqtools.evaluation.measure_subnet`, on the ``val``
    split), not by the calibrate stage: export writes only its own artifact, and says so. That
    calibration runs on ``device``; the subnet is returned on the CPU, where the file checks run
    (they compare against CPU runtimes to 1e-4, which a GPU's TF32 convolutions would not meet).
    """
    from eqtools.build import load_supernet
    from eqtools.evaluation import measure_subnet

    if source.kind == "search":
        supernet_artifact = source.ancestor("supernet")
        if supernet_artifact is None:
            raise ArtifactError(
                f"{source.path} (search) names no 'supernet' artifact among its ancestors that still exists; "
                "calibrate its config yourself (`eqtools calibrate --from-search ...`) and export with --from CALIBRATED"
            )
        config = SearchArtifact.best_config(source)
        if log:
            log(f"calibrating the search's best config in memory on supernet {supernet_artifact.path} (val split); "
                "no calibrated artifact is written (`eqtools calibrate --from-search` keeps one)")
        supernet, _ = measure_subnet(supernet_artifact, config, split="val",
                                     supernet=load_supernet(supernet_artifact, map_location=device))
        return supernet.cpu(), config, [source, supernet_artifact]
    if source.kind != "calibrated":
        raise ArtifactError(f"{source.path} is a '{source.kind}' artifact; export reads 'calibrated' or 'search' ones")
    config = Calibrated.config(source)
    supernet = load_supernet(source)
    try:
        supernet.apply(config)
    except ConfigError as exc:
        raise ArtifactError(f"{source.path}: its config does not fit its own supernet: {exc}") from None
    return supernet, config, [source]


@dataclass(frozen=True)
class ExportOptions:
    """The export stage's options, validated once (the CLI builds one; library callers may too).

    ``targets`` are preset names (:data:`eqtools.export.targets.TARGETS`) or ``("all",)``; None means the
    search artifact's preset where the subnet comes from a search that named one, else onnxruntime.
    ``device`` is where the PyTorch-side checks run (the fake-quant reference logits).
    """

    formats: tuple[str, ...] = ("all",)
    opset: int = DEFAULT_OPSET
    bn_fold: str = "scale"
    check_images: int = 2000
    agreement_min: float = AGREEMENT_MIN
    onnx_form: str = "deploy"
    deploy_agreement_min: float | None = None
    deploy_accuracy_drop_max: float | None = None
    deploy_calibration_images: int | None = None
    deploy_cpu: str = "auto"
    targets: tuple[str, ...] | None = None
    batch_size: int = 250
    threads: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        for f in self.formats:
            if f not in FORMATS:
                raise ConfigError(f"--format is {f!r}; allowed: {', '.join(FORMATS)}")
        if self.bn_fold not in BN_FOLD_MODES:
            raise ConfigError(f"--bn-fold is {self.bn_fold!r}; allowed: {', '.join(BN_FOLD_MODES)}")
        if self.onnx_form not in ONNX_FORMS:
            raise ConfigError(f"--onnx-form is {self.onnx_form!r}; allowed: {', '.join(ONNX_FORMS)}")
        if self.deploy_cpu not in DEPLOY_CPU_CHOICES:
            raise ConfigError(f"--cpu is {self.deploy_cpu!r}; allowed: {', '.join(DEPLOY_CPU_CHOICES)} (see --help)")
        if self.check_images < 1:
            raise ConfigError(f"--check-images is {self.check_images}; it must be at least 1 (2000 or more for a "
                              "99.9% check)")
        for name in self.targets or ():
            if name != "all" and name not in TARGETS:
                raise ConfigError(f"--target {name!r} is not known; targets: {', '.join(TARGETS)}, or all")


def default_targets(source: Artifact) -> tuple[str, ...]:
    """The preset of the search the subnet comes from, where it named one; else onnxruntime."""
    search = source.ancestor("search")
    preset = None if search is None else (search.metrics or {}).get("preset")
    return (preset,) if isinstance(preset, str) and preset in TARGETS else ("onnxruntime",)


def export_artifact(
    source: Artifact,
    options: ExportOptions | None = None,
    *,
    out: Path | str | None = None,
    log: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Artifact:
    """Export a ``calibrated`` artifact (or a ``search`` one, calibrated in memory first) as an ``export`` artifact.

    ``options`` (or its fields as keyword arguments) are :class:`ExportOptions`.
    The check images are ``check_images`` class-balanced images of the spec's held-out ``val``
    split. The integer ONNX form's 8-bit requantization ranges are the ones a ``calibrated`` artifact
    kept (``deploy_plan.json``: the graph whose accuracy the calibrate stage measured), with the
    default batch-norm folding; otherwise, or when ``deploy_calibration_images`` is given, they come
    from that many images of the ``train`` split (default :data:`DEPLOY_CALIBRATION_IMAGES`; never
    the check images). ``out`` defaults to ``artifacts/<spec>/export-<config tag>`` (with ``-vnni``
    after it for an explicit ``deploy_cpu="vnni"``, so the two files of one subnet do not replace
    each other; ``"auto"`` keeps the plain name, so a pipeline's paths do not depend on its CPU).
    Nothing is written unless every requested file passed its check. ``device`` is where a search
    artifact's config is calibrated; the checks run on the CPU (see :func:`_subnet_of`).
    """
    if options is None:
        if "formats" in kwargs:
            kwargs["formats"] = tuple(kwargs["formats"])
        if kwargs.get("targets") is not None:
            kwargs["targets"] = tuple(kwargs["targets"])
        options = ExportOptions(**kwargs)
    elif kwargs:
        raise TypeError(f"export_artifact takes options or keyword options, not both ({sorted(kwargs)})")
    o = options
    formats, opset, bn_fold, check_images = o.formats, o.opset, o.bn_fold, o.check_images
    agreement_min, onnx_form, deploy_cpu = o.agreement_min, o.onnx_form, o.deploy_cpu
    deploy_agreement_min, deploy_accuracy_drop_max = o.deploy_agreement_min, o.deploy_accuracy_drop_max
    deploy_calibration_images, batch_size, threads = o.deploy_calibration_images, o.batch_size, o.threads
    targets = o.targets if o.targets is not None else default_targets(source)
    refuse_targets(targets, any(f in ("onnx", "all") for f in formats),
                   "--target" if o.targets is not None else "the search's --preset (export's default --target)")
    from eqtools.build import artifact_spec
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, config_tag

    deploying = onnx_form == "deploy" and any(f in ("onnx", "all") for f in formats) and \
        any(t in ("onnxruntime", "all") for t in targets)
    spec = artifact_spec(source)
    if out is None and source.space is not None and source.kind in ("search", "calibrated"):
        # an explicit vnni file gets its own directory; auto's keeps the subnet's, whatever this CPU chose
        planned = SearchArtifact.best_config(source) if source.kind == "search" else Calibrated.config(source)
        out = default_out(spec.name, "export", config_tag(source.space, planned)
                          + ("-vnni" if deploying and deploy_cpu == "vnni" else ""))
    if out is not None:
        claim_out(out, "export", [source])  # before anything is calibrated or converted
    supernet, config, parents = _subnet_of(source, log, o.device)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    held_out = splits.val.balanced(check_images, spec.seed, "val")
    batches = BatchSource(held_out, batch_size)
    kept, kept_from = None, {}
    if deploying and deploy_calibration_images is None:  # a plan export would not use is not read at all
        if bn_fold == "scale":
            kept, kept_from = kept_deploy_ranges(source) or (None, {})
        elif Calibrated.DEPLOY_PLAN in source.manifest.get("files", {}) and log:
            log(f"onnx: the calibrated artifact's deploy plan is for --bn-fold scale; calibrating the 8-bit ranges for "
                f"--bn-fold {bn_fold} here")
    # train images: the 8-bit ranges of the integer files (where no kept plan gives them), the PT2E files' plan
    # and the batch norms the exact files keep unfolded; never the check images
    calibration = deploy_calibration(
        splits, spec.seed, DEPLOY_CALIBRATION_IMAGES if deploy_calibration_images is None else deploy_calibration_images,
        batch_size)
    # an explicit vnni file gets its own directory; auto's keeps the subnet's, whatever this CPU chose
    tag = config_tag(supernet.space, config) + ("-vnni" if deploying and deploy_cpu == "vnni" else "")
    out = Path(out) if out is not None else default_out(spec.name, "export", tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets a later write tell a killed export's staging from a running one's; a full disk
    # while the files are staged is reported as write_artifact reports one
    with staging_write_errors(out, "export"), \
            tempfile.TemporaryDirectory(dir=out.parent, prefix=staging_prefix(out, "export")) as staging:
        metrics = export_subnet(supernet, batches, staging, formats=formats, opset=opset, bn_fold=bn_fold,
                                agreement_min=agreement_min, onnx_form=onnx_form,
                                deploy_agreement_min=deploy_agreement_min,
                                deploy_accuracy_drop_max=deploy_accuracy_drop_max, calibration=calibration,
                                deploy_ranges=kept, deploy_cpu=deploy_cpu, targets=targets, threads=threads,
                                device=o.device, log=log)
        metrics["check"]["split"] = "val"
        if "onnx" in metrics and metrics["onnx"]["form"] == "deploy":
            metrics["onnx"]["deploy"]["calibration"] = (
                {"source": "calibrated artifact", **kept_from} if kept is not None
                else {"source": "export", "split": "train", "images": sum(len(x) for x in calibration)})
        written = sorted(os.listdir(staging))
        sizes = {name: (Path(staging) / name).stat().st_size for name in written}

        def move(tmp: Path) -> None:
            for name in written:
                os.replace(Path(staging) / name, tmp / name)

        return write_artifact(
            out, "export", move, spec=source.spec, space=supernet.space, parents=parents, metrics=metrics,
            extra={"config": config.to_dict(), "bn_fold": bn_fold, "opset": opset if ONNX_FILE in written else None,
                   "onnx_form": metrics["onnx"]["form"] if "onnx" in metrics else None,
                   "files": {**{fmt: name for fmt, name in (("int", FILE_NAME), ("onnx", ONNX_FILE)) if name in written},
                             **{t: e["file"] for t, e in metrics.get("targets", {}).items() if t != "onnxruntime"}},
                   "targets": sorted(metrics.get("targets", {})),
                   "file_bytes": sizes},
        )
