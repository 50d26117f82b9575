"""How much of each model's weight matmuls `quantize_model` quantizes (1000 ImageNet classes).

Converts torchvision's transformers (and any other named models) at 224x224 twice: with the
default space (no pins) and with the paper's pins (first and last layer fixed at 8/8). Prints, per
model: weight-matmul layers, weights, the quantized share, the elastic share under both settings,
the float weight matmuls with their reasons, and the conversion time.

Run: python benchmarks/bench_coverage.py [MODEL ...] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import write_result

PAPER_PINS = {"first_layer": {"w_bits": 8, "a_bits": 8}, "last_layer": {"w_bits": 8, "a_bits": 8}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=["vit_b_16", "swin_t", "maxvit_t"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")
    args = parser.parse_args()
    import torch

    from eqtools.models import get_model
    from eqtools.quant import quantize_model

    rows = ["| model | weight-matmul layers | weights | quantized | elastic (no pins) | elastic (first/last 8/8) "
            "| float weight matmuls | convert time |",
            "|---|---|---|---|---|---|---|---|"]
    figures: dict[str, dict] = {}
    for name in args.models:
        torch.manual_seed(0)
        model = get_model(name, num_classes=1000)
        start = time.perf_counter()
        supernet = quantize_model(model, PAPER_PINS, torch.randn(1, 3, args.size, args.size))
        seconds = time.perf_counter() - start
        report = supernet.coverage
        torch.manual_seed(0)
        unpinned = quantize_model(get_model(name, num_classes=1000), {"first_layer": "elastic", "last_layer": "elastic"},
                                  torch.randn(1, 3, args.size, args.size)).coverage
        floats = "; ".join(f"{e.name}: {e.reason}" for e in report.float_matmul) or "none"
        rows.append(f"| {name} | {len(report.matmul)} | {report.matmul_params:,} | {100 * report.share:.2f} % | "
                    f"{100 * unpinned.elastic_share:.2f} % | {100 * report.elastic_share:.2f} % | {floats} | {seconds:.1f} s |")
        figures[name] = {"matmul_layers": len(report.matmul), "matmul_weights": report.matmul_params,
                         "quantized_share": report.share, "elastic_share_unpinned": unpinned.elastic_share,
                         "elastic_share_first_last_8": report.elastic_share,
                         "float_matmuls": [e.name for e in report.float_matmul], "convert_s": round(seconds, 2)}
        print(rows[-1], flush=True)
    if args.record:
        body = "\n".join(rows) + (
            "\n\nquantized = elastic + fixed; shares by weight count; 'first/last 8/8' pins the patch "
            "embedding (stem) and the 1000-class head, as the paper's setup does. Float, not matmul weights (listed by the report, not in these shares): biases, "
            "LayerNorm/BatchNorm, class token, position embeddings, relative-position tables.")
        write_result("coverage", "Which weight matmuls of torchvision transformers get quantized", figures, body,
                     threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
