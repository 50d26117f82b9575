"""The training stage: EQ-Net's losses, the sandwich step, learning, resume, static QAT, DDP."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from conftest import DIGITS_SPEC
from typer.testing import CliRunner

from eqtools.artifacts import read_artifact
from eqtools.build import build_supernet, load_supernet
from eqtools.cli.app import app
from eqtools.train import kl_distill, kurtosis, sample_sandwich, sandwich_step, skewness, wdr_loss
from eqtools.train.step import wdr_weights

TRAIN_SPEC = {**DIGITS_SPEC, "name": "digits-train",
              "train": {"epochs": 3, "batch_size": 64, "steps_per_epoch": 6, "init_images": 128, "lr": 0.003,
                        "compile": "off"}}


def flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------- losses
def test_kl_distill_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    for temp in (1.0, 2.5):
        p_t = F.softmax(t / temp, 1)
        expected = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum() / 5 * temp**2
        assert kl_distill(s, t, temp).item() == pytest.approx(expected.item(), rel=1e-5)
    t.requires_grad_()
    kl_distill(s.requires_grad_(), t).backward()
    assert t.grad is None  # the larger subnet is not pulled towards the smaller


@pytest.mark.parametrize("sampler,skew,kurt", [
    (lambda g, n: torch.rand(n, generator=g), 0.0, 1.8),
    (lambda g, n: torch.randn(n, generator=g), 0.0, 3.0),
    (lambda g, n: -torch.rand(n, generator=g).log(), 2.0, 9.0),  # exponential
])
def test_moments_on_known_distributions(sampler, skew, kurt):
    x = sampler(torch.Generator().manual_seed(0), 400_000)
    assert skewness(x).item() == pytest.approx(skew, abs=0.05 * max(1, skew))
    assert kurtosis(x).item() == pytest.approx(kurt, rel=0.05)
    small = x[:999].double().numpy()
    assert skewness(torch.from_numpy(small)).item() == pytest.approx(scipy.stats.skew(small), rel=1e-6)
    assert kurtosis(torch.from_numpy(small)).item() == pytest.approx(scipy.stats.kurtosis(small, fisher=False), rel=1e-6)


def test_wdr_loss_is_the_weighted_mean_over_layers():
    gen = torch.Generator().manual_seed(1)
    ws = [torch.randn(30, generator=gen) ** 3, torch.rand(40, generator=gen)]
    expected = np.mean([0.7 * scipy.stats.skew(w.double().numpy()) ** 2
                        + 0.015 * (scipy.stats.kurtosis(w.double().numpy(), fisher=False) - 1.8) ** 2 for w in ws])
    assert wdr_loss(ws, 0.7, 0.015, 1.8).item() == pytest.approx(expected, rel=1e-4)
    uniform = torch.linspace(-1, 1, 100_001)
    assert wdr_loss([uniform]).item() < 1e-6


# ------------------------------------------------------------------------------------- the step
@pytest.fixture
def fresh_supernet(digits_spec, digits_splits):
    torch.manual_seed(0)
    supernet = build_supernet(digits_spec)
    supernet.init_from_data(x for x, _ in digits_splits.train.batches(128, limit=1))
    supernet.train()
    x, y = next(digits_splits.train.batches(64, shuffle=True))
    return supernet, x, y


def test_sandwich_order_is_largest_randoms_by_bits_smallest(fresh_supernet):
    supernet, _, _ = fresh_supernet
    space = supernet.space
    configs = sample_sandwich(space, random.Random(3), num_random=4)
    assert configs[0].w_bits == space.max().w_bits and configs[-1].w_bits == space.min().w_bits
    bits = [sum(space.avg_bits(c)) for c in configs[1:-1]]
    assert bits == sorted(bits, reverse=True)


def test_sandwich_losses_equal_the_paper_formula(fresh_supernet):
    supernet, x, y = fresh_supernet
    configs = sample_sandwich(supernet.space, random.Random(0), 1)
    wdr = {"weights": wdr_weights(supernet), "skewness": 1.0, "kurtosis": 0.015, "target": 1.8}
    supernet.eval()  # BN in eval: the manual forward below sees identical statistics
    out = sandwich_step(supernet, supernet, x, y, configs, kd_lambda=0.5, wdr=wdr)
    with torch.no_grad():
        logits = []
        for c in configs:
            supernet.apply(c)
            logits.append(supernet(x))
        ce = [F.cross_entropy(z, y).item() for z in logits]
        l_h = ce[0]
        l_r = 0.5 * kl_distill(logits[1], logits[0]).item() + 0.5 * ce[1]
        l_l = 0.5 * kl_distill(logits[2], logits[1]).item() + 0.5 * ce[2]
        reg = wdr_loss(wdr["weights"], 1.0, 0.015, 1.8).item()
    assert set(out) == {"loss", "ce_max", "ce_random", "kd_random", "ce_min", "kd_min", "wdr"}
    assert out["ce_max"] == pytest.approx(l_h, rel=1e-5)
    assert out["loss"] == pytest.approx(l_h + l_r + l_l + reg, rel=1e-5)
    assert out["wdr"] == pytest.approx(reg, rel=1e-5)


def _form_rows(supernet, config):
    """(parameter name, row) of every quantizer table row the config uses."""
    used = set()
    space = supernet.space
    for name, w, a in zip(config.layers, config.w_bits, config.a_bits):
        layer = space.layer(name)
        wb, ab = space.w_choices(layer).index(w), space.a_choices(layer).index(a)
        wsi = space.w_symmetries.index(config.w_symmetry)
        asi = space.a_symmetries.index(config.a_symmetry)
        table = "step_per_channel" if config.granularity == "per-channel" else "step_per_tensor"
        used.add((f"model.{name}.weight_quant.{table}", wb * len(space.w_symmetries) + wsi))
        used.add((f"model.{name}.act_quant.step", ab * len(space.a_symmetries) + asi))
        if config.w_symmetry == "asym":
            off = "offset_per_channel" if config.granularity == "per-channel" else "offset_per_tensor"
            used.add((f"model.{name}.weight_quant.{off}", wb))
        if config.a_symmetry == "asym":
            used.add((f"model.{name}.act_quant.offset", ab))
    return used


def test_one_step_updates_weights_and_exactly_the_forms_used(fresh_supernet):
    supernet, x, y = fresh_supernet
    configs = sample_sandwich(supernet.space, random.Random(5), 1)
    before = {k: v.clone() for k, v in supernet.named_parameters()}
    opt = torch.optim.SGD(supernet.parameters(), lr=0.05)
    sandwich_step(supernet, supernet, x, y, configs, wdr=None)
    opt.step()
    used = set().union(*(_form_rows(supernet, c) for c in configs))
    quant_names = {n for n, p in supernet.named_parameters() if "_quant." in n}
    for name, param in supernet.named_parameters():
        if name not in quant_names:
            continue
        for row in range(param.shape[0]):
            changed = not torch.equal(param[row], before[name][row])
            if (name, row) in used and "offset" not in name:
                assert changed, (name, row)
            if (name, row) not in used:
                assert not changed, (name, row)
    assert not torch.equal(before["model.conv2.weight"], supernet.model.conv2.weight)


# ------------------------------------------------------------------------------------- CLI runs
def _spec_file(tmp_path: Path, **train) -> Path:
    spec = json.loads(json.dumps(TRAIN_SPEC))
    spec["train"].update(train)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "eqtools", "train", *args, "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_artifact(path, "supernet").tensors("weights.safetensors")


def test_training_beats_the_untrained_supernet_by_a_wide_margin(tmp_path, digits_spec, digits_splits):
    from eqtools.evaluation import calibrate_and_evaluate

    spec = _spec_file(tmp_path, epochs=4, steps_per_epoch=20)
    proc = _cli(str(spec), "--out", str(tmp_path / "trained"))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    trained = load_supernet(read_artifact(tmp_path / "trained"))
    torch.manual_seed(0)
    untrained = build_supernet(digits_spec)
    untrained.init_from_data(x for x, _ in digits_splits.train.batches(128, limit=1))
    for bits in (8, 4):
        accs = []
        for model in (trained, untrained):
            config = model.space.uniform(bits)
            metrics = calibrate_and_evaluate(model, config, list(digits_splits.train.batches(128, limit=2)),
                                             list(digits_splits.test.batches(300)))
            accs.append(metrics["top1"])
        assert accs[0] > accs[1] + 0.3, (bits, accs)


def test_kill_9_then_resume_gives_the_same_weights(tmp_path):
    spec = _spec_file(tmp_path, epochs=8)
    ref = _cli(str(spec), "--out", str(tmp_path / "ref"))
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    out = tmp_path / "run" / "supernet"
    proc = _cli(str(spec), "--out", str(out))
    ckpt = out.with_name("supernet.work") / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    again = _cli(str(spec), "--out", str(out))
    assert again.wait(timeout=60) == 2 and "--resume" in flat(again.stderr.read())
    resumed = _cli(str(spec), "--out", str(out), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _weights(tmp_path / "ref"), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == list(range(1, 9))


def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(tmp_path):
    spec = _spec_file(tmp_path, epochs=2, steps_per_epoch=20)
    ref = _cli(str(spec), "--out", str(tmp_path / "ref"))
    assert ref.wait(timeout=300) == 0
    out = tmp_path / "run" / "supernet"
    proc = _cli(str(spec), "--out", str(out))
    ckpt = out.with_name("supernet.work") / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # during epoch 2: the handler is installed, the epoch is not done
    code = proc.wait(timeout=120)
    assert code == 130, (code, proc.stderr.read())
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < 20  # a mid-epoch checkpoint
    resumed = _cli(str(spec), "--out", str(out), "--resume")
    assert resumed.wait(timeout=300) == 0
    a, b = _weights(tmp_path / "ref"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _initial_supernet(spec):
    """The supernet run_training starts from (same seed, same init images), rebuilt independently."""
    from eqtools.build import build_float_model, resolve_spec
    from eqtools.data import load_splits
    from eqtools.train.loop import quantizer_init_images

    spec = resolve_spec(spec)
    torch.manual_seed(spec.seed)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    supernet = build_supernet(spec, build_float_model(spec))
    t = spec.train
    images = quantizer_init_images(splits.train, t.init_images, spec.seed)
    supernet.init_from_data((x for x, _ in images.batches(min(t.batch_size, t.init_images), shuffle=True,
                                                          seed=spec.seed)), p=t.init_p)
    return supernet


def test_static_mode_trains_only_its_config(tmp_path):
    spec = _spec_file(tmp_path, epochs=1)
    proc = _cli(str(spec), "--static-bits", "4", "--granularity", "per-tensor", "--w-symmetry", "sym",
                "--a-symmetry", "asym", "--out", str(tmp_path / "static"))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    art = read_artifact(tmp_path / "static")
    assert art.extra["mode"] == "static" and art.spec["train"]["static"]["w_bits"] == 4
    trained = load_supernet(art)
    config = trained.space.uniform(4, 4, "per-tensor", "sym", "asym")
    assert art.extra["config"] == config.to_dict()
    # every quantizer row of the static form moved; every row of every other form is exactly where
    # initialisation put it (compared with the same start rebuilt here, not with itself)
    from eqtools.specs import load_spec

    start = _initial_supernet(load_spec(spec)).state_dict()
    after = trained.state_dict()
    used = _form_rows(trained, config)
    assert used, "the static form uses no quantizer row"
    moved = unmoved = 0
    for name, tensor in after.items():
        if not any(name.endswith(t) for t in ("step_per_channel", "step_per_tensor", "offset_per_channel",
                                              "offset_per_tensor", "act_quant.step", "act_quant.offset")):
            continue
        for row in range(tensor.shape[0]):
            same = torch.equal(tensor[row], start[name][row])
            if (name, row) in used:
                moved += not same
            else:
                assert same, f"{name}[{row}] is not a row of the static form, yet training changed it"
                unmoved += 1
    assert moved >= len(used) // 2 and unmoved > 0


@pytest.mark.parametrize("patch,fragment", [
    ({"model": {"name": "resnet1000"}}, "unknown model 'resnet1000'"),
    ({"data": {"name": "cifar10", "root": "/nonexistent"}}, "cifar10 not found"),
    ({"space": {"w_bits": []}}, "space.w_bits"),
])
def test_bad_specs_exit_2_with_a_clear_message(tmp_path, patch, fragment):
    spec = json.loads(json.dumps(TRAIN_SPEC))
    spec.update(patch)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and fragment in flat(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_set_overrides_are_validated(tmp_path):
    path = _spec_file(tmp_path)
    result = CliRunner().invoke(app, ["train", str(path), "--set", "train.sandwich.kd_lambda=2"])
    assert result.exit_code == 2 and "train.sandwich.kd_lambda" in flat(result.output)


def test_ddp_two_processes_with_gloo(tmp_path):
    spec = _spec_file(tmp_path, epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + os.getpid() % 1000), "-m", "eqtools", "train", str(spec),
                           "--out", str(tmp_path / "ddp"), "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = read_artifact(tmp_path / "ddp", "supernet")
    assert art.metrics["processes"] == 2
    load_supernet(art)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("EQTOOLS_DATA"),
                    reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
def test_ddp_with_the_quick_spec(tmp_path):
    """The issue's check: torchrun with two gloo processes trains the quick spec (shortened)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(30500 + os.getpid() % 1000), "-m", "eqtools", "train", "specs/quick.json",
                           "--out", str(tmp_path / "ddp"), "-q", "--set", "train.steps_per_epoch=10",
                           "--set", "train.fp_epochs=0", "--epochs", "1"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = read_artifact(tmp_path / "ddp", "supernet")
    assert art.metrics["processes"] == 2 and art.spec["name"] == "quick"


