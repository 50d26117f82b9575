"""The toolchain the way a CI job uses it: a shell script chaining every subcommand with its
defaults (workspace lookup under artifacts/) and --json outputs, then reading the results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.stats
from conftest import DIGITS_SPEC

SCRIPT = r"""
set -euo pipefail
run() { local name=$1; shift; "$@" > "out/$name.json" 2> "out/$name.log" || { echo "$name failed: $?" >&2; cat "out/$name.log" >&2; exit 1; }; }
mkdir -p out
run info          eqtools info spec.json --json
run train         eqtools train spec.json --json -q
run static        eqtools train spec.json --static-bits 4 --json -q
run sample        eqtools sample -n 16 --json --no-progress
run fit           eqtools fit-predictor --model mlp --json
run fit_xgb       eqtools fit-predictor --model xgb --json
run search_ort    eqtools search --w-bits 4 --preset onnxruntime --json
run calibrate_ort eqtools calibrate --w-bits 4 --granularity per-channel --w-symmetry sym --a-symmetry asym --json
run search        eqtools search --w-bits 4 --granularity per-tensor --symmetry asym --top-k 2 --verify --verify-split val --eval-images 60 --json
run calibrate     eqtools calibrate --searched --json
run export        eqtools export --format all --json
run report        eqtools report --json -q
run report_forms  eqtools report --forms per-channel/sym/asym,per-tensor/asym --json -q
# bad input in a pipeline: a clear message and exit status 2, never a traceback
set +e
eqtools search --w-bits 1 --granularity per-tensor --symmetry asym > out/infeasible.json 2> out/infeasible.log
echo $? > out/infeasible.code
"""


def test_shell_pipeline_with_defaults_and_json(tmp_path: Path):
    spec = json.loads(json.dumps(DIGITS_SPEC))
    spec["name"] = "pipeline"
    spec["train"].update({"epochs": 2, "steps_per_epoch": 8, "lr": 0.003})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "pipeline.sh").write_text(SCRIPT)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "pipeline.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json") if p.stat().st_size}

    assert out["info"]["valid"] and out["info"]["resolved"]["name"] == "pipeline"
    assert all(out[k]["kind"] for k in ("train", "static", "sample", "fit", "fit_xgb", "search", "calibrate", "export"))
    supernet = Path(out["train"]["path"])
    assert supernet == Path("artifacts/pipeline/supernet") and out["train"]["metrics"]["epochs"] == 2
    assert out["static"]["path"].endswith("supernet-static-w4a4-per-channel-Wsym-Asym")
    assert len((tmp_path / out["sample"]["path"] / "samples.jsonl").read_text().splitlines()) == 16
    assert out["sample"]["metrics"]["per_condition"] == {  # `sample -n 16` covers the 8 forms, 2 each
        f"{g}/{w}/{a}": 2 for g in ("per-channel", "per-tensor") for w in ("sym", "asym") for a in ("sym", "asym")}
    samples = [json.loads(line) for line in (tmp_path / out["sample"]["path"] / "samples.jsonl").read_text().splitlines()]
    for fit in (out["fit"], out["fit_xgb"]):
        # the reported tau is the rank correlation of the predictor's held-out predictions with the
        # samples' measured accuracies, recomputed here from the files the artifact holds
        held = json.loads((tmp_path / fit["path"] / "heldout.json").read_text())
        assert held["measured"] == [samples[i]["accuracy"] for i in held["test_indices"]]
        tau = scipy.stats.kendalltau(held["measured"], held["predicted"]).statistic
        assert fit["metrics"]["kendall_tau"] == pytest.approx(tau, abs=1e-9)
    best = out["search"]["best_config"]
    assert best["granularity"] == "per-tensor" and best["w_symmetry"] == "asym" and best["a_symmetry"] == "asym"
    # the runtime preset and the weight-sym/activation-asym form, recorded apart in the artifacts
    ort = out["search_ort"]["best_config"]
    assert (ort["granularity"], ort["w_symmetry"], ort["a_symmetry"]) == ("per-channel", "sym", "asym")
    cal = out["calibrate_ort"]["config"]
    assert (cal["granularity"], cal["w_symmetry"], cal["a_symmetry"]) == ("per-channel", "sym", "asym")
    assert out["calibrate_ort"]["path"].endswith("calibrated-w4a4-per-channel-Wsym-Aasym")
    assert out["calibrate"]["config"] == best  # --searched took the search just made
    assert 0.0 < out["calibrate"]["metrics"]["top1"] <= 1.0
    assert out["export"]["metrics"]["int"]["parity"]["top1_agreement"] >= 0.999
    report = out["report"]
    # every form at every reported bit-width, the static baseline beside its own form
    assert [(row["bits"], row["condition"]) for row in report["uniform"]] == [
        (b, f"{g}/{w}/{a}") for b in (2, 4, 8) for g in ("per-channel", "per-tensor")
        for w in ("sym", "asym") for a in ("sym", "asym")]
    assert report["forms"] == [f"{g}/{w}/{a}" for g in ("per-channel", "per-tensor") for w in ("sym", "asym")
                               for a in ("sym", "asym")] and report["space_forms"] == 8
    # --forms narrows the uniform table to the forms asked for, in that order, with the same figures
    narrow = out["report_forms"]
    assert narrow["forms"] == ["per-channel/sym/asym", "per-tensor/asym/asym"] and narrow["space_forms"] == 8
    assert [(r["bits"], r["condition"], r["supernet_top1"]) for r in narrow["uniform"]] == [
        (r["bits"], r["condition"], r["supernet_top1"]) for b in (2, 4, 8) for c in narrow["forms"]
        for r in report["uniform"] if (r["bits"], r["condition"]) == (b, c)]
    with_static = [r for r in report["uniform"] if "static_top1" in r]
    assert [(r["bits"], r["condition"]) for r in with_static] == [(4, "per-channel/sym/sym")]
    assert report["damaged"] == []
    assert report["search"]["searched_top1"] > 0.1 and "export" in report and "predictor" in report
    # the report says what --verify chose on: how many candidates, on how many images of which split
    verified = out["search"]["metrics"]["verified"]
    assert report["search"]["verify"] == {"candidates": len(verified), "images": 60, "split": "val"}
    # the report measures a subnet exactly as `eqtools calibrate` does (same calibration and test images)
    row = next(r for r in report["uniform"] if (r["bits"], r["condition"]) == (4, "per-channel/sym/asym"))
    assert row["supernet_top1"] == out["calibrate_ort"]["metrics"]["top1"]
    assert report["search"]["searched_top1"] == out["calibrate"]["metrics"]["top1"]
    # the stages used each other's outputs, found through the workspace
    log = (tmp_path / "out" / "calibrate.log").read_text()
    assert "using search artifact artifacts/pipeline/search-" in log and "using supernet artifact artifacts/pipeline/supernet\n" in log
    assert (tmp_path / "out" / "infeasible.code").read_text().strip() == "2"
    message = " ".join((tmp_path / "out" / "infeasible.log").read_text().split())
    assert "Traceback" not in message and "error:" in message

    # every manifest the pipeline wrote validates against the schema `eqtools info --schema KIND` publishes
    import jsonschema

    manifests = sorted((tmp_path / "artifacts" / "pipeline").glob("*/manifest.json"))
    kinds = set()
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text())
        shown = subprocess.run([str(bindir / "eqtools"), "info", "--schema", manifest["kind"]], capture_output=True,
                               text=True, env=env, check=True)
        jsonschema.validate(manifest, json.loads(shown.stdout))
        kinds.add(manifest["kind"])
    assert kinds == {"supernet", "calibrated", "samples", "predictor", "search", "export"}
    broken = json.loads(manifests[0].read_text())
    broken["files"] = ["not", "a", "table"]
    shown = subprocess.run([str(bindir / "eqtools"), "info", "--schema", broken["kind"]], capture_output=True,
                           text=True, env=env, check=True)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(shown.stdout))
