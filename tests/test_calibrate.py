"""BN re-estimation, evaluation, the `calibrated` artifact and `eqtools calibrate`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from eqtools.artifacts import read_artifact, write_artifact
from eqtools.build import load_supernet
from eqtools.calibrate import calibrate_artifact, load_calibrated_config
from eqtools.cli.app import app
from eqtools.errors import ArtifactError, ConfigError, DataError
from eqtools.evaluation import (
    BatchSource,
    bn_modules,
    calibration_source,
    config_from_search,
    config_tag,
    evaluate,
    recalibrate_bn,
    resolve_config,
)
from eqtools.evaluation import measure_subnet as calibrate_subnet
from eqtools.space import SubnetConfig


# ---------------------------------------------------------------------------------- helpers
def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),  # must stay in eval mode during calibration
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
        nn.BatchNorm1d(5),
    )


def _garbage_stats(model: nn.Module) -> None:
    for m in bn_modules(model):
        m.running_mean.fill_(100.0)
        m.running_var.fill_(1e-3)
        m.num_batches_tracked.fill_(7)


def _direct_stats(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Collect every BN's inputs over all batches (BN in train mode, as calibration runs), then var_mean."""
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in bn_modules(model)}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen[mod].append(inp[0].detach().clone())) for m in seen]
    model.eval()
    for m in seen:
        m.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    out = []
    for xs in seen.values():
        x = torch.cat(xs).double()
        dims = [0, *list(range(2, x.dim()))]
        out.append((x.mean(dim=dims), x.var(dim=dims, unbiased=True)))
    return out


# ---------------------------------------------------------------------------------- recalibrate_bn
def test_recalibrate_bn_sets_exact_statistics_of_all_images():
    model = _small_model()
    batches = [torch.randn(b, 1, 8, 8) * 2 + 0.5 for b in (7, 13, 20)]  # unequal batches: weighted by size
    import copy

    reference = copy.deepcopy(model)
    expected = _direct_stats(reference, batches)
    _garbage_stats(model)
    model.train()
    seen = recalibrate_bn(model, batches)
    assert seen == 40
    for m, (mean, var) in zip(bn_modules(model), expected):
        torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-5, atol=1e-6)
    # the first BN's input does not depend on any BN: check it against the conv alone
    with torch.no_grad():
        first = torch.cat([model[0](x) for x in batches]).double()
    torch.testing.assert_close(model[1].running_mean.double(), first.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), first.var(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    # everything else restored
    assert model.training and all(m.training for m in model.modules())
    for m in bn_modules(model):
        assert m.momentum == 0.1
        assert int(m.num_batches_tracked) == 7


def test_recalibrate_bn_is_independent_of_previous_statistics_and_restores_eval_mode():
    model = _small_model().eval()
    batches = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    recalibrate_bn(model, batches)
    first = [m.running_var.clone() for m in bn_modules(model)]
    _garbage_stats(model)
    recalibrate_bn(model, iter(batches))  # a one-shot iterator is enough
    assert not any(m.training for m in model.modules())
    for m, var in zip(bn_modules(model), first):
        torch.testing.assert_close(m.running_var, var)


def test_recalibrate_bn_on_the_active_subnet_of_a_supernet(tiny_supernet_artifact, digits_splits):
    supernet = load_supernet(read_artifact(tiny_supernet_artifact))
    supernet.apply(supernet.space.uniform(2, 2, "per-tensor", "asym", "asym"))
    batches = [x for x, _ in digits_splits.train.batches(50, limit=3)]
    import copy

    expected = _direct_stats(copy.deepcopy(supernet), batches)
    assert recalibrate_bn(supernet, batches) == 150
    for m, (mean, var) in zip(bn_modules(supernet), expected):
        torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-5, atol=1e-5)


