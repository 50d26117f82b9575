"""Fault and bad-input behaviour, as a table: what each stage does with broken input.

Builds a small real workspace through the CLI (tiny_cnn on scikit-learn's digits), then feeds
every stage damaged or wrong input and records the exit status, whether a traceback leaked and
the first words of the message. Also kills `train` with SIGKILL and resumes it, comparing the
weights with an uninterrupted run. The same cases are asserted in tests/test_faults.py and
tests/test_train.py; this script writes the summary table (benchmarks/results/faults.json).

Run: python benchmarks/bench_faults.py --record
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, machine_line, record

SPEC = {
    "name": "faults", "model": {"name": "tiny_cnn"}, "data": {"name": "digits", "val_size": 300},
    "space": {"w_bits": [2, 3, 4, 8], "a_bits": [2, 3, 4, 8]},
    "train": {"epochs": 6, "batch_size": 64, "steps_per_epoch": 6, "init_images": 128, "lr": 0.003, "compile": "off"},
    "calibrate": {"images": 256, "batch_size": 128},
    "sample": {"n": 24, "subset": 200, "calib_images": 128, "batch_size": 100},
    "predictor": {"epochs": 20}, "search": {"population": 16, "generations": 10},
}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "eqtools", *args], cwd=cwd, env=env, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        w = Path(tmpdir)
        (w / "spec.json").write_text(json.dumps(SPEC))
        for step in (["train", "spec.json", "-q"], ["sample", "--no-progress"], ["fit-predictor"],
                     ["calibrate", "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"]):
            proc = run(step, w)
            if proc.returncode:
                sys.exit(f"setup step {step} failed: {proc.stderr[-2000:]}")
        a = w / "artifacts" / "faults"
        arts = {"supernet": a / "supernet", "samples": a / "samples", "predictor": a / "predictor-mlp",
                "calibrated": next(a.glob("calibrated-*"))}
        commands = {
            "supernet": lambda p: ["calibrate", "--from", str(p), "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
            "samples": lambda p: ["fit-predictor", "--from", str(p)],
            "predictor": lambda p: ["search", "--predictor", str(p), "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
            "calibrated": lambda p: ["export", "--from", str(p)],
        }

        def damage(kind: str, how: str) -> Path:
            target = w / "damaged" / f"{kind}-{how}"
            shutil.copytree(arts[kind], target)
            manifest = json.loads((target / "manifest.json").read_text())
            payload = max((target / n for n in manifest["files"]), key=lambda f: f.stat().st_size)  # the weights
            if how == "truncated file":
                payload.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])
            elif how == "bit flip":
                data = bytearray(payload.read_bytes())
                data[len(data) // 2] ^= 0x10
                payload.write_bytes(bytes(data))
            elif how == "edited manifest":
                manifest["metrics"]["edited"] = True
                (target / "manifest.json").write_text(json.dumps(manifest))
            elif how == "newer format_version":
                manifest["format_version"] += 1
                (target / "manifest.json").write_text(json.dumps(manifest))
            return target

        def case(label: str, argv: list[str], out_check: Path | None = None) -> None:
            proc = run(argv, w)
            text = " ".join(proc.stderr.split())
            message = text.split("error: ", 1)[-1].replace(f"{w}/", "")[:110].replace("|", "/")
            left = out_check is not None and out_check.exists()
            rows.append((label, proc.returncode, "yes" if "Traceback" in proc.stderr else "no",
                         "yes" if left else "no", message))

        for kind, command in commands.items():
            for how in ("truncated file", "bit flip", "edited manifest", "newer format_version"):
                out = w / "out" / f"{kind}-{how}".replace(" ", "-")
                case(f"{how} {kind} -> `{command(Path('X'))[0]}`", [*command(damage(kind, how)), "--out", str(out)], out)
        case("wrong kind (samples given to calibrate)", [*commands["supernet"](arts["samples"])])
        case("wrong kind (supernet given to fit-predictor)", [*commands["samples"](arts["supernet"])])
        config = json.loads((arts["calibrated"] / "config.json").read_text())
        config["layers"][1]["w_bits"] = 5
        (w / "foreign.json").write_text(json.dumps(config))
        case("config outside the space", ["calibrate", "--from", str(arts["supernet"]), "--config", "foreign.json"])
        case("infeasible budget (--w-bits 1)", ["search", "--w-bits", "1", "--granularity", "per-channel", "--symmetry", "sym"])
        bad = dict(SPEC, space={"w_bits": [2, 9]})
        (w / "bad.json").write_text(json.dumps(bad))
        case("spec with a bit-width of 9", ["train", "bad.json"])
        (w / "bad2.json").write_text(json.dumps(dict(SPEC, model={"name": "resnet9000"})))
        case("unknown model", ["train", "bad2.json"])
        (w / "bad3.json").write_text(json.dumps(dict(SPEC, data={"name": "cifar10", "root": "/nowhere"})))
        case("missing dataset", ["train", "bad3.json"])
        case("batch larger than the dataset", ["train", "spec.json", "--set", "train.batch_size=1000000", "--out", "huge"])

        # kill -9 during train, then --resume: same weights as the uninterrupted run
        ref = run(["train", "spec.json", "--out", "ref", "-q"], w)
        assert ref.returncode == 0, ref.stderr
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "eqtools", "train", "spec.json", "--out", "killed", "-q"], cwd=w,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = w / "killed.work" / "checkpoint.pt"
        while not ckpt.exists() and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumed = run(["train", "spec.json", "--out", "killed", "--resume", "-q"], w)
        from safetensors.torch import load_file

        a_w, b_w = load_file(str(w / "ref" / "weights.safetensors")), load_file(str(w / "killed" / "weights.safetensors"))
        same = resumed.returncode == 0 and all((a_w[k] == b_w[k]).all() for k in a_w)
        rows.append(("kill -9 during train, then --resume", resumed.returncode, "no", "-",
                     "final weights bit-identical to an uninterrupted run" if same else "WEIGHTS DIFFER"))

    lines = ["| case | exit | traceback | output left behind | message |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {code} | {tb} | {left} | {msg} |" for label, code, tb, left, msg in rows]
    body = "\n".join(lines)
    print(body)
    if args.record:
        record("Faults and bad input", "python benchmarks/bench_faults.py --record", machine_line(), body)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
