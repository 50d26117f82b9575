"""One EQ-Net supernet, every form: uniform 2/4/8-bit accuracy in each of the 8 quantization forms.

A form is (weight granularity, weight symmetry, activation symmetry); weights and activations
choose their symmetry independently (paper Eq. 9), so a full space holds 8. Trains the spec's
supernet through the real CLI (skipped when ``--work``/eqnet already holds one, so the
reproduction benchmark's supernet is reused), then BN-calibrates and measures every uniform
subnet on the test split.

Run: python benchmarks/bench_forms.py --record [--spec specs/r20-fmnist.json] [--work artifacts/repro]

``--static ART ...`` adds static-QAT baselines (``eqtools train --static-bits``) of the same spec:
each is measured at its own config the same way, and listed beside the supernet's uniform subnet of
the same bits and form. ``--result NAME`` writes ``benchmarks/results/NAME.json``.

Run: python benchmarks/bench_forms.py --spec specs/mbv2-fmnist.json --work artifacts/mbv2-fmnist --bits 2,3,4,8 \
         --static artifacts/mbv2-fmnist/supernet-static-* --result mbv2-forms
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine_line, record, write_result
from bench_reproduce import _train

BITS = (2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/r20-fmnist.json"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/repro"))
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")
    parser.add_argument("--bits", type=lambda v: tuple(int(b) for b in v.split(",")), default=BITS,
                        help="uniform W=A bit-widths to measure (default 2,4,8)")
    parser.add_argument("--forms", default=None, help="comma-separated forms G/WS/AS to measure (default: all of the space's)")
    parser.add_argument("--static", type=Path, nargs="*", default=[], help="static-QAT supernet artifacts to measure beside")
    parser.add_argument("--result", default=None, metavar="NAME", help="write benchmarks/results/NAME.json")
    args = parser.parse_args()
    bits_list = args.bits
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import measure_subnet

    args.work.mkdir(parents=True, exist_ok=True)
    eqnet = args.work / "eqnet" if (args.work / "eqnet").exists() or not (args.work / "supernet").exists() else args.work / "supernet"
    train_s = _train(args.spec, eqnet, [], args.work / "train.log")
    torch.set_num_threads(int(os.environ.get("EQTOOLS_THREADS", "2")))
    art = read_artifact(eqnet, "supernet")
    spec = artifact_spec(art)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    model = load_supernet(art).use_channels_last()
    start = time.monotonic()
    rows = {}
    wanted = None if args.forms is None else {tuple(f.split("/")) for f in args.forms.split(",")}
    for form in art.space.conditions:
        if wanted is not None and tuple(form) not in wanted:
            continue
        config = art.space.uniform(bits_list[0], bits_list[0], *form)
        rows[config.label] = [100 * measure_subnet(art, art.space.uniform(b, b, *form), supernet=model,
                                                   splits=splits)[1]["top1"] for b in bits_list]
        print(config.label, rows[config.label], file=sys.stderr, flush=True)
    static_rows = []
    for path in args.static:
        s_art = read_artifact(path, "supernet")
        st = artifact_spec(s_art).train.static
        config = s_art.space.uniform(st.w_bits, st.a_bits, *st.form)
        top1 = 100 * measure_subnet(s_art, config, splits=splits)[1]["top1"]
        label = config.label  # the form's label, as the rows are keyed
        eq = rows[label][bits_list.index(st.w_bits)] if label in rows and st.w_bits in bits_list and st.w_bits == st.a_bits else None
        static_rows.append({"artifact": str(path), "label": label, "config": f"W{st.w_bits}A{st.a_bits} {label}", "w_bits": st.w_bits, "a_bits": st.a_bits,
                            "form": list(st.form), "static_top1": top1, "supernet_top1": eq})
        print(config.label, "static", top1, file=sys.stderr, flush=True)
    measure_s = time.monotonic() - start
    static_bits = sorted({(r["w_bits"], r["a_bits"]) for r in static_rows})
    static_of = {(r["label"], r["w_bits"], r["a_bits"]): r for r in static_rows}
    lines = [
        f"`{args.spec}` supernet ({spec.data.train_subset or 'all'} training images, {spec.train.fp_epochs} float + "
        f"{spec.train.epochs} QAT epochs, {len(art.space.conditions)} forms trained together), top-1 % on the "
        f"Fashion-MNIST test set ({len(splits.test)} images) after BN calibration on {spec.calibrate.images} training "
        "images; one seed, so differences of a few tenths of a point are within noise."
        + (" Static: the same bits and form trained alone (the same float warm-up, epochs, batch, optimiser and "
           "schedule), measured the same way; in brackets the supernet's uniform subnet minus it." if static_rows else ""),
        "",
        "| form | " + " | ".join([f"W{b}A{b}" for b in bits_list] + [f"static W{w}A{a}" for w, a in static_bits]) + " |",
        "|---|" + "---|" * (len(bits_list) + len(static_bits)),
    ]

    def static_cell(label: str, w: int, a: int) -> str:
        r = static_of.get((label, w, a))
        if r is None:
            return "—"
        eq = r["supernet_top1"]
        diff = "n/a" if eq is None else f"{eq - r['static_top1']:+.2f}"
        return f"{r['static_top1']:.2f} ({diff})"

    labels = list(rows) + [r["label"] for r in static_rows if r["label"] not in rows]
    for label in dict.fromkeys(labels):
        uniform = [f"{v:.2f}" for v in rows[label]] if label in rows else ["n/a"] * len(bits_list)
        lines.append(f"| {label} | " + " | ".join(uniform + [static_cell(label, w, a) for w, a in static_bits]) + " |")
    trained = "reused" if train_s != train_s else f"{train_s / 60:.1f} min"  # NaN: the artifact existed
    lines += ["", f"Supernet training: {trained}; {len(rows) * len(bits_list) + len(static_rows)} calibrations + "
              f"evaluations: {measure_s:.0f} s."]
    body = "\n".join(lines)
    print(body)
    (args.work / "forms.json").write_text(json.dumps(rows, indent=2))
    if args.result:
        write_result(args.result, f"{args.spec}: one supernet's uniform subnets in every form, against static QAT",
                     {"bits": list(bits_list), "uniform_top1": rows, "static": static_rows, "test_images": len(splits.test),
                      "measure_s": measure_s}, body, threads=int(os.environ.get("EQTOOLS_THREADS", "2")))
    if args.record:
        record("One supernet, eight forms: uniform 2/4/8-bit ResNet-20 on Fashion-MNIST (CPU-scaled)",
               f"python benchmarks/bench_forms.py --spec {args.spec} --work {args.work} --record", machine_line(2), body)


if __name__ == "__main__":
    main()