def test_recalibrate_bn_failing_midway_leaves_the_old_statistics():
    model = _small_model()
    _garbage_stats(model)

    def batches():
        yield torch.randn(8, 1, 8, 8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recalibrate_bn(model, batches())
    for m in bn_modules(model):
        assert torch.all(m.running_mean == 100.0) and torch.all(m.running_var == 1e-3)
        assert m.momentum == 0.1 and int(m.num_batches_tracked) == 7
    assert all(m.training for m in model.modules())


def test_recalibrate_bn_accepts_labelled_batches_and_refuses_none():
    model = _small_model()
    x = torch.randn(10, 1, 8, 8)
    assert recalibrate_bn(model, [(x, torch.zeros(10, dtype=torch.long))]) == 10
    with pytest.raises(DataError, match="no images"):
        recalibrate_bn(model, [])


# ---------------------------------------------------------------------------------- evaluate
class _Logits(nn.Module):
    """Returns its input as the logits, so the expected metrics can be counted by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_evaluate_equals_a_hand_count():
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 0],  # label 0: top-1
            [1.0, 9, 2, 3, 4, 5, 0],  # label 2: 5th place -> top-5 only (9,5,4,3,2)
            [1.0, 2, 9, 3, 4, 5, 0],  # label 6: last -> neither
            [5.0, 4, 3, 9, 1, 2, 0],  # label 3: top-1
            [1.0, 2, 3, 4, 9, 5, 0],  # label 0: 6th -> neither
        ]
    )
    labels = torch.tensor([0, 2, 6, 3, 0])
    result = evaluate(_Logits(), [(logits[:2], labels[:2]), (logits[2:], labels[2:])])
    assert result["images"] == 5
    assert result["top1"] == pytest.approx(2 / 5)
    assert result["top5"] == pytest.approx(3 / 5)
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)


def test_evaluate_on_a_supernet_counts_correct_predictions(tiny_supernet_artifact, digits_splits):
    supernet = load_supernet(read_artifact(tiny_supernet_artifact))
    supernet.apply(supernet.space.uniform(4, 4, "per-channel", "sym", "sym"))
    batches = list(digits_splits.val.batches(64))
    supernet.train()
    result = evaluate(supernet, batches)
    assert supernet.training  # mode restored
    supernet.eval()
    with torch.no_grad():
        correct = sum(int((supernet(x).argmax(1) == y).sum()) for x, y in batches)
    assert result["images"] == len(digits_splits.val)
    assert result["top1"] == correct / len(digits_splits.val)
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0


def test_evaluate_refuses_an_empty_split():
    with pytest.raises(DataError):
        evaluate(_Logits(), [])


# ---------------------------------------------------------------------------------- batches
def test_calibration_source_has_exact_count_even_batches_and_is_fixed_by_seed(digits_splits):
    a = calibration_source(digits_splits, 130, 64, seed=0)
    sizes = [len(x) for x, _ in a]
    assert sum(sizes) == 130 and sizes == [44, 44, 42] and a.cached
    b = calibration_source(digits_splits, 130, 64, seed=0)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    c = calibration_source(digits_splits, 130, 64, seed=1)
    assert not torch.equal(next(iter(a))[0], next(iter(c))[0])
    # more images than the split holds: all of them
    assert calibration_source(digits_splits, 10**6, 256, seed=0).images == len(digits_splits.train)
    stream = BatchSource(digits_splits.test, 100, cache_bytes=0)
    assert not stream.cached and sum(len(x) for x, _ in stream) == len(digits_splits.test) == stream.images


# ---------------------------------------------------------------------------------- the artifact
def test_calibration_improves_a_miscalibrated_subnet(tiny_supernet_artifact):
    art = read_artifact(tiny_supernet_artifact)
    supernet = load_supernet(art)
    for m in bn_modules(supernet):
        m.reset_running_stats()  # statistics of nothing: every subnet is mis-calibrated
    config = supernet.space.uniform(3, 3, "per-tensor", "sym", "sym")
    _, metrics = calibrate_subnet(art, config, images=256, split="val", supernet=supernet)
    assert metrics["top1"] > metrics["top1_before"] + 0.15
    assert metrics["loss"] < metrics["loss_before"]
    assert metrics["calib_images"] == 256 and metrics["split"] == "val"


def test_calibrated_artifact_round_trips(tiny_supernet_artifact, digits_splits, tmp_path):
    art = read_artifact(tiny_supernet_artifact)
    space = art.space
    config = space.uniform(2, 3, "per-tensor", "asym", "asym")
    out = tmp_path / "cal"
    result = calibrate_artifact(art, config, images=200, split="test", out=out)
    assert result.kind == "calibrated" and result.path == out
    assert set(result.manifest["files"]) == {"weights.safetensors", "config.json"}
    m = result.metrics
    expected_keys = {"top1", "top5", "loss", "images", "top1_before", "top5_before", "loss_before", "calib_images",
                     "split", "avg_w_bits", "avg_a_bits", "size_bytes", "bops"}
    assert expected_keys <= set(m)
    assert m["images"] == len(digits_splits.test) and m["calib_images"] == 200 and m["split"] == "test"
    assert (m["avg_w_bits"], m["avg_a_bits"]) == pytest.approx(space.avg_bits(config))
    assert m["size_bytes"] == space.size_bytes(config) and m["bops"] == space.bops(config)
    assert result.extra["config"] == config.to_dict()
    assert load_calibrated_config(result) == config
    assert result.manifest["parents"][0]["kind"] == "supernet"
    assert result.manifest["parents"][0]["path"] == str(tiny_supernet_artifact)
    # the saved weights carry the recalibrated statistics: loading and evaluating reproduces the metrics
    loaded = load_supernet(result)
    loaded.apply(config)
    again = evaluate(loaded, digits_splits.test.batches(256))
    assert again["top1"] == m["top1"]
    assert again["loss"] == pytest.approx(m["loss"], rel=1e-5)
    # and differ from the supernet's own
    original = load_supernet(art)
    assert not torch.equal(bn_modules(original)[0].running_var, bn_modules(loaded)[0].running_var)


def test_calibrate_refuses_a_config_outside_the_space(tiny_supernet_artifact, tmp_path):
    art = read_artifact(tiny_supernet_artifact)
    space = art.space
    good = space.uniform(4, 4, "per-channel", "sym", "sym")
    w = list(good.w_bits)
    w[1] = 5  # not a candidate of the test space (2, 3, 4, 8)
    bad = good.replace(w_bits=tuple(w))
    with pytest.raises(ConfigError, match=r"layer 'conv2': w_bits 5 is not allowed; allowed: \[2, 3, 4, 8\]"):
        calibrate_artifact(art, bad, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    fixed = good.replace(a_bits=(4, *good.a_bits[1:]))  # the first layer is pinned at 8/8
    with pytest.raises(ConfigError, match=r"layer 'conv1': a_bits 4 is not allowed; allowed: \[8\]"):
        calibrate_artifact(art, fixed, out=tmp_path / "x")


def test_calibrate_refuses_wrong_inputs(tiny_supernet_artifact, tmp_path):
    art = read_artifact(tiny_supernet_artifact)
    config = art.space.max()
    with pytest.raises(DataError, match="unknown split 'dev'"):
        calibrate_artifact(art, config, split="dev", out=tmp_path / "x")
    cal = calibrate_artifact(art, config, images=64, split="val", out=tmp_path / "cal")
    with pytest.raises(ArtifactError, match="'calibrated' artifact; calibrate needs a 'supernet'"):
        calibrate_artifact(cal, config, out=tmp_path / "y")


# ---------------------------------------------------------------------------------- configs
def _search_artifact(path, space, config: SubnetConfig):
    def write(tmp):
        (tmp / "best_config.json").write_text(config.to_json())

    return write_artifact(path, "search", write, space=space)


def test_resolve_config_from_each_source(tiny_supernet_artifact, tmp_path):
    space = read_artifact(tiny_supernet_artifact).space
    uniform = resolve_config(space, w_bits=3, granularity="per-tensor", symmetry="asym")
    assert uniform == space.uniform(3, 3, "per-tensor", "asym", "asym")
    assert resolve_config(space, w_bits=2, a_bits=4, granularity="per-channel", symmetry="sym").a_bits[1] == 4
    mixed = space.random(__import__("random").Random(3))
    path = tmp_path / "c.json"
    path.write_text(mixed.to_json())
    assert resolve_config(space, config_file=path) == mixed
    _search_artifact(tmp_path / "search", space, mixed)
    assert resolve_config(space, search=tmp_path / "search") == mixed
    assert config_from_search(tmp_path / "search", space) == mixed


def test_resolve_config_messages(tiny_supernet_artifact, tmp_path):
    space = read_artifact(tiny_supernet_artifact).space
    with pytest.raises(ConfigError, match="exactly one of"):
        resolve_config(space)
    with pytest.raises(ConfigError, match="--config and --w-bits"):
        resolve_config(space, config_file=tmp_path / "c.json", w_bits=3)
    with pytest.raises(ConfigError, match="--w-bits needs --granularity and --w-symmetry and --a-symmetry"):
        resolve_config(space, w_bits=3)
    with pytest.raises(ConfigError, match=r"w_bits 6 is not in this space; candidates: \[2, 3, 4, 8\]"):
        resolve_config(space, w_bits=6, granularity="per-tensor", symmetry="sym")
    with pytest.raises(ConfigError, match=r"granularity is 'per-row'; must be one of"):
        resolve_config(space, w_bits=2, granularity="per-row", symmetry="sym")
    with pytest.raises(ConfigError, match="go with --w-bits"):
        resolve_config(space, config_file=tmp_path / "c.json", symmetry="sym")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(space, config_file=tmp_path / "missing.json")


def test_config_from_search_refuses_another_space(tiny_supernet_artifact, tmp_path):
    from eqtools.space import ElasticSpace

    space = read_artifact(tiny_supernet_artifact).space
    other = ElasticSpace(space.w_bits[:-1], space.a_bits, space.granularities, space.w_symmetries, space.a_symmetries,
                         space.layers)
    _search_artifact(tmp_path / "search", other, other.min())
    with pytest.raises(ArtifactError, match="another elastic space"):
        config_from_search(tmp_path / "search", space)


def test_config_tag(tiny_supernet_artifact):
    space = read_artifact(tiny_supernet_artifact).space
    assert config_tag(space, space.uniform(3, 4, "per-tensor", "asym", "asym")) == "w3a4-per-tensor-Wasym-Aasym"
    mixed = space.uniform(3, 3, "per-channel", "sym", "sym")
    mixed = mixed.replace(w_bits=(*mixed.w_bits[:1], 2, *mixed.w_bits[2:]))
    assert config_tag(space, mixed).startswith("mixed-") and config_tag(space, mixed).endswith("-per-channel-Wsym-Asym")


# ---------------------------------------------------------------------------------- CLI
runner = CliRunner()


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # older click: stderr mixed into output
        return result.output


def test_cli_calibrate_uniform_json(tiny_supernet_artifact, tmp_path):
    out = tmp_path / "cal"
    result = runner.invoke(app, ["calibrate", "--from", str(tiny_supernet_artifact), "--w-bits", "3", "--granularity",
                                 "per-channel", "--symmetry", "sym", "--images", "64", "--split", "val", "--out",
                                 str(out), "--json"])
    assert result.exit_code == 0, _stderr(result)
    data = json.loads(result.stdout)
    assert data["path"] == str(out)
    assert data["metrics"]["calib_images"] == 64 and data["metrics"]["split"] == "val"
    assert read_artifact(out, "calibrated").extra["config"] == data["config"]


def test_cli_calibrate_default_input_and_output(tiny_supernet_artifact, tmp_path, monkeypatch):
    work = tmp_path / "ws"
    shutil.copytree(tiny_supernet_artifact, work / "artifacts" / "digits-test" / "supernet")
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["calibrate", "--w-bits", "2", "--granularity", "per-tensor", "--symmetry", "asym",
                                 "--images", "64"])
    assert result.exit_code == 0, _stderr(result)
    assert "using supernet artifact artifacts/digits-test/supernet" in _stderr(result)
    assert "before BN calibration" in result.stdout
    assert read_artifact(work / "artifacts" / "digits-test" / "calibrated-w2a2-per-tensor-Wasym-Aasym", "calibrated")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--w-bits", "5", "--granularity", "per-tensor", "--symmetry", "asym"], "w_bits 5 is not in this space"),
        ([], "exactly one of --config FILE"),
        (["--w-bits", "3"], "--w-bits needs --granularity and --w-symmetry and --a-symmetry"),
        (["--w-bits", "3", "--granularity", "per-tensor", "--symmetry", "asym", "--split", "dev"], "unknown split"),
        (["--config", "nope.json"], "does not exist"),
        # an artifact directory or a device file given as --config was reported as not existing
        (["--config", "ARTIFACT"], "is an artifact directory, not a JSON config file: give a search artifact with "
                                   "--from-search"),
        (["--config", "/dev/null"], "'/dev/null' is not a regular file"),
    ],
)
def test_cli_calibrate_bad_input_exits_2(tiny_supernet_artifact, tmp_path, args, message):
    args = [str(tiny_supernet_artifact) if a == "ARTIFACT" else a for a in args]
    result = runner.invoke(app, ["calibrate", "--from", str(tiny_supernet_artifact), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in " ".join(_stderr(result).split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_cli_calibrate_layer_outside_space_names_it(tiny_supernet_artifact, tmp_path):
    space = read_artifact(tiny_supernet_artifact).space
    config = space.uniform(3, 3, "per-tensor", "sym", "sym").to_dict()
    config["layers"][2]["a_bits"] = 7
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    result = runner.invoke(app, ["calibrate", "--from", str(tiny_supernet_artifact), "--config", str(path)])
    assert result.exit_code == 2
    text = " ".join(_stderr(result).split())
    assert "layer 'conv3': a_bits 7 is not allowed; allowed: [2, 3, 4, 8]" in text


def test_cli_calibrate_missing_supernet_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["calibrate", "--w-bits", "3", "--granularity", "per-tensor", "--symmetry", "sym"])
    assert result.exit_code == 2
    assert "no 'supernet' artifact found" in " ".join(_stderr(result).split())


def test_cli_calibrate_from_search(tiny_supernet_artifact, tmp_path):
    space = read_artifact(tiny_supernet_artifact).space
    config = space.uniform(4, 2, "per-channel", "asym", "asym")
    _search_artifact(tmp_path / "search", space, config)
    result = runner.invoke(app, ["calibrate", "--from", str(tiny_supernet_artifact), "--from-search",
                                 str(tmp_path / "search"), "--images", "64", "--out", str(tmp_path / "cal"), "--json"])
    assert result.exit_code == 0, _stderr(result)
    assert SubnetConfig.from_dict(json.loads(result.stdout)["config"]) == config
    wrong = runner.invoke(app, ["calibrate", "--from", str(tiny_supernet_artifact), "--from-search",
                                str(tiny_supernet_artifact)])
    assert wrong.exit_code == 2 and "'supernet' artifact, but this command needs a 'search'" in " ".join(
        _stderr(wrong).split())
