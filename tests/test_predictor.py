"""The predictor: encodings, the samples reader, metrics against a reference computation, both
model kinds fitting, saving and loading, and the `fit-predictor` CLI's paths."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eqtools.artifacts import read_artifact, write_artifact
from eqtools.cli.app import app
from eqtools.errors import ArtifactError
from eqtools.predictor import (
    Encoding,
    FitOptions,
    fit_predictor,
    load_predictor,
    load_samples,
    regression_metrics,
    split_indices,
)
from eqtools.predictor.synthetic import synthetic_rows, write_synthetic_samples
from eqtools.space import ElasticSpace, LayerInfo

runner = CliRunner()
SPEC = {"name": "synthetic", "seed": 0, "model": {"name": "tiny_cnn", "num_classes": 10},
        "data": {"name": "digits"}, "predictor": {"epochs": 3, "hidden": 32, "layers": 2}}


def make_space(n_elastic: int = 5, bits=(2, 3, 4, 8)) -> ElasticSpace:
    layers = [LayerInfo("stem", "conv", 216, 8, 3072, 221184)]
    for i in range(n_elastic):
        c = 8 * (i + 1)
        layers.append(LayerInfo(f"block{i}", "conv", c * 8 * 9, c, 4096, c * 8 * 9 * 1024))
    layers.append(LayerInfo("fc", "linear", 640, 10, 64, 640))
    return ElasticSpace.build(layers, w_bits=bits, a_bits=bits, first_layer={"w_bits": 8, "a_bits": 8},
                              last_layer={"w_bits": 8, "a_bits": 8})


def spec_dict() -> dict:
    from eqtools.specs import parse_spec

    return parse_spec(SPEC).to_dict()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "artifacts" / "synthetic" / "samples"
    return write_synthetic_samples(out, make_space(), 200, seed=0, spec=spec_dict())


# ---------------------------------------------------------------------------------- encodings
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["onehot", "ordinal"]))
def test_encoding_shapes_and_values(seed: int, kind: str) -> None:
    space = make_space()
    enc = Encoding.for_space(space, kind)
    rng = random.Random(seed)
    configs = [space.random(rng) for _ in range(6)]
    x = enc.encode(configs)
    assert x.shape == (6, enc.n_features) == (6, len(enc.feature_names()))
    n = len(space.elastic_layers)
    for row, config in zip(x, configs):
        assert row[0] == (config.granularity == "per-tensor") and row[1] == (config.w_symmetry == "asym")
        assert row[2] == (config.a_symmetry == "asym")
        bits = dict(zip(config.layers, config.w_bits))
        if kind == "onehot":
            assert row[3:].sum() == 2 * n and set(np.unique(row)) <= {0.0, 1.0}
            for i, layer in enumerate(space.elastic_layers):  # the hot column is the layer's bit-width
                block = row[3 + i * 4 : 3 + (i + 1) * 4]
                assert space.w_bits[int(np.argmax(block))] == bits[layer.name]
        else:
            for i, layer in enumerate(space.elastic_layers):
                assert row[3 + i] == pytest.approx((bits[layer.name] - 2) / 6)
    w_idx, a_idx = enc.indices(configs)
    same = [enc.encode_indices(w_idx[i : i + 1], a_idx[i : i + 1], *c.form)[0]
            for i, c in enumerate(configs)]
    assert np.array_equal(np.stack(same), x)


def test_encoding_round_trip_and_space_check() -> None:
    enc = Encoding.for_space(make_space(), "onehot")
    assert Encoding.from_dict(enc.to_dict()) == enc
    with pytest.raises(ArtifactError, match="was built for elastic space"):
        enc.check_space(make_space(4))


# ---------------------------------------------------------------------------------- samples + split
def test_bad_sample_rows_are_reported_by_line(tmp_path: Path) -> None:
    space = make_space()
    rows = synthetic_rows(space, 12)
    for mutate, message in ((lambda r: r.update(accuracy=93.5), "top-1 fraction in \\[0, 1\\]"),
                            (lambda r: r["config"]["layers"].pop(), "does not fit the artifact's space")):
        bad = [dict(r, config=json.loads(json.dumps(r["config"]))) for r in rows]
        mutate(bad[4])
        art = write_artifact(tmp_path / "s", "samples",
                             lambda d, b=bad: (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b)),
                             space=space, spec=SPEC)
        with pytest.raises(ArtifactError, match=rf"samples.jsonl:5: .*{message}"):
            load_samples(art)


def test_split_is_seeded_disjoint_and_complete() -> None:
    train, test = split_indices(100, 0.2, seed=3)
    assert len(test) == 20 and sorted([*train, *test]) == list(range(100))
    assert np.array_equal(split_indices(100, 0.2, 3)[1], test)
    assert not np.array_equal(split_indices(100, 0.2, 4)[1], test)


# ---------------------------------------------------------------------------------- metrics
def _kendall_reference(y: np.ndarray, p: np.ndarray) -> float:
    concordant = discordant = 0
    for i, j in itertools.combinations(range(len(y)), 2):
        s = np.sign(y[i] - y[j]) * np.sign(p[i] - p[j])
        concordant += s > 0
        discordant += s < 0
    return (concordant - discordant) / (len(y) * (len(y) - 1) / 2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 40))
def test_metrics_match_a_reference_computation(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.permutation(n) / n + 0.01  # distinct values: no ties, so τ-b equals the plain τ
    p = y + rng.normal(0, 0.2, n) + np.arange(n) * 1e-9
    m = regression_metrics(y, p, ["a"] * n)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)))
    assert m["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert m["kendall_tau"] == pytest.approx(_kendall_reference(y, p))
    assert m["per_condition"]["a"]["kendall_tau"] == pytest.approx(m["kendall_tau"])


def test_constant_predictions_have_no_correlation() -> None:
    m = regression_metrics([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert m["pearson"] is None and m["kendall_tau"] is None and m["rmse"] > 0


# ---------------------------------------------------------------------------------- fit, save, load
MODEL_FILES = {"mlp": ["mlp.safetensors"], "xgb": ["xgb_model.json"], "ensemble": ["ensemble.safetensors", "xgb_model.json"]}


@pytest.mark.parametrize("model", ["mlp", "xgb", "ensemble"])
def test_fit_save_load_round_trip(samples, tmp_path: Path, model: str) -> None:
    art = fit_predictor(samples, tmp_path / model, FitOptions(model=model, epochs=3, hidden=32, layers=2, seed=5))
    for name in ("predictor.json", "heldout.json", "scatter.png", *MODEL_FILES[model]):
        assert (art.path / name).is_file()
    assert (art.path / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    held = json.loads((art.path / "heldout.json").read_text())
    assert len(held["test_indices"]) == 40 and not set(held["test_indices"]) & set(held["train_indices"])
    # metrics in the manifest are those of the held-out predictions recorded beside them
    ref = regression_metrics(held["measured"], held["predicted"])
    for key in ("rmse", "pearson", "kendall_tau"):
        assert art.metrics[key] == pytest.approx(ref[key])
    # the loaded predictor reproduces the recorded predictions from the configs themselves
    predictor = load_predictor(art.path)
    data = load_samples(samples)
    configs = [data.configs[i] for i in held["test_indices"]]
    assert np.allclose(predictor.predict(configs), held["predicted"], atol=1e-6)
    assert held["measured"] == [data.accuracy[i] for i in held["test_indices"]]
    # and deterministically: the same seed gives the same model
    again = fit_predictor(samples, tmp_path / f"{model}-2", FitOptions(model=model, epochs=3, hidden=32, layers=2, seed=5))
    assert json.loads((again.path / "heldout.json").read_text())["predicted"] == held["predicted"]


def test_mlp_file_loads_strictly_into_torch_and_agrees(samples, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    art = fit_predictor(samples, tmp_path / "p", FitOptions(model="mlp", encoding="onehot", rank_weight=0.0, target="accuracy", epochs=2, hidden=16, layers=3))
    predictor = load_predictor(art.path)
    net = torch.nn.Sequential(torch.nn.Linear(predictor.encoding.n_features, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 1))
    net.load_state_dict(load_file(str(art.path / "mlp.safetensors")), strict=True)
    x = predictor.encoding.encode(load_samples(samples).configs[:20])
    info = json.loads((art.path / "predictor.json").read_text())
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[:, 0].double().numpy() * info["target"]["std"] + info["target"]["mean"]
    assert np.allclose(predictor.predict_features(x), expected, atol=1e-6)


def test_mlp_learns_the_synthetic_law(tmp_path: Path) -> None:
    samples = write_synthetic_samples(tmp_path / "s", make_space(), 400, seed=1, spec=spec_dict())
    art = fit_predictor(samples, tmp_path / "p", FitOptions(model="mlp", encoding="onehot", rank_weight=0.0, target="accuracy", epochs=40, hidden=64, layers=3))
    assert art.metrics["pearson"] > 0.9 and art.metrics["kendall_tau"] > 0.7, art.metrics


# ---------------------------------------------------------------------------------- CLI
def test_cli_fit_predictor_defaults_to_the_newest_samples(samples, monkeypatch) -> None:
    monkeypatch.chdir(samples.path.parents[2])
    result = runner.invoke(app, ["fit-predictor", "--model", "xgb", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert Path(data["path"]) == Path("artifacts/synthetic/predictor-xgb")
    art = read_artifact(data["path"], "predictor")
    assert art.metrics["model"] == "xgb" and data["metrics"]["kendall_tau"] == art.metrics["kendall_tau"]
    assert art.manifest["space_fingerprint"] == samples.manifest["space_fingerprint"]
    assert art.manifest["parents"][0]["kind"] == "samples"


def test_cli_fit_predictor_errors_exit_2(samples, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["fit-predictor"])
    assert result.exit_code == 2 and "no 'samples' artifact found" in result.output
    other = write_artifact(tmp_path / "pred", "search", lambda d: (d / "x.txt").write_text("x"), spec=SPEC)
    result = runner.invoke(app, ["fit-predictor", "--from", str(other.path)])
    assert result.exit_code == 2
    assert "is a 'search' artifact, but this command needs a 'samples'" in " ".join(result.output.split())
    result = runner.invoke(app, ["fit-predictor", "--from", str(samples.path), "--model", "forest"])
    assert result.exit_code == 2 and "forest" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--rank-weight", "inf"], "the rank weight (--rank-weight, or the spec's predictor.rank_weight) is inf"),
    (["--rank-weight", "1e39"], "it must be a number from 0 to 3.403e+38"),  # float32 inf: a traceback at the write
    (["--model", "ensemble", "--members", "101"], "an ensemble takes 1 to 100 MLP members"),
])
def test_cli_fit_predictor_refuses_out_of_range_numbers_before_fitting(samples, tmp_path: Path, args, message) -> None:
    result = runner.invoke(app, ["fit-predictor", "--from", str(samples.path), *args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "p").exists()


def test_cli_fit_predictor_that_diverges_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = spec_dict()
    spec["predictor"]["lr"] = 100.0  # the largest the spec allows; with the largest rank weight the fit overflows
    samples = write_synthetic_samples(tmp_path / "samples", make_space(), 40, spec=spec)
    result = runner.invoke(app, ["fit-predictor", "--from", str(samples.path), "--model", "mlp", "--epochs", "20",
                                 "--rank-weight", "1e38", "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "the mlp predictor's fit diverged: it predicts NaN or infinity" in text and "Traceback" not in result.output
    assert "predictor.lr, now 100" in text and not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------- ranking, ensembles, costs
def test_pairwise_rank_loss_rewards_the_right_order_only() -> None:
    import torch

    from eqtools.predictor.mlp import pairwise_rank_loss

    target = torch.tensor([0.0, 1.0, 2.0, 3.0])
    right = pairwise_rank_loss(target * 10, target)
    reversed_ = pairwise_rank_loss(-target * 10, target)
    flat = pairwise_rank_loss(torch.zeros(4), target)
    assert right < 1e-3 < flat < reversed_
    # ties in the target give no pairs: nothing to learn, zero loss
    assert float(pairwise_rank_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5]))) == 0.0
    # a shift of all predictions changes nothing: only differences count
    assert torch.isclose(pairwise_rank_loss(target + 7, target), pairwise_rank_loss(target, target))


def test_ranking_loss_alone_learns_to_order_a_synthetic_law() -> None:
    """With a tiny regression weight the order must come from the pairwise term: a net trained on a
    monotone law under a label transform that regression cannot fit linearly still ranks it."""
    from scipy import stats

    from eqtools.predictor.mlp import train_mlp

    rng = np.random.default_rng(0)
    x = rng.random((300, 6)).astype(np.float32)
    law = x @ np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.0])
    y = np.exp(3 * law)  # monotone in the law, far from linear
    model = train_mlp(x[:200], y[:200], hidden=32, layers=2, epochs=60, seed=0, rank_weight=5.0)
    tau = stats.kendalltau(model.predict(x[200:]), law[200:]).statistic
    assert tau > 0.8, tau


def test_ensemble_spread_is_zero_for_identical_members_and_grows_off_the_data(samples, tmp_path: Path) -> None:
    from eqtools.predictor.ensemble import Ensemble
    from eqtools.predictor.mlp import train_mlp

    data = load_samples(samples)
    enc = Encoding.for_space(data.space)
    x = enc.encode(data.configs)
    one = train_mlp(x, data.accuracy, hidden=16, layers=2, epochs=2, seed=3)
    same = Ensemble([one, one])
    assert np.allclose(same.spread(x), 0.0) and np.allclose(same.predict(x), one.predict(x))
    two = Ensemble([one, train_mlp(x, data.accuracy, hidden=16, layers=2, epochs=2, seed=4)])
    mean, spread = two.predict_with_spread(x)
    assert (spread > 0).all() and np.allclose(mean, (two.members[0].predict(x) + two.members[1].predict(x)) / 2)


def test_ensemble_artifact_reports_spread_and_is_deterministic(samples, tmp_path: Path) -> None:
    options = FitOptions(model="ensemble", epochs=2, hidden=16, layers=2, members=2, seed=1)
    art = fit_predictor(samples, tmp_path / "e", options)
    predictor = load_predictor(art.path)
    configs = load_samples(samples).configs[:30]
    mean, spread = predictor.predict_with_spread(configs)
    assert predictor.has_spread and (spread > 0).all()
    assert np.allclose(mean, predictor.predict(configs))
    again = load_predictor(fit_predictor(samples, tmp_path / "e2", options).path)
    assert np.array_equal(again.predict_with_spread(configs)[1], spread)


def test_cost_columns_are_the_spaces_average_bits_and_bops() -> None:
    space = make_space()
    rows = synthetic_rows(space, 40, seed=2)
    from eqtools.space import SubnetConfig

    configs = [SubnetConfig.from_dict(r["config"]) for r in rows]
    enc = Encoding.for_space(space, "onehot-costs")
    x = enc.encode(configs)
    assert x.shape[1] == Encoding.for_space(space, "onehot").n_features + 3
    lo, hi = min(space.w_bits), max(space.w_bits)
    for row, config in zip(x, configs):
        avg_w, avg_a = space.avg_bits(config)
        assert row[-3] == pytest.approx((avg_w - lo) / (hi - lo), abs=1e-6)
        assert row[-2] == pytest.approx((avg_a - lo) / (hi - lo), abs=1e-6)
    # more bits everywhere never lowers the BOPs column
    assert Encoding.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc


def test_loss_target_is_read_out_as_accuracy_and_reloads_identically(samples, tmp_path: Path) -> None:
    art = fit_predictor(samples, tmp_path / "l", FitOptions(model="ensemble", target="loss", epochs=3, hidden=16,
                                                            layers=2, members=2))
    info = json.loads((art.path / "predictor.json").read_text())
    assert info["target_map"]["slope"] < 0  # more loss, less accuracy
    held = json.loads((art.path / "heldout.json").read_text())
    predictor = load_predictor(art.path)
    data = load_samples(samples)
    configs = [data.configs[i] for i in held["test_indices"]]
    mean, spread = predictor.predict_with_spread(configs)
    assert np.allclose(mean, held["predicted"], atol=1e-9) and (spread > 0).all()
    # on the accuracy scale: predictions land near the measured accuracies, not near the losses
    assert abs(float(np.mean(mean)) - float(np.mean(held["measured"]))) < 0.05
