"""Reading the ``samples`` artifact: the <config, accuracy> dataset the predictor learns from.

``samples.jsonl`` has one JSON object per line with at least ``config`` (a
:meth:`SubnetConfig.to_dict`) and ``accuracy`` (top-1 as a fraction in [0, 1]); the sampler also
writes ``index``, ``loss``, ``avg_w_bits``, ``avg_a_bits``, ``size_bytes``, ``bops`` and
``condition``, which are kept but not needed here. Every config is validated against the
artifact's space, so a bad row is reported by line number instead of surfacing as a shape error
inside the predictor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from eqtools.artifacts import Artifact, Samples
from eqtools.errors import ArtifactError, ConfigError
from eqtools.space import ElasticSpace, SubnetConfig

__all__ = ["SampleSet", "load_samples", "split_indices"]

MIN_SAMPLES = 10  # below this a 20 % held-out split cannot give a meaningful Kendall τ


@dataclass(frozen=True)
class SampleSet:
    """The configs of a samples artifact and their measured accuracies (fractions in [0, 1])."""

    space: ElasticSpace
    configs: tuple[SubnetConfig, ...]
    accuracy: np.ndarray  # float64 [N]
    rows: tuple[dict[str, Any], ...]

    @property
    def loss(self) -> np.ndarray | None:
        """Mean cross-entropy per row on the same images (float64 [N]); None if a row lacks it."""
        values = [row.get("loss") for row in self.rows]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            return None
        return np.asarray(values, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def conditions(self) -> list[str]:
        return [c.condition for c in self.configs]


def load_samples(artifact: Artifact) -> SampleSet:
    """Parse and validate ``samples.jsonl`` of a ``samples`` artifact."""
    space = artifact.space
    if space is None:
        raise ArtifactError(f"{artifact.path} records no elastic space; re-create it with `eqtools sample`")
    configs: list[SubnetConfig] = []
    accuracy: list[float] = []
    numbered = Samples.numbered_rows(artifact)  # the one row reader: JSON and required keys checked there
    rows = [row for _, row in numbered]
    for where, row in numbered:
        try:
            config = space.validate(SubnetConfig.from_dict(row["config"]))
        except ConfigError as exc:
            raise ArtifactError(f"{where}: the config does not fit the artifact's space: {exc}") from None
        acc = row["accuracy"]
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc) or not 0.0 <= acc <= 1.0:
            raise ArtifactError(f"{where}: accuracy is {acc!r}; it must be a top-1 fraction in [0, 1]")
        configs.append(config)
        accuracy.append(float(acc))
    if len(configs) < MIN_SAMPLES:
        raise ArtifactError(
            f"{artifact.path} holds {len(configs)} sampled subnets; fitting a predictor needs at least "
            f"{MIN_SAMPLES} (the spec's sample.n sets how many `eqtools sample` draws)"
        )
    return SampleSet(space, tuple(configs), np.asarray(accuracy, dtype=np.float64), tuple(rows))


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/held-out split of ``n`` rows; both parts are sorted and non-empty."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test fraction is {test_fraction}; it must lie strictly between 0 and 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 2, max(2, round(test_fraction * n)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
