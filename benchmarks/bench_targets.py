"""Benchmark each target's file in its own runtime: runtime x subnet, one run, one machine.

For each subnet (uniform W8A8, W4A4, W2A2 at per-channel W-sym A-asym, and ``--config`` files such as a
search's best_config.json, or a seeded random mixed subnet of the same form when none is given) and
each runtime this machine can run (onnxruntime, OpenVINO, LiteRT, ExecuTorch/XNNPACK), the file
``eqtools export --target`` writes is built and checked by the export stage itself (gates opened, so
that every figure is recorded), and this script adds the speed:

- loads: whether the runtime built and ran the file;
- int8 layers: quantized conv/linear layers on integer kernels, by the runtime's own report
  (onnxruntime's optimised graph, OpenVINO's executed graph, LiteRT's interpreter op list,
  ExecuTorch's delegation report), out of the subnet's quantized layers;
- agreement with the deployed arithmetic the file describes, and top-1 against the fake-quant subnet;
- speed: median [IQR] over rounds of the within-round ratio of the runtime's own FP32 of the float
  network to the file (batch 1 and 64; LiteRT and ExecuTorch files have a fixed batch, timed at 1),
  rows timed alternately in each round; onnxruntime also against its own ``quantize_static`` W8;
- size: the file against that runtime's FP32 file.

Usage (LiteRT and ExecuTorch need litert-torch and executorch installed; without them their rows say so):
  python benchmarks/bench_targets.py artifacts/quick/supernet [--config best_config.json] [--record]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine_line, median_ms, paired_ratio, with_malloc_settings, write_result

RUNTIMES = ("onnxruntime", "openvino", "tflite", "xnnpack")


def _runner(target: str, data: bytes, threads: int) -> tuple[Any, int]:
    """A callable running one batch of the file, and the file's fixed batch (0: any)."""
    import numpy as np

    if target == "onnxruntime":
        from bench_deploy import _session

        session = _session(data, threads)
        name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {name: x})), 0
    if target == "openvino":
        from eqtools.export.backends.openvino import _compile

        request = _compile(data, threads).create_infer_request()
        return (lambda x: request.infer({0: x})), 0
    if target == "tflite":
        from eqtools.export.backends.litert import _interpreter

        it = _interpreter(data, threads)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        batch = int(inp["shape"][0])

        def run_tflite(x: Any) -> Any:
            if inp["dtype"] == np.int8:
                scale, zero = inp["quantization"]
                x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
            it.set_tensor(inp["index"], x)
            it.invoke()

        return run_tflite, batch
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(data).load_method("forward")
    return (lambda x: method.execute([torch.from_numpy(x)])), int(method.metadata.input_tensor_meta(0).sizes()[0])


