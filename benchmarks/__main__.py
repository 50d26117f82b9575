"""Run the benchmark suite, or render BENCHMARKS.md from its results.

  python -m benchmarks                    every benchmark whose inputs exist, then render
  python -m benchmarks --quick            the short ones, with fewer rounds (results say "quick")
  python -m benchmarks sample deploy      those named, then render
  python -m benchmarks render             BENCHMARKS.md from benchmarks/results/*.json only
  python -m benchmarks list               what each benchmark answers and what it needs
  python -m benchmarks status             each result's commit, and how many commits changed eqtools/ since

Each benchmark is a script in this folder that writes its result (``_record.write_result``); the
runner starts each in its own process (so one's torch threads or compiled graphs cannot colour the
next), in the order below, so that the quickstart's workspace (``--keep``) exists before the
benchmarks that measure its supernet. A benchmark whose input is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field

from benchmarks._render import RESULTS, ROOT, write

QUICK_SUPERNET = "artifacts/quick/supernet"
REPRO_SUPERNET = "artifacts/repro/eqnet"


@dataclass(frozen=True)
class Benchmark:
    name: str  # the result it writes: benchmarks/results/<name>.json
    script: str
    question: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None  # arguments of the --quick run; None: not in it
    needs: tuple[str, ...] = field(default=())  # paths (relative to the repository) it reads


SUITE: list[Benchmark] = [
    Benchmark("faults", "bench_faults.py", "does bad input exit 2 with a message and nothing left behind",
              quick=()),
    Benchmark("coverage", "bench_coverage.py", "which weight matmuls of torchvision transformers get quantized",
              quick=("vit_b_16",)),
    Benchmark("quant_step", "bench_quant_step.py", "what elastic fake quantization costs per training step",
              quick=("--rounds", "1", "--steps", "2", "--no-compile")),
    Benchmark("quickstart", "bench_quickstart.py", "how long README command 1 takes and what its report says",
              args=("--keep",)),
    Benchmark("train", "bench_train.py", "how fast the quick spec trains, eager and compiled"),
    Benchmark("sample", "bench_sample.py", "how many subnets a minute the sampler measures",
              args=(QUICK_SUPERNET,), quick=(QUICK_SUPERNET, "-n", "8", "--skip-gain"), needs=(QUICK_SUPERNET,)),
    Benchmark("search", "bench_search.py", "predictor quality and search time on the quickstart's samples",
              args=("artifacts/quick/samples", "--measure"), needs=("artifacts/quick/samples",)),
    Benchmark("export", "bench_export.py", "export parity, sizes and latency of the quickstart's subnets",
              args=(QUICK_SUPERNET,), needs=(QUICK_SUPERNET,)),
    Benchmark("deploy", "bench_targets.py", "each target's file in its own runtime: integer layers, agreement, speed",
              args=(QUICK_SUPERNET,), quick=(QUICK_SUPERNET, "--bits", "8", "--runtimes", "onnxruntime,openvino",
                                              "--rounds", "2", "--check-images", "200"), needs=(QUICK_SUPERNET,)),
    Benchmark("onnx_int8", "bench_deploy.py", "the integer ONNX files against FP32 and onnxruntime's own int8 model",
              args=(REPRO_SUPERNET, "--bits", "2,4,8", "--mixed", "1", "--split", "test"),
              quick=(QUICK_SUPERNET, "--bits", "8", "--mixed", "0", "--rounds", "2"), needs=(REPRO_SUPERNET,)),
    Benchmark("imagefolder_pipeline", "bench_imagefolder.py", "ImageFolder decoding: the DataLoader pool against "
              "one process", quick=("--images", "64", "--rounds", "1")),
    Benchmark("imagefolder_train", "bench_imagefolder.py", "eqtools train on an ImageFolder tree, workers vs none",
              args=("--train",)),
    Benchmark("precision_step", "bench_precision.py", "bf16 vs fp32 training step time", args=("--step",),
              quick=("--step", "--rounds", "2", "--no-compile")),
    Benchmark("precision_accuracy", "bench_precision.py", "bf16 vs fp32 training accuracy (r20-fmnist, shortened)",
              args=("--accuracy", "--threads", "1", "--set", "train.fp_epochs=3", "--set", "train.steps_per_epoch=50", "--set",
                    "train.epochs=1")),
    Benchmark("replace_window", "bench_replace.py", "does an artifact path stand empty while it is replaced"),
    Benchmark("reproduce", "bench_reproduce.py", "the paper's ablations on a CPU-scaled ResNet-20 recipe (hours)"),
    Benchmark("forms", "bench_forms.py", "uniform 2/4/8-bit accuracy in every form of the reproduction's supernet",
              needs=(REPRO_SUPERNET,)),
    Benchmark("predictor", "bench_predictor.py", "predictor ranking against low-noise held-out labels",
              args=("evaluate", REPRO_SUPERNET), needs=(REPRO_SUPERNET,)),
]
BY_NAME = {b.name: b for b in SUITE}


def run(bench: Benchmark, quick: bool) -> int:
    args = bench.quick if quick else bench.args
    assert args is not None
    needs = bench.needs if not quick or bench.name != "onnx_int8" else (QUICK_SUPERNET,)
    missing = [p for p in needs if not (ROOT / p).exists()]
    if missing:
        print(f"-- {bench.name}: skipped, needs {', '.join(missing)} (run the benchmark that makes it first)",
              file=sys.stderr)
        return 0
    cmd = [sys.executable, f"benchmarks/{bench.script}", *args, "--record"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if quick:
        env["EQTOOLS_BENCH_QUICK"] = "1"
    print(f"-- {bench.name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if code != 0:
        print(f"-- {bench.name}: failed with status {code}; its previous result is kept", file=sys.stderr)
    return code


def status() -> int:
    """Each result's commit, and how many commits have changed eqtools/ since: which figures predate the code."""
    import json

    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        commit = str(result.get("commit", "")).split("+")[0]
        proc = subprocess.run(["git", "rev-list", "--count", f"{commit}..HEAD", "--", "eqtools/"], cwd=ROOT,
                              capture_output=True, text=True)
        since = proc.stdout.strip() if proc.returncode == 0 else "?"
        print(f"{result['name']:<18} {result['date']:<28} {commit:<13} "
              f"{since} commit(s) changed eqtools/ since{' (carried over)' if result.get('source') else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), or 'render' / 'list' / 'status'")
    parser.add_argument("--quick", action="store_true", help="only the short benchmarks, with fewer rounds")
    args = parser.parse_args(argv)
    if args.names == ["render"]:
        print(f"wrote {write()} from {len(list(RESULTS.glob('*.json')))} results", file=sys.stderr)
        return 0
    if args.names == ["status"]:
        return status()
    if args.names == ["list"]:
        for b in SUITE:
            print(f"{b.name:<12} {b.question}{' (in --quick)' if b.quick is not None else ''}"
                  f"{'; needs ' + ', '.join(b.needs) if b.needs else ''}")
        return 0
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BY_NAME)} (or 'render', 'list', 'status')")
    chosen = [BY_NAME[n] for n in args.names] if args.names else [
        b for b in SUITE if not args.quick or b.quick is not None]
    if args.quick:
        skipped = [b.name for b in chosen if b.quick is None]
        if skipped:
            parser.error(f"{skipped} have no --quick run; run them without --quick")
    failed = [b.name for b in chosen if run(b, args.quick) != 0]
    write()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m benchmarks status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
