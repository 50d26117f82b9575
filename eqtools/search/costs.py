"""Costs of many configs at once: average bits, packed size and BOPs as numpy array operations.

The search evaluates 50 000 candidates; calling :meth:`ElasticSpace.avg_bits` per config would
dominate its run time. :class:`CostModel` precomputes per-layer weights once and keeps the exact
semantics of the space's methods (tests compare them config by config):

- average bits over the *elastic* layers only (weights by parameter count, activations by input
  elements), falling back to the fixed layers when nothing is elastic;
- ``size_bytes``: every Conv/Linear weight packed at its bit-width, rounded up to whole bytes per
  layer, float layers at 32 bits;
- ``bops``: Σ MACs × weight bits × activation bits per sample (float layers at 32 × 32).

Configs are given as bit arrays ``w``/``a`` of shape [N, n_elastic] (bits, not indices); the fixed
and float layers' contributions are constants added once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eqtools.space import FLOAT_BITS, ElasticSpace, SubnetConfig

__all__ = ["CostModel"]


@dataclass(frozen=True)
class CostModel:
    """Per-elastic-layer weights of a space, for vectorised cost evaluation."""

    space: ElasticSpace
    params: np.ndarray  # int64 [L] weight parameters of each elastic layer
    act_elems: np.ndarray  # int64 [L] input-activation elements per sample
    macs: np.ndarray  # int64 [L]
    fixed_size_bytes: int
    fixed_bops: int
    # when no layer is elastic the averages are over the fixed layers (as ElasticSpace.avg_bits)
    fixed_avg_w: float | None
    fixed_avg_a: float | None

    @classmethod
    def for_space(cls, space: ElasticSpace) -> CostModel:
        elastic = space.elastic_layers
        fixed_size = 0
        fixed_bops = 0
        for layer in space.layers:
            if layer.keep_float:
                fixed_size += math.ceil(layer.weight_params * FLOAT_BITS / 8)
                fixed_bops += layer.macs * FLOAT_BITS * FLOAT_BITS
            elif layer.fixed:
                w, a = layer.pin.w_bits, layer.pin.a_bits  # type: ignore[union-attr]
                fixed_size += math.ceil(layer.weight_params * w / 8)
                fixed_bops += layer.macs * w * a
        fixed_avg_w = fixed_avg_a = None
        if not elastic:
            cfg = space.uniform(space.w_bits[0], space.a_bits[0])
            fixed_avg_w, fixed_avg_a = space.avg_bits(cfg)
        return cls(
            space=space,
            params=np.array([layer.weight_params for layer in elastic], dtype=np.int64),
            act_elems=np.array([layer.act_elems for layer in elastic], dtype=np.int64),
            macs=np.array([layer.macs for layer in elastic], dtype=np.int64),
            fixed_size_bytes=fixed_size,
            fixed_bops=fixed_bops,
            fixed_avg_w=fixed_avg_w,
            fixed_avg_a=fixed_avg_a,
        )

    @property
    def n_layers(self) -> int:
        return len(self.params)

    def avg_w_bits(self, w: np.ndarray) -> np.ndarray:
        if self.fixed_avg_w is not None:
            return np.full(len(w), self.fixed_avg_w)
        return (np.asarray(w, dtype=np.int64) @ self.params) / self.params.sum()

    def avg_a_bits(self, a: np.ndarray) -> np.ndarray:
        if self.fixed_avg_a is not None:
            return np.full(len(a), self.fixed_avg_a)
        return (np.asarray(a, dtype=np.int64) @ self.act_elems) / self.act_elems.sum()

    def size_bytes(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.int64)
        return self.fixed_size_bytes + ((w * self.params + 7) // 8).sum(axis=1)

    def bops(self, w: np.ndarray, a: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.int64)
        a = np.asarray(a, dtype=np.int64)
        return self.fixed_bops + (w * a * self.macs).sum(axis=1)

    # ------------------------------------------------------------------ configs <-> arrays
    def bits_of(self, config: SubnetConfig) -> tuple[np.ndarray, np.ndarray]:
        """The elastic layers' bits of one config as arrays [n_elastic]."""
        w_of = dict(zip(config.layers, config.w_bits))
        a_of = dict(zip(config.layers, config.a_bits))
        names = [layer.name for layer in self.space.elastic_layers]
        return (np.array([w_of[n] for n in names], dtype=np.int64),
                np.array([a_of[n] for n in names], dtype=np.int64))

    def config(
        self, w: np.ndarray, a: np.ndarray, granularity: str, w_symmetry: str, a_symmetry: str
    ) -> SubnetConfig:
        """The full config (fixed layers at their pins) for elastic bits ``w``/``a`` [n_elastic]."""
        w_it = iter(int(b) for b in w)
        a_it = iter(int(b) for b in a)
        ws, as_ = [], []
        for layer in self.space.quantized_layers:
            if layer.fixed:
                ws.append(layer.pin.w_bits)  # type: ignore[union-attr]
                as_.append(layer.pin.a_bits)  # type: ignore[union-attr]
            else:
                ws.append(next(w_it))
                as_.append(next(a_it))
        return self.space.validate(SubnetConfig(
            self.space.layer_names, tuple(ws), tuple(as_), granularity, w_symmetry, a_symmetry
        ))

    def describe(self, w: np.ndarray, a: np.ndarray) -> dict[str, float | int]:
        """Costs of one config given as elastic bit arrays, as plain Python numbers."""
        w2, a2 = np.asarray(w)[None, :], np.asarray(a)[None, :]
        return {
            "avg_w_bits": float(self.avg_w_bits(w2)[0]),
            "avg_a_bits": float(self.avg_a_bits(a2)[0]),
            "size_bytes": int(self.size_bytes(w2)[0]),
            "bops": int(self.bops(w2, a2)[0]),
        }
