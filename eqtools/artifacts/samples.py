"""The ``samples`` kind: the accuracy dataset, one JSON line per measured subnet."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from eqtools.artifacts._manifest import ArtifactKind, Open
from eqtools.errors import ArtifactError

__all__ = ["Samples"]


class Samples(ArtifactKind):
    kind = "samples"
    made_by = "eqtools sample"
    ROWS = "samples.jsonl"
    ROW_KEYS: ClassVar[tuple[str, ...]] = ("index", "config", "accuracy", "loss", "avg_w_bits", "avg_a_bits", "size_bytes", "bops", "condition")
    files: ClassVar[dict[str, str]] = {ROWS: "one JSON object per subnet: " + ", ".join(ROW_KEYS)}

    class Metrics(Open):
        rows: int | None = None
        per_condition: dict[str, int] | None = None
        accuracy_mean: float | None = None
        accuracy_min: float | None = None
        accuracy_max: float | None = None
        avg_w_bits_range: list[float] | None = None
        avg_a_bits_range: list[float] | None = None
        eval_time_s: float | None = None
        subnets_per_min: float | None = None
        synthetic: bool | None = None
        compiled: bool | None = None
        data: dict[str, Any] | None = None  # dataset root read, calib/eval images actually used (none on a resumed-only run)

    class Extra(Open):
        n: int | None = None
        seed: int | None = None
        conditions: list[str] | None = None
        subset: int | None = None
        calib_images: int | None = None
        batch_size: int | None = None
        sampler: str | None = None
        shard: list[int] | None = None
        eval_split: str | None = None

    @classmethod
    def read_rows(cls, artifact: Any) -> list[dict[str, Any]]:
        """Every row (JSON and the required keys checked; a damaged file is refused by line)."""
        return [row for _, row in cls.numbered_rows(artifact)]

    @classmethod
    def numbered_rows(cls, artifact: Any) -> list[tuple[str, dict[str, Any]]]:
        """``(file:line, row)`` pairs, so a reader that checks more can name the line it refuses."""
        path = artifact.file(cls.ROWS)
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{where} is not valid JSON ({exc.msg}); the samples file is damaged") from None
            if not isinstance(row, dict) or "config" not in row or "accuracy" not in row:
                raise ArtifactError(f"{where}: each row must be a JSON object with at least 'config' and 'accuracy'")
            rows.append((where, row))
        return rows

    @classmethod
    def write_rows(cls, directory: Path, rows: Iterable[dict[str, Any]]) -> None:
        with open(directory / cls.ROWS, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
