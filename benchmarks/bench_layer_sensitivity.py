"""Do a supernet's layers differ in how much low bits hurt? One layer at a time at 2 bits.

From a uniform base subnet (W=A at --base bits, in each form given), each elastic layer's weights
(and, with --activations, its input activations in the first form) go to 2 bits while every other
layer stays at the base; the subnet is BN-calibrated and measured like the sampler measures (the
spec's ``sample.calib_images`` calibration images, ``sample.subset`` val images, each image's loss
and correctness kept). The loss change against the base is a layer's sensitivity. Layers are
grouped by kind (stem, 1x1 expansion, depthwise 3x3, 1x1 projection, plain conv, head) so the
question "do depthwise and projection layers stand out?" gets a measured answer. The per-layer
numbers are also what a layer-sensitivity predictor feature would use.

Run: python benchmarks/bench_layer_sensitivity.py artifacts/mbv2-fmnist/supernet \\
         --forms per-channel/sym/sym,per-tensor/sym/sym --activations --result mbv2-sensitivity
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import MALLOC_ENV, write_result


def layer_kind(module: Any, index: int, count: int) -> str:
    """Stem, expand (1x1 widening), depthwise, project (1x1 narrowing), conv, or head."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return "head"
    if index == 0:
        return "stem"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    if module.kernel_size == (1, 1):
        return "expand" if module.out_channels > module.in_channels else "project"
    return "conv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("supernet", type=Path)
    parser.add_argument("--forms", default="per-channel/sym/sym,per-tensor/sym/sym")
    parser.add_argument("--base", type=int, default=4, help="bits of the uniform base subnet (default 4)")
    parser.add_argument("--low", type=int, default=2, help="bits one layer goes to (default 2)")
    parser.add_argument("--activations", action="store_true", help="also each layer's input activations, first form")
    parser.add_argument("--images", type=int, default=None, help="val images per subnet (default the spec's sample.subset)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the per-layer rows as JSON here")
    parser.add_argument("--result", default=None, metavar="NAME", help="write benchmarks/results/NAME.json")
    args = parser.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, SubnetMeter, calibration_source
    from eqtools.sample import EVAL_SEED_OFFSET

    torch.set_num_threads(args.threads)
    art = read_artifact(args.supernet, "supernet")
    spec = artifact_spec(art)
    space = art.space
    s = spec.sample
    supernet = load_supernet(art).use_channels_last()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    meter = SubnetMeter(supernet, calibration_source(splits, s.calib_images, s.batch_size, spec.seed),
                        BatchSource(splits.val.balanced(args.images or s.subset, spec.seed + EVAL_SEED_OFFSET), s.batch_size))
    modules = {name.removeprefix("model."): m for name, m in supernet.named_modules()}
    layers = space.quantized_layers
    kinds = [layer_kind(modules[layer.name], i, len(layers)) for i, layer in enumerate(layers)]
    elastic = [i for i, layer in enumerate(layers) if not layer.fixed]
    start = time.perf_counter()
    runs: list[tuple[str, str]] = [(f, "w") for f in args.forms.split(",")]
    if args.activations:
        runs.append((args.forms.split(",")[0], "a"))
    table: dict[str, Any] = {}
    for form, which in runs:
        g, ws, as_ = form.split("/")
        base = space.uniform(args.base, args.base, g, ws, as_)
        b = meter.measure(base)
        rows = []
        for i in elastic:
            w, a = list(base.w_bits), list(base.a_bits)
            (w if which == "w" else a)[i] = args.low
            m = meter.measure(base.replace(w_bits=tuple(w), a_bits=tuple(a)))
            rows.append({"layer": layers[i].name, "kind": kinds[i], "params": layers[i].weight_params,
                         "d_loss": m["loss"] - b["loss"], "d_top1": 100 * (m["top1"] - b["top1"])})
        key = f"{form} {'weights' if which == 'w' else 'activations'}"
        table[key] = {"base_loss": b["loss"], "base_top1": 100 * b["top1"], "layers": rows}
        print(key, f"{time.perf_counter() - start:.0f} s", flush=True)
    lines = [f"`{args.supernet}`: from uniform W{args.base}A{args.base}, one elastic layer at a time to {args.low} bits "
             f"(weights, or its input activations); BN calibration on {s.calib_images} training images, loss and top-1 "
             f"on {meter.evaluation.images} val images. Mean [max] loss change per layer kind, and the top-1 change "
             "(points) of the kind's worst layer:", "",
             "| form, what goes to 2 bits | base top-1 | " + " | ".join(sorted(set(kinds[i] for i in elastic))) + " |",
             "|---|---|" + "---|" * len(set(kinds[i] for i in elastic))]
    for key, t in table.items():
        cells = []
        for kind in sorted(set(kinds[i] for i in elastic)):
            rs = [r for r in t["layers"] if r["kind"] == kind]
            worst = max(rs, key=lambda r: r["d_loss"])
            cells.append(f"{statistics.fmean(r['d_loss'] for r in rs):+.3f} [{worst['d_loss']:+.3f}] "
                         f"({worst['d_top1']:+.1f}; {len(rs)} layers)")
        lines.append(f"| {key} | {t['base_top1']:.2f} | " + " | ".join(cells) + " |")
        top = sorted(t["layers"], key=lambda r: -r["d_loss"])[:5]
        lines.append("")
        lines.append(f"{key}, the five most sensitive layers: " + ", ".join(
            f"{r['layer']} ({r['kind']}, {r['d_loss']:+.3f} loss, {r['d_top1']:+.1f} pts)" for r in top))
        lines.append("")
    lines.append(f"{sum(len(t['layers']) + 1 for t in table.values())} subnets measured in {time.perf_counter() - start:.0f} s.")
    body = "\n".join(lines)
    print(body)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")
    if args.result:
        write_result(args.result, "do layers differ in how much 2 bits hurt (one layer at a time)?",
                     {"supernet": str(args.supernet), "base_bits": args.base, "low_bits": args.low, "table": table},
                     body, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
