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
    with pytest.raises(ArtifactError, match=r"is a 'samples' artifact, but this command needs a 'supernet'.*eqtools train"):
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
    first = _write(tmp_path / "s")
    new = _write(tmp_path / "s")
    assert read_artifact(tmp_path / "s").created == new.created != first.created
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


# --------------------------------------------------------------------------------- writes never destroy
def test_out_at_a_directory_that_is_not_an_artifact_is_refused_and_left_alone(tmp_path):
    from eqtools.artifacts import replace_policy

    out = tmp_path / "thesis"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("\\documentclass{article}")
    (out / "sub" / "data.csv").write_text("a,b\n1,2\n")
    for force in (False, True):  # not even --force replaces what eqtools did not make
        with replace_policy(force), pytest.raises(ArtifactError, match=r"is a directory that is not an eqtools artifact.*thesis.tex"):
            _write(out)
    assert (out / "thesis.tex").read_text() == "\\documentclass{article}" and (out / "sub" / "data.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # nothing left beside it either


def test_out_at_a_plain_file_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "notes"
    out.write_text("mine")
    with pytest.raises(ArtifactError, match="is an existing file, not an artifact directory"):
        _write(out)
    assert out.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_an_empty_directory_is_a_free_output_path(tmp_path):
    from eqtools.artifacts import replace_policy

    (tmp_path / "empty").mkdir()
    with replace_policy(False):
        assert _write(tmp_path / "empty").kind == "supernet"


def test_replacing_an_artifact_needs_force_and_names_kind_and_time(tmp_path):
    from eqtools.artifacts import replace_policy

    first = _write(tmp_path / "s")
    before = (tmp_path / "s" / "manifest.json").read_bytes()
    with replace_policy(False), pytest.raises(ArtifactError) as err:
        _write(tmp_path / "s", kind="samples")
    text = " ".join(str(err.value).split())
    assert f"already holds a 'supernet' artifact created {first.created}" in text and "--force" in text
    assert (tmp_path / "s" / "manifest.json").read_bytes() == before
    with replace_policy(True):
        assert _write(tmp_path / "s").created != first.created


def test_force_never_replaces_an_artifact_of_another_kind(tmp_path):
    from eqtools.artifacts import replace_policy

    _write(tmp_path / "s")
    before = (tmp_path / "s" / "manifest.json").read_bytes()
    with replace_policy(True), pytest.raises(ArtifactError) as err:
        _write(tmp_path / "s", kind="samples")
    text = " ".join(str(err.value).split())
    assert "holds a 'supernet' artifact" in text and "writes a 'samples' artifact" in text and "mistyped --out" in text
    assert (tmp_path / "s" / "manifest.json").read_bytes() == before


REPLACER = """
import os, sys, shutil, torch
from pathlib import Path
import eqtools.artifacts._store as store
from eqtools.artifacts import save_safetensors, write_artifact
out, at = Path(sys.argv[1]), sys.argv[2]
def die_after(fn):
    def wrapped(*a, **k):
        fn(*a, **k)
        os._exit(9)  # killed right after this call
    return wrapped
if at == "rename":
    store.os.rename = die_after(os.rename)  # the first rename of a replace
else:
    store.shutil.rmtree = die_after(shutil.rmtree)  # the swap is done, the old one not yet removed
def payload(tmp):
    save_safetensors(tmp / "weights.safetensors", {"w": torch.full((10,), 2.0)})
write_artifact(out, "supernet", payload, metrics={"round": 2})
"""


@pytest.mark.parametrize("exchange", [True, False])
def test_a_kill_in_the_middle_of_a_replace_leaves_a_complete_artifact(tmp_path, exchange):
    """With renameat2(RENAME_EXCHANGE) a complete artifact sits at --out at every instant; without it,
    a kill between the two renames leaves the path empty for the next read, which restores the old one."""
    import subprocess
    import sys

    out = tmp_path / "s"
    write_artifact(out, "supernet", lambda t: save_safetensors(t / "weights.safetensors", {"w": torch.ones(10)}),
                   metrics={"round": 1})
    script = tmp_path / "replace.py"
    script.write_text(REPLACER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    if not exchange:
        env["EQTOOLS_NO_RENAME_EXCHANGE"] = "1"
    for at in ("rename", "rmtree"):
        proc = subprocess.run([sys.executable, str(script), str(out), at], env=env, capture_output=True, text=True)
        assert proc.returncode in (0, 9), proc.stderr
        if exchange:
            # no repair needed: the path was never empty (read the manifest directly, no recovery)
            assert json.loads((out / "manifest.json").read_text())["metrics"]["round"] in (1, 2)
        art = read_artifact(out, "supernet")  # recovers what the fallback left, if anything
        assert art.metrics["round"] in (1, 2)
        assert float(art.tensors("weights.safetensors")["w"][0]) == art.metrics["round"]
    # the next write removes what the killed writers left beside the path
    _write(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replace.py", "s"]


def test_a_replace_that_fell_between_the_two_renames_is_recovered_on_read(tmp_path):
    out = tmp_path / "s"
    _write(out)
    created = read_artifact(out).created
    os.rename(out, tmp_path / ".s.old-999999999-deadbeef")  # the state a kill between the renames leaves
    (tmp_path / ".s.tmp-999999999-cafebabe").mkdir()  # and its staging directory
    assert read_artifact(out).created == created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_leftovers_of_live_writers_are_kept(tmp_path):
    from eqtools.artifacts import leftovers, recover

    out = tmp_path / "s"
    _write(out)
    live = tmp_path / f".s.export-{os.getpid()}-abc123"
    dead = tmp_path / ".s.export-999999999-abc123"
    live.mkdir()
    dead.mkdir()
    assert {(Path(e["path"]).name, e["live"]) for e in leftovers(out)} == {(live.name, True), (dead.name, False)}
    recover(out)
    assert live.is_dir() and not dead.exists()


# --------------------------------------------------------------------------------- lineage
def test_a_parent_replaced_under_its_child_is_refused_with_both_checksums(tmp_path):
    from eqtools.artifacts import replace_policy

    parent = _write(tmp_path / "s")
    child = _write(tmp_path / "c", kind="samples", parents=[parent])
    assert read_artifact(tmp_path / "c").ancestor("supernet").path == parent.path
    with replace_policy(True):
        swapped = _write(tmp_path / "s")  # retrained at the same path
    with pytest.raises(ArtifactError) as err:
        read_artifact(tmp_path / "c").ancestor("supernet")
    text = " ".join(str(err.value).split())
    assert parent.manifest_sha256 in text and swapped.manifest_sha256 in text and "re-create" in text
    assert child.path.is_dir()


def test_a_missing_parent_is_refused_not_guessed(tmp_path):
    import shutil

    parent = _write(tmp_path / "ws" / "s")
    _write(tmp_path / "ws" / "c", kind="samples", parents=[parent])
    shutil.move(tmp_path / "ws" / "s", tmp_path / "elsewhere")
    _write(tmp_path / "ws" / "decoy")  # another supernet in the workspace must not be taken instead
    with pytest.raises(ArtifactError, match=r"which no longer exists; this command will not guess another one"):
        read_artifact(tmp_path / "ws" / "c").ancestor("supernet")


# --------------------------------------------------------------------------------- strict manifests
def test_manifests_are_strict_json(tmp_path):
    with pytest.raises(ValueError, match=r"non-finite number at metrics.top1"):
        write_artifact(tmp_path / "s", "supernet", lambda t: None, metrics={"top1": float("nan")})
    assert not (tmp_path / "s").exists() and list(tmp_path.iterdir()) == []
    _write(tmp_path / "t")
    path = tmp_path / "t" / "manifest.json"
    m = json.loads(path.read_text())
    m["metrics"]["top1"] = float("inf")
    from eqtools.artifacts import manifest_checksum

    m["checksum"] = manifest_checksum(m)  # re-signed, so only the token is wrong
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="Infinity is not a JSON value"):
        read_artifact(tmp_path / "t")


def test_a_resigned_manifest_with_a_wrong_type_is_refused(tmp_path):
    from eqtools.artifacts import manifest_checksum

    _write(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    m = json.loads(path.read_text())
    m["metrics"]["epochs"] = "many"
    m["parents"] = "none"
    m["checksum"] = manifest_checksum(m)
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"does not fit the 'supernet' manifest schema.*`parents`.*eqtools info --schema supernet"):
        read_artifact(tmp_path / "s")


def test_a_json_payload_edited_but_still_valid_json_is_refused(tmp_path):
    """The checksum covers JSON payloads too: one digit of a scale changed, the file still parses."""

    def files(tmp: Path) -> None:
        (tmp / "plan.json").write_text(json.dumps({"scale": 0.0123, "zero_point": 3}))

    write_artifact(tmp_path / "e", "export", files)
    plan = tmp_path / "e" / "plan.json"
    plan.write_text(plan.read_text().replace("0.0123", "0.0128"))
    json.loads(plan.read_text())  # still valid JSON
    with pytest.raises(ArtifactError, match=r"plan.json does not match its checksum"):
        read_artifact(tmp_path / "e")


# --------------------------------------------------------------------------------- what --force never replaces
def test_out_inside_another_artifact_is_refused_even_with_force(tmp_path):
    from eqtools.artifacts import replace_policy

    outer = _write(tmp_path / "s")
    before = sorted(p.name for p in outer.path.iterdir())
    with replace_policy(True), pytest.raises(ArtifactError, match=r"lies inside the 'supernet' artifact at .*outside it"):
        _write(tmp_path / "s" / "calibrated", kind="calibrated")
    assert sorted(p.name for p in outer.path.iterdir()) == before
    assert read_artifact(outer.path).created == outer.created


def test_out_equal_to_an_input_or_its_ancestor_is_refused_even_with_force(tmp_path):
    from eqtools.artifacts import claim_out, replace_policy

    supernet = _write(tmp_path / "s")
    samples = _write(tmp_path / "c", kind="samples", parents=[supernet])
    with replace_policy(True):
        # the supernet the input was made from (e.g. fit-predictor --out SUPERNET --force)
        with pytest.raises(ArtifactError, match=r"is the 'supernet' artifact its input was made from.*not even --force"):
            _write(tmp_path / "s", kind="predictor", parents=[samples])
        # the input itself (sample --merge into one of its own shards), early and at the write
        with pytest.raises(ArtifactError, match=r"is the 'samples' artifact this command reads"):
            claim_out(tmp_path / "c", "samples", [samples])
        with pytest.raises(ArtifactError, match=r"is the 'samples' artifact this command reads"):
            _write(tmp_path / "c", kind="samples", parents=[samples])
        assert _write(tmp_path / "p", kind="predictor", parents=[samples]).kind == "predictor"  # elsewhere is fine
    assert read_artifact(tmp_path / "s").created == supernet.created
    assert read_artifact(tmp_path / "c").created == samples.created


def test_an_artifact_holding_files_it_does_not_list_is_not_replaced(tmp_path):
    from eqtools.artifacts import replace_policy

    first = _write(tmp_path / "s")
    (tmp_path / "s" / "my-notes.md").write_text("ran on the big machine")
    with replace_policy(True), pytest.raises(ArtifactError, match=r"does not list \('my-notes.md'\).*not even with --force"):
        _write(tmp_path / "s")
    assert (tmp_path / "s" / "my-notes.md").read_text() == "ran on the big machine"
    assert read_artifact(tmp_path / "s").created == first.created
    (tmp_path / "s" / "my-notes.md").unlink()
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # a file browser's, not the user's work
    with replace_policy(True):
        assert _write(tmp_path / "s").created != first.created


def test_a_symlink_at_out_is_refused_and_its_target_kept(tmp_path):
    from eqtools.artifacts import replace_policy

    target = _write(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with replace_policy(True), pytest.raises(ArtifactError, match=r"is a symbolic link \(to .*real\)"):
        _write(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and read_artifact(tmp_path / "real").created == target.created


# --------------------------------------------------------------------------------- recovery among writers
def test_a_dead_writers_old_artifact_is_not_restored_while_a_live_writer_replaces(tmp_path):
    """A live writer between its two renames holds the newest artifact in its own .old; an older .old a
    killed writer left must not be put at the path in its place (the live one would then be deleted)."""
    from eqtools.artifacts import recover, staging_prefix

    out = tmp_path / "s"
    older = _write(tmp_path / "a")
    time.sleep(0.01)
    newer = _write(out)
    live_old = tmp_path / (staging_prefix(out, "old") + "cafe0001")  # this process: live
    os.rename(out, live_old)
    os.rename(tmp_path / "a", tmp_path / ".s.old-999999999-deadbeef")  # a killed writer's, long ago
    recover(out)
    assert not out.exists() and read_artifact(live_old).created == newer.created
    os.rename(live_old, out)  # the live writer's failed second rename puts its own back
    recover(out)  # now the dead one is removed, not restored
    assert read_artifact(out).created == newer.created != older.created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_another_machines_staging_is_left_alone_and_reported(tmp_path):
    from eqtools.artifacts import leftovers, recover, staging_prefix

    out = tmp_path / "s"
    _write(out)
    ours = staging_prefix(out, "tmp").split("@")[1].rstrip("-")
    other = "0" * 8 if ours != "0" * 8 else "1" * 8
    theirs = tmp_path / f".s.tmp-{os.getpid() + 1}@{other}-abc123"  # its pid means nothing on this machine
    theirs.mkdir()
    (entry,) = leftovers(out)
    assert entry["live"] is None and "another machine or container" in entry["what"]
    recover(out)
    assert theirs.is_dir()
    # killed there between the two renames of a replace: not restored from here, but named
    old = tmp_path / f".s.old-{os.getpid() + 1}@{other}-abc123"
    os.rename(out, old)
    with pytest.raises(ArtifactError, match=r"a replaced artifact a write left beside it is still there .*rename it back"):
        read_artifact(out)
    assert read_artifact(old).kind == "supernet"


def test_a_reused_pid_does_not_keep_a_killed_writers_leftover_alive(tmp_path):
    """The pid in a leftover's name is alive again, but its process started after the directory was
    made or renamed: it is not the writer, and the directory is recovered."""
    import subprocess

    from eqtools.artifacts import leftovers, recover, staging_prefix

    out = tmp_path / "s"
    _write(out)
    host = staging_prefix(out, "tmp").split("@")[1]
    first = int(Path("/proc/sys/kernel/ns_last_pid").read_text()) + 1
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(first, min(first + 3000, pid_max)):  # the next pids, each as a killed writer's staging
        (tmp_path / f".s.tmp-{pid}@{host}x").mkdir()
    time.sleep(2.5)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        reused = tmp_path / f".s.tmp-{proc.pid}@{host}x"
        if not reused.is_dir():
            pytest.skip("the pid counter moved past the prepared range (a busy machine)")
        assert next(e for e in leftovers(out) if e["path"] == str(reused))["live"] is False
        fresh = tmp_path / f".s.tmp-{proc.pid}@{host}fresh"  # made now: its writer may be that process
        fresh.mkdir()
        assert next(e for e in leftovers(out) if e["path"] == str(fresh))["live"] is True
        recover(out)
        assert not reused.exists() and fresh.is_dir() and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_failed_second_rename_of_the_fallback_puts_the_old_artifact_back(tmp_path, monkeypatch):
    import errno

    out = tmp_path / "s"
    first = _write(out)
    monkeypatch.setenv("EQTOOLS_NO_RENAME_EXCHANGE", "1")
    real, calls = os.rename, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the new directory into place
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(ArtifactError, match=r"cannot write the supernet artifact .*Input/output error"):
        _write(out)
    monkeypatch.undo()
    assert read_artifact(out).created == first.created  # at its path now, not only after this process exits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_an_output_path_that_cannot_be_made_is_refused_before_computing(tmp_path):
    from eqtools.artifacts import claim_out

    (tmp_path / "notes").write_text("mine")
    with pytest.raises(ArtifactError, match=r"cannot write the supernet artifact to .*: .*notes is a file, not a directory"):
        claim_out(tmp_path / "notes" / "ws" / "s", "supernet")
    assert (tmp_path / "notes").read_text() == "mine"
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
        try:
            with pytest.raises(ArtifactError, match=r"cannot write the supernet artifact to .*: this user may not create entries in .*ro"):
                claim_out(tmp_path / "ro" / "ws" / "s", "supernet")
        finally:
            (tmp_path / "ro").chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_refuses_new_entries_is_refused_before_computing_even_for_root():
    """access() tells root yes almost everywhere; creating a directory is the check that holds for every user
    and every filesystem (a read-only mount, a pseudo-filesystem)."""
    from eqtools.artifacts import claim_out

    with pytest.raises(ArtifactError, match=r"cannot write the supernet artifact to /proc/eqtools-out: no directory "
                                            r"can be created in /proc"):
        claim_out("/proc/eqtools-out", "supernet")
