"""Synthetic ``samples`` artifacts with a known accuracy law, for tests and benchmarks.

Real samples need a trained supernet and minutes of evaluation. To test the predictor and the
search (and to time them) without one, this module draws configs the way the sampler does (equal
numbers per condition, bits uniform per elastic layer) and scores them with a law shaped like
measured quantization behaviour:

- each layer's damage grows like the quantization noise power, ∝ 4^-(bits − b_min), scaled by a
  per-layer sensitivity (log-normal: a few layers matter much more than the rest);
- damage compounds multiplicatively (accuracy × exp(−total damage));
- per-tensor granularity multiplies weight damage by 1.4; asymmetric weights and asymmetric
  activations each reduce it by 5 %;
- adjacent layers both at the lowest weight bits add an interaction penalty (so the law is not
  purely additive and an MLP has something to learn that a linear model cannot);
- Gaussian measurement noise (the spread of accuracy on a finite evaluation subset).

It is not a substitute for real samples: numbers measured on it are labelled as synthetic.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqtools.artifacts import Artifact, Samples, write_artifact
from eqtools.space import ElasticSpace, SubnetConfig

__all__ = ["SyntheticLaw", "synthetic_rows", "write_synthetic_samples"]


@dataclass(frozen=True)
class SyntheticLaw:
    """The accuracy law of one synthetic supernet (drawn once from a seed)."""

    space: ElasticSpace
    w_sens: np.ndarray
    a_sens: np.ndarray
    pair_penalty: float
    base: float = 0.92
    noise: float = 0.003

    @classmethod
    def draw(cls, space: ElasticSpace, seed: int = 0, noise: float = 0.003) -> SyntheticLaw:
        rng = np.random.default_rng(seed)
        n = len(space.elastic_layers)
        return cls(space, 0.05 * rng.lognormal(0.0, 0.8, n), 0.04 * rng.lognormal(0.0, 0.8, n),
                   0.02, noise=noise)

    def accuracy(self, config: SubnetConfig, rng: np.random.Generator | None = None) -> float:
        """Expected accuracy of ``config`` (plus measurement noise when ``rng`` is given)."""
        names = [layer.name for layer in self.space.elastic_layers]
        w_of = dict(zip(config.layers, config.w_bits))
        a_of = dict(zip(config.layers, config.a_bits))
        w = np.array([w_of[n] for n in names], dtype=np.float64)
        a = np.array([a_of[n] for n in names], dtype=np.float64)
        w_min, a_min = min(self.space.w_bits), min(self.space.a_bits)
        w_damage = self.w_sens * 4.0 ** -(w - w_min)
        a_damage = self.a_sens * 4.0 ** -(a - a_min)
        factor = (1.4 if config.granularity == "per-tensor" else 1.0) * (0.95 if config.w_symmetry == "asym" else 1.0) * (0.95 if config.a_symmetry == "asym" else 1.0)
        low = w == w_min
        pairs = float(np.sum(low[1:] & low[:-1])) if len(low) > 1 else 0.0
        damage = factor * w_damage.sum() + a_damage.sum() + self.pair_penalty * pairs
        acc = self.base * float(np.exp(-damage))
        if rng is not None:
            acc += float(rng.normal(0.0, self.noise))
        return float(min(1.0, max(0.0, acc)))


def synthetic_rows(space: ElasticSpace, n: int, seed: int = 0, noise: float = 0.003,
                   configs: Sequence[SubnetConfig] | None = None) -> list[dict[str, Any]]:
    """``n`` rows in the ``samples.jsonl`` format, spread evenly over the space's conditions.

    ``configs`` replaces the default draw (bits uniform per layer), e.g. with the stratified draw
    of :func:`eqtools.sample.draw_configs`, to mimic a real sampling run's distribution.
    """
    law = SyntheticLaw.draw(space, seed, noise)
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed + 1)
    conditions = space.conditions
    rows = []
    for i in range(n if configs is None else len(configs)):
        form = conditions[i % len(conditions)]
        config = space.random(rng, *form) if configs is None else space.validate(configs[i])
        acc = law.accuracy(config, noise_rng)
        avg_w, avg_a = space.avg_bits(config)
        rows.append({
            "index": i,
            "config": config.to_dict(),
            "accuracy": acc,
            "loss": float(-np.log(max(acc, 1e-6))),
            "avg_w_bits": avg_w,
            "avg_a_bits": avg_a,
            "size_bytes": space.size_bytes(config),
            "bops": space.bops(config),
            "condition": config.condition,
        })
    return rows


def write_synthetic_samples(
    out: Path | str,
    space: ElasticSpace,
    n: int,
    seed: int = 0,
    spec: Mapping[str, Any] | None = None,
    noise: float = 0.003,
    configs: Sequence[SubnetConfig] | None = None,
    parents: Sequence[Artifact] = (),
) -> Artifact:
    """Write a ``samples`` artifact of synthetic rows (``metrics.synthetic`` is true).

    ``parents`` records e.g. the supernet the space came from, so ``search --verify`` finds it.
    """
    rows = synthetic_rows(space, n, seed, noise, configs)

    def write(tmp: Path) -> None:
        Samples.write_rows(tmp, rows)

    return write_artifact(out, "samples", write, spec=spec, space=space, parents=parents,
                          metrics={"n": n, "synthetic": True, "seed": seed, "noise": noise})
