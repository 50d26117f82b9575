"""CUDA-only checks (`nox -s gpu`): the quantizer and the training step behave as on the CPU."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import DIGITS_SPEC

from eqtools.models import get_model
from eqtools.quant import WeightQuantizer, quantize_model
from eqtools.train import sample_sandwich, sandwich_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("gran", ["per-channel", "per-tensor"])
@pytest.mark.parametrize("sym", ["sym", "asym"])
def test_weight_quantizer_matches_cpu(gran, sym):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    outs, grads = [], []
    for device in ("cpu", "cuda"):
        q = WeightQuantizer(16, w.numel(), (2, 4, 8), ("per-channel", "per-tensor"), ("sym", "asym")).to(device)
        q.init_from_weight(w.to(device))
        q.activate(4, gran, sym)
        wd = w.to(device).requires_grad_()
        out = q(wd)
        out.square().sum().backward()
        outs.append(out.detach().cpu())
        grads.append(wd.grad.cpu())
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_sandwich_step_and_compile_without_recompiles_on_cuda():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    supernet = quantize_model(get_model("resnet20").cuda(), {}, x[:1]).cuda()
    supernet.init_from_data([x])
    supernet.train()
    out = sandwich_step(supernet, supernet, x, y, sample_sandwich(supernet.space, random.Random(0), 1))
    assert torch.isfinite(torch.tensor(out["loss"]))
    compiles = {"n": 0}

    def backend(gm, example_inputs):
        compiles["n"] += 1
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    compiled = torch.compile(supernet, backend=backend)
    compiled(x).sum().backward()
    warm = compiles["n"]
    rng = random.Random(1)
    for _ in range(10):
        supernet.apply(supernet.space.random(rng))
        compiled(x).sum().backward()
    assert compiles["n"] == warm


def test_train_cli_on_cuda(tmp_path):
    spec = {**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 1, "compile": "off"}}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "eqtools", "train", str(tmp_path / "s.json"), "--device", "cuda",
                           "--out", str(tmp_path / "o"), "-q", "--json"], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["kind"] == "supernet"


@pytest.mark.parametrize("workers", [0, 2])
def test_imagefolder_batches_for_a_gpu_are_pinned_and_the_same(tmp_path, workers):
    """Training on CUDA asks for pinned batches: the main process normalises into page-locked memory, and the
    values are those of the unpinned batches."""
    from imagetree import make_tree

    from eqtools.data import load_splits
    from eqtools.specs import DataSpec

    root = make_tree(tmp_path / "jpegs", classes=2, train_per_class=12, val_per_class=2)
    spec = DataSpec(name="imagefolder", root=str(root), image_size=24, val_size=10, workers=workers)
    train = load_splits(spec, seed=0).train
    plain = list(train.batches(4, shuffle=True, augment=True, seed=1))
    pinned = list(train.batches(4, shuffle=True, augment=True, seed=1, pin_memory=True))
    assert len(plain) == len(pinned) > 0
    for (x, y), (xp, yp) in zip(plain, pinned, strict=True):
        assert xp.is_pinned() and not x.is_pinned()
        assert torch.equal(x, xp) and torch.equal(y, yp)
