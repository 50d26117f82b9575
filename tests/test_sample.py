"""The sampler, `sample_artifact` (resume, shards, merge) and `eqtools sample`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eqtools.artifacts import read_artifact
from eqtools.cli.app import app
from eqtools.errors import ArtifactError, ConfigError
from eqtools.sample import (
    draw_configs,
    merge_samples,
    parse_conditions,
    parse_shard,
    read_samples,
    sample_artifact,
    shard_indices,
    tilted_distribution,
)
from eqtools.space import ElasticSpace

ROW_KEYS = {"index", "config", "accuracy", "loss", "avg_w_bits", "avg_a_bits", "size_bytes", "bops", "condition"}
# a small, fast run on the tiny fixture supernet
RUN = {"n": 24, "subset": 100, "calib_images": 64, "batch_size": 100}


@pytest.fixture(scope="module")
def resnet20_space() -> ElasticSpace:
    """The quick spec's space (ResNet-20, 18 elastic layers): where uniform-random draws crowd the middle."""
    from eqtools.models import get_model
    from eqtools.quant import trace_layers

    layers = trace_layers(get_model("resnet20", num_classes=10, in_channels=1), torch.zeros(1, 1, 28, 28))
    return ElasticSpace.build(layers, w_bits=range(2, 9), a_bits=range(2, 9),
                              first_layer={"w_bits": 8, "a_bits": 8}, last_layer={"w_bits": 8, "a_bits": 8})


