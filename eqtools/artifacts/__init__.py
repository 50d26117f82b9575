"""The artifact contract: the store (atomic writes, verified reads, workspace lookup, lineage) and
one owner per kind.

Each kind's module owns its file names, its manifest sections (pydantic models, published as JSON
Schema by ``eqtools info --schema KIND``) and its readers and writers; no other module spells an
artifact's file name. Stages meet only through these.
"""

from __future__ import annotations

import json
from typing import Any

from eqtools.artifacts._manifest import FORMAT, ArtifactKind, manifest_model, validate_manifest
from eqtools.artifacts._store import (
    FORMAT_VERSION,
    KINDS,
    MADE_BY,
    MANIFEST,
    V1_READABLE,
    WORKSPACE,
    Artifact,
    candidates,
    check_space,
    claim_out,
    default_out,
    find_latest,
    leftovers,
    load_safetensors,
    manifest_checksum,
    read_artifact,
    recover,
    replace_policy,
    resolve_input,
    save_safetensors,
    sha256_file,
    staging_prefix,
    staging_write_errors,
    strict_json_loads,
    verified_parent,
    workspace_leftovers,
    write_artifact,
)
from eqtools.artifacts.calibrated import Calibrated
from eqtools.artifacts.export import Export
from eqtools.artifacts.predictor import Predictor
from eqtools.artifacts.samples import Samples
from eqtools.artifacts.search import Search
from eqtools.artifacts.supernet import Supernet

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "KIND_OWNERS",
    "MADE_BY",
    "MANIFEST",
    "V1_READABLE",
    "WORKSPACE",
    "Artifact",
    "ArtifactKind",
    "Calibrated",
    "Export",
    "Predictor",
    "Samples",
    "Search",
    "Supernet",
    "candidates",
    "check_space",
    "claim_out",
    "default_out",
    "find_latest",
    "leftovers",
    "load_safetensors",
    "manifest_checksum",
    "manifest_model",
    "read_artifact",
    "recover",
    "replace_policy",
    "resolve_input",
    "save_safetensors",
    "schema",
    "sha256_file",
    "staging_prefix",
    "staging_write_errors",
    "strict_json_loads",
    "validate_manifest",
    "verified_parent",
    "workspace_leftovers",
    "write_artifact",
]

KIND_OWNERS: dict[str, type[ArtifactKind]] = {
    owner.kind: owner for owner in (Supernet, Calibrated, Samples, Predictor, Search, Export)
}
assert tuple(KIND_OWNERS) == KINDS


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of ``kind``'s manifest.json (``$id`` names kind and format version)."""
    owner = KIND_OWNERS[kind]
    out = manifest_model(owner).model_json_schema()
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["$id"] = f"eqtools/{FORMAT_VERSION}/{kind}.manifest.json"
    return json.loads(json.dumps(out))
