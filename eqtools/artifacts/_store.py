"""Artifacts: the only way stages talk to each other.

An artifact is a directory holding ``manifest.json`` plus its files (tensors only in safetensors,
structure in JSON). Writes are atomic: everything goes into a hidden temporary directory beside the
target, every file is fsynced, the manifest (with each file's sha256) is written last, and only
then is the directory renamed into place. A reader verifies the format, the version, the kind,
every checksum and, where asked, the elastic space, and refuses anything else with a message that
says what it found and what it expected. A killed writer therefore leaves either the old artifact,
the new one, or a hidden ``.tmp`` directory that no reader picks up.

Writes never destroy what eqtools did not make: an output path holding a file or a directory that
is not an eqtools artifact is refused, and an existing artifact is replaced only under
:func:`replace_policy` ``(force=True)`` (the library's default; the CLI's ``--force``). The replace
itself is one ``renameat2(RENAME_EXCHANGE)`` where the kernel offers it, so the path never stands
empty; elsewhere it is two renames, and :func:`recover` (run by every write and by a read that
finds the path missing) puts a complete artifact back from the ``.old`` directory a killed writer
left between them (docs/decisions/0100-atomic-replace.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
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
    "claim_out",
    "default_out",
    "find_latest",
    "leftovers",
    "load_safetensors",
    "manifest_checksum",
    "read_artifact",
    "recover",
    "replace_policy",
    "resolve_input",
    "save_safetensors",
    "sha256_file",
    "staging_prefix",
    "strict_json_loads",
    "verified_parent",
    "workspace_leftovers",
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


def strict_json_loads(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` tokens (not JSON; Python's encoder writes them)."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not a JSON value (only finite numbers are)")

    return json.loads(text, parse_constant=refuse)


def _non_finite(value: Any, where: str = "") -> str | None:
    """The dotted path of the first NaN or infinity inside ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(value)"
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


