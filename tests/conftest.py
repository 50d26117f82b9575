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
