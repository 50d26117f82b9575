"""The GPU check (`nox -s gpu`): everything a short GPU loan must prove, in one run of at most 8 minutes.

1. the CUDA tests (`pytest -m gpu`);
2. one epoch of `specs/r20-fmnist.json` (no float warm-up) at fp32 and under bf16 autocast:
   training images/s of each;
3. `eqtools sample` of 100 subnets of the fp32 supernet: subnets/min;
4. `eqtools calibrate` of its W4A4 per-channel symmetric subnet and `eqtools export` of it with
   the export's parity gates (the files must agree with the fake-quant subnet, or export refuses).

It prints a table and, with ``--record``, writes ``benchmarks/results/gpu.json``. ``--device cpu
--quick`` runs the same steps shrunk to seconds on a CPU (the test suite does, so the script is
known to work before a GPU is there); a quick run is never recorded.

Run on a GPU machine: nox -s gpu   (or: python benchmarks/gpu_check.py --record)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SPEC = ROOT / "specs" / "r20-fmnist.json"


def _eqtools(args: list[str], log: list[str]) -> dict:
    cmd = [sys.executable, "-m", "eqtools", *args, "--json"]
    log.append(" ".join(cmd))
    print("$ eqtools " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"gpu check: `eqtools {' '.join(args)}` failed with exit status {proc.returncode}")
    return json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --quick")
    parser.add_argument("--quick", action="store_true", help="every step shrunk to seconds (for a CPU test run)")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "gpu-check")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (adds minutes)")
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/gpu.json")
    args = parser.parse_args()
    if args.quick and args.record:
        parser.error("a --quick run is not a measurement; leave out --record")
    from eqtools.device import resolve_device
    from eqtools.errors import EqtoolsError

    try:
        device = resolve_device(args.device)
    except EqtoolsError as exc:
        print(f"gpu check: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    log: list[str] = []
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    # 1. the CUDA tests
    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                            str(ROOT / "tests" / "test_gpu.py")], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"CUDA tests: {summary}", file=sys.stderr)
    if tests.returncode not in (0, 5):  # 5: nothing collected/selected
        sys.stderr.write(tests.stdout[-4000:])
        return 1

    # 2. one epoch, fp32 and bf16
    shrink = ["train.fp_epochs=0", "train.epochs=1"]
    if args.quick:
        shrink += ["train.steps_per_epoch=2", "train.batch_size=32", "train.init_images=64", "data.train_subset=500",
                   "data.val_size=500", "data.test_subset=500"]
    sets = [a for item in shrink for a in ("--set", item)]
    compile_flag = "--compile" if args.compile else "--no-compile"
    train = {}
    for precision in ("fp32", "bf16"):
        t0 = time.monotonic()
        out = _eqtools(["train", str(SPEC), *sets, "--precision", precision, "--device", device, compile_flag,
                        "--out", str(work / f"supernet-{precision}"), "--restart", "-q"], log)
        train[precision] = {"images_per_s": out["metrics"]["final"]["images_per_s"],
                            "epoch_s": out["metrics"]["final"]["time_s"], "wall_s": round(time.monotonic() - t0, 1),
                            "val_top1_max": out["metrics"]["final"].get("val_top1_max")}

    # 3. sample 100 subnets
    supernet = work / "supernet-fp32"
    n = ["-n", "8", "--subset", "100", "--calib-images", "64", "--batch-size", "100"] if args.quick else ["-n", "100"]
    sampled = _eqtools(["sample", "--from", str(supernet), *n, "--device", device, "--no-progress", "--restart",
                        "--out", str(work / "samples")], log)

    # 4. calibrate one subnet, export it through the parity gates
    images = ["--images", "256"] if args.quick else []
    _eqtools(["calibrate", "--from", str(supernet), "--w-bits", "4", "--granularity", "per-channel", "--symmetry",
              "sym", *images, "--device", device, "--out", str(work / "calibrated")], log)
    checks = ["--check-images", "200"] if args.quick else []
    exported = _eqtools(["export", "--from", str(work / "calibrated"), *checks, "--device", device,
                         "--out", str(work / "export")], log)
    parity = {fmt: exported["metrics"][fmt]["parity"]["top1_agreement"] for fmt in ("int", "onnx")
              if fmt in exported["metrics"]}
    total = time.monotonic() - start

    fp32, bf16 = train["fp32"]["images_per_s"], train["bf16"]["images_per_s"]
    md = (
        f"{'Quick CPU run (not a measurement)' if args.quick else 'One GPU'}: device `{device}`, "
        f"{'compiled' if args.compile else 'eager'} training, whole check {total:.0f} s.\n\n"
        "| check | result |\n|---|---|\n"
        f"| CUDA tests (`pytest -m gpu`) | {summary} |\n"
        f"| r20-fmnist, 1 epoch, fp32: train images/s | {fp32:.1f} |\n"
        f"| r20-fmnist, 1 epoch, bf16 autocast: train images/s | {bf16:.1f} ({bf16 / fp32:.2f}x fp32) |\n"
        f"| sample {sampled['metrics']['rows']} subnets: subnets/min | {sampled['metrics']['subnets_per_min']:.1f} |\n"
        + "".join(f"| export {fmt}: top-1 agreement with the fake-quant subnet | {100 * a:.2f} % |\n"
                  for fmt, a in parity.items())
    )
    print(md)
    if args.record:
        from _record import write_result

        write_result("gpu", "the GPU check: CUDA tests, train fp32 vs bf16, sampling, export parity on one GPU",
                     {"device": device, "train": train, "sample": sampled["metrics"], "export_parity": parity,
                      "cuda_tests": summary, "total_s": round(total, 1), "commands": log,
                      "gpu": _gpu_name()}, md)
    return 0


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