# ------------------------------------------------------------------------ replacing and recovering
# Library calls replace an artifact at ``out`` (their caller chose the path); each CLI command sets
# this from its --force flag, so a command line never replaces one unasked.
_FORCE: ContextVar[bool] = ContextVar("eqtools_replace_artifacts", default=True)
# the hidden siblings a write makes beside ``out``: its staging directory, the replaced artifact
# between the two renames of the fallback, export's staging; each name ends in -<pid>@<host>-<hex>,
# where <host> tells this machine and pid namespace from another one sharing the directory
_LEFTOVER = re.compile(
    r"^\.(?P<name>.+)\.(?P<what>tmp|old|export)-(?:(?P<pid>\d+)(?:@(?P<host>[0-9a-f]{8}))?-)?[0-9a-zA-Z_]+$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2_fn: Any = None


@contextlib.contextmanager
def replace_policy(force: bool) -> Iterator[None]:
    """Within the block, a write over an existing artifact needs ``force`` (the CLI's ``--force``)."""
    token = _FORCE.set(force)
    try:
        yield
    finally:
        _FORCE.reset(token)


def _describe_dir(path: Path) -> str:
    names = []
    for entry in sorted(path.iterdir())[:3]:
        names.append(entry.name + ("/" if entry.is_dir() else ""))
    return ", ".join(repr(n) for n in names)


def claim_out(out: Path | str, kind: str, inputs: Iterable[Artifact | Mapping[str, Any] | Path | str] = ()) -> None:
    """Refuse ``out`` when writing a ``kind`` artifact there would destroy something unasked.

    A missing path or an empty directory is free. A file, a symbolic link, or a directory that is
    not an eqtools artifact, is never replaced (not even with ``--force``: eqtools deletes only what
    it made); nor is an artifact holding files its manifest does not list (someone put them there),
    a path inside another artifact (replacing that one would delete it), or one of ``inputs`` or
    their recorded ancestors (the command would destroy what it reads, and its output's lineage
    with it). An existing artifact is replaced only under ``replace_policy(force=True)``; the
    refusal names its kind and creation time. Stages call this as soon as they know ``out``, before
    any computation; :func:`write_artifact` calls it again, with the parents, at the moment of the write.
    """
    out = Path(out)
    recover(out)
    _refuse_inside_artifact(out)
    _refuse_own_input(out, inputs)
    _refuse_unwritable(out, kind)
    if out.is_symlink():
        raise ArtifactError(
            f"the output path {out} is a symbolic link (to {os.readlink(out)}); eqtools never writes through or "
            "replaces a link. Choose another --out, or give the link's target itself"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(
            f"the output path {out} is an existing file, not an artifact directory; eqtools never replaces what "
            "it did not write. Choose another --out, or move the file away"
        )
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        if not any(out.iterdir()):
            return
        raise ArtifactError(
            f"the output path {out} is a directory that is not an eqtools artifact (no manifest.json; it holds "
            f"{_describe_dir(out)}); eqtools never replaces what it did not write, not even with --force. Choose "
            "another --out, or move the directory away"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"the output path {out} holds a manifest.json that is not an eqtools manifest; eqtools never replaces "
            "what it did not write. Choose another --out, or move the directory away"
        )
    unlisted = _unlisted_files(out, manifest)
    if unlisted:
        raise ArtifactError(
            f"the output path {out} is a '{manifest.get('kind', '?')}' artifact that also holds files its manifest "
            f"does not list ({', '.join(repr(n) for n in unlisted[:3])}{', ...' if len(unlisted) > 3 else ''}); "
            "eqtools did not write them, so it does not replace the directory, not even with --force. Move them "
            "out of the artifact, or choose another --out"
        )
    found = manifest.get("kind", "?")
    if found != kind and _FORCE.get():
        raise ArtifactError(
            f"{out} holds a '{found}' artifact created {manifest.get('created', 'at an unknown time')}, and this "
            f"command writes a '{kind}' artifact; --force replaces only an artifact of the kind the command writes "
            "(another kind at the output path is most likely a mistyped --out). Choose another --out, or remove "
            "that artifact yourself first"
        )
    if not _FORCE.get():
        also = "" if found == kind else f" (this command writes a '{kind}' artifact)"
        raise ArtifactError(
            f"{out} already holds a '{found}' artifact created {manifest.get('created', 'at an unknown time')}"
            f"{also}; pass --force to replace it (the replace is atomic: a complete artifact stays at the path "
            "throughout), or choose another --out"
        )


def _eqtools_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the artifact directory ``path`` (unverified), or None where it is not one."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _refuse_inside_artifact(out: Path) -> None:
    for folder in out.resolve().parents:
        manifest = _eqtools_manifest(folder)
        if manifest is not None:
            raise ArtifactError(
                f"the output path {out} lies inside the '{manifest.get('kind', '?')}' artifact at {folder}; an "
                "artifact's directory holds only the files its manifest lists (a replace of it would delete what "
                "was written inside). Choose an --out outside it"
            )


def _refuse_unwritable(out: Path, kind: str) -> None:
    """Refuse now, not after hours of computation, an ``out`` whose directory cannot be made or written."""
    folder = Path(os.path.abspath(out)).parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise _write_error(out, kind, cause=f"{folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _write_error(out, kind, cause=f"this user may not create entries in {folder}")
    # what access() cannot tell: a read-only mount, a pseudo-filesystem, root's access() answering yes anyway
    try:
        probe = tempfile.mkdtemp(prefix=".eqtools-write-check-", dir=folder)
    except OSError as exc:
        raise _write_error(out, kind, cause=f"no directory can be created in {folder} ({exc.strerror or exc})") from None
    with contextlib.suppress(OSError):  # a mount that lets a directory be made but not removed at once
        os.rmdir(probe)


def _lineage_paths(inputs: Iterable[Artifact | Mapping[str, Any] | Path | str]) -> dict[Path, str]:
    """The resolved directories of ``inputs`` and of every ancestor their manifests record, each
    with a short description (read leniently: this only decides what a write must not replace)."""
    found: dict[Path, str] = {}
    frontier: list[tuple[Path, str]] = []
    for item in inputs:
        if isinstance(item, Artifact):
            frontier.append((Path(item.path), f"the '{item.kind}' artifact this command reads"))
        elif isinstance(item, Mapping):
            if item.get("kind") in KINDS and item.get("path"):
                frontier.append((Path(item["path"]), f"the '{item['kind']}' artifact this command reads"))
        else:
            kind = (_eqtools_manifest(Path(item)) or {}).get("kind", "?")
            frontier.append((Path(item), f"the '{kind}' artifact this command reads"))
    while frontier:
        path, what = frontier.pop()
        resolved = path.resolve()
        if resolved in found:
            continue
        found[resolved] = what
        manifest = _eqtools_manifest(resolved) or {}
        for entry in manifest.get("parents") or []:
            if isinstance(entry, Mapping) and entry.get("kind") in KINDS and entry.get("path"):
                frontier.append((Path(entry["path"]), f"the '{entry['kind']}' artifact its input was made from"))
    return found


def _refuse_own_input(out: Path, inputs: Iterable[Artifact | Mapping[str, Any] | Path | str]) -> None:
    what = _lineage_paths(inputs).get(out.resolve())
    if what is not None:
        raise ArtifactError(
            f"the output path {out} is {what}; writing there would destroy it, and with it the record of what the "
            "output was made from (not even --force replaces it). Choose another --out"
        )


# what a file browser leaves in any directory it shows (macOS Finder, Windows Explorer): not the user's work
_OS_METADATA = re.compile(r"^(\.DS_Store|Thumbs\.db|desktop\.ini|\._.*)$")


def _unlisted_files(out: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Files (and links) under the artifact ``out`` that its manifest does not list."""
    table = manifest.get("files")
    listed = (set(table) if isinstance(table, dict) else set()) | {MANIFEST}
    extra = []
    for folder, dirs, files in os.walk(out):
        base = Path(folder)
        for name in sorted(files) + sorted(d for d in dirs if (base / d).is_symlink()):
            rel = (base / name).relative_to(out).as_posix()
            if rel not in listed and not _OS_METADATA.match(name):
                extra.append(rel)
    return sorted(extra)


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """Eight hex digits naming this machine and pid namespace: a pid means something only there.

    Two machines sharing a workspace over NFS, or two containers sharing a volume, see each
    other's staging directories; a pid that is dead here may be a live writer there. (Not the
    boot: after a crash and reboot the same machine must still restore what the kill left; a pid
    reused since is told by its start time.)
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def staging_prefix(out: Path | str, what: str) -> str:
    """The name prefix of a hidden ``what`` (tmp, old, export) directory beside ``out``: it carries
    this process's pid and :func:`_host`, so :func:`recover` removes it only once this writer is gone."""
    return f".{Path(out).name}.{what}-{os.getpid()}@{_host()}-"


def _started_after(pid: int, when: float) -> bool:
    """Whether process ``pid`` started after the time ``when`` (so it cannot have made or renamed a
    directory whose status last changed then: the pid was reused). False where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > when + 2.0  # btime is in whole seconds


def _pid_alive(pid: int, made: float | None = None) -> bool:
    """Whether the writer ``pid`` of a directory whose status last changed at ``made`` still runs."""
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's live process
    return made is None or not _started_after(pid, made)


def leftovers(out: Path | str) -> list[dict[str, Any]]:
    """What unfinished or killed writes left beside ``out``: staging directories, a replaced
    artifact not yet removed, a resumable sample log (``.<name>.partial``) or training checkpoint
    (``<name>.work``). Each entry: ``path``, ``what``, ``live`` (its writer still runs)."""
    out = Path(out)
    found: list[dict[str, Any]] = []
    if not out.parent.is_dir():
        return found
    for entry in sorted(out.parent.iterdir()):
        m = _LEFTOVER.match(entry.name)
        if m and m.group("name") == out.name:
            pid, host = m.group("pid"), m.group("host")
            elsewhere = host is not None and host != _host()
            if elsewhere:
                live = None  # another machine's or container's pid: it cannot be checked from here
            else:
                try:
                    # a rename or a write updates st_ctime: its writer must have started before it
                    made: float | None = entry.lstat().st_ctime
                except OSError:
                    made = None
                live = pid is not None and _pid_alive(int(pid), made)
            what = {"tmp": "staging directory of a write", "old": "replaced artifact awaiting removal",
                    "export": "staging directory of an export"}[m.group("what")]
            if elsewhere:
                what += (" made on another machine or container (eqtools leaves it alone; remove it once that "
                         "run has ended)")
            found.append({"path": str(entry), "what": what, "live": live, "kind": m.group("what")})
        elif entry.name == f".{out.name}.partial":
            found.append({"path": str(entry), "what": "rows of an unfinished `eqtools sample` run (resumable)",
                          "live": None, "kind": "partial"})
        elif entry.name == f"{out.name}.work":
            found.append({"path": str(entry), "what": "checkpoint of an unfinished `eqtools train` run "
                          "(resume with --resume, discard with --restart)", "live": None, "kind": "work"})
    return found


def workspace_leftovers(root: Path | str) -> list[dict[str, Any]]:
    """:func:`leftovers` of every artifact path one or two levels under ``root`` (what `eqtools info
    DIR` lists for a workspace)."""
    root = Path(root)
    targets: set[Path] = set()
    for folder in [root, *(d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith("."))] if root.is_dir() else []:
        for entry in sorted(folder.iterdir()):
            m = _LEFTOVER.match(entry.name)
            if m:
                targets.add(folder / m.group("name"))
            elif entry.name.startswith(".") and entry.name.endswith(".partial"):
                targets.add(folder / entry.name[1:-len(".partial")])
            elif entry.name.endswith(".work") and entry.is_dir():
                targets.add(folder / entry.name[:-len(".work")])
    return [e for t in sorted(targets) for e in leftovers(t)]


def _is_complete(path: Path) -> bool:
    try:
        read_artifact(path, recover_missing=False)
    except ArtifactError:
        return False
    return True


def recover(out: Path | str) -> list[str]:
    """Repair what killed writers left beside ``out``; returns one line per action taken.

    When ``out`` is missing and a dead writer's ``.old`` directory holds a complete artifact (a
    kill between the two renames of a non-atomic replace), it is renamed back to ``out``. Then every
    staging or replaced directory whose writer is dead is removed. Live writers' directories, resumable
    sample logs and training checkpoints are left alone.
    """
    out = Path(out)
    actions: list[str] = []
    found = leftovers(out)
    dead = [e for e in found if e["kind"] in ("tmp", "old", "export") and e["live"] is False]
    if not dead:
        return actions
    # a live writer between its two renames holds the newest artifact in its own .old and puts it back
    # itself if its second rename fails: restoring an older, dead one now would take its place
    replacing = any(e["kind"] == "old" and e["live"] is not False for e in found)
    if not replacing and not out.exists() and not out.is_symlink():
        olds = sorted((Path(e["path"]) for e in dead if e["kind"] == "old"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in olds:
            if _is_complete(old):
                try:
                    os.rename(old, out)
                except OSError:
                    break
                actions.append(f"restored the artifact a killed write had moved to {old.name} back to {out}")
                break
    for entry in dead:
        path = Path(entry["path"])
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            actions.append(f"removed {path.name} ({entry['what']}, left by a killed process)")
    return actions


def _renameat2() -> Any:
    """libc's ``renameat2`` (glibc 2.28 and later), or None."""
    global _renameat2_fn
    if _renameat2_fn is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2_fn = fn
        except (OSError, AttributeError):
            _renameat2_fn = False
    return _renameat2_fn or None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (``renameat2(RENAME_EXCHANGE)``); False where that is not offered
    (not Linux, an old libc or kernel, a filesystem without it), and the caller falls back."""
    if os.environ.get("EQTOOLS_NO_RENAME_EXCHANGE"):  # tests exercise the fallback
        return False
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _install(tmp: Path, out: Path) -> None:
    """Put the finished directory ``tmp`` at ``out``, replacing an artifact there atomically."""
    if not out.exists():
        os.rename(tmp, out)  # fails on a non-empty directory that appeared meanwhile: nothing is lost
        return
    if _exchange(tmp, out):
        _fsync_dir(out.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the replaced artifact
        return
    old = out.parent / (staging_prefix(out, "old") + uuid.uuid4().hex[:8])
    os.rename(out, old)
    try:
        os.rename(tmp, out)  # a kill between these two is repaired by recover(): it restores `old`
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, out)  # the artifact this write was to replace goes back where it was
        raise
    _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


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
        """The nearest artifact of ``kind`` up the recorded lineage (parents first, then theirs), verified.

        The one place lineage is walked: export (its supernet), ``search --verify`` (the supernet
        the predictor's samples were measured on), ``calibrate --searched`` and reports all ask here.
        Each parent read on the way must still be the artifact its child recorded: the sha256 of its
        manifest.json must equal the one in the child's ``parents``, or the parent was replaced (a
        retrained supernet at the same path) and the child's measurements do not describe it; that
        is refused with both checksums. A recorded parent that no longer exists is refused too when
        no other recorded path leads to ``kind``. None only when the lineage records no ``kind``.
        """
        if self.kind == kind:
            return self
        frontier, seen = [self], {str(self.path)}
        missing: list[tuple[Artifact, dict[str, Any]]] = []
        while frontier:
            nxt = []
            for art in frontier:
                for entry in art.manifest.get("parents", []):
                    path = entry.get("path") or ""
                    if entry.get("kind") not in KINDS or path in seen:
                        continue  # a spec file or pretrained weights: not an artifact
                    seen.add(path)
                    located = _locate(art, path)
                    if not located.exists():
                        recover(located)
                    if not located.is_dir():
                        missing.append((art, entry))
                        continue
                    parent = verified_parent(art, {**entry, "path": str(located)})
                    if parent.kind == kind:
                        return parent
                    nxt.append(parent)
            frontier = nxt
        if missing:
            child, entry = next(((c, e) for c, e in missing if e.get("kind") == kind), missing[0])
            raise ArtifactError(
                f"{child.path} ({child.kind}) was made from the {entry.get('kind')} artifact at {entry.get('path')} "
                f"(manifest sha256 {str(entry.get('sha256'))[:12]}…), which no longer exists; this command will not "
                f"guess another one. Put that artifact back at its path, or re-create {child.path} from the one you "
                f"have (`{MADE_BY[child.kind]}`)"
            )
        return None


def _locate(child: Artifact, recorded: str) -> Path:
    """Where a recorded parent path points now: as written (relative to the current directory, as
    the default workspace records it), else, for a relative path, below one of the child's own
    parent directories, so a command run from another directory, or on a copied workspace, finds
    it. The checksum check that follows decides whether it is the recorded artifact."""
    path = Path(recorded)
    if path.exists() or path.is_absolute():
        return path
    for base in Path(child.path).resolve().parents:
        candidate = base / path
        if candidate.is_dir():
            return candidate
    return path


def verified_parent(child: Artifact, entry: Mapping[str, Any]) -> Artifact:
    """The parent ``entry`` of ``child``, read and checked against the checksum ``child`` recorded."""
    parent = read_artifact(entry["path"], entry.get("kind"))
    recorded = entry.get("sha256")
    actual = parent.manifest_sha256
    if recorded and recorded != actual:
        raise ArtifactError(
            f"{child.path} ({child.kind}) was made from the {parent.kind} artifact at {parent.path} with manifest "
            f"sha256 {recorded}, but the {parent.kind} there now has sha256 {actual} (created {parent.created}): it was "
            f"replaced after {child.path} was made, so {child.path} does not describe it. Restore the original "
            f"{parent.kind}, or re-create {child.path} from the current one (`{MADE_BY[child.kind]}`)"
        )
    return parent


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
    parents = list(parents)
    claim_out(out, kind, parents)
    tmp = out.parent / (staging_prefix(out, "tmp") + uuid.uuid4().hex[:8])
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
        bad = _non_finite(manifest)
        if bad is not None:  # NaN and Infinity are not JSON; a stage that records one has a bug
            raise ValueError(f"the '{kind}' manifest holds a non-finite number at {bad}; manifests are strict JSON")
        manifest["checksum"] = manifest_checksum(manifest)
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        claim_out(out, kind, parents)  # again: something may have appeared at `out` while the payload was computed
        _install(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = _io_cause(exc)
        if cause is not None:
            raise _write_error(out, kind, exc, cause) from None
        raise
    return read_artifact(out, kind)


# the errors of a write that the machine refused (full disk or quota, file-size limit, read-only or forbidden
# place, failing device); any other OSError while staging files is a bug and keeps its traceback
_WRITE_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                             errno.EIO})


@contextlib.contextmanager
def staging_write_errors(out: Path | str, kind: str) -> Iterator[None]:
    """Report a refused write of files a stage stages itself, before :func:`write_artifact`, as it would.

    For stages that must compute their metrics from the written files (export) and so cannot write
    them inside ``write_artifact``'s payload callback.
    """
    try:
        yield
    except Exception as exc:
        cause = _io_cause(exc)
        refused = not isinstance(exc, OSError) or exc.errno in _WRITE_REFUSALS
        elsewhere = isinstance(exc, OSError) and exc.filename is not None and \
            Path(os.path.abspath(Path(out).parent)) not in Path(os.path.abspath(exc.filename)).parents
        if cause is None or not refused or elsewhere:  # a scratch file elsewhere (the temporary directory) is not the output
            raise
        raise _write_error(Path(out), kind, exc, cause) from None


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


def _write_error(out: Path, kind: str, exc: BaseException | None = None, cause: str | None = None) -> ArtifactError:
    cause = cause or (_io_cause(exc) if exc is not None else None) or str(exc)
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
    recover_missing: bool = True,
) -> Artifact:
    """Open and verify an artifact; raise :class:`ArtifactError` saying what is wrong.

    A missing ``path`` whose replaced artifact a killed writer left beside it is restored first
    (:func:`recover`). The manifest must be strict JSON, carry its own checksum and fit its kind's
    published model (the one ``write_artifact`` validates against), so a re-signed manifest with a
    field of the wrong type is refused here rather than failing deep inside a stage.
    """
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else (tuple(kind) if kind is not None else None)
    wanted = " or ".join(f"'{k}'" for k in kinds) if kinds else "an eqtools"
    if recover_missing and not path.exists():
        recover(path)
    if not path.exists():
        beside = [e["path"] for e in leftovers(path) if e["kind"] == "old"]
        hint = (f"; a replaced artifact a write left beside it is still there ({', '.join(beside)}): if that write "
                f"has ended (it ran on another machine or container, or still runs), rename it back to {path}"
                if beside else "")
        raise ArtifactError(
            f"no artifact at {str(path)!r}: the path does not exist (expected {wanted} artifact directory){hint}")
    if not path.is_dir():
        raise ArtifactError(f"{str(path)!r} is a file; an artifact is a directory with a manifest.json (expected {wanted} artifact)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an eqtools artifact: it has no manifest.json (expected {wanted} artifact)")
    try:
        manifest = strict_json_loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
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
    _check_schema(path, found, manifest)
    if kinds and found not in kinds:
        hint = "; ".join(f"'{k}' artifacts are made by `{MADE_BY[k]}`" for k in kinds)
        raise ArtifactError(f"{path} is a '{found}' artifact, but this command needs a {wanted} artifact ({hint})")
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


def _check_schema(path: Path, kind: str, manifest: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from eqtools.artifacts import KIND_OWNERS
    from eqtools.artifacts._manifest import manifest_model

    try:
        manifest_model(KIND_OWNERS[kind]).model_validate(manifest)
    except ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(str(p) for p in err['loc'])}`: {err['msg']}" for err in exc.errors()[:4])
        raise ArtifactError(
            f"{path}/{MANIFEST} does not fit the '{kind}' manifest schema ({problems}); it was not written by "
            f"eqtools as it is (`eqtools info --schema {kind}` prints the schema): re-create it with "
            f"`{MADE_BY[kind]}`"
        ) from None


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
