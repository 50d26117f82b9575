"""Time two ONNX files against each other in onnxruntime, interleaved, and check they compute the same.

For a change to the exported graph (A: before, B: after): both files run on the same inputs, in
short measurements that alternate A, B, B, A over many rounds, and the speed-up is the median over
rounds of the ratio A/B within a round, with its interquartile range. The logits of both files are
compared on the same inputs first (max |difference|, top-1 agreement).

Usage
  python benchmarks/probes/ab_onnx.py OLD.onnx NEW.onnx [--label TEXT] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # _record and bench_deploy live one level up

from _record import command_line, machine_line, paired_ratio, record, timing_arguments, with_malloc_settings
from bench_deploy import _latency, _session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the baseline file")
    parser.add_argument("b", type=Path, help="the file compared with it")
    parser.add_argument("--label", default="", help="what the two files are, for the record")
    parser.add_argument("--batch", default="1,64", help="batch sizes (default 1,64)")
    timing_arguments(parser, rounds=20, min_runs=10, min_time=0.5)
    args = parser.parse_args(argv)
    with_malloc_settings()

    import numpy as np
    import onnxruntime as ort
    import torch

    sessions = {"A": _session(str(args.a), args.threads), "B": _session(str(args.b), args.threads)}
    meta = sessions["A"].get_inputs()[0]
    shape = [d if isinstance(d, int) else 256 for d in meta.shape]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    out = {k: s.run(None, {s.get_inputs()[0].name: x.numpy()})[0] for k, s in sessions.items()}
    diff = float(np.abs(out["A"] - out["B"]).max())
    agree = float((out["A"].argmax(1) == out["B"].argmax(1)).mean())
    times: dict[tuple[str, int], list[float]] = {}
    sizes = [int(b) for b in args.batch.split(",")]
    for r in range(args.rounds):
        for b in sizes:
            for key in ("A", "B") if r % 2 == 0 else ("B", "A"):
                times.setdefault((key, b), []).append(_latency(sessions[key], x[:b], args.min_runs, args.min_time))
    load = os.getloadavg()
    table = ["| batch | A ms (median) | B ms (median) | A / B, median of rounds [IQR] |", "|---|---|---|---|"]
    for b in sizes:
        table.append(f"| {b} | {statistics.median(times['A', b]):.3f} | {statistics.median(times['B', b]):.3f} | "
                     f"{paired_ratio(times['A', b], times['B', b])} |")
    body = "\n".join([
        (args.label + "\n\n" if args.label else "")
        + f"A = `{args.a}` ({args.a.stat().st_size:,} bytes), B = `{args.b}` ({args.b.stat().st_size:,} bytes); "
        f"onnxruntime {ort.__version__}, CPU, ORT_ENABLE_ALL, {args.threads} intra-op threads; {args.rounds} rounds "
        f"alternating A B / B A, {args.min_runs}+ runs and {args.min_time} s+ per measurement (load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}). Same inputs ({shape[0]} standard-normal images): "
        f"max |logit A - logit B| = {diff:.3g}, top-1 agreement {100 * agree:.2f} %.",
        "",
        *table,
    ])
    print(body)
    if args.record:
        record(f"A/B of two ONNX files: {args.a.parent.name} vs {args.b.parent.name}", command_line(),
               machine_line(args.threads, f", onnxruntime {ort.__version__}"), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
