"""The mission's own example, end to end at small scale: `specs/r18.json` on an ImageNet-style JPEG tree.

ResNet-18 at 224 px with the spec's data path (ImageFolder, its workers), elastic space and
recipe, through train -> sample -> fit-predictor -> search --verify -> calibrate -> export, as a
user runs it: the spec file as shipped, shrunk only in steps, images and subnets with `--set` and
the stages' own flags. One change a user would not make: `model.pretrained` is null, because the
torchvision float weights the spec names cannot be downloaded here (tests run without network).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eqtools.artifacts import read_artifact

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "eqtools", *args, "--json"], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)
    assert proc.returncode == 0, f"eqtools {' '.join(args)}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def test_r18_spec_runs_every_stage_on_an_imagefolder_tree(tmp_path):
    from imagetree import make_tree

    tree = make_tree(tmp_path / "imagenet", classes=4, train_per_class=16, val_per_class=4, size=(120, 160))
    work = tmp_path / "artifacts" / "r18"
    shrink = [
        f"data.root={tree}", "model.pretrained=null",  # the only non-shrinking change (see the module docstring)
        "data.val_size=12", "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8",
        "train.init_images=16",
    ]
    sets = [a for item in shrink for a in ("--set", item)]
    trained = _run("train", str(ROOT / "specs" / "r18.json"), *sets, "--out", str(work / "supernet"), "--device",
                   "auto", cwd=tmp_path)
    spec = read_artifact(trained["path"]).spec
    assert spec["model"]["name"] == "resnet18" and spec["data"]["name"] == "imagefolder"
    assert spec["data"]["image_size"] == 224 and spec["data"]["workers"] == 8
    assert spec["space"]["w_bits"] == [2, 3, 4, 5, 6, 7, 8] and len(spec["space"]["granularities"]) == 2
    assert trained["metrics"]["precision"] == "fp32" and trained["metrics"]["steps_per_epoch"] == 2

    samples = _run("sample", "--from", str(work / "supernet"), "-n", "16", "--subset", "12", "--calib-images", "16",
                   "--batch-size", "16", "--no-compile", "--no-progress", "--out", str(work / "samples"), cwd=tmp_path)
    assert samples["metrics"]["rows"] == 16
    predictor = _run("fit-predictor", "--from", str(work / "samples"), "--epochs", "5",
                     "--out", str(work / "predictor"), cwd=tmp_path)
    assert predictor["kind"] == "predictor"
    searched = _run("search", "--predictor", str(work / "predictor"), "--w-bits", "4", "--granularity",
                    "per-channel", "--symmetry", "sym", "--population", "8", "--generations", "3", "--top-k", "2",
                    "--verify", "--verify-split", "val", "--eval-images", "12", "--out", str(work / "search"),
                    cwd=tmp_path)
    assert searched["kind"] == "search"
    calibrated = _run("calibrate", "--from", str(work / "supernet"), "--from-search", str(work / "search"),
                      "--images", "16", "--out", str(work / "calibrated"), cwd=tmp_path)
    assert calibrated["metrics"]["calib_images"] == 16 and calibrated["metrics"]["images"] == 16
    exported = _run("export", "--from", str(work / "calibrated"), "--check-images", "12",
                    "--out", str(work / "export"), cwd=tmp_path)
    assert exported["kind"] == "export" and set(exported["files"]) == {"int", "onnx"}
    assert exported["metrics"]["int"]["parity"]["top1_agreement"] >= 0.999
