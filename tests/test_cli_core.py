"""The CLI shell: fast help, version, info, and the error boundary (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from eqtools import __version__
from eqtools.artifacts import read_artifact
from eqtools.cli.app import app

runner = CliRunner()


def flat(text: str) -> str:
    """Messages are wrapped for terminals; compare with whitespace folded."""
    return " ".join(text.split())


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "calibrate", "sample", "fit-predictor", "search", "export", "info", "version"):
        assert command in result.output


def test_help_imports_no_heavy_library():
    """`eqtools --help` must stay fast: building the help may not import torch, numpy or deap."""
    code = (
        "import sys, io, contextlib\n"
        "sys.argv = ['eqtools', '--help']\n"
        "from eqtools.cli.app import app\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        app()\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'deap', 'xgboost', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_m_eqtools_and_version():
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "eqtools", "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == __version__
    assert time.monotonic() - start < 30  # generous: this is a smoke check, the benchmark has the real figure


def test_info_on_an_artifact(tiny_supernet_artifact):
    result = runner.invoke(app, ["info", str(tiny_supernet_artifact), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "supernet" and info["spec"] == "digits-test" and info["model"] == "tiny_cnn"
    assert info["space"]["quantized_layers"] == 4 and info["space"]["fixed_layers"] == ["conv1", "fc"]
    text = runner.invoke(app, ["info", str(tiny_supernet_artifact)])
    assert text.exit_code == 0 and "checksums verified" in flat(text.output)


def test_info_on_corrupted_artifact_exits_2_without_traceback(tiny_supernet_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_supernet_artifact, copy)
    weights = copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    result = runner.invoke(app, ["info", str(copy)])
    assert result.exit_code == 2
    assert "does not match its checksum" in flat(result.output) and "Traceback" not in result.output


def test_debug_flag_shows_the_traceback(tmp_path):
    env = {**os.environ, "EQTOOLS_DEBUG": ""}
    args = [sys.executable, "-m", "eqtools", "info", str(tmp_path / "missing")]
    plain = subprocess.run(args, capture_output=True, text=True, env=env)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "does not exist" in flat(plain.stderr)
    debug = subprocess.run([*args[:3], "--debug", *args[3:]], capture_output=True, text=True, env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ArtifactError" in debug.stderr


def test_info_validates_a_spec_file(tmp_path):
    good = runner.invoke(app, ["info", "specs/quick.json", "--json"])
    assert good.exit_code == 0 and json.loads(good.stdout)["resolved"]["train"]["sandwich"]["kd_lambda"] == 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "model": {"name": "resnet20"}, "data": {"name": "cifar10"},
                               "space": {"w_bits": [2, 9]}}))
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 2
    out = flat(result.output)
    assert "space.w_bits.1" in out and "= 9" in out and "less than or equal to 8" in out


def test_info_reads_a_subnet_config_as_one(tiny_supernet_artifact, tmp_path):
    """A search's best_config.json is JSON like a spec; read as one it was refused with a list of spec
    fields it lacks. It is summarised as the config it is, and checked as --config checks it."""
    space = read_artifact(tiny_supernet_artifact, "supernet").space
    config = space.uniform(4, 3, "per-tensor", "sym", "asym")
    path = tmp_path / "best_config.json"
    path.write_text(config.to_json())
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "subnet config, per-tensor W-sym A-asym" in flat(result.output) and "invalid spec" not in result.output
    summary = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert summary["form"] == "per-tensor/sym/asym" and summary["layers"] == len(config.layers)
    assert [r["w_bits"] for r in summary["per_layer"]] == list(config.w_bits)
    data = json.loads(config.to_json())
    data["layers"][0]["w_bits"] = 9
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and "w_bits" in flat(result.output) and "invalid spec" not in result.output


@pytest.mark.parametrize("args", [["info"], ["train"], ["nonsense"]])
def test_usage_errors_exit_2(args):
    assert runner.invoke(app, args).exit_code == 2
