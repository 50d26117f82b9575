"""Benchmark `eqtools export`: parity, size reduction, BN-folding cost and onnxruntime CPU latency.

Measures, per subnet (uniform bit-widths x conditions of a trained supernet, each BN-calibrated
with the spec's calibrate settings, or the one subnet of a calibrated artifact):
  1. parity of the integer file and the ONNX file with the fake-quant subnet on held-out (val)
     images: top-1 agreement, top-1 accuracy of both, and the layer-by-layer (teacher-forced)
     error; plus the fake-quant subnet's agreement with itself in channels_last (its float floor);
  2. the cost of each batch-norm folding choice: ``scale`` (default) and, for per-tensor subnets,
     ``requantize`` (top-1 change and agreement against the fake-quant subnet);
  3. sizes: packed conv/linear weights vs FP32, the integer file, the ONNX file vs an FP32 ONNX
     file of the same graph (BN folded, no Q/DQ);
  4. onnxruntime CPU latency of the exported ONNX (opset 21 with INT4, and opset 17 with int8
     containers) vs the FP32 ONNX model, with a fixed number of intra-op threads (default 2).

Usage
  python benchmarks/bench_export.py artifacts/quick/supernet              # print the results
  python benchmarks/bench_export.py artifacts/quick/supernet --record     # and append them to BENCHMARKS.md
  python benchmarks/bench_export.py artifacts/quick/calibrated-w4a4-...   # one calibrated subnet

Run it on a quiet machine: other processes on the same cores distort the latencies. The script
re-executes itself with glibc malloc settings that keep throughput steady (reference/NOTES.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import MALLOC_ENV, command_line, machine_line, record


def _latency(model_bytes: bytes, x: Any, threads: int, min_runs: int, min_time_s: float) -> float:
    """Median milliseconds per batch of ``x`` in onnxruntime (CPU, default optimizations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    for _ in range(5):
        session.run(["output"], feed)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        session.run(["output"], feed)
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def _configs(space: Any, bits: list[int], conditions: list[str]) -> list[tuple[str, Any]]:
    out = []
    for condition in conditions:
        parts = condition.split("/")  # granularity/w_symmetry/a_symmetry, or granularity/symmetry for both
        for b in bits:
            out.append((f"W{b}A{b} {condition}", space.uniform(b, b, parts[0], parts[1], parts[-1])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a 'supernet' or 'calibrated' artifact directory")
    parser.add_argument("--bits", default="2,4,8", help="uniform bit-widths to export from a supernet (default 2,4,8)")
    parser.add_argument("--conditions", default="per-channel/sym,per-tensor/asym",
                        help="forms granularity/w_symmetry/a_symmetry or granularity/symmetry (both); default per-channel/sym,per-tensor/asym")
    parser.add_argument("--check-images", type=int, default=2000, help="held-out images for parity (default 2000)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--batch", default="1,64", help="batch sizes for latency (default 1,64)")
    parser.add_argument("--min-runs", type=int, default=30, help="timed runs per measurement (default 30)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement at least (default 2)")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args(argv)

    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, calibration_source, recalibrate_bn
    from eqtools.export import build_onnx, export_subnet, extract_graph, run_onnx
    from eqtools.export._stage import parity
    from eqtools.space import SubnetConfig

    torch.set_num_threads(args.threads)
    source = read_artifact(args.source, ("supernet", "calibrated"))
    spec = artifact_spec(source)
    supernet = load_supernet(source).eval()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    check = BatchSource(splits.val.balanced(args.check_images, spec.seed, "val"), 250)
    if source.kind == "calibrated":
        config = SubnetConfig.from_dict(source.extra["config"])
        configs = [(f"{config.condition} (avg W {supernet.space.avg_bits(config)[0]:.2f})", config)]
        calib = None
    else:
        configs = _configs(supernet.space, [int(b) for b in args.bits.split(",")], args.conditions.split(","))
        calib = calibration_source(splits, spec.calibrate.images, spec.calibrate.batch_size, spec.seed)
    batches = [int(b) for b in args.batch.split(",")]
    example = next(iter(check))[0]

    parity_rows, size_rows, fold_rows, latency_rows = [], [], [], []
    for label, config in configs:
        print(f"{label}: calibrating and exporting", file=sys.stderr, flush=True)
        supernet.apply(config)
        if calib is not None:
            recalibrate_bn(supernet, calib)
        supernet.eval()
        with tempfile.TemporaryDirectory() as tmp:
            m = export_subnet(supernet, check, tmp, agreement_min=0.0, onnx_form="exact")
            onnx21 = (Path(tmp) / "model.onnx").read_bytes()
        c, i, o = m["check"], m["int"], m["onnx"]
        parity_rows.append(
            f"| {label} | {100 * c['reference_accuracy']:.2f} | {100 * i['parity']['accuracy']:.2f} | "
            f"{100 * o['parity']['accuracy']:.2f} | {100 * i['parity']['top1_agreement']:.2f} | "
            f"{100 * o['parity']['top1_agreement']:.2f} | {100 * c['reference_self_agreement']:.2f} | "
            f"{max(i['teacher_forced']['max_layer_error'], o['teacher_forced']['max_layer_error']):.1e} | "
            f"{m['zero_points']['accuracy_change']:+.4f} |")
        s = m["sizes"]
        size_rows.append(
            f"| {label} | {s['packed_weight_bytes']:,} | {s['fp32_weight_bytes']:,} | {s['weight_compression']:.1f}x | "
            f"{s['int_file_bytes']:,} | {s['onnx_file_bytes']:,} | {s['fp32_onnx_file_bytes']:,} |")
        fold = m["bn_fold"]["parity_vs_fake_quant"]
        fold_rows.append(f"| {label} | scale | {100 * fold['top1_agreement']:.2f} | "
                         f"{100 * fold['accuracy_change']:+.2f} | {100 * i['int32_bias_parity']['accuracy_change']:+.2f} |")
        if config.granularity == "per-tensor":
            with tempfile.TemporaryDirectory() as tmp:
                req = export_subnet(supernet, check, tmp, formats=("int",), bn_fold="requantize", agreement_min=0.0)
            r = req["bn_fold"]["parity_vs_fake_quant"]
            fold_rows.append(f"| {label} | requantize | {100 * r['top1_agreement']:.2f} | "
                             f"{100 * r['accuracy_change']:+.2f} | |")

        graph = extract_graph(supernet, example[:2])
        onnx17 = build_onnx(graph, 17).SerializeToString()
        agree17 = parity(torch.cat([supernet(x) for x, _ in check]).detach(), run_onnx(onnx17, [x for x, _ in check],
                                                                                        args.threads))["top1_agreement"]
        fp32 = build_onnx(extract_graph(supernet, example[:2], quantized=False), 17).SerializeToString()
        for b in batches:
            x = example[:b] if b <= example.shape[0] else example.repeat(-(-b // example.shape[0]), 1, 1, 1)[:b]
            t32 = _latency(fp32, x, args.threads, args.min_runs, args.min_time)
            t21 = _latency(onnx21, x, args.threads, args.min_runs, args.min_time)
            t17 = _latency(onnx17, x, args.threads, args.min_runs, args.min_time)
            latency_rows.append(f"| {label} | {b} | {t32:.2f} | {t21:.2f} ({t32 / t21:.2f}x) | "
                                f"{t17:.2f} ({t32 / t17:.2f}x, agreement {100 * agree17:.2f}%) |")

    body = "\n".join([
        f"Source: `{args.source}` (spec `{spec.name}`, model {spec.model.name}); parity on {args.check_images} "
        "class-balanced held-out (val) images; latency in onnxruntime "
        f"{__import__('onnxruntime').__version__}, CPU execution provider, {args.threads} intra-op threads.",
        "",
        "Parity (top-1 %, agreement with the fake-quant subnet; self = the fake-quant subnet vs itself in "
        "channels_last; layer error = largest teacher-forced relative error of either file):",
        "",
        "| subnet | fake-quant | int file | ONNX | int agree | ONNX agree | self agree | layer error | zp Δacc |",
        "|---|---|---|---|---|---|---|---|---|",
        *parity_rows,
        "",
        "Batch-norm folding cost (integer model vs fake-quant subnet; int32 bias = what an integer-only runtime "
        "that rounds the folded bias to input_scale x weight_scale would lose, not used by the files):",
        "",
        "| subnet | fold | agreement % | Δ top-1 (points) | int32-bias Δ top-1 |",
        "|---|---|---|---|---|",
        *fold_rows,
        "",
        "Sizes (bytes):",
        "",
        "| subnet | packed weights | FP32 weights | reduction | int file | ONNX (opset 21) | FP32 ONNX |",
        "|---|---|---|---|---|---|---|",
        *size_rows,
        "",
        "onnxruntime latency (median ms per batch; speed-up vs FP32 in parentheses):",
        "",
        "| subnet | batch | FP32 ONNX | QDQ opset 21 (INT4) | QDQ opset 17 (int8 + Clip) |",
        "|---|---|---|---|---|",
        *latency_rows,
    ])
    print(body)
    if args.record:
        command = command_line()
        record("export: parity, size, BN folding, onnxruntime latency", command,
               machine_line(args.threads, f", onnxruntime {__import__('onnxruntime').__version__}"), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
