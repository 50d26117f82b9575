"""Deployment targets mapped to the search's conditions (weight granularity, symmetry).

EQ-Net's conditions are global: one symmetry for weights *and* activations, and activations are
always per-tensor. A runtime that wants symmetric weights but accepts asymmetric activations
therefore maps to ``sym`` (a zero point of 0 is a valid asymmetric activation zero point), never
the other way round. Each preset names the document it follows; ``docs/search.md`` repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass

from eqtools.errors import ConfigError
from eqtools.space import ElasticSpace

__all__ = ["PRESETS", "Preset", "resolve_conditions"]


@dataclass(frozen=True)
class Preset:
    name: str
    granularity: str
    symmetry: str
    target: str
    source: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tensorrt", "per-channel", "sym", "NVIDIA TensorRT (INT8 engines from QDQ ONNX)",
               "TensorRT developer guide, 'Working with Quantized Types': TensorRT uses a symmetric scheme "
               "for weights and activations; weights per-channel (per output channel), activations per-tensor"),
        Preset("tflite", "per-channel", "sym", "TensorFlow Lite / LiteRT int8 kernels",
               "LiteRT 8-bit quantization specification: weights per-axis (per-channel) int8 with zero point 0; "
               "activations per-tensor int8 with any zero point, so symmetric activations fit too"),
        Preset("tflite-uint8", "per-tensor", "asym", "legacy TensorFlow Lite uint8 models, gemmlowp-style CPU kernels",
               "LiteRT 8-bit quantization specification, note on the older tooling: per-tensor, asymmetric, uint8"),
        Preset("openvino", "per-channel", "sym", "Intel OpenVINO (POT/NNCF default 'performance' preset)",
               "OpenVINO DefaultQuantization parameters: preset 'performance' (default) = symmetric quantization "
               "of weights and activations, weights per output channel"),
    )
}


def resolve_conditions(
    space: ElasticSpace,
    granularity: str | None,
    symmetry: str | None,
    preset: str | None,
) -> tuple[str, str, Preset | None]:
    """The search's (granularity, symmetry) from flags and/or a preset, checked against the space."""
    chosen = None
    if preset is not None:
        chosen = PRESETS.get(preset)
        if chosen is None:
            raise ConfigError(f"--preset {preset!r} is unknown; presets: {', '.join(sorted(PRESETS))}")
        for flag, given, wanted in (("--granularity", granularity, chosen.granularity),
                                    ("--symmetry", symmetry, chosen.symmetry)):
            if given is not None and given != wanted:
                raise ConfigError(
                    f"{flag} {given} contradicts --preset {preset}, which means {chosen.granularity}/{chosen.symmetry} "
                    f"({chosen.target}); drop one of the two"
                )
        granularity, symmetry = chosen.granularity, chosen.symmetry
    if granularity is None or symmetry is None:
        missing = " and ".join(f for f, v in (("--granularity", granularity), ("--symmetry", symmetry)) if v is None)
        raise ConfigError(
            f"give {missing} (the conditions to search at: granularity per-channel|per-tensor, symmetry sym|asym), "
            f"or --preset with one of: {', '.join(sorted(PRESETS))}"
        )
    if granularity not in space.granularities:
        raise ConfigError(
            f"granularity {granularity!r} is not in the supernet's space; it was trained for {list(space.granularities)}"
        )
    if symmetry not in space.symmetries:
        raise ConfigError(f"symmetry {symmetry!r} is not in the supernet's space; it was trained for {list(space.symmetries)}")
    return granularity, symmetry, chosen
