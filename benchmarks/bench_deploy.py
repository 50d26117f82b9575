"""Benchmark the deployable integer ONNX form against FP32 and onnxruntime's own static quantization.

In one run, on the same float network and the same images:
  - FP32 ONNX of the float network (the supernet's float weights, batch norm folded);
  - onnxruntime's ``quant_pre_process`` + ``quantize_static`` of that network (QDQ, QUInt8
    activations, QInt8 per-channel weights; calibrated on training images), and its QInt4-weight
    variant at opset 21 (if this onnxruntime runs it);
  - eqtools' integer ONNX form (``eqtools export``'s default) of uniform subnets (default 2/4/8-bit,
    per-channel symmetric) and seeded random mixed-precision ones, each BN-calibrated with the spec's
    calibrate settings;
and reports, per row: latency at each batch size (median ms), speed-up over FP32, top-1 agreement
(eqtools rows: with the deployed arithmetic, i.e. the calibrated subnet with the int32 biases and 8-bit
requantizations simulated in PyTorch, and separately with the plain fake-quant subnet; onnxruntime
rows: with the FP32 network), top-1 accuracy,
file size, and what each deploy-time rounding costs (eqtools rows, simulated one at a time).
``--cpu any,vnni`` adds each subnet's ``eqtools export --cpu vnni`` file (every weight int8) beside the
default one; its agreement is measured by running it here against the default file (which computes the
deployed arithmetic), so on a CPU without VNNI it shows what the int16 saturation does to it.

Usage
  python benchmarks/bench_deploy.py artifacts/quick/supernet            # print the results
  python benchmarks/bench_deploy.py artifacts/quick/supernet --record   # and append them to BENCHMARKS.md

onnxruntime runs with the CPU execution provider, ``ORT_ENABLE_ALL`` and a fixed number of intra-op
threads (default 2). Run on a quiet machine; the script re-executes itself with the glibc malloc
settings of reference/NOTES.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import MALLOC_ENV, command_line, machine_line, median_ms, record
from _record import quartiles as _quartiles


def _session(model: bytes | str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _latency(session: Any, x: Any, min_runs: int, min_time_s: float) -> float:
    """Median milliseconds per batch ``x``."""
    feed = {session.get_inputs()[0].name: x.numpy()}
    return median_ms(lambda: session.run(None, feed), min_runs, min_time_s)


def float_network(supernet: Any, splits: Any, spec: Any) -> None:
    """Make ``supernet`` the float network the baselines quantize: its weights in float (the largest,
    8-bit subnet active, quantizers unused by ``extract_graph(quantized=False)``), BN calibrated on it."""
    from eqtools.evaluation import calibration_source, recalibrate_bn

    supernet.apply(supernet.space.max())
    recalibrate_bn(supernet, calibration_source(splits, spec.calibrate.images, spec.calibrate.batch_size, spec.seed))
    supernet.eval()


def float_onnx(supernet: Any, example: Any, opset: int) -> bytes:
    """The float network (see :func:`float_network`) as an ONNX file, batch norm folded."""
    from eqtools.export import build_onnx, extract_graph

    return build_onnx(extract_graph(supernet, example[:2], quantized=False), opset).SerializeToString()


def _logits(session: Any, batches: list[Any]) -> Any:
    import torch

    name = session.get_inputs()[0].name
    return torch.cat([torch.from_numpy(session.run(None, {name: x.numpy()})[0]) for x in batches])


def _ort_static(fp32_path: Path, out: Path, calibration: list[Any], weight_type: str) -> str | None:
    """onnxruntime's own QDQ static quantization; None on success, else why it did not run."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x.numpy()} for x in calibration])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    pre = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight_type),
                        per_channel=True)
    except Exception as exc:  # report, don't hide: the row says why it is missing
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return None


