"""``eqtools report``: one table that says what a spec's workspace achieved.

It answers the questions EQ-Net is about, from the artifacts already on disk plus fresh BN
calibrations (nothing is trusted from training logs, whose BN statistics are shared by all
subnets): how close is each uniform subnet of the one supernet to a static-QAT model trained for
that bit-width alone; how well does the predictor rank subnets; does the searched mixed-precision
subnet beat the uniform one at the same average bits; does the export reproduce the fake-quant
model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eqtools.artifacts import MANIFEST, WORKSPACE, Artifact, Search, candidates, find_latest, read_artifact
from eqtools.errors import ArtifactError, ConfigError
from eqtools.space import SubnetConfig
from eqtools.stats import paired_bootstrap
from eqtools.vocab import form_key, parse_forms

__all__ = ["build_report", "format_report"]


def _static_baselines(folder: Path, damaged: list[dict[str, str]]) -> dict[tuple[int, str], Artifact]:
    """Static-QAT supernet artifacts of one spec, by (weight bits, form key); newest wins.

    One that fails verification is listed in ``damaged`` (the report shows it) instead of being
    used or silently left out.
    """
    found: dict[tuple[int, str], Artifact] = {}
    for d in candidates(folder):
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            damaged.append({"path": str(d), "error": f"manifest.json is unreadable ({type(exc).__name__})"})
            continue
        if manifest.get("kind") != "supernet" or (manifest.get("extra") or {}).get("mode") != "static":
            continue
        try:
            art = read_artifact(d, "supernet")
        except ArtifactError as exc:
            damaged.append({"path": str(d), "error": str(exc)})
            continue
        config = SubnetConfig.from_dict(art.extra["config"])
        bits = max(config.w_bits[i] for i, layer in enumerate(art.space.quantized_layers) if not layer.fixed)
        key = (bits, config.condition)
        if key not in found or art.created > found[key].created:
            found[key] = art
    return found


def _newest(kind: str, folder: Path, damaged: list[dict[str, str]], supernet: Artifact | None = None) -> Artifact | None:
    """The newest artifact of ``kind``; None when there is none, a ``damaged`` entry when it fails verification.

    With ``supernet``, the artifact's recorded lineage must lead to that very supernet (checksums
    verified): a predictor, search or export made from a supernet since replaced or removed, or
    from another one, would put another model's figures beside this one's, so it is listed instead.
    """
    try:
        path = find_latest(kind, folder)
    except ArtifactError:
        return None  # none of this kind: that stage was not run, nothing to report
    try:
        art = read_artifact(path, kind)
        if supernet is not None:
            origin = art.ancestor("supernet")
            if origin is not None and origin.manifest_sha256 != supernet.manifest_sha256:
                raise ArtifactError(
                    f"made from the supernet {origin.path} (manifest sha256 {origin.manifest_sha256[:12]}…), not "
                    f"the one this report measures, {supernet.path} ({supernet.manifest_sha256[:12]}…)")
        return art
    except ArtifactError as exc:
        damaged.append({"path": str(path), "error": str(exc)})
        return None


def build_report(
    root: Path | str = WORKSPACE,
    spec_name: str | None = None,
    bits: Sequence[int] = (2, 4, 8),
    *,
    forms: str | Sequence[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure and collect everything the summary table shows (calibrating subnets as needed) on ``device``.

    ``forms`` narrows the uniform table to some of the supernet's forms (``"all"`` or None: every
    one; otherwise form keys or ``--forms`` text), the report's cost being one calibration per
    subnet shown; the report records which forms it compared out of how many.
    """
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits

    root = Path(root)
    folder = root / spec_name if spec_name else None
    try:
        latest = find_latest("supernet", folder or root)
    except ArtifactError:
        raise ArtifactError(f"no 'supernet' artifact found under {folder or root}/; make one with `eqtools train SPEC` "
                            "first, or point --root at the workspace that holds one (--spec at its spec's folder)") from None
    supernet_art = read_artifact(latest, "supernet")
    if supernet_art.extra.get("mode") == "static":
        raise ArtifactError(f"no elastic supernet under {folder or root}; train one with `eqtools train SPEC`")
    folder = supernet_art.path.parent
    spec = artifact_spec(supernet_art)
    space = supernet_art.space
    log(f"report for spec '{spec.name}': supernet {supernet_art.path}")
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    supernet = load_supernet(supernet_art, map_location=device).use_channels_last()

    # every subnet of the report (the supernet's and the static baselines') is calibrated on the same
    # images and scored on the same test images, decoded once: calibrate_and_evaluate as measure_subnet
    # runs it, without measure_subnet's evaluation before calibration, which the report does not show
    from eqtools.evaluation import BatchSource, SubnetMeter, calibrate_and_evaluate, calibration_source

    calib = calibration_source(splits, spec.calibrate.images, spec.calibrate.batch_size, spec.seed)
    test = BatchSource(splits.test, spec.calibrate.batch_size)
    per_image_meter: list[SubnetMeter] = []

    def measure(art: Artifact, config: SubnetConfig, model: Any) -> float:
        try:
            art.space.validate(config)
        except ConfigError as exc:
            raise ConfigError(f"the subnet does not fit the supernet {art.path}: {exc}") from None
        return float(calibrate_and_evaluate(model, config, calib, test)["top1"])

    def measure_per_image(config: SubnetConfig) -> tuple[float, Any]:
        """Top-1 on the test split and each image's correctness, calibrated on the same images."""
        if not per_image_meter:
            per_image_meter.append(SubnetMeter(supernet, calib, test))
        result = per_image_meter[0].measure(config, per_image=True)
        return result["top1"], result["correct"]

    damaged: list[dict[str, str]] = []
    shown = parse_forms(forms, [form_key(*form) for form in space.conditions], "--forms")
    report: dict[str, Any] = {"spec": spec.name, "supernet": str(supernet_art.path), "split": "test",
                              "test_images": len(splits.test), "calib_images": spec.calibrate.images,
                              "forms": list(shown), "space_forms": len(space.conditions), "uniform": [],
                              "damaged": damaged}
    statics = _static_baselines(folder, damaged)
    for b in bits:
        if b not in space.w_bits or b not in space.a_bits:
            continue
        for form in (tuple(key.split("/")) for key in shown):  # the forms asked for, of those the one supernet serves
            config = space.uniform(b, b, *form)
            log(f"calibrating the supernet's uniform {b}-bit subnet ({config.label})")
            row: dict[str, Any] = {"bits": b, "condition": config.condition, "label": config.label,
                                   "supernet_top1": measure(supernet_art, config, supernet)}
            static = statics.get((b, config.condition))
            if static is not None:
                log(f"calibrating the static {b}-bit baseline {static.path}")
                model = load_supernet(static, map_location=device).use_channels_last()
                row["static_top1"] = measure(static, SubnetConfig.from_dict(static.extra["config"]), model)
                row["static_path"] = str(static.path)
            report["uniform"].append(row)

    predictor = _newest("predictor", folder, damaged, supernet_art)
    if predictor is not None:
        m = predictor.metrics
        report["predictor"] = {"path": str(predictor.path), "model": predictor.extra.get("model", m.get("model")),
                               "kendall_tau": m.get("kendall_tau"), "pearson": m.get("pearson"), "rmse": m.get("rmse"),
                               "heldout": m.get("n_test", m.get("heldout"))}

    search = _newest("search", folder, damaged, supernet_art)
    if search is not None:
        best = Search.best_config(search)
        avg_w, avg_a = space.avg_bits(best)
        log(f"calibrating the searched subnet ({avg_w:.2f}/{avg_a:.2f} average bits)")
        searched_top1, searched_correct = measure_per_image(best)
        row = {"path": str(search.path), "condition": best.condition, "label": best.label, "avg_w_bits": avg_w, "avg_a_bits": avg_a,
               "predicted_top1": search.metrics.get("predicted_accuracy"), "searched_top1": searched_top1}
        budget = (search.metrics.get("constraints") or {}).get("w_bits")
        uniform_bits = int(budget) if budget is not None and float(budget).is_integer() else None
        row["pick_is_uniform"] = False
        if uniform_bits in space.w_bits and uniform_bits in space.a_bits:
            uniform = space.uniform(uniform_bits, uniform_bits, *best.form)
            row["uniform_bits"] = uniform_bits
            row["pick_is_uniform"] = best == uniform
            if row["pick_is_uniform"]:
                row["uniform_top1"] = row["searched_top1"]
                uniform_correct = searched_correct
            else:
                log(f"calibrating the uniform {uniform_bits}-bit subnet at the same conditions")
                row["uniform_top1"], uniform_correct = measure_per_image(uniform)
            # the same test images score both: a paired difference, with its bootstrap interval
            row["vs_uniform"] = paired_bootstrap(searched_correct, uniform_correct, seed=spec.seed)
        verified = search.metrics.get("verified") or []
        row["verified"] = bool(verified)
        if verified:  # what --verify chose on: how many candidates, measured on which images
            row["verify"] = {"candidates": len(verified), "images": verified[0].get("eval_images"),
                             "split": verified[0].get("split")}
        top = _ga_top_pick(search)
        if top is not None and top[0] != best:
            # --verify re-ranked the GA's candidates: show the predictor's own favourite as well, so
            # the table says whether the predictor or the measurement made the final choice.
            log("calibrating the GA's top-predicted subnet")
            ga_w, ga_a = space.avg_bits(top[0])
            row.update(ga_top1=measure(supernet_art, top[0], supernet), ga_avg_w_bits=ga_w, ga_avg_a_bits=ga_a,
                       ga_predicted_top1=top[1])
        report["search"] = row

    export = _newest("export", folder, damaged, supernet_art)
    if export is not None:
        m = export.metrics
        row = {"path": str(export.path)}
        for fmt in ("int", "onnx"):
            if fmt in m:
                row[f"{fmt}_agreement"] = m[fmt]["parity"]["top1_agreement"]
                row[f"{fmt}_bytes"] = m[fmt]["file_bytes"]
                row[f"{fmt}_accuracy"] = m[fmt]["parity"].get("accuracy")
        onnx = m.get("onnx") or {}
        if onnx.get("form") == "deploy":  # agreement with what ships, and with the fake-quant subnet
            row["onnx_form"] = "deploy"
            row["onnx_cpu"] = onnx["deploy"].get("cpu", "any")  # older exports: every file was for any CPU
            row["onnx_fake_quant_agreement"] = onnx["parity_vs_fake_quant"]["top1_agreement"]
        row["fake_quant_accuracy"] = (m.get("check") or {}).get("reference_accuracy")
        sizes = m.get("sizes") or {}
        row["fp32_weight_bytes"] = sizes.get("fp32_weight_bytes")
        row["packed_weight_bytes"] = sizes.get("packed_weight_bytes")
        report["export"] = row
    return report


