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


# --- the runtimes' own post-training int8 of the float network (``--against-ptq``) ---------------------------

def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


PTQ_TOOLS = {
    "onnxruntime": "onnxruntime.quantization.quantize_static (QDQ, QUInt8 activations, per-channel QInt8 weights)",
    "openvino": "nncf.quantize on OpenVINO's FP32 model (default preset, per-channel int8 weights, bias "
                "correction off)",
    "tflite": "PT2E: litert-torch's PT2EQuantizer (its copy of XNNPACKQuantizer), per-channel symmetric, "
              "prepare_pt2e / convert_pt2e, litert_torch.convert",
    "xnnpack": "PT2E: XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True), prepare_pt2e / "
               "convert_pt2e, to_edge_transform_and_lower(XnnpackPartitioner)",
}


def _pt2e_calibrated(model: Any, quantizer: Any, example: Any, calibration: list[Any], fold: bool) -> Any:
    """``prepare_pt2e`` on the exported float net, calibrated image by image (the graph is exported at batch 1,
    the batch the LiteRT and ExecuTorch files are built for), then ``convert_pt2e``."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(model, (example[:1],)).module(), quantizer)
        for x in calibration:
            for i in range(len(x)):
                prepared(x[i:i + 1])
        return convert_pt2e(prepared, fold_quantize=fold)


def own_ptq_file(target: str, supernet: Any, example: Any, calibration: list[Any], folder: Path) -> Path:
    """The runtime's own W8A8 post-training quantization of the float network (``supernet`` as
    ``_fp32_file`` leaves it), calibrated on ``calibration`` (the images eqtools' files are calibrated on),
    written under ``folder``: the baseline the speed target names."""
    import torch

    from eqtools.export import extract_graph
    from eqtools.export.runtime import build_model

    folder.mkdir(parents=True, exist_ok=True)
    graph = extract_graph(supernet, example[:2], quantized=False)
    if target == "onnxruntime":
        from bench_deploy import _ort_static

        from eqtools.export import build_onnx

        fp32 = folder / "fp32.onnx"
        fp32.write_bytes(build_onnx(graph, 17).SerializeToString())
        out = folder / "ort-ptq.onnx"
        why = _ort_static(fp32, out, calibration, "QInt8")
        if why is not None:
            raise RuntimeError(f"quantize_static: {why}")
        return out
    if target == "openvino":
        import nncf
        import openvino as ov

        from eqtools.export import build_onnx

        model = ov.Core().read_model(build_onnx(graph, 17).SerializeToString(), b"")
        images = [x[i:i + 1].numpy() for x in calibration for i in range(len(x))]  # NNCF's items are single images
        # NNCF's bias correction (fast or full) stops with a reshape error on this graph (nncf 3.4: the
        # constant it finds behind a conv's bias has another shape), so it is off: the ranges are NNCF's own,
        # only its bias shift is not applied
        off = nncf.AdvancedQuantizationParameters(disable_bias_correction=True)
        quantized = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images), advanced_parameters=off)
        out = folder / "nncf-ptq.xml"
        ov.save_model(quantized, out, compress_to_fp16=False)
        return out
    model = build_model(graph).eval()
    if target == "tflite":
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        converted = _pt2e_calibrated(model, quantizer, example, calibration, fold=False)
        with torch.no_grad():
            edge = litert_torch.convert(converted, (example[:1],), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        out = folder / "pt2e-ptq.tflite"
        out.write_bytes(bytes(edge.model_content()))
        return out
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    converted = _pt2e_calibrated(model, quantizer, example, calibration, fold=True)
    with torch.no_grad():
        program = torch.export.export(converted, (example[:1],))
        data = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    out = folder / "pt2e-ptq.pte"
    out.write_bytes(bytes(data))
    return out


def _openvino_ir(path: Path, threads: int) -> Any:
    """An OpenVINO IR (NNCF's output) compiled as the eqtools file is (``backends.openvino._compile``)."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})


def ptq_runner(target: str, path: Path, threads: int) -> tuple[Any, int]:
    """``_runner`` for a runtime's own PTQ file."""
    if target == "openvino":
        request = _openvino_ir(path, threads).create_infer_request()
        return (lambda x: request.infer({0: x})), 0
    return _runner(target, path.read_bytes(), threads)


def ptq_check(target: str, path: Path, batches: list[tuple[Any, Any]], threads: int) -> dict[str, Any]:
    """Top-1 of a runtime's own PTQ file on the check images, and its quantized layers by the runtime's report."""
    import torch

    xs = [x for x, _ in batches]
    labels = torch.cat([y for _, y in batches])
    integer: int | None = None
    if target == "onnxruntime":
        from eqtools.export.backends.onnxruntime import optimized_ops, run_onnx

        data = path.read_bytes()
        logits = run_onnx(data, xs, threads)
        ops = optimized_ops(data, threads)
        integer = sum(n for op, n in ops.items() if op in ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger",
                                                           "MatMulInteger"))
    elif target == "openvino":
        import numpy as np

        from eqtools.export.backends.openvino import _INTEGER_PRECISIONS, _WEIGHTED, executed_layers

        compiled = _openvino_ir(path, threads)
        request = compiled.create_infer_request()
        logits = torch.cat([torch.from_numpy(np.array(request.infer({0: x.numpy()})[0])) for x in xs])
        integer = sum(n for k, v in executed_layers(compiled).items() if k in _WEIGHTED
                      for p, n in v.items() if p in _INTEGER_PRECISIONS)
    elif target == "tflite":
        from eqtools.export.backends.litert import run

        logits, report = run(path.read_bytes(), xs, threads)
        integer = report["integer_layers"]
    else:
        from eqtools.export.backends.executorch import run

        logits, _ = run(path.read_bytes(), xs, threads)
    return {"top1": float((logits.argmax(1) == labels).float().mean()), "integer_layers": integer,
            "file_bytes": path.stat().st_size, "tool": PTQ_TOOLS[target]}


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
    parser.add_argument("--against-ptq", action="store_true",
                        help="time each runtime's own post-training int8 (W8A8) of the float network against eqtools' "
                        "file of every subnet (paired), record its top-1, and merge both into the rows of the existing "
                        "deploy.json (its other figures are kept)")
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
    if not args.config and not args.against_ptq:
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
    ptq: dict[str, Any] = {}  # runtime -> its own PTQ file, or why there is none
    ptq_dir = Path(tempfile.mkdtemp(prefix="own-ptq-"))
    float_top1 = None
    if args.against_ptq:
        from eqtools.export import extract_graph
        from eqtools.export.runtime import build_model

        with torch.no_grad():
            net = build_model(extract_graph(supernet, example[:2], quantized=False)).eval()
            float_top1 = float(torch.cat([net(x).argmax(1) == y for x, y in check]).float().mean())
        for r in runtimes:
            if r in missing:
                continue
            try:
                ptq[r] = own_ptq_file(r, supernet, example, calibration, ptq_dir / r)
            except Exception as exc:  # recorded: the row says why there is no baseline
                ptq[r] = f"{type(exc).__name__}: {str(exc)[:160]}"

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
                if args.against_ptq:
                    _time_against_ptq(row, r, ptq[r], run_q, fixed, check, example, args)
                    print(row, flush=True)
                    continue
                run_f, fixed_f = _runner(r, fp32[r], args.threads)
                for b, (base, cand) in _paired_times(run_f, fixed_f, run_q, fixed, example, args).items():
                    row[f"speed_vs_fp32_b{b}"] = paired_ratio(base, cand)
                    row[f"ms_b{b}"] = float(np.median(cand))
                print(row, flush=True)
    if args.against_ptq:
        return _merge_ptq(rows, args, float_top1)
    return _report(rows, args, partial=False)


def _paired_times(run_base: Any, fixed_base: int, run_cand: Any, fixed_cand: int, example: Any,
                  args: Any) -> dict[int, tuple[list[float], list[float]]]:
    """Per batch (1 and 64, where both files take it; a fixed batch is a file's only one): the baseline's
    and the candidate's times in ms over ``args.rounds`` rounds, the two alternating in every round so the
    machine's drift hits both."""
    import numpy as np

    times = {}
    for b in (1, 64):
        if (fixed_cand and b != fixed_cand) or (fixed_base and b != fixed_base):
            continue
        x = np.ascontiguousarray(example[:1].repeat(b, 1, 1, 1).numpy())
        base, cand = [], []
        for _ in range(args.rounds):
            base.append(median_ms(lambda f=run_base, x=x: f(x), 5, args.min_time))
            cand.append(median_ms(lambda f=run_cand, x=x: f(x), 5, args.min_time))
        times[b] = (base, cand)
    return times


_PTQ_CHECKED: dict[str, dict[str, Any]] = {}


def _time_against_ptq(row: dict[str, Any], target: str, ptq: Path | str, run_q: Any, fixed: int,
                      check: list[Any], example: Any, args: Any) -> None:
    """Add to ``row`` the runtime's own PTQ file (top-1 on the check images, integer layers, size) and
    eqtools' file's speed against it: median [IQR] of PTQ time / eqtools time, the two alternating in
    every round (> 1: eqtools' file is faster)."""
    import numpy as np

    if isinstance(ptq, str):
        row["own_ptq"] = {"error": ptq}
        return
    if target not in _PTQ_CHECKED:  # one PTQ file per runtime, the baseline of every subnet's file: checked once
        info = ptq_check(target, ptq, check, args.threads)
        if target == "openvino":  # the IR's weights are in the .bin beside it
            info["file_bytes"] += ptq.with_suffix(".bin").stat().st_size
        _PTQ_CHECKED[target] = info
    row["own_ptq"] = dict(_PTQ_CHECKED[target])
    run_p, fixed_p = ptq_runner(target, ptq, args.threads)
    for b, (base, cand) in _paired_times(run_p, fixed_p, run_q, fixed, example, args).items():
        row[f"speed_vs_own_ptq_b{b}"] = paired_ratio(base, cand)
        row[f"own_ptq_ms_b{b}"] = float(np.median(base))
        row[f"ms_b{b}_vs_ptq"] = float(np.median(cand))


def _merge_ptq(rows: list[dict[str, Any]], args: Any, float_top1: float | None) -> int:
    """Table the PTQ comparison, and with ``--record`` merge it into the rows of the existing deploy.json:
    the other figures of those rows, and every other row, are the earlier run's (its command, commit and date
    are kept in ``figures.rows_run``)."""
    import json

    from _record import RESULTS, command_line

    lines = ["| runtime | subnet | its own PTQ (W8A8) | PTQ int8 conv/linear | PTQ top-1 | eqtools top-1 | "
             "eqtools vs PTQ speed, b1 | b64 | PTQ size | eqtools size |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda x: RUNTIMES.index(x["runtime"])):
        own = row.get("own_ptq")
        if row.get("loads") != "yes" or own is None or "error" in own:
            why = row.get("loads") if row.get("loads") != "yes" else (own or {}).get("error", "not measured")
            lines.append(f"| {row['runtime']} | {row['subnet']} | {why} | | | | | | | |")
            continue
        integer = "—" if own["integer_layers"] is None else f"{own['integer_layers']}/{row['quantized_layers']}"
        lines.append(f"| {row['runtime']} {row['runtime_version']} | {row['subnet']} | {own['tool']} | {integer} | {_pct(own['top1'])} | "
                     f"{_pct(row['top1'])} | {row.get('speed_vs_own_ptq_b1', '—')} | "
                     f"{row.get('speed_vs_own_ptq_b64', '—')} | {own['file_bytes'] / 1024:.0f} kB | "
                     f"{row['file_bytes'] / 1024:.0f} kB |")
    note = (f"Against each runtime's own post-training int8 (W8A8, per-channel weights, the 512 calibration images "
            f"eqtools' files use) of the float network (its top-1: {_pct(float_top1)}): speed = median [IQR] over "
            f"{args.rounds} rounds of PTQ time / eqtools time, the two files alternating in each round (> 1: eqtools' "
            f"file is faster; the target is ≥ 0.95); LiteRT and ExecuTorch files have batch 1; {args.check_images} val "
            f"images; {machine_line(args.threads)}.\n\n")
    markdown = note + "\n".join(lines)
    print(markdown)
    if not args.record:
        return 0
    path = RESULTS / "deploy.json"
    old = json.loads(path.read_text())
    figures = old["figures"]
    figures.setdefault("rows_run", {k: old[k] for k in ("command", "commit", "date", "machine")})
    for new in rows:
        match = [r for r in figures["rows"] if r["subnet"] == new["subnet"] and r["runtime"] == new["runtime"]]
        keys = {k: v for k, v in new.items() if "ptq" in k}
        if match:
            match[0].update(keys)
        else:
            figures["rows"].append(new)
    figures["against_ptq"] = {"float_top1": float_top1, "rounds": args.rounds, "check_images": args.check_images,
                              "command": command_line()}
    base = old["markdown"].split("\n\nAgainst each runtime's own")[0].rstrip()
    rows_note = (f" The table above is the run of {figures['rows_run']['date']} (commit "
                 f"{figures['rows_run']['commit'][:7]}); the one below was measured later and merged.")
    question = old["question"].split(" And how fast")[0] + (" And how fast is each file next to that runtime's "
                                                            "own post-training int8 (W8A8)?")
    write_result("deploy", question, figures,
                 base + rows_note * (rows_note not in base) + "\n\n" + markdown, threads=args.threads)
    return 0


def _report(rows: list[dict[str, Any]], args: Any, partial: bool) -> int:
    lines = ["| runtime | subnet | loads | int8 conv/linear (runtime's report) | agreement with deployed arithmetic | "
             "top-1 (fake-quant) | speed vs its FP32, b1 | b64 | size vs FP32 |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda x: RUNTIMES.index(x["runtime"])):
        if row.get("loads") != "yes":
            lines.append(f"| {row['runtime']} | {row['subnet']} | {row.get('loads')} | | | | | | |")
            continue
        integer = "—" if row["integer_layers"] is None else f"{row['integer_layers']}/{row['quantized_layers']}"
        lines.append(f"| {row['runtime']} {row['runtime_version']} | {row['subnet']} | yes | {integer} | "
                     f"{_pct(row['agreement'])} | {_pct(row['top1'])} ({_pct(row['top1_fake_quant'])}) | "
                     f"{row.get('speed_vs_fp32_b1', '—')} | {row.get('speed_vs_fp32_b64', '—')} | "
                     f"{row['file_bytes'] / 1024:.0f} kB vs {row['fp32_bytes'] / 1024:.0f} kB |")
    markdown = "\n".join(lines) + (f"\n\n{machine_line(args.threads)}; {args.check_images} val images; speed = median "
                                   f"[IQR] over {args.rounds} alternating rounds of FP32 time / file time." + (" Partial: the run was stopped before every row "
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
