"""Deployment targets mapped to the form a search runs at (granularity, weight and activation symmetry).

A preset is what a runtime's integer kernels execute: weight granularity, weight symmetry,
activation symmetry (activations are per-tensor everywhere here), the signedness of the integer
containers and their width. Subnets below 8 bits ride in the runtime's 8-bit containers (codes of a
b-bit form are a subset of the 8-bit range), so the container width does not limit the search's
bit-widths. Every field names the document it follows; ``docs/search.md`` repeats the table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from eqtools.errors import ConfigError
from eqtools.space import ElasticSpace
from eqtools.vocab import form_label, resolve_symmetry_flags

__all__ = ["PRESETS", "Preset", "resolve_conditions"]


@dataclass(frozen=True)
class Preset:
    name: str
    granularity: str
    w_symmetry: str
    a_symmetry: str
    w_container: str  # integer type of the weights, e.g. "int8"
    a_container: str  # integer type of the activations, e.g. "uint8"
    target: str
    source: str

    @property
    def form(self) -> tuple[str, str, str]:
        return self.granularity, self.w_symmetry, self.a_symmetry

    @property
    def label(self) -> str:
        return form_label(*self.form)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tensorrt", "per-channel", "sym", "sym", "int8", "int8", "NVIDIA TensorRT (INT8 engines from QDQ ONNX)",
               "TensorRT developer guide, 'Working with Quantized Types': only symmetric quantization (zero point 0) "
               "for weights and activations; weights per output channel, activations per tensor; signed INT8"),
        Preset("onnxruntime", "per-channel", "sym", "asym", "int8", "uint8", "ONNX Runtime CPU EP on x86-64 (QLinearConv, QGemm)",
               "ONNX Runtime 'Quantize ONNX models': on x86-64 use U8S8 (uint8 activations with a zero point, int8 "
               "weights); per-channel weights need equal zero points and zero point 0 takes the symmetric prepacked "
               "kernels; activations per tensor"),
        Preset("xnnpack", "per-channel", "sym", "asym", "int8", "int8", "XNNPACK (ExecuTorch, TFLite's CPU delegate) QS8 operators",
               "ExecuTorch XNNPACK delegate documentation, 'Quantization': 8-bit symmetric weights with 8-bit "
               "asymmetric activations, per-channel or per-tensor weights (XNNPACKQuantizer's "
               "get_symmetric_quantization_config(is_per_channel=True))"),
        Preset("tflite", "per-channel", "sym", "asym", "int8", "int8", "TensorFlow Lite / LiteRT int8 kernels",
               "LiteRT 8-bit quantization specification: weights per-axis int8, symmetric (zero point 0) in "
               "[-127, 127]; activations per-tensor int8, asymmetric (any zero point in [-128, 127])"),
        Preset("tflite-uint8", "per-tensor", "asym", "asym", "uint8", "uint8", "legacy TensorFlow Lite uint8 models (gemmlowp kernels)",
               "LiteRT 8-bit quantization specification, note on the older uint8 tooling: per-tensor asymmetric "
               "uint8 for weights and activations"),
        Preset("openvino", "per-channel", "sym", "sym", "int8", "int8 or uint8", "Intel OpenVINO (NNCF default 'performance' preset)",
               "OpenVINO DefaultQuantization parameters: preset 'performance' (the default) is symmetric "
               "quantization of weights and activations ('mixed' is symmetric weights, asymmetric activations); "
               "weights per output channel, activations per tensor"),
        Preset("snpe", "per-tensor", "asym", "asym", "uint8", "uint8", "Qualcomm SNPE / QNN HTP (default quantization)",
               "SNPE 'Quantized vs non-quantized models': 8-bit fixed point with asymmetric min/max encodings, one per "
               "tensor, for weights and activations (per-channel encodings only on request)"),
    )
}
PRESETS["qnn"] = replace(PRESETS["snpe"], name="qnn")


def resolve_conditions(
    space: ElasticSpace,
    granularity: str | None,
    symmetry: str | None,
    preset: str | None,
    *,
    w_symmetry: str | None = None,
    a_symmetry: str | None = None,
) -> tuple[str, str, str, Preset | None]:
    """The search's (granularity, w_symmetry, a_symmetry) from flags and/or a preset, checked against the space.

    ``symmetry`` is the shorthand for both symmetries; a flag that contradicts the preset is refused
    rather than silently winning, since either reading could be what the user meant.
    """
    w_sym, a_sym = resolve_symmetry_flags(symmetry, w_symmetry, a_symmetry)
    chosen = None
    if preset is not None:
        chosen = PRESETS.get(preset)
        if chosen is None:
            raise ConfigError(f"--preset {preset!r} is unknown; presets: {', '.join(sorted(PRESETS))}")
        for flag, given, wanted in (("--granularity", granularity, chosen.granularity),
                                    ("--w-symmetry", w_sym, chosen.w_symmetry),
                                    ("--a-symmetry", a_sym, chosen.a_symmetry)):
            if given is not None and given != wanted:
                if symmetry is not None and flag != "--granularity":
                    flag = "--symmetry"
                raise ConfigError(
                    f"{flag} {given} contradicts --preset {preset}, which means {chosen.label} "
                    f"({chosen.target}); drop one of the two"
                )
        granularity, w_sym, a_sym = chosen.form
    if granularity is None or w_sym is None or a_sym is None:
        missing = [f for f, v in (("--granularity", granularity), ("--w-symmetry", w_sym), ("--a-symmetry", a_sym))
                   if v is None]
        raise ConfigError(
            f"give {' and '.join(missing)} (the form to search at: granularity per-channel|per-tensor, weight and "
            "activation symmetry sym|asym; --symmetry sets both), or --preset with one of: "
            f"{', '.join(sorted(PRESETS))}"
        )
    try:
        space.check_form(granularity, w_sym, a_sym)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the supernet was trained for these; retrain with a wider spec.space)") from None
    return granularity, w_sym, a_sym, chosen
