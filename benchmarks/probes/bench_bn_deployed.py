"""Does batch-norm calibration under the deployed arithmetic change anything? (issue 13, item 2)

`eqtools calibrate` estimates a subnet's BN statistics in the fake-quant arithmetic and then
measures the integer graph export ships (metrics.deployed). That graph also requantizes to 8 bits
where the fake-quant model does not (a conv output feeding a residual add, the sum), so every BN
after such a value receives slightly different inputs in deployment. This script measures how
different, and what statistics taken under the deployed arithmetic would change:

1. the subnet's graph with batch norm kept as its own op is run on the spec's BN-calibration
   images twice, in float64, with its BN layers in eval mode: once in the fake-quant arithmetic,
   once with the deployed 8-bit requantizations (the calibrated artifact's kept ranges; the int32
   bias rounding comes after folding, so it is not part of a BN's input);
2. per BN layer, the per-channel mean and variance of its input in both runs; the shift is
   reported relative to the channel's standard deviation (mean) and variance (variance);
3. the shift is added to the calibrated statistics (one fixed-point step of a calibration under
   the deployed arithmetic), the 8-bit ranges are re-chosen on the same images, and the deployed
   top-1 is measured again in onnxruntime on the same test images.

Usage
  python benchmarks/probes/bench_bn_deployed.py artifacts/repro/cal-deployed-w2 [more calibrated artifacts] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # _record and bench_deploy live one level up

from _record import command_line, machine_line, record


def _bn_input_stats(graph: Any, plan: dict, xs: list, requantize: bool) -> dict[str, tuple[Any, Any]]:
    """Per-channel (mean, biased variance) of every batch-norm node's input, float64, over ``xs``."""
    import torch

    from eqtools.export import simulate_deploy

    sums: dict[str, list] = {}

    def observe(name: str, op: str, args: list) -> None:
        if op != "batch_norm":
            return
        x = args[0].double()
        dims = [d for d in range(x.dim()) if d != 1]
        part = sums.setdefault(name, [0.0, 0.0, 0])
        part[0] = part[0] + x.sum(dims)
        part[1] = part[1] + (x * x).sum(dims)
        part[2] += x.numel() // x.shape[1]

    simulate_deploy(graph, plan, xs, requantize=requantize, int32_bias=False, observe=observe)
    out = {}
    for name, (s, ss, n) in sums.items():
        mean = s / n
        out[name] = (mean, torch.clamp(ss / n - mean * mean, min=0.0))
    return out


