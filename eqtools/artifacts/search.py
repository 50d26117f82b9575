"""The ``search`` kind: the best config of a mixed-precision search, its front, history and top-K."""

from __future__ import annotations

from typing import Any, ClassVar

from eqtools.artifacts._manifest import ArtifactKind, Open
from eqtools.errors import ArtifactError, ConfigError
from eqtools.space import SubnetConfig

__all__ = ["Search"]


class Search(ArtifactKind):
    kind = "search"
    made_by = "eqtools search"
    BEST_CONFIG = "best_config.json"
    PARETO = "pareto.json"
    PARETO_PLOT = "pareto.png"
    HISTORY = "history.json"
    TOP_K = "top_k.json"
    files: ClassVar[dict[str, str]] = {BEST_CONFIG: "the chosen SubnetConfig (a plain config file for `calibrate --config`)",
             PARETO: "the front: x, x_label, y, condition, title, points", PARETO_PLOT: "the front, plotted",
             HISTORY: "per-generation statistics", TOP_K: "the best predicted configs and, with --verify, their measurements"}

    class Metrics(Open):
        mode: str | None = None
        condition: str | None = None
        preset: str | None = None
        predicted_accuracy: float | None = None
        avg_w_bits: float | None = None
        avg_a_bits: float | None = None
        size_bytes: int | None = None
        bops: int | None = None
        constraints: dict[str, Any] | None = None
        measured_top1: float | None = None
        verified: list[dict[str, Any]] | None = None
        uniform_predicted_accuracy: float | None = None
        vs_uniform: dict[str, Any] | None = None
        vs_uniform_selection: dict[str, Any] | None = None

    class Extra(Open):
        best_config: dict[str, Any] | None = None
        options: dict[str, Any] | None = None

    @classmethod
    def best_config(cls, artifact: Any) -> SubnetConfig:
        file = artifact.file(cls.BEST_CONFIG)
        try:
            return SubnetConfig.from_json(file.read_text())
        except ConfigError as exc:
            raise ArtifactError(f"{file}: not a valid subnet config: {exc}") from None

    @classmethod
    def top(cls, artifact: Any) -> list[dict[str, Any]]:
        """The GA's best predicted configs, best first (before any --verify re-ranking)."""
        import json

        try:
            return json.loads(artifact.file(cls.TOP_K).read_text()).get("top") or []
        except (OSError, json.JSONDecodeError):
            return []
