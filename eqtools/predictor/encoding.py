"""How a subnet config becomes the predictor's input vector (the CQAP encoding).

The paper's CQAP takes the global *conditions* (weight granularity, weight symmetry, activation
symmetry: one column each) plus the bit-width of every layer for weights and activations. Only *elastic* layers are encoded: fixed layers (first/last at
8/8) are identical in every config and would only add constant columns.

Two encodings of a bit-width are offered:

- ``onehot``: one column per candidate bit-width per layer (the reference code's choice). The
  model can learn any per-bit response (e.g. 2 → 3 bits matters far more than 7 → 8).
- ``ordinal``: one column per layer, the bit-width scaled to [0, 1] over the space's candidates.
  Compact, and it tells the model that 4 bits lies between 3 and 5.
- ``onehot-costs``: ``onehot`` plus three cost columns: average weight bits (by parameters),
  average activation bits (by input elements) and the elastic layers' bit operations
  (MACs × w_bits × a_bits), each scaled to [0, 1] over the space. These are what the search
  constrains, and accuracy falls roughly with them, so the model gets that trend for free
  instead of learning it from one-hot columns (measured in docs/fit-predictor.md).

``docs/fit-predictor.md`` records which one predicted better on which data and why the default is
what it is. The encoding is stored in the predictor artifact with the space's fingerprint, so a
predictor is never applied to configs of another space.

Everything works on index arrays (position of a layer's bit-width in the space's candidate list) so
the genetic search can encode a whole population with one vectorised call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eqtools.errors import ArtifactError, ConfigError
from eqtools.space import ElasticSpace, SubnetConfig

__all__ = ["ENCODINGS", "Encoding"]

ENCODINGS: tuple[str, ...] = ("onehot", "ordinal", "onehot-costs")
_COST_COLUMNS = ("avg_w_bits", "avg_a_bits", "bops")
# 1.0 when the config has this condition, else 0.0: per-tensor weights, asymmetric weights,
# asymmetric activations (format 1 had one "asym" column for both symmetries)
_CONDITION_COLUMNS = ("per-tensor", "w-asym", "a-asym")


@dataclass(frozen=True)
class Encoding:
    """A fixed map from configs of one space to float32 feature rows.

    ``layers`` are the space's elastic layers in execution order; ``w_bits``/``a_bits`` the
    candidate bit-widths (the index of a bit-width in these tuples is what index arrays hold).
    """

    kind: str
    layers: tuple[str, ...]
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    space_fingerprint: str
    # per elastic layer: parameters, input elements, MACs per sample (the cost columns' weights)
    weight_params: tuple[int, ...] = ()
    act_elems: tuple[int, ...] = ()
    macs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise ConfigError(f"encoding {self.kind!r} is unknown; allowed: {list(ENCODINGS)}")
        if self.kind == "onehot-costs" and not (
            len(self.weight_params) == len(self.act_elems) == len(self.macs) == len(self.layers)
        ):
            raise ConfigError("the onehot-costs encoding needs weight_params, act_elems and macs for every elastic layer")

    @classmethod
    def for_space(cls, space: ElasticSpace, kind: str = "onehot") -> Encoding:
        return cls(
            kind=kind,
            layers=tuple(layer.name for layer in space.elastic_layers),
            w_bits=tuple(space.w_bits),
            a_bits=tuple(space.a_bits),
            space_fingerprint=space.fingerprint,
            weight_params=tuple(layer.weight_params for layer in space.elastic_layers),
            act_elems=tuple(layer.act_elems for layer in space.elastic_layers),
            macs=tuple(layer.macs for layer in space.elastic_layers),
        )

    @property
    def has_costs(self) -> bool:
        return self.kind == "onehot-costs"

    # ------------------------------------------------------------------ shape
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_features(self) -> int:
        if self.kind in ("onehot", "onehot-costs"):
            costs = len(_COST_COLUMNS) if self.has_costs else 0
            return len(_CONDITION_COLUMNS) + self.n_layers * (len(self.w_bits) + len(self.a_bits)) + costs
        return len(_CONDITION_COLUMNS) + 2 * self.n_layers

    def feature_names(self) -> list[str]:
        names = [f"cond:{c}" for c in _CONDITION_COLUMNS]
        if self.kind in ("onehot", "onehot-costs"):
            names += [f"w:{n}:{b}" for n in self.layers for b in self.w_bits]
            names += [f"a:{n}:{b}" for n in self.layers for b in self.a_bits]
            if self.has_costs:
                names += [f"cost:{c}" for c in _COST_COLUMNS]
        else:
            names += [f"w:{n}" for n in self.layers] + [f"a:{n}" for n in self.layers]
        return names

    # ------------------------------------------------------------------ encoding
    def encode_indices(
        self,
        w_idx: np.ndarray,
        a_idx: np.ndarray,
        granularity: str | Sequence[str],
        w_symmetry: str | Sequence[str],
        a_symmetry: str | Sequence[str],
    ) -> np.ndarray:
        """Encode N configs given as index arrays.

        ``w_idx``/``a_idx``: int arrays [N, n_layers], positions in ``w_bits``/``a_bits``.
        ``granularity``/``w_symmetry``/``a_symmetry``: one value for all rows or one per row.
        Returns float32 [N, F].
        """
        w_idx = np.asarray(w_idx, dtype=np.int64)
        a_idx = np.asarray(a_idx, dtype=np.int64)
        if w_idx.ndim != 2 or w_idx.shape != a_idx.shape or w_idx.shape[1] != self.n_layers:
            raise ValueError(
                f"index arrays must both be [N, {self.n_layers}], got {w_idx.shape} and {a_idx.shape}"
            )
        n = w_idx.shape[0]
        x = np.zeros((n, self.n_features), dtype=np.float32)
        x[:, 0] = _condition_column(granularity, "per-tensor", n)
        x[:, 1] = _condition_column(w_symmetry, "asym", n)
        x[:, 2] = _condition_column(a_symmetry, "asym", n)
        if self.n_layers == 0:
            return x
        offset = len(_CONDITION_COLUMNS)
        if self.kind in ("onehot", "onehot-costs"):
            kw, ka = len(self.w_bits), len(self.a_bits)
            rows = np.arange(n)[:, None]
            layer = np.arange(self.n_layers)[None, :]
            x[rows, offset + layer * kw + w_idx] = 1.0
            x[rows, offset + self.n_layers * kw + layer * ka + a_idx] = 1.0
            if self.has_costs:
                x[:, -len(_COST_COLUMNS):] = self._costs(w_idx, a_idx)
        else:
            x[:, offset : offset + self.n_layers] = _ordinal_table(self.w_bits)[w_idx]
            x[:, offset + self.n_layers :] = _ordinal_table(self.a_bits)[a_idx]
        return x

    def _costs(self, w_idx: np.ndarray, a_idx: np.ndarray) -> np.ndarray:
        """[N, 3]: average weight bits, average activation bits, elastic BOPs, each scaled to [0, 1]."""
        w_bits = np.asarray(self.w_bits, dtype=np.float64)[w_idx]
        a_bits = np.asarray(self.a_bits, dtype=np.float64)[a_idx]
        wp = np.asarray(self.weight_params, dtype=np.float64)
        ae = np.asarray(self.act_elems, dtype=np.float64)
        macs = np.asarray(self.macs, dtype=np.float64)
        w_lo, w_hi = min(self.w_bits), max(self.w_bits)
        a_lo, a_hi = min(self.a_bits), max(self.a_bits)
        avg_w = (w_bits @ wp / wp.sum() - w_lo) / max(w_hi - w_lo, 1)
        avg_a = (a_bits @ ae / ae.sum() - a_lo) / max(a_hi - a_lo, 1)
        lo, hi = w_lo * a_lo, w_hi * a_hi
        bops = ((w_bits * a_bits) @ macs / max(macs.sum(), 1.0) - lo) / max(hi - lo, 1)
        return np.stack([avg_w, avg_a, bops], axis=1).astype(np.float32)

    def indices(self, configs: Sequence[SubnetConfig]) -> tuple[np.ndarray, np.ndarray]:
        """Index arrays [N, n_layers] of the elastic layers' bit-widths of ``configs``."""
        w_pos = {b: i for i, b in enumerate(self.w_bits)}
        a_pos = {b: i for i, b in enumerate(self.a_bits)}
        w_idx = np.zeros((len(configs), self.n_layers), dtype=np.int64)
        a_idx = np.zeros_like(w_idx)
        for row, config in enumerate(configs):
            w_of = dict(zip(config.layers, config.w_bits))
            a_of = dict(zip(config.layers, config.a_bits))
            for col, name in enumerate(self.layers):
                if name not in w_of:
                    raise ConfigError(
                        f"config has no layer {name!r}; this predictor's encoding needs the elastic layers "
                        f"{list(self.layers[:3])}... of space {self.space_fingerprint}"
                    )
                try:
                    w_idx[row, col] = w_pos[w_of[name]]
                    a_idx[row, col] = a_pos[a_of[name]]
                except KeyError:
                    raise ConfigError(
                        f"layer {name!r} has bits w={w_of[name]} a={a_of[name]}; this predictor knows "
                        f"weight bits {list(self.w_bits)} and activation bits {list(self.a_bits)}"
                    ) from None
        return w_idx, a_idx

    def encode(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Encode configs (any conditions, one per row). Returns float32 [N, F]."""
        w_idx, a_idx = self.indices(configs)
        return self.encode_indices(
            w_idx, a_idx, [c.granularity for c in configs], [c.w_symmetry for c in configs],
            [c.a_symmetry for c in configs],
        )

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layers": list(self.layers),
            "w_bits": list(self.w_bits),
            "a_bits": list(self.a_bits),
            "conditions": list(_CONDITION_COLUMNS),
            "n_features": self.n_features,
            "space_fingerprint": self.space_fingerprint,
            "weight_params": list(self.weight_params),
            "act_elems": list(self.act_elems),
            "macs": list(self.macs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the predictor's encoding") -> Encoding:
        try:
            enc = cls(
                kind=str(data["kind"]),
                layers=tuple(str(n) for n in data["layers"]),
                w_bits=tuple(int(b) for b in data["w_bits"]),
                a_bits=tuple(int(b) for b in data["a_bits"]),
                space_fingerprint=str(data["space_fingerprint"]),
                weight_params=tuple(int(v) for v in data.get("weight_params", ())),
                act_elems=tuple(int(v) for v in data.get("act_elems", ())),
                macs=tuple(int(v) for v in data.get("macs", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: the stored encoding is malformed ({type(exc).__name__}: {exc})") from None
        except ConfigError as exc:
            raise ArtifactError(f"{where}: {exc}") from None
        if int(data.get("n_features", enc.n_features)) != enc.n_features:
            raise ArtifactError(f"{where}: the stored encoding says {data.get('n_features')} features, it has {enc.n_features}")
        return enc

    def check_space(self, space: ElasticSpace, where: str = "the predictor") -> None:
        """Refuse to encode configs of another space than the one this encoding was built for."""
        if space.fingerprint != self.space_fingerprint:
            raise ArtifactError(
                f"{where} was built for elastic space {self.space_fingerprint}, but the configs come from "
                f"space {space.fingerprint}; fit a predictor on samples of this supernet (`eqtools sample`, "
                "then `eqtools fit-predictor`)"
            )


def _ordinal_table(bits: Sequence[int]) -> np.ndarray:
    lo, hi = min(bits), max(bits)
    if hi == lo:
        return np.zeros(len(bits), dtype=np.float32)
    return np.array([(b - lo) / (hi - lo) for b in bits], dtype=np.float32)


def _condition_column(value: str | Sequence[str], positive: str, n: int) -> np.ndarray:
    if isinstance(value, str):
        return np.full(n, 1.0 if value == positive else 0.0, dtype=np.float32)
    values = list(value)
    if len(values) != n:
        raise ValueError(f"got {len(values)} condition values for {n} rows")
    return np.array([1.0 if v == positive else 0.0 for v in values], dtype=np.float32)