def _fp32_file(target: str, supernet: Any, example: Any) -> bytes:
    """The runtime's own FP32 file of the float network (batch norm folded)."""
    import torch

    from eqtools.export import build_onnx, extract_graph
    from eqtools.export.runtime import build_model

    graph = extract_graph(supernet, example[:2], quantized=False)
    if target in ("onnxruntime", "openvino"):
        return build_onnx(graph, 17).SerializeToString()
    model = build_model(graph).eval()
    if target == "tflite":
        import litert_torch

        return bytes(litert_torch.convert(model, (example[:1],)).model_content())
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        program = torch.export.export(model, (example[:1],))
        return bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a 'supernet' artifact directory")
    parser.add_argument("--config", type=Path, action="append", default=[], help="a SubnetConfig JSON (repeatable)")
    parser.add_argument("--bits", default="8,4,2", help="uniform bit-widths (default 8,4,2)")
    parser.add_argument("--check-images", type=int, default=1000, help="class-balanced val images (default 1000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (default 5)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timing at least (default 0.3)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/deploy.json")
    parser.add_argument("--rows-from", type=Path, help="a log of an interrupted run: table and record the rows it "
                        "printed (marked partial) instead of measuring")
    args = parser.parse_args(argv)
    if args.rows_from is not None:
        import ast

        rows = [ast.literal_eval(line) for line in args.rows_from.read_text().splitlines() if line.startswith("{'subnet'")]
        return _report(rows, args, partial=True)
    with_malloc_settings()

    import numpy as np
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, calibration_source, recalibrate_bn, resolve_config
    from eqtools.export import deploy_calibration, export_subnet
    from eqtools.export.targets import TARGETS, backend

    torch.set_num_threads(args.threads)
    source = read_artifact(args.source, "supernet")
    spec = artifact_spec(source)
    supernet = load_supernet(source).eval()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    check = list(BatchSource(splits.val.balanced(args.check_images, spec.seed, "val"), 250))
    calib_bn = calibration_source(splits, spec.calibrate.images, spec.calibrate.batch_size, spec.seed)
    calibration = deploy_calibration(splits, spec.seed, 512, 64)
    example = check[0][0]
    form = ("per-channel", "sym", "asym")
    runtimes = [r for r in args.runtimes.split(",") if r]
    missing = {r: "not installed here" for r in runtimes if r != "onnxruntime" and backend(TARGETS[r]).version() is None}

    subnets = [(f"W{b}A{b}", supernet.space.uniform(int(b), int(b), *form)) for b in args.bits.split(",")]
    for path in args.config:
        subnets.append((f"searched ({path.name})", resolve_config(supernet.space, config_file=path)))
    if not args.config:
        subnets.append(("mixed (random draw, not searched)", supernet.space.random(random.Random(0), *form)))

    # the runtimes' own FP32 files of the float network (the 8-bit subnet's weights, BN calibrated on it)
    supernet.apply(supernet.space.max())
    recalibrate_bn(supernet, calib_bn)
    fp32 = {}
    for r in runtimes:
        if r in missing:
            continue
        try:
            fp32[r] = _fp32_file(r, supernet, example)
        except Exception as exc:  # a runtime that cannot take the float net leaves its rows without a speed
            missing[r] = f"its FP32 file could not be built ({type(exc).__name__}: {str(exc)[:120]})"

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, config in subnets:
            supernet.apply(config)
            recalibrate_bn(supernet, calib_bn)
            for r in runtimes:
                row: dict[str, Any] = {"subnet": label, "runtime": r}
                rows.append(row)
                if r in missing:
                    row["loads"] = missing[r]
                    continue
                out = Path(tmp) / f"{label[:8]}-{r}"
                try:
                    m = export_subnet(supernet, check, out, formats=("onnx",), targets=(r,), calibration=calibration,
                                      deploy_agreement_min=0.0, deploy_accuracy_drop_max=1.0, agreement_min=0.0,
                                      threads=args.threads)
                except Exception as exc:  # recorded: the row says why the file was not written
                    row["loads"] = f"no file: {str(exc)[:160]}"
                    continue
                t = m["targets"][r]
                row.update(loads="yes", file=t["file"], runtime_version=t["runtime_version"],
                           integer_layers=t["integer_layers"], quantized_layers=t["quantized_layers"],
                           agreement=t["agreement"], top1=t["top1"], top1_fake_quant=t["top1_fake_quant"],
                           file_bytes=t["file_bytes"], fp32_bytes=len(fp32[r]))
                data = (out / t["file"]).read_bytes()
                run_q, fixed = _runner(r, data, args.threads)
                run_f, fixed_f = _runner(r, fp32[r], args.threads)
                for b in (1, 64):
                    if (fixed and b != fixed) or (fixed_f and b != fixed_f):
                        continue
                    x = np.ascontiguousarray(example[:1].repeat(b, 1, 1, 1).numpy())
                    base, cand = [], []
                    for _ in range(args.rounds):  # alternating, so drift on the shared machine hits both
                        base.append(median_ms(lambda f=run_f, x=x: f(x), 5, args.min_time))
                        cand.append(median_ms(lambda f=run_q, x=x: f(x), 5, args.min_time))
                    row[f"speed_vs_fp32_b{b}"] = paired_ratio(base, cand)
                    row[f"ms_b{b}"] = float(np.median(cand))
                print(row, flush=True)
    return _report(rows, args, partial=False)


def _report(rows: list[dict[str, Any]], args: Any, partial: bool) -> int:
    def pct(v: Any) -> str:
        return "—" if v is None else f"{100 * v:.2f} %"

    lines = ["| runtime | subnet | loads | int8 conv/linear (runtime's report) | agreement with deployed arithmetic | "
             "top-1 (fake-quant) | speed vs its FP32, b1 | b64 | size vs FP32 |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda x: RUNTIMES.index(x["runtime"])):
        if row.get("loads") != "yes":
            lines.append(f"| {row['runtime']} | {row['subnet']} | {row.get('loads')} | | | | | | |")
            continue
        integer = "—" if row["integer_layers"] is None else f"{row['integer_layers']}/{row['quantized_layers']}"
        lines.append(f"| {row['runtime']} {row['runtime_version']} | {row['subnet']} | yes | {integer} | "
                     f"{pct(row['agreement'])} | {pct(row['top1'])} ({pct(row['top1_fake_quant'])}) | "
                     f"{row.get('speed_vs_fp32_b1', '—')} | {row.get('speed_vs_fp32_b64', '—')} | "
                     f"{row['file_bytes'] / 1024:.0f} kB vs {row['fp32_bytes'] / 1024:.0f} kB |")
    markdown = "\n".join(lines) + (f"\n\n{machine_line(args.threads)}; {args.check_images} val images; speed = median "
                                   f"[IQR] over {args.rounds} alternating rounds of FP32 time / file time; the machine "
                                   "was shared with other work." + (" Partial: the run was stopped before every row "
                                                                    "was measured; the rows shown are all it measured."
                                                                    if partial else ""))
    print(markdown)
    if args.record:
        write_result("deploy", "Each target's file in its own runtime: does it load, run its quantized layers in "
                     "int8, agree with the arithmetic it describes, and how fast and large is it next to that "
                     "runtime's FP32?", {"rows": rows, "partial": partial, "time": time.strftime("%H:%M")}, markdown,
                     threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
