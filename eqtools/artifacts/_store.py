"""Artifacts: the only way stages talk to each other.

An artifact is a directory holding ``manifest.json`` plus its files (tensors only in safetensors,
structure in JSON). Writes are atomic: everything goes into a hidden temporary directory beside the
target, every file is fsynced, the manifest (with each file's sha256) is written last, and only
then is the directory renamed into place. A reader verifies the format, the version, the kind,
every checksum and, where asked, the elastic space, and refuses anything else with a message that
says what it found and what it expected. A killed writer therefore leaves either the old artifact,
the new one, or a hidden ``.tmp`` directory that no reader picks up.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eqtools import __version__
from eqtools.errors import ArtifactError
from eqtools.space import ElasticSpace

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "MANIFEST",
    "WORKSPACE",
    "Artifact",
    "candidates",
    "check_space",
    "default_out",
    "find_latest",
    "load_safetensors",
    "manifest_checksum",
    "read_artifact",
    "resolve_input",
    "save_safetensors",
    "sha256_file",
    "write_artifact",
]

FORMAT = "eqtools"
# 2: weight and activation symmetry are separate (``w_symmetry``/``a_symmetry`` in configs,
# ``w_symmetries``/``a_symmetries`` in spaces, three condition columns in predictor encodings).
FORMAT_VERSION = 2
# Version 1 tied the two symmetries into one. Where a kind's files hold nothing but configs, spaces
# and tensors whose shapes did not change, reading the one symmetry as both is exact, so those kinds
# are migrated on read; a predictor's encoding has another width and is refused (never misread).
V1_READABLE = frozenset({"supernet", "calibrated", "samples", "search", "export"})
KINDS = ("supernet", "calibrated", "samples", "predictor", "search", "export")
MANIFEST = "manifest.json"
WORKSPACE = Path("artifacts")

# which command makes each kind, for "run X first" hints
MADE_BY = {
    "supernet": "eqtools train SPEC",
    "calibrated": "eqtools calibrate",
    "samples": "eqtools sample",
    "predictor": "eqtools fit-predictor",
    "search": "eqtools search",
    "export": "eqtools export",
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own ``checksum`` field.

    Payload files are covered by their own checksums in ``files``; this covers the manifest
    itself (spec, space, metrics, parents), so a hand-edited manifest is refused too.
    """
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest.get("spec") or {}

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics") or {}

    @property
    def extra(self) -> dict[str, Any]:
        """Kind-specific structured fields (e.g. the config of a calibrated subnet)."""
        return self.manifest.get("extra") or {}

    @property
    def space(self) -> ElasticSpace | None:
        data = self.manifest.get("space")
        return None if data is None else ElasticSpace.from_dict(data)

    @property
    def created(self) -> str:
        return self.manifest.get("created", "")

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    def file(self, name: str) -> Path:
        if name not in self.manifest.get("files", {}):
            raise ArtifactError(
                f"{self.kind} artifact at {self.path} has no file {name!r}; "
                f"it has {sorted(self.manifest.get('files', {}))}"
            )
        return self.path / name

    def tensors(self, name: str) -> dict[str, Tensor]:
        return load_safetensors(self.file(name))

    def as_parent(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.manifest_sha256}

    def ancestor(self, kind: str) -> Artifact | None:
        """The nearest artifact of ``kind`` up the recorded lineage (parents first, then theirs).

        The one place lineage is walked: export (its supernet), ``search --verify`` (the supernet
        the predictor's samples were measured on) and reports all ask here.
        """
        if self.kind == kind:
            return self
        frontier, seen = [self], {str(self.path)}
        while frontier:
            nxt = []
            for art in frontier:
                for entry in art.manifest.get("parents", []):
                    path = entry.get("path", "")
                    if path in seen or not Path(path).is_dir():
                        continue
                    seen.add(path)
                    parent = read_artifact(path)
                    if parent.kind == kind:
                        return parent
                    nxt.append(parent)
            frontier = nxt
        return None


def save_safetensors(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=dict(metadata or {}))