def uniform_bits(text: str) -> list[tuple[int, int]]:
    """``--bits``: "2,4,8/4" -> [(2, 2), (4, 4), (8, 4)] (weight bits, activation bits)."""
    pairs = []
    for item in text.split(","):
        w, _, a = item.strip().partition("/")
        try:
            pairs.append((int(w), int(a or w)))
        except ValueError:
            raise SystemExit(f"--bits: {item!r} is not B or W/A (e.g. 4 or 8/4)") from None
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a 'supernet' artifact directory")
    parser.add_argument("--bits", default="2,4,8",
                        help="uniform bit-widths, each B (weights and activations) or W/A, e.g. 2,4,8/4 (default 2,4,8)")
    parser.add_argument("--mixed", type=int, default=1,
                        help="random mixed-precision subnets to add (seeded; default 1; no search artifact needed)")
    parser.add_argument("--config", type=Path, action="append", default=[],
                        help="a SubnetConfig JSON file to add as a row, e.g. a search artifact's best_config.json "
                             "(repeatable; its own form is used)")
    parser.add_argument("--condition", default="per-channel/sym/asym",
                        help="form granularity/w_symmetry/a_symmetry, or granularity/symmetry for both "
                             "(default per-channel/sym/asym, the int8 runtimes' form)")
    parser.add_argument("--check-images", type=int, default=2000,
                        help="class-balanced held-out val images (default 2000); ignored with --split test")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="check on --check-images val images, or on the whole test split (default val)")
    parser.add_argument("--calibration-images", type=int, default=512,
                        help="training images for onnxruntime's calibration and eqtools' 8-bit ranges (default 512)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--batch", default="1,64", help="batch sizes for latency (default 1,64)")
    parser.add_argument("--min-runs", type=int, default=10, help="timed runs per measurement (default 10)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement at least (default 0.5)")
    parser.add_argument("--rounds", type=int, default=12,
                        help="interleaved timing rounds (default 12): each row is timed once per round, and its "
                             "speed-ups are the median over rounds of the ratio to the baseline timed in that round")
    parser.add_argument("--cpu", default="any",
                        help="the export --cpu values to write each subnet for: any (default), or any,vnni to add "
                             "the all-int8 file for VNNI CPUs (timed and checked on this CPU)")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args(argv)
    cpus = [c.strip() for c in args.cpu.split(",")]
    if cpus[0] != "any" or not set(cpus) <= {"any", "vnni"} or len(set(cpus)) != len(cpus):
        raise SystemExit(f"--cpu: {args.cpu!r}; allowed: any, or any,vnni (the default file is the vnni one's reference)")

    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

    import onnxruntime as ort
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, calibration_source, recalibrate_bn, resolve_config
    from eqtools.export import deploy_calibration, export_subnet, optimized_ops, parity, u8s8_saturation

    torch.set_num_threads(args.threads)
    source = read_artifact(args.source, "supernet")
    spec = artifact_spec(source)
    supernet = load_supernet(source).eval()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    check = BatchSource(splits.test if args.split == "test" else splits.val.balanced(args.check_images, spec.seed, "val"),
                        250)
    xs = [x for x, _ in check]
    labels = torch.cat([y for _, y in check])
    calib_bn = calibration_source(splits, spec.calibrate.images, spec.calibrate.batch_size, spec.seed)
    calibration = deploy_calibration(splits, spec.seed, args.calibration_images, 64)
    parts = args.condition.split("/")
    form = (parts[0], parts[1], parts[-1])
    sizes = [int(b) for b in args.batch.split(",")]
    example = xs[0]

    def batch_of(b: int) -> Any:
        return example[:b] if b <= example.shape[0] else example.repeat(-(-b // example.shape[0]), 1, 1, 1)[:b]

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        float_network(supernet, splits, spec)
        for opset in (17, 21):
            (tmp / f"fp32-{opset}.onnx").write_bytes(float_onnx(supernet, example, opset))
        fp32 = _session(str(tmp / "fp32-17.onnx"), args.threads)
        fp32_logits = _logits(fp32, xs)
        rows.append({"name": "FP32 ONNX", "session": fp32, "file": tmp / "fp32-17.onnx",
                     "agreement": 1.0, "against": "itself", "accuracy": float((fp32_logits.argmax(1) == labels).float().mean())})
        for label, fp32_file, weight_type in (("onnxruntime quantize_static W8 (QInt8 per-channel, QUInt8 act)",
                                               "fp32-17.onnx", "QInt8"),
                                              ("onnxruntime quantize_static W4 (QInt4 per-channel, QUInt8 act, opset 21)",
                                               "fp32-21.onnx", "QInt4")):
            out = tmp / f"ort-{weight_type}.onnx"
            print(f"{label}: quantizing", file=sys.stderr, flush=True)
            why = _ort_static(tmp / fp32_file, out, calibration, weight_type)
            if why is None:
                try:
                    session = _session(str(out), args.threads)
                except Exception as exc:
                    why = f"{type(exc).__name__}: {str(exc)[:160]}"
            if why is not None:
                rows.append({"name": label, "error": why})
                continue
            logits = _logits(session, xs)
            rows.append({"name": label, "session": session, "file": out, "against": "FP32",
                         "agreement": parity(fp32_logits, logits)["top1_agreement"],
                         "accuracy": float((logits.argmax(1) == labels).float().mean()),
                         "ops": optimized_ops(out.read_bytes(), args.threads)})

        rng = random.Random(spec.seed)
        subnets = [(f"W{w}A{a}", supernet.space.uniform(w, a, *form)) for w, a in uniform_bits(args.bits)]
        for i in range(args.mixed):
            config = supernet.space.random(rng, *form)
            w, a = supernet.space.avg_bits(config)
            subnets.append((f"mixed #{i + 1} (avg W {w:.2f} A {a:.2f})", config))
        for path in args.config:
            config = resolve_config(supernet.space, config_file=path)
            w, a = supernet.space.avg_bits(config)
            subnets.append((f"{path.parent.name or path.name} (avg W {w:.2f} A {a:.2f})", config))
        for tag, config in subnets:
            label = f"eqtools deploy {tag} {config.form}"
            print(f"{label}: calibrating and exporting", file=sys.stderr, flush=True)
            supernet.apply(config)
            recalibrate_bn(supernet, calib_bn)
            supernet.eval()
            reference = None  # the default file's logits: the deployed arithmetic, which the vnni file must equal
            for cpu in cpus:
                out = tmp / f"eq-{len(rows)}"
                m = export_subnet(supernet, check, out, formats=("onnx",), calibration=calibration,
                                  deploy_agreement_min=0.0, deploy_accuracy_drop_max=1.0, deploy_cpu=cpu,
                                  threads=args.threads)
                o = m["onnx"]
                if o["form"] != "deploy":
                    rows.append({"name": label, "error": f"exported in the exact form: {o['deploy_fallback']}"})
                    break
                d = o["deploy"]
                session = _session(str(out / "model.onnx"), args.threads)
                if cpu == "any":
                    reference = _logits(session, xs)
                    rows.append({"name": label, "session": session, "file": out / "model.onnx",
                                 "against": "deployed arithmetic", "agreement": o["parity"]["top1_agreement"],
                                 "fake_quant_agreement": o["parity_vs_fake_quant"]["top1_agreement"],
                                 "accuracy": o["parity"]["accuracy"],
                                 "fake_quant_accuracy": o["parity_vs_fake_quant"]["reference_accuracy"],
                                 "exact_agreement": o["parity_vs_exact_fake_quant"]["top1_agreement"],
                                 "float32": d["roundings"]["float32_fake_quant"],
                                 "ops": d["optimized_ops"], "bias": d["roundings"]["int32_bias"],
                                 "requant": d["roundings"]["requantize_8bit"], "requantized": d["requantized_values"]})
                    continue
                logits = _logits(session, xs)  # this file as it runs here, not the twin the export checked
                rows.append({"name": f"{label} --cpu {cpu}", "session": session, "file": out / "model.onnx",
                             "against": "deployed arithmetic, via the --cpu any file",
                             "agreement": parity(reference, logits)["top1_agreement"],
                             "accuracy": float((logits.argmax(1) == labels).float().mean()), "ops": d["optimized_ops"]})

        # rows interleaved in short measurements, the order rotated each round; a ratio is taken within a
        # round (the baseline timed a moment before or after) and its median over rounds reported, so load
        # that comes and goes on the shared cores shifts both sides of a ratio, not one row's figure
        timed = [row for row in rows if "session" in row]
        for row in timed:
            row["size"] = row["file"].stat().st_size
        for r in range(args.rounds):
            for b in sizes:
                order = timed[r % len(timed):] + timed[:r % len(timed)]
                for row in order:
                    t = _latency(row["session"], batch_of(b), args.min_runs, args.min_time)
                    row.setdefault(f"ms{b}", []).append(t)
                    print(f"  round {r + 1}: {row['name']} batch {b}: {t:.3f} ms", file=sys.stderr, flush=True)
        load = os.getloadavg()

    base = rows[0]
    ort8 = rows[1] if "session" in rows[1] else None

    def ratios(row: dict[str, Any], baseline: dict[str, Any], b: int) -> list[float]:
        return sorted(x / t for x, t in zip(baseline[f"ms{b}"], row[f"ms{b}"], strict=True))

    head = "| runtime / subnet | " + " | ".join(f"batch {b} ms (vs FP32, vs ORT W8 [IQR])" for b in sizes) + \
        " | agreement % (with) | top-1 % | file bytes |"
    table = [head, "|---|" + "---|" * len(sizes) + "---|---|---|"]
    for row in rows:
        if "session" not in row:
            table.append(f"| {row['name']} | did not run: {row['error']} |")
            continue
        cells = []
        for b in sizes:
            t = statistics.median(row[f"ms{b}"])
            vs_ort = ""
            if ort8 is not None:
                q = ratios(row, ort8, b)
                vs_ort = f", {statistics.median(q):.2f}x [{_quartiles(q)[0]:.2f}-{_quartiles(q)[1]:.2f}]"
            cells.append(f"{t:.3f} ({statistics.median(ratios(row, base, b)):.2f}x{vs_ort})")
        table.append(f"| {row['name']} | " + " | ".join(cells) +
                     f" | {100 * row['agreement']:.2f} ({row['against']}) | {100 * row['accuracy']:.2f} | {row['size']:,} |")
    costs = ["| subnet | fake-quant top-1 % | deploy top-1 % (Δ) | onnxruntime = deployed arithmetic % | "
             "agreement with fake-quant % (float32, exact) | float32 fake-quant vs exact: agreement %, Δ top-1 | "
             "int32 bias alone: agreement %, Δ top-1 | "
             "8-bit requantizations alone: agreement %, Δ top-1 | values requantized |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "bias" in row:
            drop = row["accuracy"] - row["fake_quant_accuracy"]
            costs.append(f"| {row['name']} | {100 * row['fake_quant_accuracy']:.2f} | {100 * row['accuracy']:.2f} "
                         f"({100 * drop:+.2f}) | {100 * row['agreement']:.2f} | {100 * row['fake_quant_agreement']:.2f}, "
                         f"{100 * row['exact_agreement']:.2f} | "
                         f"{100 * row['float32']['top1_agreement']:.2f}, {100 * row['float32']['accuracy_change']:+.2f} | "
                         f"{100 * row['bias']['top1_agreement']:.2f}, {100 * row['bias']['accuracy_change']:+.2f} | "
                         f"{100 * row['requant']['top1_agreement']:.2f}, {100 * row['requant']['accuracy_change']:+.2f} | "
                         f"{row['requantized']} |")
    graphs = [f"- {row['name']}: " + ", ".join(f"{k} {v}" for k, v in sorted(row["ops"].items()))
              for row in rows if "ops" in row]
    body = "\n".join([
        f"Source: `{args.source}` (spec `{spec.name}`, model {spec.model.name}); "
        + (f"the whole test split ({len(labels)} images)" if args.split == "test" else
           f"{args.check_images} class-balanced held-out (val) images")
        + f"; onnxruntime {ort.__version__}, CPU execution provider, ORT_ENABLE_ALL, "
        f"{args.threads} intra-op threads; latency = median over {args.rounds} interleaved rounds of the median ms per "
        f"batch in a round ({args.min_runs}+ runs, {args.min_time} s+); speed-ups = the median over rounds of the ratio "
        f"within a round, with its interquartile range (load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}). onnxruntime's u8 x s8 kernels on this CPU: "
        f"{'exact (int32 sums)' if u8s8_saturation() is None else u8s8_saturation()}. The float network is the supernet's "
        "weights in float with BN calibrated on its largest subnet; onnxruntime's rows quantize it "
        f"(`quant_pre_process` + `quantize_static`, {args.calibration_images} training images), eqtools' rows "
        "are the BN-calibrated uniform subnets exported with `eqtools export`'s default ONNX form.",
        "",
        *table,
        "",
        "Fidelity of eqtools' integer form: agreement with the deployed arithmetic it describes (the export's "
        "agreement gate) and with the plain fake-quant subnet, the accuracy change against the fake-quant subnet "
        "(the export's accuracy gate), and what each deploy-time rounding costs (PyTorch simulation of one "
        "rounding at a time, against the fake-quant subnet computed exactly: float64, no deploy rounding). "
        "'exact' is that float64 fake-quant subnet; 'float32 fake-quant vs exact' is how far the float32 "
        "fake-quant model (the gate's reference) is from its own exact arithmetic:",
        "",
        *costs,
        "",
        "Ops onnxruntime runs (optimised graph, `SessionOptions.optimized_model_filepath`):",
        "",
        *graphs,
    ])
    print(body)
    if args.record:
        command = command_line()
        record("deploy: integer ONNX vs FP32 vs onnxruntime quantize_static", command,
               machine_line(args.threads, f", onnxruntime {ort.__version__}"), body, name="onnx_int8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
