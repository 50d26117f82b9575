"""Where the model runs: the one resolver behind every stage's ``--device``.

``auto`` (the default everywhere) is CUDA when torch sees a GPU, else the CPU, so a pipeline
written on a laptop runs on the GPU box unchanged. A device that is not there is refused before
anything is loaded, in one paragraph that names what is available: a typo or a missing driver
must not surface as a CUDA traceback minutes into a run.

Under ``torchrun`` a plain ``cuda`` becomes ``cuda:<LOCAL_RANK>`` (one GPU per process); that
placement is done by the stages that start process groups, not here.
"""

from __future__ import annotations

import re

from eqtools.errors import ConfigError

__all__ = ["DEVICE_HELP", "available_devices", "resolve_device"]

DEVICE_HELP = "Where the model runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
_CUDA = re.compile(r"cuda(?::(\d+))?")


def available_devices() -> list[str]:
    """The device names this machine accepts (``cpu`` always; ``cuda:N`` per visible GPU)."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def _why_no_cuda() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} and finds none (no NVIDIA driver, "
            "or CUDA_VISIBLE_DEVICES hides them)")


def resolve_device(name: str | None = "auto") -> str:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a torch device string; refuse what is not here.

    Raises :class:`ConfigError` (exit status 2 at the CLI) for an unknown name, for CUDA on a
    machine without a usable GPU, and for a GPU index past the last one.
    """
    import torch

    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"--device {name!r} is not a device this tool runs on; use auto (CUDA when present, else CPU), cpu, "
            f"cuda or cuda:N. Available here: {', '.join(available_devices())}"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name} asks for a CUDA GPU, and this machine has no usable CUDA GPU: {_why_no_cuda()}. "
            "Available here: cpu. "
            "Use --device cpu, or --device auto to take a GPU only where there is one"
        )
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"--device {name} names GPU {index}, but this machine has {count} (cuda:0..cuda:{count - 1}). "
                f"Available here: {', '.join(available_devices())}"
            )
    return text