def load_safetensors(path: Path) -> dict[str, Tensor]:
    """Read a safetensors file; a malformed file is an :class:`ArtifactError`, not a crash."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"safetensors file {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for malformed headers/data
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
            "it may be truncated or corrupted, re-create it with the command that made it"
        ) from None


def write_artifact(
    out: Path | str,
    kind: str,
    write_files: Callable[[Path], None],
    *,
    spec: Mapping[str, Any] | None = None,
    space: ElasticSpace | None = None,
    parents: Iterable[Artifact | Mapping[str, str]] = (),
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Artifact:
    """Write an artifact atomically and return it (verified).

    ``write_files(tmpdir)`` writes the payload files into a temporary directory; this function
    checksums them, writes the manifest, fsyncs and renames the directory to ``out``. An existing
    artifact at ``out`` is replaced only after the new one is complete.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise _write_error(out, kind, exc) from None
    try:
        write_files(tmp)
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                rel = f.relative_to(tmp).as_posix()
                if rel == MANIFEST:
                    raise ValueError("payload writers must not write manifest.json")
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
                files[rel] = sha256_file(f)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "created": _now(),
            "eqtools_version": __version__,
            "spec": dict(spec or {}),
            "space": None if space is None else space.to_dict(),
            "space_fingerprint": None if space is None else space.fingerprint,
            "parents": [p.as_parent() if isinstance(p, Artifact) else dict(p) for p in parents],
            "files": files,
            "metrics": dict(metrics or {}),
            "extra": dict(extra or {}),
        }
        from eqtools.artifacts import KIND_OWNERS, validate_manifest

        validate_manifest(KIND_OWNERS[kind], manifest)  # what is written is what the schema publishes
        manifest["checksum"] = manifest_checksum(manifest)
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(tmp, out)
        _fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = _io_cause(exc)
        if cause is not None:
            raise _write_error(out, kind, exc, cause) from None
        raise
    return read_artifact(out, kind)


def _io_cause(exc: BaseException) -> str | None:
    """The operating system's reason when ``exc`` is a failed write, else None (a bug keeps its traceback).

    safetensors reports I/O failures as its own error type whose text carries the OS error (seen
    here on a full tmpfs: ``Error while serializing: I/O error: No space left on device (os error
    28)``; older releases wrote ``IoError(Os { code: 28, ... })``), so both spellings are recognised.
    """
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and ("I/O error" in text or "IoError" in text):
        code = re.search(r"os error (\d+)|code: (\d+)", text)
        return os.strerror(int(code.group(1) or code.group(2))) if code else text
    return None


def _write_error(out: Path, kind: str, exc: BaseException, cause: str | None = None) -> ArtifactError:
    cause = cause or _io_cause(exc) or str(exc)
    return ArtifactError(
        f"cannot write the {kind} artifact to {out}: {cause}. Nothing was written there (an existing artifact "
        "at that path is unchanged). Free disk space, fix the directory's permissions, or choose another "
        "output directory with --out"
    )


def read_artifact(
    path: Path | str,
    kind: str | Iterable[str] | None = None,
    space: ElasticSpace | None = None,
    verify: bool = True,
) -> Artifact:
    """Open and verify an artifact; raise :class:`ArtifactError` saying what is wrong."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else (tuple(kind) if kind is not None else None)
    wanted = " or ".join(f"'{k}'" for k in kinds) if kinds else "an eqtools"
    if not path.exists():
        raise ArtifactError(f"no artifact at {str(path)!r}: the path does not exist (expected {wanted} artifact directory)")
    if not path.is_dir():
        raise ArtifactError(f"{str(path)!r} is a file; an artifact is a directory with a manifest.json (expected {wanted} artifact)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an eqtools artifact: it has no manifest.json (expected {wanted} artifact)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is corrupted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not an eqtools manifest (missing \"format\": \"eqtools\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{manifest_path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} was written by a newer eqtools (format_version {version}, eqtools "
            f"{manifest.get('eqtools_version', '?')}); this eqtools {__version__} reads format_version "
            f"up to {FORMAT_VERSION}: upgrade eqtools to read it"
        )
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise ArtifactError(
            f"{manifest_path} was modified after it was written (its checksum does not match its content); "
            "an edited manifest cannot be trusted: re-create the artifact with the command that made it"
        )
    found = manifest.get("kind")
    if found not in KINDS:
        raise ArtifactError(f"{manifest_path} names an unknown kind {found!r}; kinds are {list(KINDS)}")
    if version < FORMAT_VERSION:
        manifest = _migrate_v1(path, manifest)
    if kinds and found not in kinds:
        hint = "; ".join(f"'{k}' artifacts are made by `{MADE_BY[k]}`" for k in kinds)
        raise ArtifactError(f"{path} is a '{found}' artifact, but this command needs {wanted} artifact ({hint})")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{manifest_path} has no valid \"files\" table; the artifact is corrupted")
    if verify:
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise ArtifactError(f"{path} is incomplete: {name} is listed in the manifest but missing")
            actual = sha256_file(f)
            if actual != digest:
                raise ArtifactError(
                    f"{path}/{name} does not match its checksum in manifest.json (expected sha256 "
                    f"{digest[:12]}…, found {actual[:12]}…): the file was modified or corrupted; "
                    f"re-create it with `{MADE_BY[found]}`"
                )
    artifact = Artifact(path, manifest)
    if space is not None:
        check_space(artifact, space)
    return artifact


def _migrate_v1(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest as version 2 would have written it, or a refusal saying what to do.

    Only the derived ``space_fingerprint`` changes (the space's dict now names both symmetry lists);
    configs in files are read by :meth:`SubnetConfig.from_dict`, which maps ``symmetry`` to both.
    """
    kind = manifest["kind"]
    if kind not in V1_READABLE:
        raise ArtifactError(
            f"{path} is a '{kind}' artifact of format_version 1, when weights and activations shared one "
            f"symmetry; its files are laid out for that and cannot be read as version 2 without misreading "
            f"them. Re-create it with `{MADE_BY[kind]}` (its inputs of version 1 are still read)"
        )
    migrated = dict(manifest)
    if manifest.get("space") is not None:
        migrated["space_fingerprint"] = ElasticSpace.from_dict(manifest["space"]).fingerprint
    migrated["migrated_from_version"] = manifest["format_version"]
    return migrated


