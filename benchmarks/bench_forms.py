"""One EQ-Net supernet, every form: uniform 2/4/8-bit accuracy in each of the 8 quantization forms.

A form is (weight granularity, weight symmetry, activation symmetry); weights and activations
choose their symmetry independently (paper Eq. 9), so a full space holds 8. Trains the spec's
supernet through the real CLI (skipped when ``--work``/eqnet already holds one, so the
reproduction benchmark's supernet is reused), then BN-calibrates and measures every uniform
subnet on the test split.

Run: python benchmarks/bench_forms.py --record [--spec specs/r20-fmnist.json] [--work artifacts/repro]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine_line, record
from bench_reproduce import _train

BITS = (2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/r20-fmnist.json"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/repro"))
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")
    args = parser.parse_args()
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import measure_subnet

    args.work.mkdir(parents=True, exist_ok=True)
    train_s = _train(args.spec, args.work / "eqnet", [], args.work / "train.log")
    torch.set_num_threads(int(os.environ.get("EQTOOLS_THREADS", "2")))
    art = read_artifact(args.work / "eqnet", "supernet")
    spec = artifact_spec(art)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    model = load_supernet(art).use_channels_last()
    start = time.monotonic()
    rows = {}
    for form in art.space.conditions:
        config = art.space.uniform(BITS[0], BITS[0], *form)
        rows[config.label] = [100 * measure_subnet(art, art.space.uniform(b, b, *form), supernet=model,
                                                   splits=splits)[1]["top1"] for b in BITS]
        print(config.label, rows[config.label], file=sys.stderr, flush=True)
    measure_s = time.monotonic() - start
    lines = [
        f"`{args.spec}` supernet ({spec.data.train_subset or 'all'} training images, {spec.train.fp_epochs} float + "
        f"{spec.train.epochs} QAT epochs, {len(art.space.conditions)} forms trained together), top-1 % on the "
        f"Fashion-MNIST test set ({len(splits.test)} images) after BN calibration on {spec.calibrate.images} training "
        "images; one seed, so differences of a few tenths of a point are within noise.",
        "",
        "| form | " + " | ".join(f"W{b}A{b}" for b in BITS) + " |",
        "|---|" + "---|" * len(BITS),
    ]
    lines += [f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for label, values in rows.items()]
    trained = "reused" if train_s != train_s else f"{train_s / 60:.1f} min"  # NaN: the artifact existed
    lines += ["", f"Supernet training: {trained}; {len(rows) * len(BITS)} calibrations + evaluations: {measure_s:.0f} s."]
    body = "\n".join(lines)
    print(body)
    (args.work / "forms.json").write_text(json.dumps(rows, indent=2))
    if args.record:
        record("One supernet, eight forms: uniform 2/4/8-bit ResNet-20 on Fashion-MNIST (CPU-scaled)",
               f"python benchmarks/bench_forms.py --spec {args.spec} --work {args.work} --record", machine_line(2), body)


if __name__ == "__main__":
    main()
