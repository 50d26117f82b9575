"""git-style conventions of the command line: --version, --debug anywhere, a quiet broken pipe, help
that shows choices and the pipeline in order, error hints naming each command's own flags, and a
float warm-up that has its own flag, checkpoints and an ETA."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_SPEC
from typer.testing import CliRunner

from eqtools import __version__
from eqtools.artifacts import read_artifact
from eqtools.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "EQTOOLS_DEBUG": "", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
STAGES = ["train", "sample", "fit-predictor", "search", "calibrate", "export"]


def flat(text: str) -> str:
    return " ".join(text.split())


def eqtools(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eqtools", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=120, **kw)


def help_text(*args: str, columns: int = 120) -> str:
    result = CliRunner(env={"COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)}).invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == __version__
    assert eqtools("--version").stdout.strip() == __version__


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_anywhere_keeps_exit_status_2(tmp_path, where):
    missing = str(tmp_path / "missing")
    plain = eqtools("info", missing)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    args = ["--debug", "info", missing] if where == "before" else ["info", missing, "--debug"]
    debug = eqtools(*args)
    assert debug.returncode == 2, debug.stderr
    assert "Traceback" in debug.stderr and "ArtifactError" in debug.stderr and "does not exist" in flat(debug.stderr)


def test_debug_after_a_bare_double_dash_is_not_taken():
    """After `--` every word is an argument: `--debug` there is a path named so, not the flag."""
    result = eqtools("info", "--", "--debug")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--debug" in result.stderr


def test_broken_pipe_exits_quietly_with_0():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as with `| head -0`
    try:
        proc = subprocess.run([sys.executable, "-m", "eqtools", "info", "specs/quick.json", "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_help_shows_the_pipeline_in_order():
    text = help_text()
    assert "train -> sample -> fit-predictor -> search -> calibrate -> export" in text
    listed = [line.split()[1] for line in text.splitlines() if line.startswith("│ ") and len(line.split()) > 1]
    listed = [name for name in listed if name in STAGES]
    assert listed == STAGES


@pytest.mark.parametrize("command", ["train", "sample", "calibrate", "search"])
def test_help_shows_choices_and_no_bool_metavar(command):
    text = help_text(command)
    assert "<bool>" not in text
    assert re.search(r"--granularity\s+<per-channel\|per-tensor>", text), text
    assert re.search(r"--w-symmetry\s+<sym\|asym>", text), text


def test_export_and_calibrate_help_show_their_choices():
    text = help_text("export")
    for option, choices in [("--format", "<int|onnx|all>"), ("--onnx-form", "<deploy|exact>"),
                            ("--bn-fold", "<scale|requantize|none>")]:
        assert re.search(re.escape(option) + r"\s+" + re.escape(choices), text), option
    assert "<train|val|test|unseen>" in help_text("calibrate")


@pytest.mark.parametrize("columns", [80, 120])
def test_calibrate_out_default_is_not_cut_off(columns):
    text = help_text("calibrate", columns=columns)
    out = text[text.index("--out"):text.index("--deployed")]
    assert "…" not in out and "calibrated-<subnet>" in flat(out) and "artifacts/<spec>/" in flat(out)
    assert "mixed-<hash>" in flat(out)  # the whole default, to its end


@pytest.mark.parametrize("command", [*STAGES, "report", "info"])
def test_a_commands_description_flows_to_the_terminals_width(command):
    """Each paragraph of a command's description is wrapped by the terminal, not at the source's line breaks
    (typer's rich help keeps those, which left ragged half-lines in an 80-column terminal)."""
    lines = [line.strip(" │") for line in help_text(command, columns=80).splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Usage:")) + 2
    description = lines[start : next(i for i, line in enumerate(lines) if line.startswith("╭"))]
    paragraphs: list[list[str]] = [[]]
    for line in description:
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    for paragraph in paragraphs:
        for line, following in itertools.pairwise(paragraph):
            # a line that the terminal broke leaves no room for the next line's first word
            assert len(line) + 1 + len(following.split()[0]) > 78, (command, line, following)


@pytest.mark.parametrize("args, value", [(["train", "specs/quick.json", "--static-bits", "4", "--granularity", "per-layer"], "per-layer"),
                                         (["calibrate", "--w-bits", "4", "--w-symmetry", "symm"], "symm"),
                                         (["export", "--format", "tflite"], "tflite")])
def test_a_value_outside_the_choices_exits_2_naming_them(args, value):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and value in result.output


@pytest.mark.parametrize("args, flag", [(["search", "--w-bits", "3"], "--predictor"),
                                        (["report"], "--root"),
                                        (["calibrate", "--searched"], "--from-search"),
                                        (["calibrate", "--w-bits", "4"], "--from"),
                                        (["fit-predictor"], "--from")])
def test_missing_artifact_hint_names_the_commands_own_flag(tmp_path, monkeypatch, args, flag):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = flat(result.output)
    assert re.search(re.escape(flag) + r"\b(?!-)", message), message
    if flag != "--from":
        assert "--from " not in message + " "


def test_plain_progress_shows_an_eta(monkeypatch, capsys):
    from eqtools.cli import _common

    clock = iter(range(0, 1000, 11))  # 11 s per call: every advance prints a line
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    with _common.progress("float warm-up 1/4", 10) as advance:
        advance(1, loss=0.5)
        advance(4, loss=0.4)
    lines = capsys.readouterr().err.splitlines()
    assert "ETA 99s" in lines[0] and "ETA 22s" in lines[1], lines  # 11 s for 1 of 10, then 22 s for 5 of 10
    with _common.progress("sample", 10) as advance:
        advance(1, ETA="1m39s")  # a command that computes its own ETA: shown once
    assert capsys.readouterr().err.count("ETA") == 1


# ------------------------------------------------------------------------------- float warm-up
WARMUP_SPEC = {**DIGITS_SPEC, "name": "digits-warmup",
               "train": {"epochs": 1, "fp_epochs": 0, "batch_size": 64, "steps_per_epoch": 12, "init_images": 128,
                         "lr": 0.003, "compile": "off"}}


def _train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eqtools", "train", *args, "-q"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fp_epochs_sets_the_warm_up_and_epochs_the_qat(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(WARMUP_SPEC))
    run = _train(str(spec), "--fp-epochs", "2", "--epochs", "1", "--out", str(tmp_path / "a" / "supernet"))
    assert run.wait(timeout=900) == 0, run.stderr.read()
    art = read_artifact(tmp_path / "a" / "supernet", "supernet")
    assert art.spec["train"]["fp_epochs"] == 2 and art.spec["train"]["epochs"] == 1
    assert art.metrics["fp_cached"] is False and art.metrics["epochs"] == 1
    none = _train(str(spec), "--epochs", "1", "--out", str(tmp_path / "b" / "supernet"))
    assert none.wait(timeout=900) == 0
    assert "fp_cached" not in read_artifact(tmp_path / "b" / "supernet", "supernet").metrics


def test_an_interrupted_warm_up_resumes_exactly(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(WARMUP_SPEC))
    args = [str(spec), "--fp-epochs", "3", "--epochs", "1"]
    ref = _train(*args, "--out", str(tmp_path / "ref" / "supernet"))
    assert ref.wait(timeout=900) == 0, ref.stderr.read()
    out = tmp_path / "run" / "supernet"
    proc = _train(*args, "--out", str(out))
    ckpt = out.with_name("supernet.work") / "fp-checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # during warm-up epoch 2 or 3
    code = proc.wait(timeout=600)
    assert code == 130, (code, proc.stderr.read())
    state = torch.load(ckpt, weights_only=True)
    assert 1 <= state["epoch"] < 3
    again = _train(*args, "--out", str(out))
    assert again.wait(timeout=300) == 2 and "--resume" in flat(again.stderr.read())
    resumed = _train(*args, "--out", str(out), "--resume")
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()
    assert not ckpt.exists()
    a = read_artifact(tmp_path / "ref" / "supernet", "supernet").tensors("weights.safetensors")
    b = read_artifact(out, "supernet").tensors("weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_cached_warm_up_is_reused_only_for_the_same_warm_up(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(WARMUP_SPEC))
    runs = {"a": [], "same": [], "fewer-steps": ["--set", "train.steps_per_epoch=6"],
            "no-clip": ["--set", "train.grad_clip=null"]}
    cached = {}
    for name, extra in runs.items():
        run = _train(str(spec), "--fp-epochs", "1", "--epochs", "1", "--out", str(tmp_path / "x" / name), *extra)
        assert run.wait(timeout=900) == 0, run.stderr.read()
        cached[name] = read_artifact(tmp_path / "x" / name, "supernet").metrics["fp_cached"]
    assert cached == {"a": False, "same": True, "fewer-steps": False, "no-clip": False}
