"""Export a calibrated subnet to the file each deployment target runs, checked in that runtime against the fake-quant model.

``load_int`` and the file-format helpers come from :mod:`eqtools.export.runtime`, which needs no
eqtools training code (importing ``eqtools.export`` for ``load_int`` imports neither
``eqtools.quant`` nor ``eqtools.train``); the exporting side is imported on first use. See
``docs/export.md`` for the formats, the batch-norm folding choice and the measured parity.
"""

from __future__ import annotations

from typing import Any

from eqtools.errors import EqtoolsError
from eqtools.export.runtime import DeployedModel, IntFormatError, load_int, pack_codes, read_int, unpack_codes

__all__ = [
    "BN_FOLD_MODES",
    "DEFAULT_OPSET",
    "DEPLOY_AGREEMENT_MIN",
    "FORMATS",
    "ONNX_FORMS",
    "DeployGraph",
    "DeployedModel",
    "ExportError",
    "ExportOptions",
    "IntFormatError",
    "build_deploy_onnx",
    "build_onnx",
    "deploy_blocker",
    "deploy_calibration",
    "export_artifact",
    "export_subnet",
    "extract_graph",
    "load_int",
    "measure_deployed",
    "optimized_ops",
    "pack_codes",
    "parity",
    "read_int",
    "run_onnx",
    "simulate_deploy",
    "u8s8_saturation",
    "unpack_codes",
    "write_int",
]


class ExportError(EqtoolsError):
    """The export does not match the fake-quant subnet, or the subnet cannot be written in the asked format."""


_LAZY = {
    "BN_FOLD_MODES": "eqtools.export._graph",
    "DeployGraph": "eqtools.export._graph",
    "extract_graph": "eqtools.export._graph",
    "build_onnx": "eqtools.export.backends.qdq",
    "build_deploy_onnx": "eqtools.export.backends.onnxruntime",
    "deploy_blocker": "eqtools.export.backends.onnxruntime",
    "optimized_ops": "eqtools.export.backends.onnxruntime",
    "simulate_deploy": "eqtools.export.backends.onnxruntime",
    "u8s8_saturation": "eqtools.export.backends.onnxruntime",
    "DEPLOY_AGREEMENT_MIN": "eqtools.export._stage",
    "ONNX_FORMS": "eqtools.export._stage",
    "run_onnx": "eqtools.export.backends.onnxruntime",
    "DEFAULT_OPSET": "eqtools.export._stage",
    "FORMATS": "eqtools.export._stage",
    "export_artifact": "eqtools.export._stage",
    "ExportOptions": "eqtools.export._stage",
    "export_subnet": "eqtools.export._stage",
    "deploy_calibration": "eqtools.export._measure",
    "measure_deployed": "eqtools.export._measure",
    "parity": "eqtools.export._measure",
    "write_int": "eqtools.export._stage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eqtools.export' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
