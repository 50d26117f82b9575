"""The artifact contract: atomic writes, verification on read, clear refusals."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from eqtools.artifacts import (
    FORMAT_VERSION,
    check_space,
    find_latest,
    load_safetensors,
    read_artifact,
    save_safetensors,
    write_artifact,
)
from eqtools.errors import ArtifactError
from eqtools.space import ElasticSpace, LayerInfo

LAYERS = [LayerInfo("a", "conv", 27, 3, 27, 100), LayerInfo("b", "linear", 30, 10, 3, 30)]
SPACE = ElasticSpace.build(LAYERS, w_bits=(2, 4, 8), a_bits=(4, 8))


def _write(out: Path, kind: str = "supernet", space: ElasticSpace | None = SPACE, **kw):
    def files(tmp: Path) -> None:
        save_safetensors(tmp / "weights.safetensors", {"w": torch.arange(12.0).view(3, 4)})
        (tmp / "notes.txt").write_text("hello")

    return write_artifact(out, kind, files, spec={"name": "t"}, space=space, metrics={"top1": 0.5}, **kw)


def test_round_trip_and_manifest_fields(tmp_path):
    art = _write(tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["format"] == "eqtools" and m["format_version"] == FORMAT_VERSION and m["kind"] == "supernet"
    assert set(m["files"]) == {"weights.safetensors", "notes.txt"}
    assert m["space_fingerprint"] == SPACE.fingerprint and art.space == SPACE
    assert torch.equal(art.tensors("weights.safetensors")["w"], torch.arange(12.0).view(3, 4))
    child = _write(tmp_path / "c", kind="samples", parents=[art])
    assert child.manifest["parents"] == [{"kind": "supernet", "path": str(tmp_path / "s"), "sha256": art.manifest_sha256}]


def test_wrong_kind_names_found_expected_and_maker(tmp_path):
    _write(tmp_path / "s", kind="samples")
    with pytest.raises(ArtifactError, match=r"is a 'samples' artifact, but this command needs 'supernet'.*eqtools train"):
        read_artifact(tmp_path / "s", "supernet")


def test_newer_format_version_is_refused(tmp_path):
    _write(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    m = json.loads(path.read_text())
    m["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=f"newer eqtools.*format_version {FORMAT_VERSION + 1}.*upgrade"):
        read_artifact(tmp_path / "s")


@pytest.mark.parametrize("edit", [
    lambda m: m["metrics"].update(top1=0.99),
    lambda m: m["spec"].update(name="other"),
    lambda m: m["files"].update({"notes.txt": "0" * 64}),
    lambda m: m.pop("checksum"),
])
def test_an_edited_manifest_is_refused(tmp_path, edit):
    _write(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="was modified after it was written"):
        read_artifact(tmp_path / "s")


def test_bit_flip_is_caught_by_checksum(tmp_path):
    _write(tmp_path / "s")
    f = tmp_path / "s" / "weights.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.safetensors does not match its checksum"):
        read_artifact(tmp_path / "s")


def test_truncated_safetensors_outside_an_artifact_is_a_clear_error(tmp_path):
    f = tmp_path / "w.safetensors"
    save_safetensors(f, {"w": torch.ones(100)})
    f.write_bytes(f.read_bytes()[:60])
    with pytest.raises(ArtifactError, match=r"not a readable safetensors file.*truncated or corrupted"):
        load_safetensors(f)


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{oops"), "not valid JSON"),
        (lambda d: (d / "manifest.json").write_text('{"format": "other"}'), "not an eqtools manifest"),
        (lambda d: (d / "notes.txt").unlink(), "incomplete: notes.txt"),
    ],
)
def test_damaged_artifacts_are_refused(tmp_path, damage, match):
    _write(tmp_path / "s")
    damage(tmp_path / "s")
    with pytest.raises(ArtifactError, match=match):
        read_artifact(tmp_path / "s")


def test_missing_path_and_file_instead_of_dir(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_artifact(tmp_path / "nope", "supernet")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        read_artifact(tmp_path / "f")


def test_space_mismatch_is_refused(tmp_path):
    art = _write(tmp_path / "s")
    other = ElasticSpace.build(LAYERS, w_bits=(2, 8), a_bits=(4, 8))
    with pytest.raises(ArtifactError, match=r"another elastic space.*w_bits \[2, 4, 8\] vs \[2, 8\]"):
        check_space(art, other)
    with pytest.raises(ArtifactError, match="another elastic space"):
        read_artifact(tmp_path / "s", space=other)


def test_failed_writer_leaves_nothing_and_keeps_the_old_artifact(tmp_path):
    old = _write(tmp_path / "s")

    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_artifact(tmp_path / "s", "supernet", broken, space=SPACE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert read_artifact(tmp_path / "s").manifest == old.manifest


def test_replacing_an_artifact_is_complete(tmp_path):
    _write(tmp_path / "s")
    new = _write(tmp_path / "s", kind="samples")
    assert read_artifact(tmp_path / "s").kind == "samples" == new.kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_find_latest_picks_newest_and_ignores_unfinished_writes(tmp_path):
    _write(tmp_path / "a" / "supernet")
    time.sleep(0.01)
    _write(tmp_path / "b" / "supernet")
    _write(tmp_path / "b" / "samples", kind="samples")
    # an interrupted write: hidden temporary directory that even has a manifest
    tmp = tmp_path / "b" / ".supernet.tmp-1234"
    tmp.mkdir()
    (tmp / "manifest.json").write_text(json.dumps({"kind": "supernet", "created": "9999"}))
    assert find_latest("supernet", tmp_path) == tmp_path / "b" / "supernet"
    assert find_latest("samples", tmp_path) == tmp_path / "b" / "samples"
    with pytest.raises(ArtifactError, match=r"no 'predictor' artifact found.*eqtools fit-predictor.*--from"):
        find_latest("predictor", tmp_path)


def test_default_supernet_is_the_elastic_one_not_a_newer_static_baseline(tmp_path):
    _write(tmp_path / "q" / "supernet", extra={"mode": "supernet"})
    time.sleep(0.01)
    _write(tmp_path / "q" / "supernet-static-w4a4", extra={"mode": "static"})
    assert find_latest("supernet", tmp_path) == tmp_path / "q" / "supernet"
    only_static = tmp_path / "only"
    _write(only_static / "q" / "supernet-static-w2a2", extra={"mode": "static"})
    assert find_latest("supernet", only_static) == only_static / "q" / "supernet-static-w2a2"


def test_written_files_are_complete_on_disk(tmp_path):
    art = _write(tmp_path / "s")
    for name in art.manifest["files"]:
        assert os.path.getsize(tmp_path / "s" / name) > 0