@pytest.fixture(scope="module")
def unsharded(tiny_supernet_artifact, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples") / "full"
    sample_artifact(read_artifact(tiny_supernet_artifact), out=out, **RUN)
    return out


# ---------------------------------------------------------------------------------- the sampler
def test_tilted_distribution_has_the_target_mean():
    bits = (2, 3, 4, 5, 6, 7, 8)
    for target in (2.0, 2.3, 3.7, 5.0, 6.9, 8.0):
        p = tilted_distribution(bits, target)
        assert sum(p) == pytest.approx(1.0)
        assert sum(pi * b for pi, b in zip(p, bits)) == pytest.approx(target, abs=1e-6)
        assert all(pi >= 0 for pi in p)
    assert tilted_distribution(bits, 5.0) == pytest.approx([1 / 7] * 7)  # the middle: uniform per layer
    assert tilted_distribution(bits, 1.0) == [1.0, 0, 0, 0, 0, 0, 0]
    assert tilted_distribution((4,), 6.0) == [1.0]


def _bin_shares(values: list[float], lo: float, hi: float, bins: int) -> list[float]:
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    return [c / len(values) for c in counts]


def test_sampler_spreads_evenly_over_conditions_and_the_full_avg_bit_range(resnet20_space):
    space = resnet20_space
    n = 400
    configs = draw_configs(space, n, seed=0)
    assert len(configs) == n and all(space.contains(c) for c in configs)
    per_condition = {}
    for c in configs:
        per_condition[c.condition] = per_condition.get(c.condition, 0) + 1
    assert per_condition == {"/".join(form): 50 for form in space.conditions}
    assert len({(c.w_bits, c.a_bits, c.condition) for c in configs}) == n  # distinct subnets
    avg = [space.avg_bits(c) for c in configs]
    for values in ([w for w, _ in avg], [a for _, a in avg]):
        assert min(values) < 2.2 and max(values) > 7.8
        shares = _bin_shares(values, 2.0, 8.0, 6)
        assert min(shares) > 0.10, shares  # every sixth of the range gets a fair share (uniform: 1/6)
    # per condition too: each condition alone covers the range
    for label in per_condition:
        ws = [space.avg_bits(c)[0] for c in configs if c.condition == label]
        assert min(ws) < 2.5 and max(ws) > 7.5
    # the baseline this replaces: uniform-random bits per layer crowd the middle
    rng = random.Random(0)
    baseline = [space.avg_bits(space.random(rng))[0] for _ in range(n)]
    outer = sum(1 for v in baseline if v < 3.0 or v > 7.0) / n
    ours = sum(1 for w, _ in avg if w < 3.0 or w > 7.0) / n
    assert outer < 0.05 and ours > 0.25


def test_sampler_mixes_bit_widths_across_layers(resnet20_space):
    configs = draw_configs(resnet20_space, 200, seed=1)
    elastic = [i for i, layer in enumerate(resnet20_space.quantized_layers) if not layer.fixed]
    mixed = [c for c in configs if len({c.w_bits[i] for i in elastic}) > 1]
    assert len(mixed) > 0.8 * len(configs)


def test_sampler_is_deterministic_and_follows_the_requested_conditions(resnet20_space):
    a = draw_configs(resnet20_space, 50, seed=3, conditions=["per-tensor/asym/asym", "per-channel/sym/sym"])
    assert a == draw_configs(resnet20_space, 50, seed=3, conditions=["per-tensor/asym/asym", "per-channel/sym/sym"])
    assert a != draw_configs(resnet20_space, 50, seed=4, conditions=["per-tensor/asym/asym", "per-channel/sym/sym"])
    assert [c.condition for c in a[:4]] == ["per-tensor/asym/asym", "per-channel/sym/sym"] * 2
    assert {c.condition for c in a} == {"per-tensor/asym/asym", "per-channel/sym/sym"}


def test_sampler_on_a_tiny_space_covers_everything(tiny_supernet_artifact):
    space = read_artifact(tiny_supernet_artifact).space
    configs = draw_configs(space, 64, seed=0)
    ws = [space.avg_bits(c)[0] for c in configs]
    assert min(ws) == 2.0 and max(ws) == 8.0
    assert {c.condition for c in configs} == {"/".join(form) for form in space.conditions}
    assert len(space.conditions) == 8  # granularity x weight symmetry x activation symmetry


def test_parse_conditions_and_shard(resnet20_space):
    assert parse_conditions("all", resnet20_space) == tuple(
        f"{g}/{w}/{a}" for g in ("per-channel", "per-tensor") for w in ("sym", "asym") for a in ("sym", "asym"))
    assert parse_conditions(" per-tensor/asym ,per-channel/sym", resnet20_space) == ("per-tensor/asym/asym", "per-channel/sym/sym")
    assert parse_conditions("per-channel/sym/asym", resnet20_space) == ("per-channel/sym/asym",)
    with pytest.raises(ConfigError, match=r"condition 'per-tensor/signed' is not in this supernet's space; allowed: 'all' or"):
        parse_conditions("per-tensor/signed", resnet20_space)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_conditions("per-tensor/sym,per-tensor/sym", resnet20_space)
    assert parse_shard("2/8") == (2, 8) and parse_shard(None) is None
    for bad in ("0/2", "3/2", "a/b", "2", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    shards = [shard_indices(10, (k, 3)) for k in (1, 2, 3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert shards[0] == [0, 3, 6, 9]


@pytest.mark.parametrize("n_shards", [2, 4])
def test_every_shard_holds_a_stratified_slice_of_every_form(resnet20_space, n_shards):
    # with 2 or 4 shards and 8 forms, striding by single draws gave a shard only half or a quarter of the forms
    configs = draw_configs(resnet20_space, 64, seed=0)
    forms = len(resnet20_space.conditions)
    shards = [shard_indices(64, (k, n_shards), forms) for k in range(1, n_shards + 1)]
    assert sorted(i for s in shards for i in s) == list(range(64))
    for shard in shards:
        per_form = Counter(configs[i].condition for i in shard)
        assert set(per_form) == {c.condition for c in configs} and len(per_form) == forms
        assert len(set(per_form.values())) == 1  # the same number of every form


# ---------------------------------------------------------------------------------- running
def test_sample_writes_one_row_per_subnet(unsharded, tiny_supernet_artifact):
    art = read_artifact(unsharded, "samples")
    rows = read_samples(art)
    space = art.space
    assert [r["index"] for r in rows] == list(range(RUN["n"]))
    configs = draw_configs(space, RUN["n"], seed=0)
    for row, config in zip(rows, configs):
        assert set(row) == ROW_KEYS
        assert row["config"] == config.to_dict()
        assert 0.0 <= row["accuracy"] <= 1.0 and row["loss"] > 0
        assert (row["avg_w_bits"], row["avg_a_bits"]) == pytest.approx(space.avg_bits(config))
        assert row["size_bytes"] == space.size_bytes(config) and row["bops"] == space.bops(config)
        assert row["condition"] == config.condition
    assert max(r["accuracy"] for r in rows) > 0.5  # a trained supernet, evaluated properly
    m = art.metrics
    assert m["rows"] == RUN["n"] and sum(m["per_condition"].values()) == RUN["n"]
    assert m["eval_time_s"] > 0 and m["subnets_per_min"] > 0
    extra = art.extra
    assert (extra["n"], extra["seed"], extra["subset"], extra["shard"]) == (24, 0, 100, None)
    assert extra["conditions"] == ["/".join(form) for form in space.conditions]
    assert art.manifest["parents"][0]["kind"] == "supernet"
    assert not (unsharded.parent / ".full.partial").exists()


def test_sample_row_accuracy_is_the_calibrated_accuracy(unsharded, tiny_supernet_artifact, digits_spec, digits_splits):
    """Reproduce one row by hand: same calibration images, same balanced val subset."""
    from eqtools.build import load_supernet
    from eqtools.evaluation import BatchSource, calibrate_and_evaluate, calibration_source
    from eqtools.sample import EVAL_SEED_OFFSET

    row = read_samples(unsharded)[5]
    supernet = load_supernet(read_artifact(tiny_supernet_artifact))
    calib = calibration_source(digits_splits, RUN["calib_images"], RUN["batch_size"], digits_spec.seed)
    subset = digits_splits.val.balanced(RUN["subset"], digits_spec.seed + EVAL_SEED_OFFSET)
    labels = subset.targets
    assert len(subset) == 100 and all(int((labels == c).sum()) == 10 for c in range(10))
    from eqtools.space import SubnetConfig

    result = calibrate_and_evaluate(supernet, SubnetConfig.from_dict(row["config"]), calib,
                                    BatchSource(subset, RUN["batch_size"]))
    assert result["top1"] == row["accuracy"]


def test_subnet_meter_equals_calibrate_and_evaluate_and_its_per_image_results_add_up(
        tiny_supernet_artifact, digits_spec, digits_splits):
    """The sampler's engine measures what calibrate_and_evaluate measures (BN statistics included),
    for several subnets in a row on one supernet, and per-image results agree with the totals."""
    import torch

    from eqtools.build import load_supernet
    from eqtools.evaluation import BatchSource, SubnetMeter, calibrate_and_evaluate, calibration_source

    art = read_artifact(tiny_supernet_artifact)
    reference = load_supernet(art)
    measured = load_supernet(art)
    calib = calibration_source(digits_splits, 96, 40, digits_spec.seed)  # uneven batches: 32 each
    evaluation = BatchSource(digits_splits.val, 64)
    meter = SubnetMeter(measured, calib, evaluation)
    for config in draw_configs(art_space(art), 4, seed=3):
        old = calibrate_and_evaluate(reference, config, calib, evaluation)
        new = meter.measure(config, per_image=True)
        assert new["top1"] == old["top1"] and new["calib_images"] == old["calib_images"] == 96
        assert new["loss"] == pytest.approx(old["loss"], rel=1e-6)
        assert new["correct"].mean() == new["top1"] and len(new["correct"]) == evaluation.images
        assert new["image_loss"].mean() == pytest.approx(new["loss"], rel=1e-5)
        for key, value in reference.state_dict().items():  # BN statistics and counters, exactly
            assert torch.equal(value, measured.state_dict()[key]), key
    assert meter.recompiles == 0  # not compiled: nothing to recompile


def art_space(art):
    return art.space


class _Stop(Exception):
    pass


def test_interrupted_sample_resumes_without_duplicates_or_lost_rows(unsharded, tiny_supernet_artifact, tmp_path):
    art = read_artifact(tiny_supernet_artifact)
    out = tmp_path / "samples"
    done = []

    def stop_after_five(row):
        done.append(row["index"])
        if len(done) == 5:
            raise _Stop

    with pytest.raises(_Stop):
        sample_artifact(art, out=out, on_row=stop_after_five, **RUN)
    work = tmp_path / ".samples.partial"
    log = (work / "rows.jsonl").read_text().splitlines()
    assert len(log) == 5 and not out.exists()
    # a kill in the middle of a write leaves half a line
    with open(work / "rows.jsonl", "a") as fh:
        fh.write('{"index": 5, "config": {"granu')
    again = []
    result = sample_artifact(art, out=out, on_row=lambda row: again.append(row["index"]), **RUN)
    assert sorted(again) == list(range(5, RUN["n"]))  # only what was missing
    rows = read_samples(result)
    assert [r["index"] for r in rows] == list(range(RUN["n"]))
    assert (out / "samples.jsonl").read_bytes() == (unsharded / "samples.jsonl").read_bytes()
    assert not work.exists()
    # re-running a finished run evaluates nothing
    third = []
    assert sample_artifact(art, out=out, on_row=lambda row: third.append(row), **RUN).path == out
    assert third == []


def test_resume_refuses_other_parameters_unless_restarted(tiny_supernet_artifact, tmp_path):
    art = read_artifact(tiny_supernet_artifact)
    out = tmp_path / "samples"

    def stop(row):
        raise _Stop

    with pytest.raises(_Stop):
        sample_artifact(art, out=out, on_row=stop, **RUN)
    with pytest.raises(ArtifactError, match=r"other parameters \(seed 0 vs 1\).*--restart"):
        sample_artifact(art, out=out, seed=1, **RUN)
    result = sample_artifact(art, out=out, seed=1, restart=True, n=4, subset=100, calib_images=64, batch_size=100)
    assert result.extra["seed"] == 1 and result.metrics["rows"] == 4


def test_shards_merge_into_the_unsharded_run(unsharded, tiny_supernet_artifact, tmp_path):
    art = read_artifact(tiny_supernet_artifact)
    shards = [sample_artifact(art, out=tmp_path / f"s{k}", shard=(k, 3), **RUN) for k in (1, 2, 3)]
    assert [s.metrics["rows"] for s in shards] == [8, 8, 8]
    for s in shards:  # every shard holds every form
        assert len(s.metrics["per_condition"]) == 8
    assert shards[1].extra["shard"] == [2, 3]
    merged = merge_samples([s.path for s in reversed(shards)], tmp_path / "merged")
    assert (merged.path / "samples.jsonl").read_bytes() == (unsharded / "samples.jsonl").read_bytes()
    assert merged.extra == read_artifact(unsharded).extra
    assert merged.metrics["rows"] == 24
    assert merged.manifest["parents"][0]["kind"] == "supernet"

    with pytest.raises(ArtifactError, match="shard\\(s\\) 3/3 missing"):
        merge_samples([shards[0].path, shards[1].path], tmp_path / "m2")
    with pytest.raises(ArtifactError, match="given more than once"):
        merge_samples([shards[0].path, shards[0].path, shards[1].path], tmp_path / "m2")
    with pytest.raises(ArtifactError, match="not a shard"):
        merge_samples([unsharded, shards[0].path], tmp_path / "m2")
    other_seed = sample_artifact(art, out=tmp_path / "seed1", shard=(3, 3), seed=1, **RUN)
    with pytest.raises(ArtifactError, match=r"other parameters .*seed 1 vs 0"):
        merge_samples([shards[0].path, shards[1].path, other_seed.path], tmp_path / "m2")
    assert not (tmp_path / "m2").exists()


def test_merge_refuses_shards_of_another_supernet(tiny_supernet_artifact, tmp_path):
    import shutil

    from eqtools.build import load_supernet, save_supernet
    from eqtools.specs import parse_spec

    art = read_artifact(tiny_supernet_artifact)
    supernet = load_supernet(art)
    with torch.no_grad():
        supernet.model.fc.bias.add_(0.01)
    other = save_supernet(supernet, tmp_path / "other", parse_spec(art.spec))
    small = {**RUN, "n": 2, "conditions": "per-tensor/asym"}
    a = sample_artifact(art, out=tmp_path / "a", shard=(1, 2), **small)
    b = sample_artifact(other, out=tmp_path / "b", shard=(2, 2), **small)
    with pytest.raises(ArtifactError, match="another supernet"):
        merge_samples([a.path, b.path], tmp_path / "m")
    shutil.rmtree(tmp_path / "other")


# ---------------------------------------------------------------------------------- CLI
runner = CliRunner()


def _stderr(result) -> str:
    try:
        return " ".join(result.stderr.split())
    except ValueError:  # older click: stderr mixed into output
        return " ".join(result.output.split())


def test_cli_sample_json_and_merge(tiny_supernet_artifact, tmp_path):
    base = ["sample", "--from", str(tiny_supernet_artifact), "-n", "6", "--subset", "100", "--calib-images", "64",
            "--conditions", "per-tensor/asym,per-channel/sym", "--seed", "5"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "full"), "--json"])
    assert result.exit_code == 0, _stderr(result)
    data = json.loads(result.stdout)
    assert data["metrics"]["rows"] == 6
    assert data["metrics"]["per_condition"] == {"per-channel/sym/sym": 3, "per-tensor/asym/asym": 3}
    assert data["parameters"]["seed"] == 5
    for k in (1, 2):
        shard = runner.invoke(app, [*base, "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}"), "--no-progress"])
        assert shard.exit_code == 0, _stderr(shard)
    merged = runner.invoke(app, ["sample", "--merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out",
                                 str(tmp_path / "merged")])
    assert merged.exit_code == 0, _stderr(merged)
    assert (tmp_path / "merged" / "samples.jsonl").read_bytes() == (tmp_path / "full" / "samples.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conditions", "per-tensor/maybe"], "condition 'per-tensor/maybe' is not in this supernet's space"),
        (["--shard", "3/2"], "--shard is '3/2'"),
        (["extra-path"], "only taken with --merge"),
        (["--merge"], "--merge needs the shard artifacts"),
    ],
)
def test_cli_sample_bad_input_exits_2(tiny_supernet_artifact, tmp_path, args, message):
    result = runner.invoke(app, ["sample", "--from", str(tiny_supernet_artifact), "-n", "2", "--out",
                                 str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in _stderr(result)
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_refused_run_leaves_no_log_that_blocks_the_corrected_command(tiny_supernet_artifact, tmp_path):
    base = ["sample", "--from", str(tiny_supernet_artifact), "-n", "2", "--calib-images", "64", "--no-progress",
            "--out", str(tmp_path / "s")]
    refused = runner.invoke(app, [*base, "--subset", "1000000"])  # found out only once the data is loaded
    assert refused.exit_code == 2 and "--subset is 1000000" in _stderr(refused)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # was: .s.partial holding the refused parameters
    corrected = runner.invoke(app, [*base, "--subset", "100"])
    assert corrected.exit_code == 0, _stderr(corrected)  # was: "an unfinished sample run with other parameters"


def test_an_empty_shard_is_refused(tiny_supernet_artifact, tmp_path):
    with pytest.raises(ConfigError, match="--shard 5/5 splits a 4-subnet draw into more shards than it has rounds"):
        sample_artifact(read_artifact(tiny_supernet_artifact), out=tmp_path / "s", shard=(5, 5), **{**RUN, "n": 4})


@pytest.mark.parametrize("shard", ["1/3", "1/99999999999999999999"])
def test_cli_sample_refuses_a_split_into_more_shards_than_rounds_for_every_shard(tiny_supernet_artifact, tmp_path,
                                                                                  shard):
    # 4 draws over 2 forms are 2 rounds: shard 1/3 used to run (and could never be merged, as 3/3 is empty)
    result = runner.invoke(app, ["sample", "--from", str(tiny_supernet_artifact), "-n", "4", "--conditions",
                                 "per-tensor/asym,per-channel/sym", "--shard", shard, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "more shards than it has rounds" in _stderr(result) and "use at most 2 shards" in _stderr(result)
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_cli_merge_refuses_an_oversplit_shard_from_an_older_eqtools(tiny_supernet_artifact, tmp_path, monkeypatch):
    import eqtools.sample as sample_module

    with monkeypatch.context() as patch:  # as an eqtools without the shard-count check wrote it
        patch.setattr(sample_module, "_check_shard_count", lambda params, shard: None)
        sample_artifact(read_artifact(tiny_supernet_artifact), out=tmp_path / "s1", shard=(1, 10**20),
                        **{**RUN, "n": 2, "conditions": "per-tensor/asym"})
    # the missing shards 2..10^20 were listed in memory (the process was killed for it)
    result = runner.invoke(app, ["sample", "--merge", str(tmp_path / "s1"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2, result.output
    assert "can never be merged; re-run it with --shard K/2" in _stderr(result)
    assert not (tmp_path / "m").exists()


def test_cli_sample_needs_a_supernet_artifact(tiny_supernet_artifact, tmp_path):
    result = runner.invoke(app, ["sample", "--from", str(tmp_path), "-n", "2"])
    assert result.exit_code == 2 and "no manifest.json" in _stderr(result)


def test_a_full_disk_mid_run_exits_2_keeping_the_rows_to_resume_from(unsharded, tiny_supernet_artifact, tmp_path):
    """A real write failure (a file-size limit: EFBIG, as ENOSPC on a full disk) in the row log, then a re-run."""
    import resource

    out = tmp_path / "samples"
    cmd = [sys.executable, "-m", "eqtools", "sample", "--from", str(tiny_supernet_artifact), "-n", str(RUN["n"]),
           "--subset", str(RUN["subset"]), "--calib-images", str(RUN["calib_images"]), "--batch-size",
           str(RUN["batch_size"]), "--out", str(out), "--no-progress", "--no-compile"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def limit() -> None:  # room for params.json and a few rows, not all 24
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    full = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, preexec_fn=limit)
    assert full.returncode == 2, full.stderr  # was 1: an OSError traceback from closing the log
    text = " ".join(full.stderr.split())
    assert "cannot write the unfinished run's log" in text and "File too large" in text
    assert "Traceback" not in full.stderr and not out.exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert (out / "samples.jsonl").read_bytes() == (unsharded / "samples.jsonl").read_bytes()


@pytest.mark.slow
def test_kill_9_then_resume_gives_every_row_once(tiny_supernet_artifact, tmp_path):
    """A real SIGKILL in the middle of a run, then the same command again."""
    out = tmp_path / "samples"
    cmd = [sys.executable, "-m", "eqtools", "sample", "--from", str(tiny_supernet_artifact), "-n", "60", "--subset",
           "100", "--calib-images", "64", "--out", str(out), "--no-progress"]
    log = tmp_path / ".samples.partial" / "rows.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_bytes().splitlines()) >= 5:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(log.read_bytes().splitlines()) >= 5
    assert not out.exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    rows = read_samples(out)
    assert [r["index"] for r in rows] == list(range(60))
