"""Shared fixtures: real (tiny) data from scikit-learn's digits, and a small trained supernet.

The supernet fixture trains tiny_cnn on digits for a few seconds with random subnets each step,
so stages downstream of `train` can be tested on a model whose accuracy means something.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from eqtools.specs import Spec, parse_spec

# Tests run in parallel (pytest -n 2 on 2 cores): one intra-op thread per worker avoids
# oversubscription, which makes OpenMP spin and slows everything down several-fold.
torch.set_num_threads(1)

DIGITS_SPEC = {
    "name": "digits-test",
    "seed": 0,
    "model": {"name": "tiny_cnn"},
    "data": {"name": "digits", "val_size": 300},
    "space": {"w_bits": [2, 3, 4, 8], "a_bits": [2, 3, 4, 8]},
    "train": {"epochs": 2, "batch_size": 64, "init_images": 128, "compile": "off"},
    "calibrate": {"images": 256, "batch_size": 128},
    "sample": {"n": 24, "subset": 200, "calib_images": 128, "batch_size": 100},
    "predictor": {"epochs": 30},
    "search": {"population": 16, "generations": 10},
}


@pytest.fixture(scope="session")
def digits_spec() -> Spec:
    from eqtools.build import resolve_spec

    return resolve_spec(parse_spec(DIGITS_SPEC))


@pytest.fixture(scope="session")
def digits_splits(digits_spec):
    from eqtools.data import load_splits

    return load_splits(digits_spec.data, digits_spec.seed)


def _train_tiny_supernet(spec: Spec, splits, steps: int = 150):
    from eqtools.build import build_supernet

    torch.manual_seed(0)
    supernet = build_supernet(spec)
    supernet.init_from_data(x for x, _ in splits.train.batches(128, limit=1))
    opt = torch.optim.Adam(supernet.parameters(), lr=3e-3)
    rng = random.Random(0)
    supernet.train()
    step = 0
    while step < steps:
        for x, y in splits.train.batches(64, shuffle=True, augment=True, epoch=step):
            configs = [supernet.space.max(), supernet.space.random(rng)]
            opt.zero_grad()
            for config in configs:
                supernet.apply(config)
                torch.nn.functional.cross_entropy(supernet(x), y).backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    supernet.eval()
    supernet.apply(supernet.space.max())
    return supernet


@pytest.fixture(scope="session")
def tiny_supernet_artifact(tmp_path_factory, digits_spec, digits_splits) -> Path:
    """A `supernet` artifact of tiny_cnn trained briefly on digits (read-only: copy before editing)."""
    from eqtools.build import save_supernet

    supernet = _train_tiny_supernet(digits_spec, digits_splits)
    out = tmp_path_factory.mktemp("artifacts") / "digits-test" / "supernet"
    save_supernet(supernet, out, digits_spec, metrics={"note": "test fixture"})
    return out


def recalibrate_random_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Exact BN statistics of random data, so an untrained net's predictions vary with the input."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def spread_logits(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Standardise each class's logit over the data (last layer), so an untrained net predicts many classes."""
    fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        logits = model(x)
        mean, std = logits.mean(0), logits.std(0).clamp_min(1e-6)
        fc.weight.div_(std[:, None])
        fc.bias.sub_(mean).div_(std)


def random_supernet(name: str, channels: int, size: int, n: int = 128, seed: int = 0, space=None, **kwargs):
    """An untrained ``name`` quantized over 2/3/4/8 bits, its BN statistics and logits spread over random
    inputs so its predictions vary; returns the supernet and two batches of those inputs."""
    from eqtools.models import get_model
    from eqtools.quant import quantize_model

    torch.manual_seed(seed)
    model = get_model(name, num_classes=10, in_channels=channels, **kwargs)
    x = torch.randn(n, channels, size, size)
    recalibrate_random_bn(model, x)
    spread_logits(model, x)
    supernet = quantize_model(model, space or {"w_bits": (2, 3, 4, 8), "a_bits": (2, 3, 4, 8)}, x[:1])
    supernet.init_from_data([x[: n // 2]])
    return supernet.eval(), [(x[: n // 2], None), (x[n // 2 :], None)]
