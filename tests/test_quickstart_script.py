"""scripts/quickstart.sh runs the stages in pipeline order, with the spec as its one variable and the
static-QAT baselines only when asked (each eqtools call replaced by a stub that records it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    """Run the script in ``tmp_path`` (its own specs/ and artifacts/), each eqtools call recorded."""
    for name in ("mbv2-quick", "other"):
        spec = tmp_path / "specs" / f"{name}.json"
        spec.parent.mkdir(exist_ok=True)
        spec.write_text(json.dumps({"name": name}))
    stub = tmp_path / "bin" / "eqtools"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return proc.returncode, calls, proc.stderr


def test_default_run_is_the_pipeline_without_baselines(tmp_path):
    code, calls, _ = _run(tmp_path)
    assert code == 0
    assert [c.split()[0] for c in calls] == ["train", "sample", "fit-predictor", "search", "calibrate", "export",
                                            "report"]
    assert calls[0] == "train specs/mbv2-quick.json"
    assert "--verify" in calls[3] and "--verify-split val" in calls[3]
    assert calls[-1] == "report --forms per-channel/sym/sym,per-tensor/asym/asym"


def test_with_baselines_trains_2_4_8_bits_in_the_report_forms(tmp_path):
    code, calls, _ = _run(tmp_path, "--with-baselines", "specs/other.json")
    assert code == 0
    statics = [c for c in calls if "--static-bits" in c]
    assert statics == [f"train specs/other.json --static-bits {b} --granularity {g} --w-symmetry {w} --a-symmetry {a}"
                       for g, w, a in (("per-channel", "sym", "sym"), ("per-tensor", "asym", "asym")) for b in (2, 4, 8)]
    assert calls[0] == "train specs/other.json"


@pytest.mark.parametrize("args", [["--bogus"], ["-x"]])
def test_an_unknown_option_exits_2_before_anything_runs(tmp_path, args):
    code, calls, err = _run(tmp_path, *args)
    assert code == 2 and calls == [] and "--with-baselines" in err


def test_a_second_run_refuses_before_anything_runs_and_names_force(tmp_path):
    (tmp_path / "artifacts" / "mbv2-quick" / "supernet").mkdir(parents=True)
    code, calls, err = _run(tmp_path)
    assert code == 2 and calls == []
    assert "artifacts/mbv2-quick already holds a run" in err and "--force" in err and "eqtools report --spec mbv2-quick" in err
    code, calls, _ = _run(tmp_path, "specs/other.json")  # another spec's workspace is free
    assert code == 0 and calls[0] == "train specs/other.json"


def test_force_is_passed_to_every_stage_that_writes(tmp_path):
    (tmp_path / "artifacts" / "mbv2-quick" / "supernet").mkdir(parents=True)
    code, calls, _ = _run(tmp_path, "--force", "--with-baselines")
    assert code == 0 and len(calls) == 13
    assert all(c.endswith(" --force") for c in calls[:-1]), calls
    assert calls[-1].startswith("report") and "--force" not in calls[-1]


def test_a_missing_spec_exits_2_naming_the_bundled_ones(tmp_path):
    code, calls, err = _run(tmp_path, "specs/nope.json")
    assert code == 2 and calls == [] and "specs/nope.json" in err and "specs/mbv2-quick.json" in err
