"""Benchmark `eqtools sample` and BN calibration on a trained supernet artifact.

Measures
  1. sampling throughput: subnets per minute with the spec's sample settings (calibration images,
     evaluation subset, batch size), split into BN-calibration and evaluation time, and the time the
     spec's full protocol (``sample.n`` subnets) would take on this machine;
  2. the accuracy gain from BN calibration on the uniform 2-, 4- and 8-bit subnets of every
     condition (top-1 on the test split before and after calibration on ``calibrate.images``
     training images).

Usage
  python benchmarks/bench_sample.py artifacts/quick/supernet            # print the results
  python benchmarks/bench_sample.py artifacts/quick/supernet --record   # and append them to BENCHMARKS.md

Run it on a quiet machine: other processes on the same cores distort every number here. The
script re-executes itself with glibc malloc settings that keep eval throughput steady (see
reference/NOTES.md); pass --threads to pin the torch thread count.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import MALLOC_ENV, append, command_line, cpu_name


def _machine(threads: int) -> str:
    import torch

    return (f"{cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} with {threads} threads, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def _profile(supernet, config, calib, evaluation, top: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from eqtools.evaluation import calibrate_and_evaluate

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        calibrate_and_evaluate(supernet, config, calib, evaluation)
    del torch
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def _compare(args, art, spec, supernet, calib, evaluation, command: str, threads: int) -> str:
    """Eager ``calibrate_and_evaluate`` (what ``eqtools sample`` ran until 2026-12-01) against the
    compiled :class:`SubnetMeter`, alternating subnet by subnet on the same loaded supernet and
    images, so both see the same machine load; the first subnet of each (warm-up, compilation)
    is timed apart."""
    import numpy as np

    from eqtools.evaluation import SubnetMeter, calibrate_and_evaluate
    from eqtools.sample import draw_configs

    supernet.use_channels_last()
    configs = draw_configs(supernet.space, args.n + 1, seed=args.seed)
    t = time.perf_counter()
    calibrate_and_evaluate(supernet, configs[0], calib, evaluation)
    eager_first = time.perf_counter() - t
    meter = SubnetMeter(supernet, calib, evaluation, compile=True)
    t = time.perf_counter()
    meter.measure(configs[0])
    compiled_first = time.perf_counter() - t
    eager_s, compiled_s, d_top1, d_loss = [], [], [], []
    for config in configs[1:]:
        t = time.perf_counter()
        old = calibrate_and_evaluate(supernet, config, calib, evaluation)
        eager_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        new = meter.measure(config)
        compiled_s.append(time.perf_counter() - t)
        d_top1.append(100 * (new["top1"] - old["top1"]))
        d_loss.append(new["loss"] - old["loss"])
    n = len(eager_s)
    e, c = float(np.mean(eager_s)), float(np.mean(compiled_s))
    ratio = e / c
    d = np.asarray(d_top1)
    lines = [
        f"### sampling speed, today's eager path vs compiled SubnetMeter: spec '{spec.name}', "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"- command: `{command}`",
        f"- machine: {_machine(threads)}; shared with other jobs (both paths alternate subnet by subnet, so they "
        "see the same load)",
        f"- supernet: `{art.path}`; per subnet: BN calibration on {calib.images} train images, top-1 on "
        f"{evaluation.images} val images, batch {spec.sample.batch_size} (the same images for both paths)",
        "",
        "| path | first subnet (warm-up / compilation) | per subnet after it (mean of "
        f"{n}) | subnets/min |",
        "|---|---|---|---|",
        f"| eager `calibrate_and_evaluate` (before) | {eager_first:.1f} s | {1000 * e:.0f} ms | {60 / e:.1f} |",
        f"| compiled `SubnetMeter` (now) | {compiled_first:.1f} s | {1000 * c:.0f} ms | {60 / c:.1f} |",
        "",
        f"- speed-up at equal images per subnet: **{ratio:.2f}x** (target 2x: {'met' if ratio >= 2 else 'not met'})",
        f"- graphs compiled after the first subnet (recompiles): {meter.recompiles}",
        f"- compiled minus eager top-1 over the {n} subnets: mean {d.mean():+.3f} points, mean |Δ| "
        f"{np.abs(d).mean():.3f}, max |Δ| {np.abs(d).max():.3f} points; mean loss Δ {np.mean(d_loss):+.5f} "
        "(inductor's fused arithmetic moves a few values across a rounding boundary of the fake quantizers)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("supernet", type=Path, help="a 'supernet' artifact directory (e.g. artifacts/quick/supernet)")
    parser.add_argument("-n", type=int, default=40, help="subnets to time (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the timed draw")
    parser.add_argument("--bits", default="2,4,8", help="uniform bit-widths for the calibration-gain table (default 2,4,8)")
    parser.add_argument("--gain-split", default="test", choices=["train", "val", "test"],
                        help="split of the calibration-gain table (default test)")
    parser.add_argument("--skip-gain", action="store_true", help="only measure throughput")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="also print the K most expensive torch ops of one subnet")
    parser.add_argument("--compare", action="store_true",
                        help="time today's eager path and the compiled SubnetMeter side by side on the same subnets")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args(argv)

    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, calibration_source, evaluate, recalibrate_bn
    from eqtools.evaluation import measure_subnet as calibrate_subnet
    from eqtools.sample import EVAL_SEED_OFFSET, draw_configs

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    command = command_line()
    art = read_artifact(args.supernet, "supernet")
    spec = artifact_spec(art)
    s = spec.sample

    t0 = time.perf_counter()
    supernet = load_supernet(art)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    calib = calibration_source(splits, s.calib_images, s.batch_size, spec.seed)
    evaluation = BatchSource(splits.val.balanced(s.subset, spec.seed + EVAL_SEED_OFFSET), s.batch_size)
    setup_s = time.perf_counter() - t0

    if args.compare:
        text = _compare(args, art, spec, supernet, calib, evaluation, command, threads)
        print(text)
        if args.record:
            append(text)
        return 0

    configs = draw_configs(supernet.space, max(args.n, 1) + 1, seed=args.seed)
    supernet.apply(configs[0])  # warm-up: first-call allocations, thread pools
    recalibrate_bn(supernet, calib)
    evaluate(supernet, evaluation)
    calib_s = eval_s = 0.0
    for config in configs[1:]:
        supernet.apply(config)
        t = time.perf_counter()
        recalibrate_bn(supernet, calib)
        calib_s += time.perf_counter() - t
        t = time.perf_counter()
        evaluate(supernet, evaluation)
        eval_s += time.perf_counter() - t
    n = len(configs) - 1
    per_subnet = (calib_s + eval_s) / n
    rate = 60.0 / per_subnet
    protocol_min = (s.n * per_subnet + setup_s) / 60.0

    lines = [
        f"### sample + BN calibration: spec '{spec.name}' ({spec.model.name} on {spec.data.name}), "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"- command: `{command}`",
        f"- machine: {_machine(threads)}",
        f"- supernet: `{art.path}` (created {art.created})",
        f"- per subnet: BN calibration on {calib.images} train images, top-1 on {evaluation.images} val images, "
        f"batch {s.batch_size}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| subnets/min ({n} timed) | {rate:.1f} |",
        f"| per subnet: calibration / evaluation | {1000 * calib_s / n:.0f} ms / {1000 * eval_s / n:.0f} ms |",
        f"| images/s: calibration (BN train mode) / evaluation | {n * calib.images / calib_s:.0f} / "
        f"{n * evaluation.images / eval_s:.0f} |",
        f"| setup (load supernet + data, decode batches) | {setup_s:.1f} s |",
        f"| projected `eqtools sample` with the spec's n = {s.n} | {protocol_min:.1f} min |",
    ]

    if not args.skip_gain:
        bits = [int(b) for b in args.bits.split(",") if b.strip()]
        lines += [
            "",
            f"BN calibration gain, top-1 on {args.gain_split} ({spec.calibrate.images} calibration images):",
            "",
            "| subnet | condition | before | after | gain (points) |",
            "|---|---|---|---|---|",
        ]
        for b in bits:
            if b not in supernet.space.w_bits or b not in supernet.space.a_bits:
                lines.append(f"| W{b}A{b} | (not in the space) | | | |")
                continue
            for g, sym in supernet.space.conditions:
                config = supernet.space.uniform(b, b, g, sym)
                _, m = calibrate_subnet(art, config, split=args.gain_split, supernet=supernet, splits=splits)
                lines.append(f"| W{b}A{b} | {g}/{sym} | {100 * m['top1_before']:.2f}% | {100 * m['top1']:.2f}% | "
                             f"{100 * (m['top1'] - m['top1_before']):+.2f} |")

    text = "\n".join(lines) + "\n"
    print(text)
    if args.profile:
        print(_profile(supernet, configs[1], calib, evaluation, args.profile))
    if args.record:
        append(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
