"""eqtools: once-for-all quantization-aware training (EQ-Net, ICCV 2023) as a CLI toolchain.

The package root stays light so that ``eqtools --help`` does not pay for ``import torch``:
torch-backed names are resolved lazily on first access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ElasticSpace",
    "EqtoolsError",
    "SubnetConfig",
    "Supernet",
    "__version__",
    "quantize_model",
]

_LAZY = {
    "ElasticSpace": "eqtools.space",
    "SubnetConfig": "eqtools.space",
    "EqtoolsError": "eqtools.errors",
    "Supernet": "eqtools.quant",
    "quantize_model": "eqtools.quant",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eqtools' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
