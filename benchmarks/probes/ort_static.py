"""Write the float network of a supernet and onnxruntime's ``quantize_static`` model of it, as files.

The same two baselines ``bench_deploy.py`` builds in its own run (the supernet's weights in float with
BN calibrated on its largest subnet; ``quant_pre_process`` + ``quantize_static``, QDQ, QUInt8
activations, QInt8 per-channel weights, 512 training images), kept on disk so that
``ab_onnx.py`` can time an exported file against them, paired, as often as the noise needs.

Usage
  python benchmarks/probes/ort_static.py artifacts/repro/eqnet --out /tmp/baselines   # fp32.onnx, ort-w8.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # _record and bench_deploy live one level up

from bench_deploy import _ort_static, float_network, float_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a 'supernet' artifact directory")
    parser.add_argument("--out", type=Path, required=True, help="directory for fp32.onnx and ort-w8.onnx")
    parser.add_argument("--calibration-images", type=int, default=512)
    args = parser.parse_args(argv)

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.export import deploy_calibration

    source = read_artifact(args.source, "supernet")
    spec = artifact_spec(source)
    supernet = load_supernet(source).eval()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    calibration = deploy_calibration(splits, spec.seed, args.calibration_images, 64)
    float_network(supernet, splits, spec)
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / "fp32.onnx"
    fp32.write_bytes(float_onnx(supernet, calibration[0], 17))
    why = _ort_static(fp32, args.out / "ort-w8.onnx", calibration, "QInt8")
    if why is not None:
        raise SystemExit(f"quantize_static failed: {why}")
    (args.out / "ort-w8.pre.onnx").unlink(missing_ok=True)  # quant_pre_process's intermediate
    print(f"wrote {fp32} and {args.out / 'ort-w8.onnx'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
