"""Math that can be wrong by one line and still run: each test here failed against a planted bug.

The asymmetric step initialisation, the predictor's per-form correlations, the WDR kurtosis target
(from the spec to the loss), and the checksum over JSON payloads (tests/test_artifacts.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from typer.testing import CliRunner

from eqtools.quant import lp_search, quant_range


def _dequant(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """s (clip(round(x/s) + z, Qn, Qp) - z): the quantizer's forward, written out."""
    s, z = s[:, None], z[:, None]
    return (torch.clamp(torch.round(x / s) + z, qn, qp) - z) * s


# ------------------------------------------------------------------ asymmetric step initialisation
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_asymmetric_full_range_grid_reaches_the_maximum(bits):
    """Values exactly on a 2^b-level grid from min to max are reproduced exactly: the α = 1 candidate
    spans [min, max] in 2^b − 1 steps (with 2^b it would stop one step short of the maximum)."""
    qn, qp = quant_range(bits, True)
    step, zero = 0.1, qn + (qp - qn) // 3  # zero point inside the range: both signs present
    grid = (torch.arange(qn, qp + 1, dtype=torch.float32) - zero) * step
    x = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(bits))].repeat(2, 3)
    s, z = lp_search(x, qn, qp, asym=True)
    assert torch.equal(z, torch.full_like(z, float(zero)))
    torch.testing.assert_close(s, torch.full_like(s, step))
    torch.testing.assert_close(_dequant(x, s, z, qn, qp), x)
    assert torch.all(_dequant(x, s, z, qn, qp).amax(1) >= x.amax(1) - 1e-6)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 10_000), shift=st.floats(-0.5, 2.0))
def test_asymmetric_lp_search_is_no_worse_than_full_range(bits, seed, shift):
    """The search's L_p error is at most that of the full range [min, max] in 2^b − 1 steps."""
    x = torch.randn(3, 500, generator=torch.Generator().manual_seed(seed)) ** 3 + shift
    qn, qp = quant_range(bits, True)
    s, z = lp_search(x, qn, qp, asym=True)
    lo, hi = x.amin(1).clamp(max=0.0), x.amax(1).clamp(min=0.0)
    full = (hi - lo) / (qp - qn)
    z_full = torch.round(qn - lo / full).clamp(qn, qp)

    def err(step: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return (_dequant(x, step, zero, qn, qp) - x).abs().pow(2.4).sum(1)

    assert torch.all(err(s, z) <= err(full, z_full) * (1 + 1e-5))


# ------------------------------------------------------------------ predictor: per-form correlations
def test_per_form_correlations_are_computed_on_held_out_rows(tiny_supernet_artifact, tmp_path):
    from eqtools.artifacts import Predictor, read_artifact
    from eqtools.predictor import FitOptions, fit_predictor
    from eqtools.predictor.synthetic import write_synthetic_samples

    supernet = read_artifact(tiny_supernet_artifact, "supernet")
    samples = write_synthetic_samples(tmp_path / "samples", supernet.space, 160, spec=supernet.spec, noise=0.01)
    art = fit_predictor(samples, tmp_path / "p", FitOptions(model="mlp", encoding="onehot", rank_weight=0.0,
                                                           target="accuracy", epochs=40, hidden=16, layers=2))
    held = json.loads(art.file(Predictor.HELDOUT).read_text())
    measured, predicted = np.asarray(held["measured"]), np.asarray(held["predicted"])
    conditions = np.asarray(held["conditions"])
    assert not set(held["test_indices"]) & set(held["train_indices"])
    from eqtools.predictor.metrics import MIN_PER_CONDITION

    per = art.metrics["per_condition"]
    counts = {c: int((conditions == c).sum()) for c in set(conditions.tolist())}
    assert set(per) == {c for c, n in counts.items() if n >= MIN_PER_CONDITION} and len(per) >= 4
    for condition, row in per.items():
        mask = conditions == condition
        assert row["n"] == int(mask.sum())  # held-out rows of that form, not training rows
        if mask.sum() >= 3:
            assert row["kendall_tau"] == pytest.approx(stats.kendalltau(measured[mask], predicted[mask]).statistic)
            assert row["pearson"] == pytest.approx(stats.pearsonr(measured[mask], predicted[mask]).statistic)
    assert art.metrics["kendall_tau"] == pytest.approx(stats.kendalltau(measured, predicted).statistic)


# ------------------------------------------------------------------ WDR: the spec's kurtosis target
def _reference_wdr(weights: list[torch.Tensor], skew_weight: float, kurt_weight: float, target: float) -> float:
    terms = []
    for w in weights:
        v = w.detach().flatten().double().numpy()
        terms.append(skew_weight * stats.skew(v, bias=True) ** 2
                     + kurt_weight * (stats.kurtosis(v, fisher=False, bias=True) - target) ** 2)
    return float(np.mean(terms))


@pytest.mark.parametrize("target", [1.8, 3.0, 5.5])
def test_wdr_loss_matches_the_moments_formula_for_each_target(target):
    from eqtools.train.losses import wdr_loss

    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(16, 8, 3, 3, generator=g), torch.rand(10, 32, generator=g) ** 2]
    got = float(wdr_loss(weights, 1.0, 0.5, target))
    assert got == pytest.approx(_reference_wdr(weights, 1.0, 0.5, target), rel=1e-4)


def test_the_specs_kurtosis_target_reaches_the_loss(tmp_path, monkeypatch):
    from conftest import DIGITS_SPEC

    import eqtools.train.step as step
    from eqtools.cli.app import app

    real, seen = step.wdr_loss, []

    def spy(weights, skew_weight, kurt_weight, kurt_target):
        weights = list(weights)
        value = real(weights, skew_weight, kurt_weight, kurt_target)
        seen.append((kurt_target, float(value), _reference_wdr(weights, skew_weight, kurt_weight, 4.2)))
        return value

    monkeypatch.setattr(step, "wdr_loss", spy)
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 1, "steps_per_epoch": 2,
                                                         "wdr": {"kurtosis_target": 4.2, "kurtosis": 0.5}}}))
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 2
    for target, value, reference in seen:
        assert target == 4.2 and value == pytest.approx(reference, rel=1e-4)
