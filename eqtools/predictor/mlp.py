"""The CQAP as an MLP: trained and run with torch, stored as safetensors.

Architecture as in the paper's predictor lineage (AttentiveNAS/AlphaNet, EQ-Net's reference code):
``layers`` hidden Linear+ReLU layers of width ``hidden`` (7 × 200) and a scalar output, trained with
SmoothL1. The target is standardised (z-score over the training split) so the loss sees values of
order one whatever the accuracy range; the mean and scale are stored beside the weights.

Optimiser: the paper states SGD (lr 4e-4, wd 1e-4), the reference code uses Adam (lr 4e-4,
wd 1e-5). With 100 epochs SGD at lr 4e-4 barely moves the network off its initialisation (see
``docs/fit-predictor.md`` for the measurement), so Adam is the default and SGD (momentum 0.9) is
available for comparison.

Inference runs the same few matrix products with torch on one thread: the genetic search calls
the predictor 500 times on ~75 configs, and at that size extra BLAS threads only fight over the
cores (on a busy 2-core machine one torch thread was the fastest of numpy/OpenBLAS and torch with
one or two threads, by an order of magnitude against two BLAS threads; BENCHMARKS.md, "Search",
times the search). :func:`one_thread` scopes that setting to a block.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqtools.artifacts import Predictor as PredictorArtifact
from eqtools.errors import ArtifactError

__all__ = ["OPTIMIZERS", "MLPWeights", "load_mlp", "mlp_from_state", "one_thread", "pairwise_rank_loss", "save_mlp", "train_mlp"]

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
WEIGHTS_FILE = PredictorArtifact.MLP_WEIGHTS
_KEY = re.compile(r"^(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class MLPWeights:
    """Dense layers as numpy arrays: ``weights[i]`` is [out, in], ``biases[i]`` is [out].

    The keys in safetensors are those of the torch ``nn.Sequential`` that trained them
    (``0.weight``, ``0.bias``, ``2.weight``, ...), so the file also loads into torch strictly.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    target_mean: float
    target_std: float
    _tensors: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Accuracy fractions [N] for float32 features [N, F]."""
        import torch

        if not self._tensors:
            self._tensors.extend((torch.from_numpy(w.T.copy()), torch.from_numpy(b)) for w, b in zip(self.weights, self.biases))
        last = len(self._tensors) - 1
        with torch.no_grad():
            h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            for i, (w_t, b) in enumerate(self._tensors):
                h = torch.addmm(b, h, w_t)
                if i < last:
                    h.relu_()
            out = h[:, 0].numpy().astype(np.float64)
        return out * self.target_std + self.target_mean

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{2 * i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
            out[f"{2 * i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
        return out


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (small MLPs: threads only add contention)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _build(n_features: int, hidden: int, layers: int):
    from torch import nn

    modules: list = []
    width = n_features
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, 1))
    return nn.Sequential(*modules)


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: int = 200,
    layers: int = 7,
    epochs: int = 100,
    lr: float = 4e-4,
    weight_decay: float = 1e-5,
    optimizer: str = "adam",
    batch_size: int = 32,
    seed: int = 0,
    rank_weight: float = 0.0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> MLPWeights:
    """Fit the MLP on features ``x`` [N, F] and accuracies ``y`` [N]; deterministic for a seed.

    ``rank_weight`` adds that multiple of :func:`pairwise_rank_loss` (over every pair in a
    mini-batch) to the SmoothL1 regression loss: the search only needs the *order* of subnets,
    and a pairwise term spends the network's capacity on pairs it orders wrongly instead of on
    absolute accuracy. ``on_epoch(epoch, mean_loss)`` is called after every epoch.
    """
    import torch

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r}; allowed: {list(OPTIMIZERS)}")
    y = np.asarray(y, dtype=np.float64)
    mean = float(y.mean())
    std = float(y.std()) or 1.0
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _build(x.shape[1], hidden, layers)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(((y - mean) / std).astype(np.float32))
    if optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=lr, weight_decay=weight_decay, momentum=0.9)
    regression = torch.nn.SmoothL1Loss()

    def loss_fn(pred, target):
        loss = regression(pred, target)
        if rank_weight > 0:
            loss = loss + rank_weight * pairwise_rank_loss(pred, target)
        return loss

    net.train()
    # a 200-wide MLP gains nothing from intra-op threads, and on a busy machine they cost many times over
    with one_thread():
        _epochs(net, opt, loss_fn, xt, yt, epochs, batch_size, gen, on_epoch)
    net.eval()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    return MLPWeights(
        weights=tuple(m.weight.detach().numpy().copy() for m in linears),
        biases=tuple(m.bias.detach().numpy().copy() for m in linears),
        target_mean=mean,
        target_std=std,
    )


def pairwise_rank_loss(pred: Any, target: Any, temperature: float = 0.1) -> Any:
    """Mean logistic loss ``log(1 + exp(-(p_i - p_j) / T))`` over pairs with ``target_i > target_j``.

    ``pred`` and ``target`` are 1-D tensors on the same (standardised) scale. Zero when every
    ordered pair is predicted in the right order by a wide margin; ties in ``target`` count for
    nothing. RankNet's loss (Burges et al. 2005), which the paper's predictor lineage
    (AlphaNet/NAS predictors) uses for ranking.
    """
    import torch.nn.functional as F

    diff_t = target[:, None] - target[None, :]
    diff_p = (pred[:, None] - pred[None, :]) / temperature
    mask = diff_t > 0
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return F.softplus(-diff_p[mask]).mean()


def _epochs(net, opt, loss_fn, xt, yt, epochs: int, batch_size: int, gen, on_epoch) -> None:
    import torch

    n = len(xt)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt[idx])[:, 0], yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / n)


def save_mlp(path: Path, model: MLPWeights) -> None:
    from safetensors.numpy import save_file

    save_file(model.state_dict(), str(path), metadata={"format": "eqtools-cqap-mlp"})


def load_mlp(path: Path, target_mean: float, target_std: float) -> MLPWeights:
    """Read the weights written by :func:`save_mlp`; a malformed file is an :class:`ArtifactError`."""
    from safetensors.numpy import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for malformed headers/data
        raise ArtifactError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return mlp_from_state(state, target_mean, target_std, str(path))


def mlp_from_state(state: dict[str, np.ndarray], target_mean: float, target_std: float, where: str) -> MLPWeights:
    """Check and assemble ``N.weight``/``N.bias`` tensors into an :class:`MLPWeights`."""
    layers: dict[int, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            raise ArtifactError(f"{where}: unexpected tensor {key!r}; an MLP predictor holds only N.weight/N.bias")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    order = sorted(layers)
    if not order or any(set(layers[i]) != {"weight", "bias"} for i in order):
        raise ArtifactError(f"{where}: every layer needs both a weight and a bias tensor")
    weights = tuple(layers[i]["weight"].astype(np.float32) for i in order)
    biases = tuple(layers[i]["bias"].astype(np.float32) for i in order)
    for prev, nxt in itertools.pairwise(weights):
        if prev.shape[0] != nxt.shape[1]:
            raise ArtifactError(f"{where}: layer shapes do not chain ({prev.shape} then {nxt.shape})")
    if weights[-1].shape[0] != 1:
        raise ArtifactError(f"{where}: the last layer must have one output, it has {weights[-1].shape[0]}")
    return MLPWeights(weights, biases, float(target_mean), float(target_std))
