"""Training speed on the quick spec: supernet vs static QAT, eager vs torch.compile.

Runs `eqtools train` (through the CLI, on a fresh workspace, float warm-up off so only QAT is
timed) for: the supernet eager, the supernet compiled, and a 4-bit static-QAT baseline eager.
Reports seconds per epoch (from the artifacts' metrics.jsonl) and whole-run wall time, which
includes compilation. The gap says after how many steps compilation pays for itself on CPU, which
sets `train.compile: auto`.

Run: python benchmarks/bench_train.py --record [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import MALLOC_ENV, ROOT, machine_line, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="specs/quick.json")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    runs = {
        "supernet, eager": ["--no-compile"],
        "supernet, compiled": ["--compile"],
        "static QAT W4A4, eager": ["--no-compile", "--static-bits", "4"],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in runs.items():
            out = Path(tmp) / label.replace(" ", "").replace(",", "-")
            cmd = [sys.executable, "-m", "eqtools", "train", str(ROOT / args.spec), "--out", str(out), "-q",
                   "--epochs", str(args.epochs), "--set", "train.fp_epochs=0", *extra]
            start = time.monotonic()
            subprocess.run(cmd, check=True, env={**os.environ, **MALLOC_ENV}, cwd=tmp)
            wall = time.monotonic() - start
            metrics = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
            steps = json.loads((out / "manifest.json").read_text())["metrics"]["steps_per_epoch"]
            per_epoch = [m["time_s"] for m in metrics]
            rows.append((label, steps, per_epoch, wall))
    lines = ["| run | steps/epoch | s per epoch (each epoch) | s per step (last epoch) | whole run |", "|---|---|---|---|---|"]
    for label, steps, per_epoch, wall in rows:
        lines.append(f"| {label} | {steps} | {', '.join(f'{t:.0f}' for t in per_epoch)} | {per_epoch[-1] / steps:.2f} | "
                     f"{wall:.0f} s |")
    eager, compiled = rows[0], rows[1]
    saving = (eager[2][-1] - compiled[2][-1]) / eager[1]
    overhead = compiled[2][0] - compiled[2][-1]
    if saving > 0:
        lines += ["", f"Compilation costs about {overhead:.0f} s (first epoch minus a warm one) and saves "
                  f"{saving:.2f} s per supernet step: it pays off after about {overhead / saving:.0f} steps."]
    else:
        lines += ["", f"Compiled steps were not faster than eager ones here ({saving:+.2f} s per step)."]
    body = "\n".join(lines)
    print(body)
    if args.record:
        record("Training speed on the quick spec", f"python benchmarks/bench_train.py --epochs {args.epochs} --record",
               machine_line(2), body)


if __name__ == "__main__":
    main()
