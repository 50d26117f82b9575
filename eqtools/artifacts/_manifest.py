"""The manifest every artifact carries, as a pydantic model, and the per-kind models built on it.

A kind's module (``eqtools.artifacts.<kind>``) declares its ``Metrics`` and ``Extra`` models; here
they are slotted into one manifest model per kind, which ``write_artifact`` validates before it
writes and ``eqtools info --schema KIND`` publishes as JSON Schema. The models name the fields the
stages and reports rely on, with their types; further fields are allowed, so a stage may record
more without a format change, but never one of these under another type.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

__all__ = ["FORMAT", "ArtifactKind", "Open", "Parent", "manifest_model"]

FORMAT = "eqtools"


class Open(BaseModel):
    """Named fields typed, further fields allowed (the metrics and extra sections)."""

    model_config = ConfigDict(extra="allow")


class Parent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="the parent's kind (an artifact kind, 'spec' or 'pretrained')")
    path: str | None = None
    sha256: str | None = Field(default=None, description="sha256 of the parent's manifest.json")


class ArtifactKind:
    """What one kind owns: its name, its file names (with what each holds) and its manifest sections."""

    kind: ClassVar[str]
    files: ClassVar[dict[str, str]]  # file name -> what it holds ("*" in a name: any file of that pattern)
    Metrics: ClassVar[type[BaseModel]] = Open
    Extra: ClassVar[type[BaseModel]] = Open
    made_by: ClassVar[str]


@functools.cache
def manifest_model(owner: type[ArtifactKind]) -> type[BaseModel]:
    """The manifest model of one kind: the common fields, ``kind`` fixed, its metrics and extra.

    Built once per kind (every write validates against it)."""
    return create_model(
        f"{owner.kind.capitalize()}Manifest",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"manifest.json of a '{owner.kind}' artifact (made by `{owner.made_by}`).",
        format=(Literal["eqtools"], ...),
        format_version=(int, Field(ge=1)),
        kind=(Literal[owner.kind], ...),  # type: ignore[valid-type]
        created=(str, Field(description="UTC time of the write, ISO 8601")),
        eqtools_version=(str, ...),
        spec=(dict[str, Any], Field(description="the resolved spec (every default filled in)")),
        space=(dict[str, Any] | None, Field(description="the elastic space (ElasticSpace.to_dict())")),
        space_fingerprint=(str | None, ...),
        parents=(list[Parent], ...),
        files=(dict[str, str], Field(description="payload file name -> sha256; " + "; ".join(
            f"{name}: {what}" for name, what in owner.files.items()))),
        metrics=(owner.Metrics, ...),
        extra=(owner.Extra, ...),
        checksum=(str | None, Field(default=None, description="sha256 of the manifest without this field")),
        migrated_from_version=(int | None, Field(default=None, description="set in memory when an older version was read")),
    )


def validate_manifest(owner: type[ArtifactKind], manifest: dict[str, Any]) -> None:
    """Refuse to write a manifest that its own published schema would reject (a bug, loudly)."""
    try:
        manifest_model(owner).model_validate(manifest)
    except ValidationError as exc:
        # a stage wrote what its own published schema rejects: a bug, with its traceback
        raise ValueError(f"a '{owner.kind}' manifest does not fit its schema: {exc}") from exc