def check_space(artifact: Artifact, space: ElasticSpace, what: str = "the supernet") -> None:
    """Refuse an artifact built on a different elastic space."""
    theirs = artifact.manifest.get("space")
    if theirs is None:
        raise ArtifactError(f"{artifact.path} records no elastic space; cannot check it against {what}")
    if artifact.manifest.get("space_fingerprint") != space.fingerprint:
        diff = ElasticSpace.from_dict(theirs).describe_difference(space)
        raise ArtifactError(
            f"{artifact.path} ({artifact.kind}) was built for another elastic space than {what} "
            f"(space {artifact.manifest.get('space_fingerprint')} vs {space.fingerprint}: {diff}); "
            "use artifacts made from the same supernet"
        )


def candidates(root: Path) -> Iterable[Path]:
    """Artifact directories one or two levels under ``root`` (hidden, unfinished writes skipped)."""
    if not root.is_dir():
        return
    for manifest in sorted(root.glob("*/manifest.json")) + sorted(root.glob("*/*/manifest.json")):
        d = manifest.parent
        if any(part.startswith(".") for part in d.relative_to(root).parts):
            continue  # temporary or replaced directories of an unfinished write
        yield d


def _preferred(kind: str, manifest: dict[str, Any]) -> bool:
    """A static-QAT baseline is stored as a ``supernet`` artifact (it is one, with one trained
    form), but "the supernet" a user means by default is the elastic one."""
    if kind == "supernet":
        return (manifest.get("extra") or {}).get("mode") != "static"
    return True


def find_latest(kind: str, root: Path | str = WORKSPACE, *, flag: str = "--from") -> Path:
    """The newest artifact of ``kind`` under the workspace (by manifest creation time).

    For ``supernet`` an elastic supernet is preferred over static-QAT baselines; a baseline is
    returned only when no elastic supernet exists. ``flag`` is the option of the calling command
    that names the artifact instead, so the hint in the error is one the user can type.
    """
    root = Path(root)
    best: tuple[bool, str, Path] | None = None
    for d in candidates(root):
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(manifest, dict) and manifest.get("kind") == kind:
            key = (_preferred(kind, manifest), str(manifest.get("created", "")), d)
            if best is None or key > best:
                best = key
    if best is None:
        raise ArtifactError(
            f"no '{kind}' artifact found under {root}/; make one with `{MADE_BY[kind]}` first, "
            f"or pass its directory with {flag}"
        )
    return best[2]


def resolve_input(path: Path | str | None, kind: str | tuple[str, ...], root: Path | str = WORKSPACE,
                  echo: Callable[[str], None] | None = None, *, flag: str = "--from") -> Artifact:
    """Open ``path`` or, when it is None, the newest artifact of (the first of) ``kind``
    (``flag``: the option that passes ``path``, named in the error when there is none)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    if path is None:
        path = find_latest(kinds[0], root, flag=flag)
        if echo is not None:
            echo(f"using {kinds[0]} artifact {path}")
    return read_artifact(path, kinds)


def default_out(spec_name: str, kind: str, tag: str | None = None, root: Path | str = WORKSPACE) -> Path:
    """``artifacts/<spec name>/<kind>[-<tag>]``."""
    name = kind if not tag else f"{kind}-{tag}"
    return Path(root) / spec_name / name
