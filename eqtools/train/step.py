"""One optimisation step: EQ-Net's sandwich with group progressive guidance, or static QAT.

Each sandwich step samples a group of subnets: the largest (all candidates at their highest
bits, random granularity/symmetry; paper "H"), ``num_random`` random subnets ("R") and the
smallest ("L"). H learns from the labels; every following subnet learns from
``λ·KL(previous ‖ it) + (1 − λ)·CE`` where *previous* is the next-larger member of the group
(random subnets are ordered by average bits, so guidance always flows from more to fewer bits).
Gradients of all members are summed and the optimiser steps once (paper Eq. 8).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqtools.quant import Supernet
from eqtools.space import ElasticSpace, SubnetConfig
from eqtools.train.losses import kl_distill, wdr_loss

__all__ = ["sample_sandwich", "sandwich_step", "static_step", "wdr_weights"]

Backward = Callable[[Tensor], None]


def _backward(loss: Tensor) -> None:
    loss.backward()


def sample_sandwich(space: ElasticSpace, rng: random.Random, num_random: int) -> list[SubnetConfig]:
    """[largest, random..., smallest], each member's form drawn independently.

    Granularity, weight symmetry and activation symmetry are drawn apart for every member, so a
    step trains the 8 forms of a full space in every combination (paper Eq. 9: S_w and S_a).
    """
    largest = space.max(*space.random_form(rng))
    randoms = [space.random(rng) for _ in range(num_random)]
    randoms.sort(key=lambda c: sum(space.avg_bits(c)), reverse=True)
    smallest = space.min(*space.random_form(rng))
    return [largest, *randoms, smallest]


def wdr_weights(supernet: Supernet, exclude_first: bool = True) -> list[Tensor]:
    """The shared weights WDR regularises: every quantized layer, the first excluded by default
    (it sees the raw image and is pinned at 8 bits; the reference excludes it too)."""
    names = list(supernet.space.layer_names)
    if exclude_first:
        names = names[1:]
    layers = dict(supernet.quant_layers())
    return [layers[n].weight for n in names]  # type: ignore[attr-defined]


def _no_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    if not last and hasattr(model, "no_sync"):
        return model.no_sync()  # DDP: all-reduce once, on the last backward of the step
    return contextlib.nullcontext()


def sandwich_step(
    model: nn.Module,
    supernet: Supernet,
    x: Tensor,
    y: Tensor,
    configs: Sequence[SubnetConfig],
    *,
    kd_lambda: float = 0.5,
    temperature: float = 1.0,
    distill: bool = True,
    wdr: dict[str, Any] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    backward: Backward = _backward,
) -> dict[str, float]:
    """Forward/backward every member of the group; gradients accumulate, the caller steps.

    ``model`` is what runs the forward (the supernet, or its DDP/compiled wrapper); ``supernet``
    is the module whose subnet is switched. ``wdr`` holds ``weights`` (tensors), ``skewness``,
    ``kurtosis`` and ``target``; None disables it. Returns named losses (floats): ``loss`` (the
    sum that was back-propagated), ``ce_max``, ``ce_random``, ``kd_random``, ``ce_min``,
    ``kd_min``, ``wdr``. ``autocast`` wraps each forward and its losses (mixed precision: the
    backward runs outside it, as torch.amp asks); ``backward`` back-propagates a loss (a gradient
    scaler's ``scale(loss).backward()`` for fp16).
    """
    out: dict[str, float] = {"ce_random": 0.0, "kd_random": 0.0, "ce_min": 0.0, "kd_min": 0.0}
    total = 0.0
    teacher: Tensor | None = None
    n_random = len(configs) - 2
    for i, config in enumerate(configs):
        supernet.apply(config)
        last = i == len(configs) - 1
        with _no_sync(model, last):
            with autocast():
                loss, logits = _member_loss(model, x, y, teacher, last, n_random, out, kd_lambda, temperature,
                                            distill, wdr)
            backward(loss)
        total += loss.item()
        teacher = logits.detach()
    out["loss"] = total
    return out


def _member_loss(model: nn.Module, x: Tensor, y: Tensor, teacher: Tensor | None, last: bool, n_random: int,
                 out: dict[str, float], kd_lambda: float, temperature: float, distill: bool,
                 wdr: dict[str, Any] | None) -> tuple[Tensor, Tensor]:
    logits = model(x).float()  # losses in fp32 under autocast (a no-op otherwise)
    ce = F.cross_entropy(logits, y)
    if teacher is None:
        loss = ce
        out["ce_max"] = ce.item()
    else:
        kd = kl_distill(logits, teacher, temperature) if distill else torch.zeros(())
        loss = kd_lambda * kd + (1.0 - kd_lambda) * ce if distill else ce
        key = "min" if last else "random"
        out[f"ce_{key}"] += ce.item() / (1 if last else n_random)
        out[f"kd_{key}"] += kd.item() / (1 if last else n_random)
    if last:
        reg = torch.zeros(())
        if wdr is not None:
            reg = wdr_loss(wdr["weights"], wdr["skewness"], wdr["kurtosis"], wdr["target"])
            loss = loss + reg
        out["wdr"] = reg.item()
    return loss, logits


def static_step(model: nn.Module, x: Tensor, y: Tensor, *,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                backward: Backward = _backward) -> dict[str, float]:
    """Plain QAT of the one active config: the baseline every table compares against."""
    with autocast():
        loss = F.cross_entropy(model(x).float(), y)
    backward(loss)
    return {"loss": loss.item(), "ce_max": loss.item()}