def _ga_top_pick(search: Artifact) -> tuple[SubnetConfig, float | None] | None:
    """The GA's highest-predicted individual and its prediction (before any --verify re-ranking)."""
    top = Search.top(search)
    return (SubnetConfig.from_dict(top[0]["config"]), top[0].get("predicted_accuracy")) if top else None


def format_report(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables, for any renderer."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    tables = []
    rows = []
    for r in report["uniform"]:
        gap = None if r.get("static_top1") is None else r["supernet_top1"] - r["static_top1"]
        rows.append([f"W{r['bits']}A{r['bits']}", r.get("label", r["condition"]), pct(r["supernet_top1"]),
                     pct(r.get("static_top1")), "-" if gap is None else f"{100 * gap:+.2f}"])
    forms = report.get("forms")
    of = f"{len(forms)} of its {report['space_forms']} forms, " if forms and len(forms) < report.get("space_forms", 0) else ""
    calib = f" on {report['calib_images']} training images" if report.get("calib_images") else ""
    none = "" if any(r.get("static_top1") is not None for r in report["uniform"]) else (
        "; no static-QAT baseline in this workspace: `eqtools train SPEC --static-bits B` trains one")
    tables.append((f"Uniform subnets of one supernet vs static QAT ({report['spec']}, {of}{report['test_images']} test "
                   f"images, after BN calibration{calib}{none})", ["bits", "form", "supernet", "static QAT",
                                                                  "difference (points)"], rows))
    if "search" in report:
        s = report["search"]
        rows = []
        if "ga_top1" in s:
            rows.append([f"GA's top-predicted mixed precision ({s['ga_avg_w_bits']:.2f} W / {s['ga_avg_a_bits']:.2f} A)",
                         s.get("label", s["condition"]), pct(s["ga_top1"]), pct(s.get("ga_predicted_top1"))])
        v = s.get("verify")
        how = "by predicted accuracy" if not s.get("verified") else (
            f"after --verify measured {v['candidates']} candidates on {v['images']} {v['split']} images" if v and v.get("images")
            else "after --verify")
        what = f"uniform {s.get('uniform_bits')}-bit" if s.get("pick_is_uniform") else "mixed precision"
        rows.append([f"search's pick {how}: {what} ({s['avg_w_bits']:.2f} W / {s['avg_a_bits']:.2f} A)",
                     s.get("label", s["condition"]),
                     pct(s["searched_top1"]), pct(s.get("predicted_top1"))])
        if "uniform_top1" in s and not s.get("pick_is_uniform"):
            rows.append([f"uniform {s['uniform_bits']}-bit", s.get("label", s["condition"]), pct(s["uniform_top1"]), "-"])
        v = s.get("vs_uniform")
        if v is not None:
            rows.append([f"pick minus uniform, paired on {v['images']} test images (bootstrap {100 * v['level']:.0f}% CI, "
                         f"{v['resamples']} resamples)", s.get("label", s["condition"]),
                         f"{100 * v['difference']:+.2f} [{100 * v['ci_low']:+.2f}, {100 * v['ci_high']:+.2f}] points",
                         "-"])
        tables.append(("Mixed-precision search vs uniform at the same budget", ["subnet", "form", "measured top-1",
                                                                                  "predicted top-1"], rows))
    if "predictor" in report:
        p = report["predictor"]
        tables.append(("Accuracy predictor on held-out samples", ["model", "Kendall tau", "Pearson r", "RMSE (points)"],
                       [[str(p["model"]), f"{p['kendall_tau']:.3f}", f"{p['pearson']:.3f}", f"{100 * p['rmse']:.2f}"]]))
    if "export" in report:
        e = report["export"]
        rows = []
        rows.append(["fake-quant subnet", "-", "-", pct(e.get("fake_quant_accuracy")), "-"])
        for fmt in ("int", "onnx"):
            if f"{fmt}_agreement" in e:
                deployed = fmt == "onnx" and e.get("onnx_form") == "deploy"
                vnni = " for VNNI CPUs" if deployed and e.get("onnx_cpu") == "vnni" else ""
                rows.append([f"{fmt} (integer kernels{vnni})" if deployed else fmt,
                             pct(e[f"{fmt}_agreement"]) + (" with the deployed arithmetic" if deployed else ""),
                             pct(e.get("onnx_fake_quant_agreement") if deployed else e[f"{fmt}_agreement"]),
                             pct(e.get(f"{fmt}_accuracy")), f"{e[f'{fmt}_bytes']:,}"])
        if e.get("fp32_weight_bytes"):
            rows.append(["fp32 weights", "-", "-", "-", f"{e['fp32_weight_bytes']:,}"])
        tables.append(("Export parity (check images)", ["file", "top-1 agreement", "agreement with fake-quant",
                                                        "top-1", "bytes"], rows))
    if report.get("damaged"):
        tables.append(("Artifacts that failed verification (left out of the tables above)", ["artifact", "problem"],
                       [[d["path"], d["error"]] for d in report["damaged"]]))
    return tables