@pytest.mark.slow
def test_compiled_training_runs_and_matches_eager_closely(tmp_path):
    """torch.compile'd training (the recompute-in-backward fake-quant path) learns like eager."""
    spec = _spec_file(tmp_path, epochs=2, steps_per_epoch=10)
    results = {}
    for mode in ("--compile", "--no-compile"):
        out = tmp_path / mode.strip("-")
        proc = _cli(str(spec), mode, "--out", str(out))
        assert proc.wait(timeout=1800) == 0, proc.stderr.read()
        art = read_artifact(out, "supernet")
        results[mode] = art
        assert art.metrics["compiled"] is (mode == "--compile")
    eager, compiled = (results[m].metrics["final"]["ce_max"] for m in ("--no-compile", "--compile"))
    assert abs(eager - compiled) < 0.05 * max(1.0, eager)  # same math, float-order differences only


def test_compile_auto_follows_the_measured_break_even() -> None:
    """`compile: auto` compiles on CUDA, and on CPU only when the run is long enough to repay compilation."""
    from eqtools.train.loop import COMPILE_MIN_CPU_SUBNET_PASSES, _compile_pays_off

    assert _compile_pays_off("cuda:0", 1)
    assert not _compile_pays_off("cpu", 2 * 62 * 3)  # the quick spec: 2 epochs of 62 sandwich steps
    assert _compile_pays_off("cpu", 5 * 156 * 3)  # r20-fmnist: 5 epochs of 156 sandwich steps
    assert not _compile_pays_off("cpu", 5 * 156 * 1)  # ... but not its static-QAT baselines
    limit = COMPILE_MIN_CPU_SUBNET_PASSES
    assert not _compile_pays_off("cpu", limit - 1) and _compile_pays_off("cpu", limit)
