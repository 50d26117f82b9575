"""The report's tables say honestly which subnet the search picked and why."""

from __future__ import annotations

from eqtools.report import format_report


def _search_rows(search: dict) -> list[list[str]]:
    tables = {title: rows for title, _, rows in format_report({"spec": "quick", "test_images": 5000, "uniform": [], "search": search})}
    return tables["Mixed-precision search vs uniform at the same budget"]


def test_verified_uniform_pick_is_labelled_and_ga_favourite_shown() -> None:
    rows = _search_rows({
        "condition": "per-tensor/asym", "avg_w_bits": 3.0, "avg_a_bits": 3.0, "searched_top1": 0.8036,
        "predicted_top1": 0.7896, "uniform_bits": 3, "uniform_top1": 0.8036, "verified": True,
        "pick_is_uniform": True, "ga_top1": 0.7990, "ga_predicted_top1": 0.8179, "ga_avg_w_bits": 2.98,
        "ga_avg_a_bits": 3.0,
    })
    labels = [r[0] for r in rows]
    assert labels[0].startswith("GA's top-predicted mixed precision (2.98 W")
    assert rows[0][2:] == ["79.90%", "81.79%"]
    assert labels[1] == "search's pick after --verify: uniform 3-bit (3.00 W / 3.00 A)"
    assert len(rows) == 2  # the uniform row would repeat the pick


def test_unverified_mixed_pick_is_compared_with_uniform() -> None:
    rows = _search_rows({
        "condition": "per-channel/sym", "avg_w_bits": 2.9, "avg_a_bits": 3.0, "searched_top1": 0.81,
        "predicted_top1": 0.80, "uniform_bits": 3, "uniform_top1": 0.79, "verified": False, "pick_is_uniform": False,
    })
    assert [r[0] for r in rows] == ["search's pick by predicted accuracy: mixed precision (2.90 W / 3.00 A)",
                                    "uniform 3-bit"]
    assert rows[1][2] == "79.00%"


def test_export_row_shows_both_references_of_the_integer_onnx_form() -> None:
    export = {"path": "x", "int_agreement": 1.0, "int_bytes": 10, "int_accuracy": 0.9, "onnx_agreement": 0.999,
              "onnx_bytes": 20, "onnx_accuracy": 0.895, "onnx_form": "deploy", "onnx_fake_quant_agreement": 0.98,
              "fake_quant_accuracy": 0.9, "fp32_weight_bytes": 80, "packed_weight_bytes": 10}
    tables = {title: rows for title, _, rows in
              format_report({"spec": "quick", "test_images": 5000, "uniform": [], "export": export})}
    rows = {row[0]: row for row in tables["Export parity (check images)"]}
    assert rows["onnx (integer kernels)"][1:4] == ["99.90% with the deployed arithmetic", "98.00%", "89.50%"]
    assert rows["int"][1:4] == ["100.00%", "100.00%", "90.00%"]
    assert rows["fake-quant subnet"][3] == "90.00%"
    vnni = {title: rows for title, _, rows in format_report({"spec": "quick", "test_images": 5000, "uniform": [],
                                                             "export": {**export, "onnx_cpu": "vnni"}})}
    assert "onnx (integer kernels for VNNI CPUs)" in {row[0] for row in vnni["Export parity (check images)"]}


def test_paired_interval_of_pick_minus_uniform_is_shown_in_points() -> None:
    import numpy as np

    from eqtools.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    uniform = rng.random(2000) < 0.79
    pick = uniform | (rng.random(2000) < 0.1)
    v = paired_bootstrap(pick, uniform, resamples=300)
    rows = _search_rows({
        "condition": "per-channel/sym", "avg_w_bits": 2.9, "avg_a_bits": 3.0, "searched_top1": float(pick.mean()),
        "predicted_top1": 0.80, "uniform_bits": 3, "uniform_top1": float(uniform.mean()), "verified": True,
        "pick_is_uniform": False, "vs_uniform": v,
    })
    last = rows[-1]
    assert last[0].startswith("pick minus uniform, paired on 2000 test images (bootstrap 95% CI")
    assert last[2] == f"{100 * v['difference']:+.2f} [{100 * v['ci_low']:+.2f}, {100 * v['ci_high']:+.2f}] points"
    assert v["ci_low"] > 0  # fixing a tenth of the errors is a clear gain on 2000 images


def test_uniform_title_says_which_forms_and_images_it_compared() -> None:
    row = {"bits": 4, "condition": "per-channel/sym/sym", "label": "per-channel W-sym A-sym", "supernet_top1": 0.8}
    report = {"spec": "quick", "test_images": 5000, "calib_images": 2048, "uniform": [row],
              "forms": ["per-channel/sym/sym", "per-tensor/asym/asym"], "space_forms": 8}
    title = format_report(report)[0][0]
    assert "2 of its 8 forms" in title and "5000 test images" in title and "2048 training images" in title
    assert "no static-QAT baseline in this workspace" in title
    with_static = format_report({**report, "uniform": [{**row, "static_top1": 0.81}]})[0][0]
    assert "no static-QAT baseline" not in with_static
    title = format_report({**report, "forms": [f"f{i}" for i in range(8)]})[0][0]
    assert "of its" not in title  # every form shown: nothing to qualify


def test_verified_pick_says_how_many_candidates_on_which_images() -> None:
    rows = _search_rows({
        "condition": "per-tensor/asym", "avg_w_bits": 3.0, "avg_a_bits": 3.0, "searched_top1": 0.80,
        "predicted_top1": 0.79, "uniform_bits": 3, "uniform_top1": 0.80, "verified": True, "pick_is_uniform": True,
        "verify": {"candidates": 6, "images": 5000, "split": "val"},
    })
    assert rows[0][0] == "search's pick after --verify measured 6 candidates on 5000 val images: uniform 3-bit (3.00 W / 3.00 A)"
