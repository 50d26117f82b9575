"""The GPU check script (`nox -s gpu`) runs end to end, shrunk, on the CPU: ready for the day a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_without_a_gpu_says_so_and_exits_2(tmp_path):
    proc = _run("--work", str(tmp_path / "w"), timeout=120)
    assert proc.returncode == 2 and "asks for a CUDA GPU, and this machine has no usable CUDA GPU" in " ".join(proc.stderr.split())
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Fashion-MNIST installed")
def test_gpu_check_runs_quick_on_the_cpu(tmp_path):
    proc = _run("--device", "cpu", "--quick", "--work", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = proc.stdout
    for row in ("r20-fmnist, 1 epoch, fp32: train images/s", "bf16 autocast: train images/s",
                "sample 8 subnets: subnets/min", "export int: top-1 agreement", "export onnx: top-1 agreement",
                "CUDA tests (`pytest -m gpu`)"):
        assert row in table, row
    assert not (ROOT / "benchmarks" / "results" / "gpu.json").exists() or "Quick" not in (
        ROOT / "benchmarks" / "results" / "gpu.json").read_text()
