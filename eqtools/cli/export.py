"""``eqtools export``: a calibrated subnet as packed integer weights and/or ONNX (integer or exact QDQ), checked before it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from eqtools.cli._common import FORCE_HELP, DeviceOption, choices, echo, emit_artifact, handle_errors, human_bytes
from eqtools.vocab import BN_FOLD_MODES, DEPLOY_CPU_CHOICES, ONNX_FORMS, form_label
from eqtools.vocab import EXPORT_FORMATS as FORMATS


def _parity_line(name: str, p: dict[str, Any], against: str) -> str:
    line = (f"{name:<6}top-1 agreement {100 * p['top1_agreement']:.2f}% with {against}, "
            f"max |logit diff| {p['max_abs_logit_diff']:.3g}, mean {p['mean_abs_logit_diff']:.3g}")
    if "accuracy" in p:
        line += f"; top-1 {100 * p['accuracy']:.2f}% ({100 * p['accuracy_change']:+.2f} points)"
    return line


@handle_errors
def command(
    from_: Annotated[
        Path | None,
        typer.Option("--from", help="A 'calibrated' artifact, or a 'search' artifact (its best config is calibrated "
                                    "first). Default: the newest 'calibrated' artifact under artifacts/."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", metavar=choices(FORMATS), help="int: packed integer weights + scales/zero points (safetensors); "
                                      "onnx: ONNX QuantizeLinear/DequantizeLinear graph; all: both."),
    ] = "all",
    onnx_form: Annotated[
        str,
        typer.Option("--onnx-form", metavar=choices(ONNX_FORMS), help="deploy: an integer graph (QLinearConv/QGemm/QLinearAdd) that onnxruntime "
                                         "runs on integer kernels, checked against the fake-quant subnet at the "
                                         "fidelity targets (99.5% agreement, 99% below 4 bits); exact: the QDQ "
                                         "graph that reproduces the fake-quant model, its convs in float. Subnets "
                                         "with asymmetric weights are written exact (one line says why)."),
    ] = "deploy",
    cpu: Annotated[
        str,
        typer.Option("--cpu", metavar=choices(DEPLOY_CPU_CHOICES), help="Where the integer ONNX form must compute exactly. any: every x86 CPU; layers "
                                   "with 8-bit weights on 8-bit inputs store uint8 weights, since CPUs without VNNI "
                                   "sum u8 x s8 products in saturating int16. vnni: only CPUs whose u8 x s8 kernels "
                                   "sum in int32 (AVX512-VNNI, AVX-VNNI, AMX); every weight int8, faster there, "
                                   "wrong elsewhere (the file's metadata says so). On a CPU without VNNI the vnni "
                                   "file is checked through its 'any' twin, which stores the same integers. auto: "
                                   "vnni where this CPU's kernels are exact (a probe) and the file would differ, else "
                                   "any; the output says which. Use any for a file to run on CPUs you have not tested."),
    ] = "auto",
    opset: Annotated[
        int,
        typer.Option("--opset", help="ONNX opset (13 or later). At 21 or later, weights of at most 4 bits are stored "
                                     "as INT4 and 4-bit activations use INT4/UINT4; other values are carried in "
                                     "int8/uint8 with a Clip to their bit-width."),
    ] = 21,
    bn_fold: Annotated[
        str,
        typer.Option("--bn-fold", metavar=choices(BN_FOLD_MODES), help="scale: fold batch norm into the weight scales, exact (a per-tensor layer "
                                       "gets a per-channel scale vector); requantize: per-tensor layers are "
                                       "requantized after folding, so they stay per-tensor (costs accuracy, reported); "
                                       "none: keep batch norm as its own op."),
    ] = "scale",
    check_images: Annotated[
        int,
        typer.Option("--check-images", min=1, help="Held-out (val) images the exported files are checked on against "
                                                   "the fake-quant subnet (>= 99.9% top-1 agreement)."),
    ] = 2000,
    min_agreement: Annotated[
        float,
        typer.Option("--min-agreement", min=0.0, max=1.0,
                     help="Top-1 agreement with the fake-quant subnet each file must reach on the check images. "
                          "Lower it only after reading the error that names the model's own float-rounding floor."),
    ] = 0.999,
    min_deploy_agreement: Annotated[
        float | None,
        typer.Option("--min-deploy-agreement", min=0.0, max=1.0,
                     help="Top-1 agreement the integer ONNX form must reach with the deployed arithmetic it "
                          "describes (the calibrated subnet with int32 biases and 8-bit requantizations, simulated "
                          "in PyTorch). Default: 0.995, or 0.99 when a quantized layer has fewer than 4 bits."),
    ] = None,
    max_deploy_accuracy_drop: Annotated[
        float | None,
        typer.Option("--max-deploy-accuracy-drop", min=0.0, max=1.0,
                     help="Largest top-1 accuracy drop (a fraction: 0.003 = 0.3 points) the integer ONNX form may "
                          "have against the fake-quant subnet on the check images. Default: 0.003, or 0.01 when a "
                          "quantized layer has 2 bits."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", metavar="<target>", help="Deployment target (a search --preset name: onnxruntime, openvino, tensorrt, "
                                      "tflite, xnnpack, ...) or all: the file that target's runtime runs, checked in "
                                      "that runtime where it runs here. A subnet the target cannot run is refused "
                                      "with what to search for instead; all writes every file the subnet allows. "
                                      "Default: the search's --preset where the subnet comes from one, else "
                                      "onnxruntime."),
    ] = None,
    device: DeviceOption = "auto",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output directory. Default: artifacts/<spec>/export-<config tag>."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (path, files, metrics) on stdout.")] = False,
) -> None:
    """Export a calibrated subnet as the files its deployment target runs, checked before they are kept.

    --target names the runtime (onnxruntime, openvino, tflite, xnnpack, ...; all: every file the
    subnet allows); by default the search's --preset, else onnxruntime, whose default ONNX form is
    the integer graph it accelerates.

    Each file is checked on held-out images before anything is written: layer by layer (every
    quantized layer fed the fake-quant model's own input must reproduce it to 1e-4) and end to
    end (top-1 agreement >= --min-agreement, 99.9% by default; an integer form against the
    deployed arithmetic it describes, at --min-deploy-agreement), in the target's own runtime
    where this machine has it. The integer weights file is reloaded with the standalone loader.
    See docs/export.md.
    """
    from eqtools.artifacts import resolve_input
    from eqtools.device import resolve_device
    from eqtools.export import ExportOptions, export_artifact

    options = ExportOptions(device=resolve_device(device), formats=(fmt,), opset=opset, bn_fold=bn_fold, check_images=check_images,
                            agreement_min=min_agreement, onnx_form=onnx_form, deploy_agreement_min=min_deploy_agreement,
                            deploy_accuracy_drop_max=max_deploy_accuracy_drop, deploy_cpu=cpu,
                            targets=None if target is None else (target,))
    source = resolve_input(from_, ("calibrated", "search"), echo=echo)
    result = export_artifact(source, options, out=out, log=echo)
    m = result.metrics
    if as_json:
        emit_artifact(result, files=result.extra.get("files", {}), config=result.extra.get("config"))
        return
    sizes = m["sizes"]
    print(f"subnet  {form_label(*m['config']['condition'].split('/'))}, avg bits W {m['config']['avg_w_bits']:.2f} "
          f"A {m['config']['avg_a_bits']:.2f}; batch norm: {m['bn_fold']['mode']} "
          f"({m['bn_fold']['layers_folded']} folded, {m['bn_fold']['batch_norms_unfolded']} kept)")
    print(f"weights {human_bytes(sizes['packed_weight_bytes'])} packed vs {human_bytes(sizes['fp32_weight_bytes'])} "
          f"FP32 ({sizes['weight_compression']:.1f}x smaller)")
    against = "fake-quant" if m["check"]["reference"].endswith("subnet") else "requantized model"
    if "int" in m:
        print(_parity_line("int", m["int"]["parity"], against) + f"; file {human_bytes(m['int']['file_bytes'])}")
    if "onnx" in m:
        o = m["onnx"]
        deployed = o["form"] == "deploy"
        print(_parity_line("onnx", o["parity"], "the deployed arithmetic" if deployed else against)
              + f"; file {human_bytes(o['file_bytes'])} (FP32 ONNX {human_bytes(sizes['fp32_onnx_file_bytes'])}), "
              f"opset {o['opset']}, {o['form']} form")
        if deployed:
            print(_parity_line("onnx", o["parity_vs_fake_quant"], against))
            d = o["deploy"]
            print(f"onnx  integer kernels: {d['integer_convs']} QLinearConv, {d['integer_gemms']} QGemm; "
                  f"{d['requantized_values']} values requantized to 8 bits, {d['exact_values']} rounded as in "
                  "the fake-quant model")
            auto = " (--cpu auto)" if d.get("cpu_requested") == "auto" else ""
            print("onnx  for " + ("x86 CPUs with VNNI only: every weight int8" if d.get("cpu") == "vnni"
                                  else "any x86 CPU") + auto)
            calibration = d.get("calibration", {})
            if calibration.get("source") == "calibrated artifact":
                print(f"onnx  8-bit ranges kept by `eqtools calibrate` ({calibration.get('images')} train images): the "
                      "graph whose top-1 the calibrated artifact records as deployed")
    for name, t in m.get("targets", {}).items():
        if name == "onnxruntime":
            continue
        integer = "not measured" if t["integer_layers"] is None else f"{t['integer_layers']}/{t['quantized_layers']}"
        top1 = "" if t["top1"] is None else f"; top-1 {100 * t['top1']:.2f}%"
        print(f"{name:<11} {t['file']}: {human_bytes(t['file_bytes'])}, {t['runtime_version']}, agreement "
              f"{100 * t['agreement']:.2f}% with its deployed arithmetic{top1}; integer conv/linear layers {integer}"
              + ("" if t["checked"] else f" (not checked in {t['runtime']})"))
    for name, why in m.get("targets_skipped", {}).items():
        print(f"{name:<11} skipped: {why}")
    print(f"checked on {m['check']['images']} held-out images; wrote {result.path}")
