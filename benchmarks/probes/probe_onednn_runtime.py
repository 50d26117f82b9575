"""Would PyTorch's own x86 int8 path beat onnxruntime for a deployed ResNet-20? (issue 13, item 5)

PT2E (``X86InductorQuantizer`` under ``torch.compile``) lowers a quantized model to oneDNN's fused
int8 convolution, ``onednn::qconv2d_pointwise``: uint8 in, uint8 out, ReLU and the residual add
fused as post-ops. The post-ops are also what onnxruntime lacks below 8 bits (a clamped output),
so the question is whether that kernel, called once per conv, is fast enough. This probe builds the
cheapest such graph for ResNet-20 on 1x28x28 inputs: 19 fused convs (ReLU; conv2 with the shortcut
summed in and ReLU), the option-A shortcut as a slice and a pad of codes, pooling and the classifier
in float. Weights are random codes: a kernel's time does not depend on their values, and nothing
here is measured for accuracy. It is timed, interleaved, against the FP32 ONNX of the float network
and onnxruntime's ``quantize_static`` W8 model of it (as ``bench_deploy.py`` builds them), eager and
under ``torch.compile``. A real deployed graph would add the range clamps and requantizations, so
this is a lower bound on that path's latency.

Usage
  python benchmarks/probes/probe_onednn_runtime.py artifacts/repro/eqnet            # print
  python benchmarks/probes/probe_onednn_runtime.py artifacts/repro/eqnet --record   # and append to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # _record and bench_deploy live one level up

from _record import command_line, machine_line, median_ms, record, timing_arguments, with_malloc_settings
from bench_deploy import _latency, _ort_static, _session, float_network, float_onnx


def _onednn_resnet20(in_channels: int, num_classes: int) -> Any:
    """The forward of a ResNet-20 on oneDNN's fused int8 convs (random codes, fixed scales)."""
    import torch
    import torch.nn.functional as F

    ops = torch.ops.onednn
    g = torch.Generator().manual_seed(0)

    def prepack(cout: int, cin: int, stride: int) -> tuple[Any, ...]:
        codes = torch.randint(-100, 100, (cout, cin, 3, 3), dtype=torch.int8, generator=g)
        w_scale = torch.full((cout,), 0.01)
        packed = ops.qconv_prepack(codes, w_scale, 0.05, 0, [stride] * 2, [1, 1], [1, 1], 1, None)
        return packed, w_scale, torch.zeros(cout, dtype=torch.long), torch.randn(cout, generator=g), stride

    stem = prepack(16, in_channels, 1)
    blocks, planes = [], 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(3):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append((prepack(width, planes, stride), prepack(width, width, 1), width - planes))
            planes = width
    fc = torch.randn(64, num_classes, generator=g)

    def conv(x: Any, p: tuple[Any, ...]) -> Any:
        w, ws, wz, b, stride = p
        return ops.qconv2d_pointwise(x, 0.05, 3, w, ws, wz, b, [stride] * 2, [1, 1], [1, 1], 1, 0.05, 3,
                                     torch.uint8, "relu", [], "")

    def conv_add(x: Any, p: tuple[Any, ...], shortcut: Any) -> Any:
        w, ws, wz, b, _ = p
        return ops.qconv2d_pointwise.binary(x, 0.05, 3, w, ws, wz, shortcut, b, [1, 1], [1, 1], [1, 1], 1, 0.05, 3,
                                            torch.uint8, 0.05, 3, "sum", 1.0, "relu", [], "")

    def forward(x: Any) -> Any:
        h = conv(torch.clamp((x / 0.02).round(), 0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last),
                 stem)
        for p1, p2, extra in blocks:
            out = conv(h, p1)
            shortcut = h
            if extra:
                shortcut = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, extra // 2, extra - extra // 2), value=3)
            # the fused sum writes into its accumulator: a copy, so the block input stays intact
            h = conv_add(out, p2, shortcut.contiguous(memory_format=torch.channels_last).clone())
        return h.float().mean((2, 3)) @ fc

    return forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a 'supernet' artifact directory (for the float network)")
    timing_arguments(parser, rounds=3, min_runs=30, min_time=2.0)
    args = parser.parse_args(argv)
    with_malloc_settings()

    import onnxruntime as ort
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.export import deploy_calibration
    from eqtools.quant.integer import int8_kernel_missing

    missing = int8_kernel_missing()
    if missing:
        raise SystemExit(f"no oneDNN int8 conv here: {missing}")
    torch.set_num_threads(args.threads)
    source = read_artifact(args.source, "supernet")
    spec = artifact_spec(source)
    supernet = load_supernet(source).eval()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    calibration = deploy_calibration(splits, spec.seed, 512, 64)
    example = calibration[0]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        float_network(supernet, splits, spec)
        (tmp / "fp32.onnx").write_bytes(float_onnx(supernet, example, 17))
        why = _ort_static(tmp / "fp32.onnx", tmp / "w8.onnx", calibration, "QInt8")
        if why:
            raise SystemExit(f"quantize_static failed: {why}")
        fp32, w8 = _session(str(tmp / "fp32.onnx"), args.threads), _session(str(tmp / "w8.onnx"), args.threads)
        forward = _onednn_resnet20(example.shape[1], spec.model.num_classes)
        compiled = torch.compile(forward)
        rows = {"FP32 ONNX": lambda x: _latency(fp32, x, args.min_runs, args.min_time),
                "onnxruntime quantize_static W8": lambda x: _latency(w8, x, args.min_runs, args.min_time),
                "oneDNN fused int8 convs, eager": lambda x: median_ms(lambda: forward(x), args.min_runs, args.min_time),
                "oneDNN fused int8 convs, torch.compile": lambda x: median_ms(lambda: compiled(x), args.min_runs,
                                                                              args.min_time)}
        best: dict[tuple[str, int], float] = {}
        with torch.no_grad():
            for _ in range(args.rounds):
                for b in (1, 64):
                    for name, timer in rows.items():
                        t = timer(example[:b])
                        best[name, b] = min(t, best.get((name, b), t))
    load = os.getloadavg()
    table = ["| runtime | batch 1 ms (vs ORT W8) | batch 64 ms (vs ORT W8) |", "|---|---|---|"]
    for name in rows:
        cells = [f"{best[name, b]:.3f} ({best['onnxruntime quantize_static W8', b] / best[name, b]:.2f}x)"
                 for b in (1, 64)]
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    body = "\n".join([
        f"ResNet-20 on {list(example.shape[1:])} inputs ({spec.name}); best median of {args.rounds} interleaved "
        f"rounds, {args.threads} threads for torch and onnxruntime {ort.__version__} (load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}). The oneDNN rows are the cheapest int8 graph that path "
        "could run (random codes; no range clamps or requantizations), so they bound its latency from below.",
        "",
        *table,
    ])
    print(body)
    if args.record:
        record("probe: PyTorch's oneDNN int8 convs as a second runtime", command_line(),
               machine_line(args.threads, f", onnxruntime {ort.__version__}"), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
