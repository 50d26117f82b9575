"""Mixed precision on the CPU: bf16 vs fp32 training step time, and r20-fmnist accuracy at 2/4/8 bits.

1. Step time (``--step``): one sandwich step (largest, one random, smallest subnet; forward,
   backward, no optimiser step) of the r20-fmnist quantized supernet (ResNet-20, batch 128,
   28x28 Fashion-MNIST-sized inputs), fp32 and under bf16 autocast, each in a fresh process (a
   training run has one precision a process), alternating in each round;
   the ratio is the median [IQR] of per-round ratios. Both the eager step and the
   ``torch.compile``d one are timed: ``train.compile: auto`` compiles every run long enough for the
   compile to pay off (r20-fmnist's full recipe included), so the compiled ratio is the one a full
   training run sees; the eager one is what short runs see. Whether bf16 can pay off depends on
   the CPU: AVX512-BF16 or AMX-BF16 (recorded with the figures).
2. Accuracy (``--accuracy``): ``eqtools train specs/r20-fmnist.json`` once per precision and
   ``--seeds`` seed, with the same ``--set`` overrides (``--set`` lets a shared machine run a
   shortened recipe; the result records which), then each supernet's uniform W2A2/W4A4/W8A8 per-channel symmetric subnets
   BN-calibrated on the spec's 4096 training images and scored on the 10000 test images, on the
   CPU in fp32 (precision is a training setting).

Run: python benchmarks/bench_precision.py --step --record
     python benchmarks/bench_precision.py --accuracy --record \
         --set train.fp_epochs=3 --set train.steps_per_epoch=50 --set train.epochs=1
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _record import cpu_flags, machine_line, paired_ratio, write_result  # noqa: E402

SPEC = ROOT / "specs" / "r20-fmnist.json"


def one_process(precision: str, compiled: bool, threads: int, repeats: int = 5) -> float:
    """Seconds of one sandwich step in this process, which runs only ``precision``, as a training run does.

    Two warm-up passes first (oneDNN builds its kernels per dtype and shape, inductor its graphs), then the
    median over ``repeats`` passes of the median step over four sampled sandwiches."""
    from eqtools.build import build_supernet, resolve_spec
    from eqtools.specs import load_spec
    from eqtools.train import sample_sandwich, sandwich_step
    from eqtools.train.loop import Precision

    torch.set_num_threads(threads)
    spec = resolve_spec(load_spec(SPEC))
    torch.manual_seed(0)
    supernet = build_supernet(spec, pretrained=False)
    x = torch.randn(128, 1, 28, 28)
    y = torch.randint(0, 10, (128,))
    supernet.init_from_data([x])
    supernet.use_channels_last()
    supernet.train()
    x = x.contiguous(memory_format=torch.channels_last)
    rng = random.Random(0)
    groups = [sample_sandwich(supernet.space, rng, 1) for _ in range(4)]
    autocast = Precision(precision, "cpu").autocast
    model = torch.compile(supernet) if compiled else supernet

    def one(configs) -> float:
        start = time.perf_counter()
        sandwich_step(model, supernet, x, y, configs, autocast=autocast)
        supernet.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for _ in range(2):
        for configs in groups:
            one(configs)
    return statistics.median(statistics.median(one(c) for c in groups) for _ in range(repeats))


def step_times(rounds: int, threads: int, compiled: bool) -> dict[str, list[float]]:
    """Per round, one fresh process per precision, in alternating order.

    A process that ran both precisions would time a state no training run is in (each trains in one
    precision): in one process the compiled steps of each precision measured slower or faster
    depending on what ran before them."""
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds):
        for p in ["fp32", "bf16"] if r % 2 == 0 else ["bf16", "fp32"]:
            cmd = [sys.executable, __file__, "--one-process", p, "--threads", str(threads)]
            out = subprocess.run(cmd + (["--compiled"] if compiled else []), check=True, capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            times[p].append(float(out.stdout.strip().splitlines()[-1]))
        print(f"{'compiled' if compiled else 'eager'} round {r + 1}: fp32 {times['fp32'][-1]:.3f}s, "
              f"bf16 {times['bf16'][-1]:.3f}s", file=sys.stderr)
    return times


def _t95(n: int) -> float:
    """Two-sided 95 % Student t quantile for the mean of n samples."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def train_and_measure(work: Path, precision: str, overrides: list[str], threads: int) -> dict:
    from eqtools.build import load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import measure_subnet

    out = work / f"supernet-{precision}"
    if (out / "manifest.json").is_file():  # reuse a supernet only if it was trained with these overrides
        import json

        from eqtools.cli.overrides import apply_overrides

        recorded = json.loads((out / "manifest.json").read_text())["spec"]
        for item in overrides:
            if apply_overrides(recorded, [item]) != recorded:
                sys.exit(f"{out} was not trained with {item}; give another --work")
    else:
        cmd = [sys.executable, "-m", "eqtools", "train", str(SPEC), "--precision", precision, "--device", "cpu",
               "--out", str(out), "--restart", "-q"]
        for item in overrides:
            cmd += ["--set", item]
        print(" ".join(cmd), file=sys.stderr)
        start = time.monotonic()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)})
        print(f"{precision}: trained in {time.monotonic() - start:.0f}s", file=sys.stderr)
    from eqtools.artifacts import read_artifact

    art = read_artifact(out, "supernet")
    supernet = load_supernet(art).use_channels_last()
    from eqtools.build import artifact_spec

    spec = artifact_spec(art)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    top1 = {}
    for bits in (2, 4, 8):
        config = supernet.space.uniform(bits, bits, "per-channel", "sym", "sym")
        _, metrics = measure_subnet(art, config, split="test", supernet=supernet, splits=splits)
        top1[bits] = 100.0 * metrics["top1"]
        print(f"{precision} W{bits}A{bits}: {top1[bits]:.2f}%", file=sys.stderr)
    return {"top1": top1, "train_time_s": art.metrics.get("train_time_s"), "fp_time_s": art.metrics.get("fp_time_s"),
            "images_per_s_last_epoch": art.metrics.get("final", {}).get("images_per_s"),
            "precision": art.metrics.get("precision"), "trained": art.created}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", action="store_true", help="time the training step, fp32 vs bf16")
    parser.add_argument("--accuracy", action="store_true", help="train r20-fmnist in both precisions and compare")
    parser.add_argument("--rounds", type=int, default=4, help="--step: alternating rounds, a process per "
                        "precision each (default 4)")
    parser.add_argument("--one-process", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="--step: time the eager step only (no compile)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="spec override for both trainings (repeatable): a shortened recipe")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench-precision")
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/precision_*.json")
    parser.add_argument("--result", default="precision_accuracy", metavar="NAME", help="--accuracy: the result's name")
    parser.add_argument("--seeds", default="0,1,2,3", help="--accuracy: the spec seeds trained (comma-separated)")
    args = parser.parse_args()
    if args.one_process:  # a child of --step: print one figure
        print(one_process(args.one_process, args.compiled, args.threads))
        return
    flags = cpu_flags()
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    machine = machine_line(args.threads)
    if args.step:
        modes = {"eager": False} if args.no_compile else {"eager": False, "compiled": True}
        times = {m: step_times(args.rounds, args.threads, compiled) for m, compiled in modes.items()}
        ratio = {m: paired_ratio(t["bf16"], t["fp32"]) for m, t in times.items()}
        med = {m: {p: statistics.median(v) for p, v in t.items()} for m, t in times.items()}
        rows = "\n".join(f"| {m} | {1000 * med[m]['fp32']:.0f} ms | {1000 * med[m]['bf16']:.0f} ms | {ratio[m]} |"
                         for m in modes)
        md = (f"Sandwich step (3 subnets, forward + backward) of the r20-fmnist quantized supernet, batch 128, "
              f"{args.threads} threads, {args.rounds} alternating rounds per mode, each precision in a fresh "
              "process per round (as a training run has it: one precision a process); CPU bf16 support: "
              f"{', '.join(native) or 'none (no AVX512-BF16, no AMX)'}. `train.compile: auto` compiles every run "
              "long enough to pay the compile back (the full r20-fmnist recipe does), so the compiled row is the "
              "step a full training run takes; short runs take the eager one.\n\n"
              "| step | fp32 (median) | bf16 autocast (median) | bf16 / fp32 [IQR] |\n|---|---|---|---|\n"
              f"{rows}\n\n"
              + "".join(f"- bf16 / fp32, {m} step: **{ratio[m]}**\n" for m in reversed(modes))
              + "- target: <= 0.75 where the CPU has AMX or AVX512-BF16\n")
        print(md + "\n" + machine)
        if args.record:
            write_result("precision_step", "bf16 vs fp32 training step time of the quantized supernet (CPU)",
                         {"seconds": times, "median_s": med, "bf16_over_fp32": ratio, "cpu_bf16": native,
                          "threads": args.threads, "rounds": args.rounds}, md, threads=args.threads)
    if args.accuracy:
        torch.set_num_threads(args.threads)  # measuring; the trainings get OMP_NUM_THREADS
        seeds = [int(v) for v in args.seeds.split(",")]
        results = {}
        for seed in seeds:  # one fp32 and one bf16 training per seed, kept under --work/seed<N> for reruns
            work = args.work / f"seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            overrides = [f"seed={seed}", *args.overrides]
            results[seed] = {p: train_and_measure(work, p, overrides, args.threads) for p in ("fp32", "bf16")}
        recipe = ", ".join(f"`{o}`" for o in args.overrides) or "the full recipe"
        diffs = {b: [results[s]["bf16"]["top1"][b] - results[s]["fp32"]["top1"][b] for s in seeds] for b in (2, 4, 8)}
        mean = {b: statistics.mean(d) for b, d in diffs.items()}
        half = {b: _t95(len(seeds)) * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
                for b, d in diffs.items()}
        within = {b: abs(mean[b]) + half[b] <= 0.3 for b in diffs}
        rows = "\n".join(
            f"| W{b}A{b} per-channel sym | {statistics.mean(results[s]['fp32']['top1'][b] for s in seeds):.2f} | "
            f"{statistics.mean(results[s]['bf16']['top1'][b] for s in seeds):.2f} | "
            f"{' / '.join(f'{d:+.2f}' for d in diffs[b])} | **{mean[b]:+.2f}** [{mean[b] - half[b]:+.2f}, "
            f"{mean[b] + half[b]:+.2f}] | {'shown' if within[b] else 'not shown'} |" for b in (2, 4, 8))
        spread = max(max(d) - min(d) for d in diffs.values())
        md = (f"`specs/r20-fmnist.json` trained in fp32 and under bf16 autocast (float warm-up and QAT) with seeds "
              f"{', '.join(map(str, seeds))}, spec overrides: {recipe}; top-1 % on the 10000 Fashion-MNIST test "
              "images after BN calibration on 4096 training images, measured in fp32. On this short recipe one "
              f"seed's difference spans up to {spread:.2f} points across seeds, so the target is read on the mean "
              "over seeds: shown where its whole 95 % t-interval lies within 0.3 points.\n\n"
              "| subnet | fp32 (mean) | bf16 (mean) | bf16 - fp32 per seed (points) | mean [95 % CI] | within 0.3 |\n"
              "|---|---|---|---|---|---|\n" + rows + "\n\n"
              "- target: within 0.3 points of fp32 at 2, 4 and 8 bits\n")
        print(md + "\n" + machine)
        if args.record:
            write_result(args.result, "r20-fmnist top-1 at 2/4/8 bits, bf16 vs fp32 training, over seeds",
                         {"results": results, "diff_points": diffs, "mean_diff": mean, "ci_half_width": half,
                          "within_0_3_shown": within,
                          "seeds": seeds, "overrides": args.overrides, "cpu_bf16": native}, md,
                         threads=args.threads)
    if not (args.step or args.accuracy):
        parser.error("give --step and/or --accuracy")


if __name__ == "__main__":
    main()
