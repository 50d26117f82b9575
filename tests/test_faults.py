"""Faults and bad input: every one exits 2 with a clear message, never a traceback, never a
silently wrong result; a killed writer never leaves an artifact that reads as valid."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eqtools.artifacts import FORMAT_VERSION, find_latest, read_artifact
from eqtools.cli.app import app
from eqtools.errors import ArtifactError, ResourceError, out_of_memory_advice

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------- kill -9 while writing
WRITER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from eqtools.artifacts import save_safetensors, write_artifact
    out, i = Path(sys.argv[1]), 0
    def payload(tmp):
        for k in range(6):
            save_safetensors(tmp / f"part{k}.safetensors", {"w": torch.full((50_000,), float(i))})
            time.sleep(0.01)
    while True:
        write_artifact(out, "samples", payload, metrics={"round": i})
        i += 1
""")


def test_kill_9_during_artifact_writes_never_leaves_a_valid_looking_partial(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    out = tmp_path / "ws" / "spec" / "samples"
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(1.5 + rng.random() * 1.5)  # land anywhere in a write (imports take ~1 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever is at `out` is either a complete, verified artifact or absent: never partial
        if out.exists():
            art = read_artifact(out, "samples")
            values = {float(art.tensors(f"part{k}.safetensors")["w"][0]) for k in range(6)}
            assert values == {float(art.metrics["round"])}  # every file from the same write
            assert find_latest("samples", tmp_path / "ws") == out
        else:
            with pytest.raises(ArtifactError):
                find_latest("samples", tmp_path / "ws")
        # leftovers of the killed write are hidden and never chosen
        for leftover in out.parent.iterdir() if out.parent.exists() else ():
            assert leftover == out or leftover.name.startswith(".")


# --------------------------------------------------------------------------------- bad input per stage
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_supernet_artifact):
    """A workspace holding one artifact of every kind, made from the tiny trained supernet."""
    from eqtools.calibrate import calibrate_artifact
    from eqtools.predictor import FitOptions, fit_predictor
    from eqtools.predictor.synthetic import write_synthetic_samples

    root = tmp_path_factory.mktemp("ws")
    supernet = read_artifact(tiny_supernet_artifact, "supernet")
    shutil.copytree(tiny_supernet_artifact, root / "supernet")
    supernet = read_artifact(root / "supernet", "supernet")
    samples = write_synthetic_samples(root / "samples", supernet.space, 30, spec=supernet.spec, parents=[supernet])
    fit_predictor(samples, root / "predictor", FitOptions(model="mlp", encoding="onehot", rank_weight=0.0, target="accuracy", epochs=2, hidden=8, layers=2))
    calibrate_artifact(supernet, supernet.space.uniform(4), images=64, out=root / "calibrated")
    return root


