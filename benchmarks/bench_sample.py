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
  python benchmarks/bench_sample.py artifacts/quick/supernet --record   # and write benchmarks/results/sample.json

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
    """Eager ``calibrate_and_evaluate`` (what ``eqtools sample`` ran until 2026-12-01), the compiled
    :class:`SubnetMeter` with float convs (until 2026-12-02) and with int8 convs (now), alternating
    subnet by subnet on the same loaded supernet and images, so all three see the same machine
    load; the first subnet of each (warm-up, compilation) is timed apart."""
    import numpy as np

    from eqtools.evaluation import SubnetMeter, _graph_count, calibrate_and_evaluate
    from eqtools.sample import draw_configs

    supernet.use_channels_last()
    configs = draw_configs(supernet.space, args.n + 1, seed=args.seed)
    t = time.perf_counter()
    calibrate_and_evaluate(supernet, configs[0], calib, evaluation)
    first = {"eager": time.perf_counter() - t}
    meters = {"float": SubnetMeter(supernet, calib, evaluation, compile=True, integer=False),
              "int8": SubnetMeter(supernet, calib, evaluation, compile=True)}
    for name, meter in meters.items():
        t = time.perf_counter()
        meter.measure(configs[0])
        first[name] = time.perf_counter() - t
    graphs = _graph_count()
    times: dict[str, list[float]] = {"eager": [], "float": [], "int8": []}
    d_top1: dict[str, list[float]] = {"float": [], "int8": []}
    d_loss: dict[str, list[float]] = {"float": [], "int8": []}
    for config in configs[1:]:
        t = time.perf_counter()
        old = calibrate_and_evaluate(supernet, config, calib, evaluation)
        times["eager"].append(time.perf_counter() - t)
        for name, meter in meters.items():
            t = time.perf_counter()
            new = meter.measure(config)
            times[name].append(time.perf_counter() - t)
            d_top1[name].append(100 * (new["top1"] - old["top1"]))
            d_loss[name].append(new["loss"] - old["loss"])
    n = len(times["eager"])
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    int8 = meters["int8"]
    labels = {"eager": "eager `calibrate_and_evaluate` (until 2026-12-01)",
              "float": "compiled `SubnetMeter`, float convs (until 2026-12-02)",
              "int8": "compiled `SubnetMeter`, int8 convs (now)" if int8.integer
              else f"compiled `SubnetMeter`, int8 convs unavailable ({int8.integer_note}): float"}
    ratio = mean["eager"] / mean["int8"]
    lines = [
        f"### sampling speed, eager vs compiled float vs compiled int8 convs: spec '{spec.name}', "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"- command: `{command}`",
        f"- machine: {_machine(threads)}; shared with other jobs (the three paths alternate subnet by subnet, so "
        "they see the same load)",
        f"- supernet: `{art.path}`; per subnet: BN calibration on {calib.images} train images, top-1 on "
        f"{evaluation.images} val images, batch {spec.sample.batch_size} (the same images for every path)",
        "",
        f"| path | first subnet (warm-up / compilation) | per subnet after it (mean of {n}) | subnets/min | "
        "top-1 minus eager: mean / mean abs / max abs (points) | loss minus eager (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("eager", "float", "int8"):
        if name == "eager":
            diff = "- | -"
        else:
            d = np.asarray(d_top1[name])
            diff = (f"{d.mean():+.3f} / {np.abs(d).mean():.3f} / {np.abs(d).max():.3f} | "
                    f"{np.mean(d_loss[name]):+.5f}")
        lines.append(f"| {labels[name]} | {first[name]:.1f} s | {1000 * mean[name]:.0f} ms | "
                     f"{60 / mean[name]:.1f} | {diff} |")
    lines += [
        "",
        f"- speed-up of the int8 meter over the eager path at equal images per subnet: **{ratio:.2f}x** (target 2x: "
        f"{'met' if ratio >= 2 else 'not met'}); over the compiled float meter: "
        f"{mean['float'] / mean['int8']:.2f}x",
        f"- graphs compiled after each meter's first subnet (recompiles): {_graph_count() - graphs}",
        "- the differences from eager are float rounding moving a few values across a fake quantizer's step "
        "boundary (inductor's fused arithmetic; the int8 kernel's exact integer sums scaled once)",
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
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")
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