def measure(path: Path) -> dict[str, Any]:
    import torch

    from eqtools.artifacts import Calibrated, read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, calibration_source
    from eqtools.export import build_deploy_onnx, deploy_calibration, extract_graph, measure_deployed
    from eqtools.export.backends.onnxruntime import plan_from_dict, run_onnx
    from eqtools.stats import paired_bootstrap

    source = read_artifact(path, "calibrated")
    spec = artifact_spec(source)
    supernet = load_supernet(source)
    supernet.apply(Calibrated.config(source))
    supernet.eval()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    calib = deploy_calibration(splits, spec.seed)
    bn_images = [x for x, _ in calibration_source(splits, spec.calibrate.images, spec.calibrate.batch_size, spec.seed)]
    test = BatchSource(splits.test, spec.calibrate.batch_size)
    example = calib[0][:2]

    folded = extract_graph(supernet, example, bn_fold="scale")
    ranges = plan_from_dict(Calibrated.deploy_plan(source))
    _, _, plan = build_deploy_onnx(folded, ranges=ranges)
    unfolded = extract_graph(supernet, example, bn_fold="none")
    bn_after = {n.inputs[0]: n.name for n in unfolded.nodes if n.op == "batch_norm"}
    # a folded conv's value is its batch norm's output in the unfolded graph
    unfolded_plan = {bn_after.get(name, name): enc for name, enc in plan.items()}

    start = time.perf_counter()
    exact = _bn_input_stats(unfolded, unfolded_plan, bn_images, requantize=False)
    deployed = _bn_input_stats(unfolded, unfolded_plan, bn_images, requantize=True)
    mean_shift = max(float(((deployed[n][0] - exact[n][0]).abs() / exact[n][1].sqrt().clamp_min(1e-12)).max())
                     for n in exact)
    var_shift = max(float(((deployed[n][1] - exact[n][1]).abs() / exact[n][1].clamp_min(1e-12)).max()) for n in exact)
    worst = max(exact, key=lambda n: float(((deployed[n][0] - exact[n][0]).abs()
                                             / exact[n][1].sqrt().clamp_min(1e-12)).max()))

    labels = torch.cat([y for _, y in test])

    def deployed_correct() -> Any:
        """Per-image correctness of the integer graph (ranges re-chosen on ``calib``) in onnxruntime."""
        graph = extract_graph(supernet, example, bn_fold="scale")
        model, _, _ = build_deploy_onnx(graph, calib)
        return (run_onnx(model.SerializeToString(), [x for x, _ in test]).argmax(1) == labels).double()

    before, _ = measure_deployed(supernet, test, calib)
    correct_before = deployed_correct()
    modules = dict(supernet.model.named_modules())
    with torch.no_grad():
        for name in exact:
            bn = modules[name]
            bn.running_mean += (deployed[name][0] - exact[name][0]).to(bn.running_mean.dtype)
            bn.running_var += (deployed[name][1] - exact[name][1]).to(bn.running_var.dtype)
            bn.running_var.clamp_(min=0.0)
    after, _ = measure_deployed(supernet, test, calib)
    paired = paired_bootstrap(deployed_correct().numpy(), correct_before.numpy())
    return {"paired": paired, "subnet": Calibrated.config(source).label, "path": str(path), "bns": len(exact),
            "requantized": len([e for e in plan.values() if e is not None and not e.exact]),
            "mean_shift": mean_shift, "var_shift": var_shift, "worst": worst,
            "before": before, "after": after, "seconds": time.perf_counter() - start,
            "bn_images": sum(len(x) for x in bn_images)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", type=Path, nargs="+", help="'calibrated' artifacts with a kept deploy plan")
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    rows = []
    for path in args.sources:
        r = measure(path)
        b, a = r["before"], r["after"]
        rows.append(f"| {r['path']} ({r['subnet']}) | {r['bns']} / {r['requantized']} | {r['mean_shift']:.2e} "
                    f"(`{r['worst']}`) | {r['var_shift']:.2e} | {100 * b['top1_fake_quant']:.2f} | "
                    f"{100 * b['top1']:.2f} | {100 * a['top1']:.2f} ({100 * (a['top1'] - b['top1']):+.2f}; 95 % CI "
                    f"{100 * r['paired']['ci_low']:+.2f} to {100 * r['paired']['ci_high']:+.2f}) | "
                    f"{100 * a['top1_fake_quant']:.2f} |")
        print(rows[-1], flush=True)
    n_images = r["before"]["images"]
    body = (
        f"Each row: one `calibrated` artifact. BN inputs compared over its spec's {r['bn_images']} BN-calibration "
        "images, float64, BN in eval mode, fake-quant arithmetic against the deployed 8-bit requantizations "
        "(the artifact's kept ranges). Shift = the largest over channels and BN layers of |Δ mean| / std and "
        "|Δ var| / var. Then the shift is added to the calibrated statistics (one fixed-point step of a "
        f"calibration under the deployed arithmetic) and the deployed top-1 is measured again on the same "
        f"{n_images} test images in onnxruntime (Δ with a paired bootstrap 95 % interval over the images).\n\n"
        "| calibrated subnet | BN layers / values requantized | max mean shift (layer) | max variance shift | "
        "fake-quant top-1 % | deployed top-1 % | deployed top-1 %, BN under deployed arithmetic (Δ, paired bootstrap) | "
        "fake-quant top-1 %, same BN |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(body)
    if args.record:
        record("BN statistics under the deployed arithmetic", command_line(), machine_line(2), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