def _damaged(workspace: Path, tmp_path: Path, name: str, damage: str) -> Path:
    target = tmp_path / name
    shutil.copytree(workspace / name, target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    payload = target / sorted(n for n in manifest["files"] if not n.endswith(".png"))[0]
    if damage == "truncated":
        payload.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])
    elif damage == "bit-flip":
        data = bytearray(payload.read_bytes())
        data[len(data) // 2] ^= 0x10
        payload.write_bytes(bytes(data))
    elif damage == "edited-manifest":
        manifest["metrics"]["edited"] = True
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "newer-version":
        manifest["format_version"] = FORMAT_VERSION + 1
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "missing-manifest":
        manifest_path.unlink()
    elif damage == "json-digit":  # one digit of a JSON payload (a scale, a bit-width, an accuracy), still valid JSON
        names = sorted((n for n in manifest["files"] if n.endswith((".json", ".jsonl"))),
                       key=lambda n: (n != "deploy_plan.json", n))
        payload = target / names[0]
        text = payload.read_text()
        i = next(k for k in range(len(text) // 2, len(text)) if text[k].isdigit() and text[k - 1].isdigit())
        payload.write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:])
        for line in payload.read_text().splitlines():
            json.loads(line) if names[0].endswith(".jsonl") else None
        if names[0].endswith(".json"):
            json.loads(payload.read_text())
    return target


COMMANDS = {
    "supernet": lambda p: ["calibrate", "--from", str(p), "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
    "samples": lambda p: ["fit-predictor", "--from", str(p), "--model", "mlp"],
    "predictor": lambda p: ["search", "--predictor", str(p), "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
    "calibrated": lambda p: ["export", "--from", str(p)],
}
EXPECTED = {
    "truncated": "does not match its checksum",
    "bit-flip": "does not match its checksum",
    "edited-manifest": "was modified after it was written",
    "newer-version": "newer eqtools",
    "missing-manifest": "no manifest.json",
    "json-digit": "does not match its checksum",
}


@pytest.mark.parametrize("damage", sorted(EXPECTED))
@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_damaged_inputs_exit_2_with_a_clear_message(workspace, tmp_path, monkeypatch, kind, damage):
    if damage == "json-digit" and kind == "supernet":
        pytest.skip("the fixture's supernet holds only its weights (no JSON payload)")
    monkeypatch.chdir(tmp_path)
    target = _damaged(workspace, tmp_path, kind, damage)
    out = tmp_path / "out"
    result = runner.invoke(app, [*COMMANDS[kind](target), "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert text.startswith("error:") and EXPECTED[damage] in text and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("kind,wrong", [("supernet", "samples"), ("samples", "predictor"), ("predictor", "calibrated"),
                                        ("calibrated", "predictor")])
def test_wrong_kind_names_what_was_found_and_expected(workspace, tmp_path, kind, wrong):
    result = runner.invoke(app, [*COMMANDS[kind](workspace / wrong), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"is a '{wrong}' artifact, but this command needs" in flat(result.output)


def test_truncated_samples_jsonl_is_refused(workspace, tmp_path):
    target = tmp_path / "samples"
    shutil.copytree(workspace / "samples", target)
    lines = (target / "samples.jsonl").read_text().splitlines(keepends=True)
    (target / "samples.jsonl").write_text("".join(lines[:10]) + lines[10][:20])  # cut mid-row, as a crash would
    result = runner.invoke(app, ["fit-predictor", "--from", str(target), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "samples.jsonl does not match its checksum" in flat(result.output)


def test_config_from_another_space_is_refused_naming_the_layer(workspace, tmp_path):
    config = json.loads((workspace / "calibrated" / "config.json").read_text())
    config["layers"][1]["w_bits"] = 5  # the tiny space has bits 2, 3, 4, 8
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    result = runner.invoke(app, ["calibrate", "--from", str(workspace / "supernet"), "--config", str(path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "layer 'conv2': w_bits 5 is not allowed; allowed: [2, 3, 4, 8]" in flat(result.output)


def test_infeasible_budget_is_refused_before_searching(workspace, tmp_path):
    result = runner.invoke(app, ["search", "--predictor", str(workspace / "predictor"), "--w-bits", "1",
                                 "--granularity", "per-channel", "--symmetry", "sym", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "Traceback" not in result.output and not (tmp_path / "s").exists()


def test_export_on_a_full_disk_exits_2_and_leaves_nothing(workspace, tmp_path):
    """A real refused write (a file-size limit: EFBIG, as ENOSPC on a full disk) of the staged export files."""
    import resource

    def limit() -> None:  # below the tiny subnet's integer weights file
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    out = tmp_path / "out" / "export"
    proc = subprocess.run([sys.executable, "-m", "eqtools", "export", "--from", str(workspace / "calibrated"),
                           "--check-images", "50", "--format", "int", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=limit)
    # was 1: safetensors' SafetensorError from the staging directory, with a traceback
    assert proc.returncode == 2, proc.stderr
    text = flat(proc.stderr)
    assert "cannot write the export artifact to" in text and "File too large" in text and "Traceback" not in text
    assert not out.exists() and list(out.parent.iterdir()) == []  # the staging directory went too


def test_a_refused_scratch_write_exits_2_naming_the_file(workspace, tmp_path):
    """onnxruntime's optimised graph goes to the temporary directory, and its write failing was only
    'INVALID_PROTOBUF : Protobuf serialization failed' with a traceback."""
    import resource

    base = [sys.executable, "-m", "eqtools", "export", "--from", str(workspace / "calibrated"), "--check-images", "50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    free = subprocess.run([*base, "--out", str(tmp_path / "free"), "--json"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert free.returncode == 0, free.stderr
    sizes = json.loads(free.stdout)["metrics"]["sizes"]
    room = sizes["int_file_bytes"] + 64  # the integer file fits; the ONNX graph onnxruntime optimises does not
    assert room < sizes["onnx_file_bytes"]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

    out = tmp_path / "out" / "export"
    proc = subprocess.run([*base, "--out", str(out)], capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    text = flat(proc.stderr)
    assert "the machine refused a write: File too large (writing " in text and "/probe)" in text
    assert "No artifact was written or changed" in text and "Traceback" not in text
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_a_library_error_wrapping_a_full_disk_exits_2_and_other_errors_keep_their_traceback(workspace, tmp_path,
                                                                                              monkeypatch):
    import eqtools.evaluation as evaluation

    def full(*args, **kwargs):  # as torch.compile reports its cache write failing
        raise RuntimeError("InductorError: OSError: [Errno 28] No space left on device")

    monkeypatch.setattr(evaluation, "recalibrate_bn", full)
    args = ["calibrate", "--from", str(workspace / "supernet"), "--w-bits", "4", "--granularity", "per-channel",
            "--symmetry", "sym", "--images", "8", "--no-deployed", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "error: the machine refused a write: No space left on device (RuntimeError: InductorError" in text
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(evaluation, "recalibrate_bn", bug)
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


@pytest.mark.parametrize("command", ["info", "fit-predictor", "search-out", "search-loop"])
def test_a_path_the_system_refuses_exits_2_naming_it(workspace, tmp_path, command):
    # these raised OSError ENAMETOOLONG (or pathlib's RuntimeError for a link loop) with a traceback
    long = tmp_path / ("x" * 300)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    search = ["search", "--predictor", str(workspace / "predictor"), "--w-bits", "4", "--granularity", "per-channel",
              "--symmetry", "sym", "--out"]
    args = {"info": ["info", str(long / "a")], "fit-predictor": ["fit-predictor", "--from", str(long)],
            "search-out": [*search, str(long)], "search-loop": [*search, str(tmp_path / "loop1" / "s")]}[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "Traceback" not in result.output and "cannot be used:" in text
    if command == "search-loop":
        assert f"the path '{tmp_path / 'loop1' / 's'}' cannot be used: its symbolic links form a loop" in text
    else:
        assert "a name in it is longer than the file system allows" in text and "x" * 300 in text.replace(" ", "")


def test_unknown_model_and_missing_data_exit_2(tmp_path):
    spec = {"name": "x", "model": {"name": "resnet9000"}, "data": {"name": "digits", "val_size": 100}}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown model 'resnet9000'" in flat(result.output)


# --------------------------------------------------------------------------------- out of memory
@pytest.mark.parametrize("exc", [
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    MemoryError(),
])
def test_out_of_memory_becomes_advice(exc):
    with pytest.raises(ResourceError, match=r"ran out of memory while training with train.batch_size = 4096.*"
                                            r"--set train.batch_size=2048"):
        with out_of_memory_advice("training", "train.batch_size", 4096):
            raise exc


def test_other_runtime_errors_are_not_disguised():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with out_of_memory_advice("training", "train.batch_size", 8):
            raise RuntimeError("shape mismatch")


def test_training_that_runs_out_of_memory_exits_2_with_advice(tmp_path, monkeypatch):
    from conftest import DIGITS_SPEC

    import eqtools.train.loop as loop

    def boom(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 999 GB")

    monkeypatch.setattr(loop, "sandwich_step", boom)
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 1}}))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2, result.output
    assert "ran out of memory while training with train.batch_size = 64" in flat(result.output)
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------- --out and --force, per command
def _writers(ws: Path, spec_file: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", str(spec_file), "-q"],
        "calibrate": ["calibrate", "--from", str(ws / "supernet"), "--w-bits", "4", "--granularity", "per-channel",
                      "--symmetry", "sym"],
        "sample": ["sample", "--from", str(ws / "supernet"), "-n", "4", "--no-progress"],
        "fit-predictor": ["fit-predictor", "--from", str(ws / "samples"), "--model", "mlp"],
        "search": ["search", "--predictor", str(ws / "predictor"), "--w-bits", "4", "--granularity", "per-channel",
                   "--symmetry", "sym", "--population", "8", "--generations", "2"],
        "export": ["export", "--from", str(ws / "calibrated")],
    }


@pytest.fixture
def no_computation(monkeypatch):
    """Every stage's first expensive step raises: a refusal must come before any of them."""
    import eqtools.build
    import eqtools.calibrate
    import eqtools.export._stage
    import eqtools.predictor
    import eqtools.sample
    import eqtools.search

    def boom(*args, **kwargs):
        raise AssertionError("computation started before the output path was checked")

    for module, name in [(eqtools.build, "build_supernet"), (eqtools.calibrate, "measure_subnet"),
                         (eqtools.sample, "_row_evaluator"), (eqtools.predictor, "fit_predictor"),
                         (eqtools.search, "run_search"), (eqtools.export._stage, "_subnet_of")]:
        monkeypatch.setattr(module, name, boom)


@pytest.fixture
def writers(workspace, tmp_path, monkeypatch, no_computation) -> dict[str, list[str]]:
    """Each writing command's arguments, run from ``tmp_path`` (holding only ``spec.json``), none of
    them allowed to start computing."""
    from conftest import DIGITS_SPEC

    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(DIGITS_SPEC))
    return _writers(workspace, spec_file)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["train", "calibrate", "sample", "fit-predictor", "search", "export"])
def test_every_writer_refuses_an_existing_artifact_without_force_before_computing(workspace, tmp_path, writers, command):
    out = tmp_path / "out"
    shutil.copytree(workspace / "samples", out)
    before = _tree(out)
    created = read_artifact(out).created
    result = runner.invoke(app, [*writers[command], "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert f"already holds a 'samples' artifact created {created}" in text and "--force" in text
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out", "spec.json"]


@pytest.mark.parametrize("command", ["train", "calibrate", "sample", "fit-predictor", "search", "export"])
def test_every_writer_refuses_a_path_that_is_not_an_artifact_even_with_force(tmp_path, writers, command):
    out = tmp_path / "thesis"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("chapter 1")
    (out / "sub" / "data.csv").write_text("1,2\n")
    before = _tree(out)
    result = runner.invoke(app, [*writers[command], "--out", str(out), "--force"])
    assert result.exit_code == 2, result.output
    assert f"the output path {out} is a directory that is not an eqtools artifact" in flat(result.output)
    assert _tree(out) == before


@pytest.mark.parametrize(("command", "target", "said"), [
    ("calibrate", "supernet", "artifact this command reads"), ("sample", "supernet", "artifact this command reads"),
    ("fit-predictor", "samples", "artifact this command reads"), ("search", "predictor", "artifact this command reads"),
    ("export", "calibrated", "artifact this command reads"),
    ("fit-predictor", "supernet", "artifact its input was made from"),
])
def test_no_writer_replaces_its_own_input_or_its_lineage_even_with_force(workspace, tmp_path, no_computation, command,
                                                                         target, said):
    out = workspace / target
    before = _tree(out)
    result = runner.invoke(app, [*_writers(workspace, tmp_path / "unused.json")[command], "--out", str(out), "--force"])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert f"the output path {out} is the '{target}' {said}" in text and "not even --force" in text
    assert "Traceback" not in result.output and _tree(out) == before


@pytest.mark.parametrize("command", ["train", "calibrate", "sample", "fit-predictor", "search", "export"])
def test_every_writer_refuses_an_output_path_it_cannot_make_before_computing(tmp_path, writers, command):
    (tmp_path / "notes").write_text("mine")
    result = runner.invoke(app, [*writers[command], "--out", str(tmp_path / "notes" / "o")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'notes'} is a file, not a directory" in flat(result.output)
    assert (tmp_path / "notes").read_text() == "mine"


def test_force_replaces_an_artifact(workspace, tmp_path):
    out = tmp_path / "s"
    args = [*_writers(workspace, tmp_path / "unused.json")["search"], "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    first = read_artifact(out).created
    assert runner.invoke(app, args).exit_code == 2
    assert read_artifact(out).created == first
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert read_artifact(out).created != first and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_rerun_of_sample_leaves_a_running_samplers_log_alone(workspace, tmp_path):
    """The finished-run shortcut must not delete the resume log of a sampler that holds its lock."""
    import fcntl

    out = tmp_path / "samples"
    args = ["sample", "--from", str(workspace / "supernet"), "-n", "2", "--subset", "20", "--calib-images", "32",
            "--no-progress", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    log = tmp_path / ".samples.partial"
    log.mkdir()
    (log / "rows.jsonl").write_text('{"index": 0}\n')
    fd = os.open(log / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sampler is writing
    try:
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "nothing to do (to measure them again, pass --restart --force)" in flat(result.output)
        assert (log / "rows.jsonl").read_text() == '{"index": 0}\n'
    finally:
        os.close(fd)
    assert runner.invoke(app, args).exit_code == 0 and not log.exists()  # unlocked: a stale log is removed
    created = read_artifact(out).created
    assert runner.invoke(app, [*args, "--restart", "--force"]).exit_code == 0  # what the note advises: measured again
    assert read_artifact(out).created != created


# --------------------------------------------------------------------------------- lineage, per stage
@pytest.fixture(scope="module")
def lineage_base(workspace, tmp_path_factory):
    """artifacts/digits-test/{supernet, samples, predictor, search}: one recorded lineage, by relative
    paths (as the default workspace records them), so a copy of the tree keeps its own lineage."""
    base = tmp_path_factory.mktemp("lineage")
    ws = Path("artifacts") / "digits-test"
    (base / ws).mkdir(parents=True)
    from eqtools.predictor import FitOptions, fit_predictor
    from eqtools.predictor.synthetic import write_synthetic_samples

    here = os.getcwd()
    os.chdir(base)
    try:
        shutil.copytree(workspace / "supernet", ws / "supernet")
        supernet = read_artifact(ws / "supernet", "supernet")
        samples = write_synthetic_samples(ws / "samples", supernet.space, 30, spec=supernet.spec, parents=[supernet])
        fit_predictor(samples, ws / "predictor", FitOptions(model="mlp", encoding="onehot", rank_weight=0.0,
                                                            target="accuracy", epochs=2, hidden=8, layers=2))
        result = runner.invoke(app, [*_writers(ws, base / "x")["search"], "--out", str(ws / "search")])
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(here)
    return base


@pytest.fixture
def lineage(lineage_base, tmp_path, monkeypatch):
    shutil.copytree(lineage_base / "artifacts", tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "artifacts" / "digits-test"


def _retrain_in_place(path: Path) -> tuple[str, str]:
    """Replace the supernet at ``path`` by another one (same space, new manifest): (old, new) sha256."""
    from eqtools.build import artifact_spec, load_supernet, save_supernet

    old = read_artifact(path, "supernet")
    supernet = load_supernet(old)
    with torch.no_grad():
        next(supernet.parameters()).add_(0.01)
    new = save_supernet(supernet, path, artifact_spec(old), metrics={"note": "retrained"})
    return old.manifest_sha256, new.manifest_sha256


def _decoy(ws: Path) -> Path:
    """A newer supernet elsewhere in the workspace: what a 'newest' fallback would pick."""
    art = read_artifact(ws / "supernet")
    from eqtools.artifacts import write_artifact

    def files(tmp: Path) -> None:
        for name in art.manifest["files"]:
            shutil.copy(ws / "supernet" / name, tmp / name)

    return write_artifact(ws / "decoy", "supernet", files, spec=art.spec, space=art.space, metrics=art.metrics,
                          extra=art.extra).path


def test_export_from_a_search_refuses_a_supernet_replaced_under_it(lineage, tmp_path):
    old, new = _retrain_in_place(lineage / "supernet")
    result = runner.invoke(app, ["export", "--from", str(lineage / "search"), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert old in text and new in text and "re-create" in text and not (tmp_path / "e").exists()


def test_search_verify_refuses_a_missing_supernet_instead_of_taking_the_newest(lineage, tmp_path):
    _decoy(lineage)
    shutil.move(lineage / "supernet", tmp_path / "moved")
    result = runner.invoke(app, [*_writers(lineage, tmp_path)["search"], "--verify", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "no longer exists; this command will not guess another one" in text and "decoy" not in text
    assert not (tmp_path / "s").exists()


def test_calibrate_searched_uses_the_searchs_own_supernet_not_the_newest(lineage, tmp_path):
    decoy = _decoy(lineage)
    assert find_latest("supernet").resolve() == decoy.resolve()
    result = runner.invoke(app, ["calibrate", "--searched", "--images", "64", "--no-deployed",
                                 "--out", str(tmp_path / "c"), "--json"])
    assert result.exit_code == 0, result.output
    parents = read_artifact(tmp_path / "c").manifest["parents"]
    assert [Path(p["path"]).name for p in parents] == ["supernet"]
    _retrain_in_place(lineage / "supernet")
    result = runner.invoke(app, ["calibrate", "--searched", "--out", str(tmp_path / "c2")])
    assert result.exit_code == 2 and "was replaced after" in flat(result.output)


@pytest.mark.parametrize("how", ["--from-search", "--config"])
def test_calibrate_never_replaces_the_search_it_reads(lineage, how):
    search = lineage / "search"
    before = _tree(search)
    source = [how, str(search)] if how == "--from-search" else ["--from", str(lineage / "supernet"), "--config",
                                                                str(search / "best_config.json")]
    result = runner.invoke(app, ["calibrate", *source, "--out", str(search), "--force"])
    assert result.exit_code == 2, result.output
    assert f"the output path {search} is the 'search' artifact this command reads" in flat(result.output)
    assert _tree(search) == before


def test_a_rerun_of_the_whole_chain_at_the_same_paths_works_with_force(lineage, tmp_path):
    """What rerunning the quickstart in the same checkout does: without --force the first stage refuses
    (saying how to rerun); with --force every stage replaces its artifact, the search's --verify and the
    report find the new supernet through the new lineage, and nothing is refused as stale or as an input."""
    from eqtools.report import build_report

    spec = _spec_file(tmp_path, epochs=1, steps_per_epoch=2)
    ws = lineage
    first = runner.invoke(app, ["train", str(spec), "--out", str(ws / "supernet"), "-q"])
    assert first.exit_code == 2 and "pass --force to replace it" in flat(first.output)
    chain = [
        ["train", str(spec), "--out", str(ws / "supernet"), "-q"],
        ["sample", "--from", str(ws / "supernet"), "-n", "16", "--subset", "20", "--calib-images", "32", "--no-progress",
         "--out", str(ws / "samples")],
        ["fit-predictor", "--from", str(ws / "samples"), "--model", "mlp", "--out", str(ws / "predictor")],
        ["search", "--predictor", str(ws / "predictor"), "--w-bits", "4", "--granularity", "per-channel", "--symmetry",
         "sym", "--population", "8", "--generations", "2", "--verify", "--top-k", "1", "--eval-images", "20",
         "--out", str(ws / "search")],
    ]
    for args in chain:
        result = runner.invoke(app, [*args, "--force"])
        assert result.exit_code == 0, (args[0], result.output)
    result = runner.invoke(app, ["calibrate", "--from-search", str(ws / "search"), "--images", "64", "--no-deployed",
                                 "--out", str(ws / "calibrated")])
    assert result.exit_code == 0, result.output
    supernet = read_artifact(ws / "supernet")
    assert read_artifact(ws / "search").ancestor("supernet").manifest_sha256 == supernet.manifest_sha256
    assert build_report(ws.parent, bits=())["damaged"] == []


def test_report_lists_artifacts_whose_supernet_was_replaced(lineage):
    from eqtools.report import build_report

    report = build_report(lineage.parent, bits=())
    assert report["damaged"] == [] and "search" in report
    old, new = _retrain_in_place(lineage / "supernet")
    report = build_report(lineage.parent, bits=())
    damaged = {Path(d["path"]).name: d["error"] for d in report["damaged"]}
    assert set(damaged) == {"predictor", "search"} and "search" not in report
    assert old in damaged["search"] and new in damaged["search"]


def test_report_exit_message_names_a_replaced_supernet_not_only_damage(lineage):
    old, new = _retrain_in_place(lineage / "supernet")
    result = runner.invoke(app, ["report", "--root", str(lineage.parent), "--json"])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "or was made from another supernet than the one reported" in text and old in text and new in text
    assert "eqtools info PATH` says what is wrong" not in text  # info verifies the artifact alone: it would say "fine"


def test_report_lists_artifacts_made_from_another_supernet(lineage):
    from eqtools.report import build_report

    decoy = _decoy(lineage)  # the newest supernet, so the one the report measures
    report = build_report(lineage.parent, bits=())
    assert Path(report["supernet"]).name == decoy.name
    damaged = {Path(d["path"]).name: flat(d["error"]) for d in report["damaged"]}
    assert set(damaged) == {"predictor", "search"} and "made from the supernet" in damaged["search"]


# --------------------------------------------------------------------------------- non-finite values
def _spec_file(tmp_path: Path, **train) -> Path:
    from conftest import DIGITS_SPEC

    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 2, "steps_per_epoch": 2, **train}}))
    return spec


@pytest.mark.parametrize("field,token", [("train.lr", "Infinity"), ("train.wdr.kurtosis_target", "NaN"),
                                         ("train.sandwich.kd_lambda", "NaN"), ("train.weight_decay", "-Infinity")])
def test_non_finite_spec_floats_are_refused(tmp_path, field, token):
    spec = _spec_file(tmp_path)
    # the spec file itself may hold the token (Python's JSON parser accepts it) and so may --set
    for args in (["--set", f"{field}={token}"],):
        result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2, result.output
        assert f"field `{field}`" in flat(result.output) and "finite" in flat(result.output)
    text = spec.read_text().replace('"compile": "off"', f'"compile": "off", "lr": {token}') if field == "train.lr" else None
    if text:
        spec.write_text(text)
        result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and "field `train.lr`" in flat(result.output)
    assert not (tmp_path / "o").exists()


def test_a_diverging_training_stops_with_exit_2_naming_the_step(tmp_path, monkeypatch):
    import eqtools.train.loop as loop

    real = loop._starting_supernet

    def overflowed(*args, **kwargs):  # one weight already overflowed: the very first loss is NaN
        supernet = real(*args, **kwargs)
        with torch.no_grad():
            next(supernet.parameters()).view(-1)[0] = float("inf")
        return supernet

    monkeypatch.setattr(loop, "_starting_supernet", overflowed)
    out = tmp_path / "o"
    result = runner.invoke(app, ["train", str(_spec_file(tmp_path, lr=0.01)), "--out", str(out), "-q"])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "training diverged at epoch 1, step" in text and "loss is not finite" in text and "Lower train.lr (now 0.01)" in text
    assert "no epoch had finished, so there is no checkpoint" in text
    assert "Traceback" not in result.output and not out.exists()


def test_a_nan_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import eqtools.train.loop as loop

    real, calls = loop.sandwich_step, []

    def nan_in_epoch_2(*args, **kwargs):
        calls.append(1)
        losses = real(*args, **kwargs)
        return {**losses, "kd_min": float("nan"), "loss": float("nan")} if len(calls) == 3 else losses

    monkeypatch.setattr(loop, "sandwich_step", nan_in_epoch_2)
    out = tmp_path / "o"
    result = runner.invoke(app, ["train", str(_spec_file(tmp_path)), "--out", str(out), "-q"])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "training diverged at epoch 2, step 1/2: loss is not finite (kd_min nan, loss nan)" in text
    ckpt = tmp_path / "o.work" / "checkpoint.pt"
    assert f"the last good checkpoint is kept at {ckpt}" in text and not out.exists()
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_corrupt_checkpoint_on_resume_exits_2(tmp_path):
    spec = _spec_file(tmp_path)
    (tmp_path / "o.work").mkdir()
    (tmp_path / "o.work" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a zip")
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o"), "--resume", "-q"])
    assert result.exit_code == 2, result.output
    assert "cannot be read" in flat(result.output) and "--restart" in flat(result.output)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_exits_2(tmp_path):
    result = runner.invoke(app, ["train", str(_spec_file(tmp_path)), "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "no usable CUDA GPU" in flat(result.output) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("change,expected", [
    ({"seed": 1e30}, "field `seed`"),
    ({"seed": -1}, "field `seed`"),
    ({"name": "x" * 5000}, "field `name`"),
    ({"predictor": {"lr": 1e300}}, "field `predictor.lr`"),  # fit-predictor's Adam overflowed with a traceback
])
def test_out_of_range_spec_values_exit_2(tmp_path, change, expected):
    from conftest import DIGITS_SPEC

    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**DIGITS_SPEC, **change}))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o")])  # a spec let through trains
    assert result.exit_code == 2, result.output
    assert expected in flat(result.output) and "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_weights_made_infinite_by_the_last_step_are_never_written(tmp_path, monkeypatch):
    import eqtools.train.loop as loop

    real = loop._epoch_eval

    def poisoned(supernet, *args, **kwargs):  # as if the epoch's last update (its loss finite) overflowed
        with torch.no_grad():
            next(supernet.parameters()).fill_(float("inf"))
        return real(supernet, *args, **kwargs)

    monkeypatch.setattr(loop, "_epoch_eval", poisoned)
    spec = _spec_file(tmp_path, epochs=1, steps_per_epoch=1)
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2, result.output
    assert "training diverged in epoch 1 (1 steps)" in flat(result.output) and "holds NaN or infinite values" in flat(result.output)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work" / "checkpoint.pt").exists()


def test_a_learning_rate_beyond_float32_is_refused(tmp_path):
    result = runner.invoke(app, ["train", str(_spec_file(tmp_path, lr=1e300)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "field `train.lr`" in flat(result.output)


# --------------------------------------------------------------------------------- data and sizes
def test_a_data_root_without_the_dataset_is_refused_not_replaced(tmp_path):
    from eqtools.data import load_splits
    from eqtools.errors import DataError
    from eqtools.specs import DataSpec

    with pytest.raises(DataError, match=r"fashion-mnist not found: looked in \['/etc'\]"):
        load_splits(DataSpec(name="fashion-mnist", root="/etc"), 0)


def _idx(shape: tuple[int, ...], body: bytes | None = None, magic: bytes | None = None) -> bytes:
    import struct

    head = (magic or bytes([0, 0, 8, len(shape)])) + struct.pack(">" + "I" * len(shape), *shape)
    return head + (body if body is not None else bytes(int(np.prod(shape))))


@pytest.mark.parametrize("damage,expected", [
    ("truncated-body", "is truncated: header says"),
    ("truncated-header", "is truncated inside its header"),
    ("bad-magic", "is not an unsigned-byte idx file"),
    ("too-many-dims", "is not an unsigned-byte idx file of 1 to 3 dimensions"),
    ("label-count", "do not match"),
    ("label-value", "the 10 classes are 0..9"),
    ("bad-gzip", "is not a valid gzip file"),
])
def test_malformed_idx_files_exit_2(tmp_path, damage, expected):
    root = tmp_path / "fm"
    root.mkdir()
    files = {"train-images-idx3-ubyte": _idx((20, 4, 4)), "train-labels-idx1-ubyte": _idx((20,), bytes(range(10)) * 2),
             "t10k-images-idx3-ubyte": _idx((10, 4, 4)), "t10k-labels-idx1-ubyte": _idx((10,), bytes(range(10)))}
    name = "train-images-idx3-ubyte"
    if damage == "truncated-body":
        files[name] = files[name][:-7]
    elif damage == "truncated-header":
        files[name] = files[name][:9]
    elif damage == "bad-magic":
        files[name] = b"\x00\x00\x0d\x03" + files[name][4:]
    elif damage == "too-many-dims":
        files[name] = b"\x00\x00\x08\xff" + files[name][4:]
    elif damage == "label-count":
        files["train-labels-idx1-ubyte"] = _idx((19,), bytes(range(10)) + bytes(range(9)))
    elif damage == "label-value":
        files["train-labels-idx1-ubyte"] = _idx((20,), bytes(range(10)) + bytes([200] * 10))
    for n, data in files.items():
        (root / n).write_bytes(data)
    if damage == "bad-gzip":
        (root / name).unlink()
        (root / (name + ".gz")).write_bytes(b"\x1f\x8b not gzip at all")
    spec = tmp_path / "s.json"
    from conftest import DIGITS_SPEC

    spec.write_text(json.dumps({**DIGITS_SPEC, "data": {"name": "fashion-mnist", "root": str(root), "val_size": 10}}))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert expected in flat(result.output) and "Traceback" not in result.output


def test_the_supernet_records_the_data_it_read(tiny_trained_out, digits_splits):
    data = read_artifact(tiny_trained_out).metrics["data"]
    assert data["name"] == "digits" and data["root"] == "sklearn.datasets.load_digits"
    assert (data["train_images"], data["val_images"], data["test_images"]) == (
        len(digits_splits.train), len(digits_splits.val), len(digits_splits.test))
    assert data["val_images"] == 300


@pytest.fixture(scope="module")
def tiny_trained_out(tmp_path_factory):
    from conftest import DIGITS_SPEC

    tmp = tmp_path_factory.mktemp("trained")
    spec = tmp / "s.json"
    spec.write_text(json.dumps({**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 1, "steps_per_epoch": 2}}))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp / "o"), "-q"])
    assert result.exit_code == 0, result.output
    return tmp / "o"


@pytest.mark.parametrize("args,expected", [
    (["-n", "1000000000"], "it must be in 1..100000"),
    (["-n", "1e9"], "Invalid value"),
    (["-n", "3000000", "--shard", "1/1000"], "it must be in 1..100000"),
    (["--subset", "100000000"], "--subset is 100000000, but the held-out val split has 300 images"),
])
def test_sample_sizes_are_bounded_before_anything_is_allocated(workspace, tmp_path, args, expected):
    result = runner.invoke(app, ["sample", "--from", str(workspace / "supernet"), "--no-progress",
                                 "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert expected in flat(result.output) and "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_a_non_utf8_config_file_exits_2(workspace, tmp_path):
    config = tmp_path / "c.json"
    config.write_bytes(b'{"granularity": "per-channel\xff\xfe"}')
    result = runner.invoke(app, ["calibrate", "--from", str(workspace / "supernet"), "--config", str(config),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "is not a UTF-8 text file" in flat(result.output)


# --------------------------------------------------------------------------------- what stays float, by name
class _Recurrent(torch.nn.Module):
    """A conv stem, an LSTM over its columns and a head: most parameters are in the LSTM."""

    def __init__(self, cell: str = "LSTM") -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.mid = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.rnn = getattr(torch.nn, cell)(8 * 8, 64, batch_first=True)
        self.conv1d = torch.nn.Conv1d(64, 64, 1)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        h = self.mid(torch.relu(self.stem(x)))  # [B, 8, 8, 8]
        seq, _ = self.rnn(h.permute(0, 3, 1, 2).flatten(2))  # 8 steps of 64 features
        seq = self.conv1d(seq.transpose(1, 2)).transpose(1, 2)
        return self.head(seq[:, -1])


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_and_conv1d_weights_are_named_and_strict_refuses_them(cell):
    from eqtools.quant import CoverageError, FloatWeightsWarning, quantize_model

    x = torch.randn(1, 1, 8, 8)
    with pytest.warns(FloatWeightsWarning) as caught:
        supernet = quantize_model(_Recurrent(cell), {"w_bits": [2, 4, 8], "a_bits": [4, 8]}, x)
    message = flat(str(caught[0].message))
    floats = {e.name: e for e in supernet.coverage.float_matmul}
    assert set(floats) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "conv1d"}
    assert f"fused {cell} kernel" in floats["rnn.weight_hh_l0"].reason and "Conv1d" in floats["conv1d"].reason
    for name in floats:
        assert name in message
    assert supernet.coverage.share < 0.2  # the recurrent weights are most of the matmul weights
    with pytest.raises(CoverageError, match=rf"rnn.weight_ih_l0 .*fused {cell} kernel"):
        quantize_model(_Recurrent(cell), {"w_bits": [2, 4, 8], "a_bits": [4, 8]}, x, strict=True)


def test_a_space_without_an_elastic_layer_is_refused():
    from eqtools.errors import SpecError
    from eqtools.quant import quantize_model

    class TwoLayers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 6 * 6, 10)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(SpecError, match=r"no elastic layer.*conv \(pinned 8/8\), fc \(pinned 8/8\)"):
        quantize_model(TwoLayers(), {"w_bits": [2, 4, 8], "a_bits": [4, 8]}, torch.randn(1, 1, 8, 8))
    elastic = quantize_model(TwoLayers(), {"w_bits": [2, 4, 8], "a_bits": [4, 8], "last_layer": "elastic"},
                             torch.randn(1, 1, 8, 8))
    assert elastic.space.min() != elastic.space.max()


def test_info_reports_what_killed_and_unfinished_writes_left(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace / "predictor", ws / "spec" / "predictor")
    dead = ws / "spec" / ".predictor.export-999999999-ab12"
    live = ws / "spec" / f".predictor.tmp-{os.getpid()}-cd34"
    partial = ws / "spec" / ".samples.partial"
    for d in (dead, live, partial):
        d.mkdir()
    result = runner.invoke(app, ["info", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    found = {Path(e["path"]).name: e for e in json.loads(result.stdout)["leftovers"]}
    assert set(found) == {dead.name, live.name, partial.name}
    assert found[dead.name]["live"] is False and found[live.name]["live"] is True
    text = flat(runner.invoke(app, ["info", str(ws / "spec" / "predictor")]).output)
    assert "beside it:" in text and "staging directory of an export (its process is gone" in text
    beside = json.loads(runner.invoke(app, ["info", str(ws / "spec" / "predictor"), "--json"]).stdout)["leftovers"]
    assert sorted(Path(e["path"]).name for e in beside) == sorted([dead.name, live.name])


NAN_ON_RANK_1 = """
import os, sys
import eqtools.train.loop as loop
real = loop.sandwich_step
def step(*args, **kwargs):
    losses = real(*args, **kwargs)
    return {**losses, "loss": float("nan")} if os.environ.get("RANK") == "1" else losses
loop.sandwich_step = step
from eqtools.cli.app import main
sys.argv = ["eqtools", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("device", [
    "cpu",  # gloo
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="NCCL needs two GPUs (it refuses two processes on one)")]),
])
def test_a_nan_loss_on_one_ddp_process_stops_every_process(tmp_path, device):
    """Rank 0, which reports to the user, stops at the same step with the reason (without the shared
    decision it blocks until torchrun tears it down, and says nothing of the NaN). On GPUs the shared
    decision goes through NCCL, which reduces no CPU tensor."""
    import subprocess
    import sys

    script = tmp_path / "nan_rank1.py"
    script.write_text(NAN_ON_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(31500 + os.getpid() % 1000), str(script), "train",
                           str(_spec_file(tmp_path)), "--out", str(tmp_path / "o"), "--device", device, "-q"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "training diverged at epoch 1, step 1/2" in flat(proc.stderr)
    assert "loss on another process nan" in flat(proc.stderr) and not (tmp_path / "o").exists()


def test_samples_record_the_images_each_row_was_measured_on(workspace, tmp_path, digits_splits):
    out = tmp_path / "s"
    result = runner.invoke(app, ["sample", "--from", str(workspace / "supernet"), "-n", "2", "--subset", "50",
                                 "--calib-images", "100000", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = read_artifact(out).metrics["data"]
    # 100000 calibration images asked, the training split holds fewer: the record says what was used
    assert data == {"root": "sklearn.datasets.load_digits", "calib_images": len(digits_splits.train),
                    "eval_images": 50, "eval_split": "val"}


def test_lineage_recorded_relative_to_the_workspace_is_found_from_another_directory(lineage, tmp_path, monkeypatch):
    from eqtools.report import build_report

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the recorded parents are 'artifacts/digits-test/...'
    search = read_artifact(lineage / "search")
    assert search.ancestor("supernet").path.resolve() == (lineage / "supernet").resolve()
    report = build_report(lineage.parent, bits=())
    assert report["damaged"] == [] and "search" in report
