"""The practitioner's path at scale: --device on every stage, mixed precision, sampling under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_SPEC
from typer.testing import CliRunner

from eqtools.artifacts import read_artifact
from eqtools.cli.app import app
from eqtools.device import resolve_device
from eqtools.errors import ConfigError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _flat(result) -> str:
    try:
        return " ".join(result.stderr.split())
    except ValueError:
        return " ".join(result.output.split())


# ------------------------------------------------------------------------------------- --device
def test_resolver_knows_auto_cpu_and_refuses_the_rest(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device(" CPU ") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    with pytest.raises(ConfigError, match=r"asks for a CUDA GPU, and this machine has no usable CUDA GPU.*Available here: cpu"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match=r"'gpu' is not a device.*cpu, cuda or cuda:N. Available here: cpu"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match=r"names GPU 2, but this machine has 2 \(cuda:0..cuda:1\). "
                                          r"Available here: cpu, cuda, cuda:0, cuda:1"):
        resolve_device("cuda:2")


STAGES = [
    ["train", "SPEC"],
    ["calibrate", "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
    ["sample", "-n", "2"],
    ["search", "--verify", "--w-bits", "3"],
    ["report"],
    ["export"],
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("argv", STAGES, ids=[s[0] for s in STAGES])
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "npu"])
def test_every_stage_refuses_a_device_that_is_not_here_with_exit_2(argv, device, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty workspace: the refusal must come before any artifact is looked up
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(DIGITS_SPEC))
    args = [str(spec) if a == "SPEC" else a for a in argv]
    result = runner.invoke(app, [*args, "--device", device])
    assert result.exit_code == 2, result.output
    text = _flat(result)
    assert text.startswith("error: --device") and "Available here: cpu" in text and "Traceback" not in text
    assert not list(tmp_path.glob("artifacts")) and not result.stdout.strip()


def test_the_device_option_is_one_definition_on_every_stage():
    import typer.main

    command = typer.main.get_command(app)
    for argv in STAGES:
        params = {p.name: p for p in command.commands[argv[0]].params}
        assert params["device"].default == "auto", argv[0]
        assert "auto (CUDA when present, else CPU)" in params["device"].help


# ------------------------------------------------------------------------------------- precision
def test_bf16_autocast_gives_the_fp32_codes():
    """Quantizers divide, clip and round in fp32: the integer codes of a weight and of an activation do
    not depend on the autocast dtype, though the convolutions around them run in bf16."""
    from eqtools.models import get_model
    from eqtools.quant import quantize_model

    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10, in_channels=3)
    x = torch.randn(16, 3, 32, 32)
    supernet = quantize_model(model, {"w_bits": (2, 4, 8), "a_bits": (2, 4, 8)}, x[:1])
    supernet.init_from_data([x])
    supernet.train()
    layers = dict(supernet.quant_layers())
    compared = 0
    for config in (supernet.space.uniform(2, 2, "per-tensor", "asym", "asym"),
                   supernet.space.uniform(4, 4, "per-channel", "sym", "sym"), supernet.space.max()):
        supernet.apply(config)
        for name, layer in layers.items():
            wq = layer.weight_quant
            step, zero = wq.step_and_zero_point()
            view = (-1,) + (1,) * (layer.weight.dim() - 1)
            codes = {}
            for precision in ("fp32", "bf16"):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    out = wq(layer.weight)
                codes[precision] = (out.float() / step.view(view) + zero.view(view)).round()
            assert torch.equal(codes["fp32"], codes["bf16"]), name
            # an activation that reaches the quantizer in bf16 (a bf16 conv's output) gets the code its
            # fp32 value gets
            aq = layer.act_quant
            a = (torch.randn(4, 8) * 3).to(torch.bfloat16)
            a_step, _ = aq.step_and_zero_point()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = aq(a.requires_grad_())
            high = aq(a.detach().float())
            assert low.dtype == torch.float32
            assert torch.equal(low / a_step, high / a_step), name
            compared += 1
    assert compared >= 3 * 19


def _train(tmp_path: Path, *extra: str, name: str = "d", spec: dict | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec or {**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 1,
                                                                  "steps_per_epoch": 4}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "eqtools", "train", str(path), "--out", str(tmp_path / name),
                           "-q", "--json", *extra], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_runs_and_is_recorded(tmp_path, precision):
    proc = _train(tmp_path, "--precision", precision, "--device", "cpu", name=precision)
    assert proc.returncode == 0, proc.stderr[-2000:]
    art = read_artifact(tmp_path / precision)
    assert art.metrics["precision"] == precision and art.spec["train"]["precision"] == precision
    assert all(torch.isfinite(torch.tensor(v)) for k, v in art.metrics["final"].items() if isinstance(v, float))


def test_an_unknown_precision_is_refused_by_the_schema(tmp_path):
    proc = _train(tmp_path, "--precision", "int8")
    assert proc.returncode == 2 and "precision" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------- sampling under torchrun
def test_torchrun_sampling_splits_the_draw_and_merges_to_the_unsharded_rows(tiny_supernet_artifact, tmp_path):
    """Two gloo processes on the CPU each sample one shard; rank 0 writes what one process writes."""
    args = ["--from", str(tiny_supernet_artifact), "-n", "16", "--subset", "100", "--calib-images", "64",
            "--seed", "3", "--no-compile", "--device", "cpu", "--no-progress", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "eqtools", "sample", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(29500 + os.getpid() % 500), "-m", "eqtools", "sample", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout)["metrics"]["rows"] == 16  # one report, from rank 0
    a, b = read_artifact(tmp_path / "one"), read_artifact(tmp_path / "two")
    assert a.extra == b.extra and b.extra["shard"] is None
    rows_a = (a.path / "samples.jsonl").read_text()
    rows_b = (b.path / "samples.jsonl").read_text()
    assert rows_a == rows_b
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # the rank shards are gone
    # 8 draws are one round of the 8 forms: the second process has nothing to do, and every process says so
    # (exit 2) instead of waiting for its peer at the merge
    args[args.index("16")] = "8"
    empty = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", str(29000 + os.getpid() % 500), "-m", "eqtools", "sample", *args,
                            "--out", str(tmp_path / "three")], capture_output=True, text=True, env=env, timeout=120)
    assert empty.returncode != 0 and "torchrun started 2 processes, but a 8-subnet draw has 1 round" in " ".join(
        empty.stderr.split())


# ------------------------------------------------------------------------------------- ImageFolder training
def test_training_on_a_folder_gives_the_same_weights_with_0_or_2_workers(tmp_path):
    """Decoding in a pool changes nothing the model sees: same batches, same augmentation, same weights."""
    from imagetree import make_tree

    from eqtools.build import load_supernet

    tree = make_tree(tmp_path / "tree", classes=3, train_per_class=14, val_per_class=2, size=(30, 40))
    base = {**DIGITS_SPEC, "name": "folder", "data": {"name": "imagefolder", "root": str(tree), "image_size": 16,
                                                       "val_size": 12},
            "train": {**DIGITS_SPEC["train"], "epochs": 2, "steps_per_epoch": 2, "batch_size": 8, "init_images": 16}}
    weights = {}
    for workers in (0, 2):
        spec = {**base, "data": {**base["data"], "workers": workers}}
        proc = _train(tmp_path, "--device", "cpu", name=f"w{workers}", spec=spec)
        assert proc.returncode == 0, proc.stderr[-2000:]
        weights[workers] = load_supernet(read_artifact(tmp_path / f"w{workers}")).state_dict()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_training_on_a_folder_with_an_undecodable_image_exits_2_naming_it(tmp_path):
    from imagetree import make_tree

    tree = make_tree(tmp_path / "tree", classes=3, train_per_class=14, val_per_class=2, size=(30, 40))
    bad = sorted((tree / "train").rglob("*.jpg"))[7]
    bad.write_bytes(b"\xff\xd8 not the rest of a JPEG")
    spec = {**DIGITS_SPEC, "name": "folder", "data": {"name": "imagefolder", "root": str(tree), "image_size": 16,
                                                       "val_size": 12, "workers": 2},
            "train": {**DIGITS_SPEC["train"], "epochs": 1, "steps_per_epoch": 5, "batch_size": 8, "init_images": 16}}
    proc = _train(tmp_path, "--device", "cpu", name="bad", spec=spec)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"cannot decode {bad}" in " ".join(proc.stderr.split())
    assert not (tmp_path / "bad").exists()
