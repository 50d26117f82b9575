"""How much of the room between uniform 4-bit and 8-bit can a 4-bit mix take, form by form?

A mixed-precision search can only beat uniform W4A4 by a part of what W8A8 gains over it. This
measures, in each form of one supernet:

1. the room: uniform W4A4, W4A8, W8A4 and W8A8 on the test split, so the gain of 8 bits is split
   between weights and activations;
2. what budget-exact mixes built without any predictor take of it: the layers that cost least
   (parameters for weights, input elements for activations: the units the search's averages are
   weighted by) raised to ``--high`` bits, paid for by lowering the costliest ones to ``--low``,
   so that the average stays at or under 4 (``eqtools.search.mixes.raise_cheap``, the construction
   ``--verify``'s cheap-first mixes use). Weights, activations and both, for each high
   bit-width. Such mixes are what a depthwise-separable net is expected to reward: its cheap
   depthwise and early layers are the ones known to suffer at low bits. The best mix is chosen on
   ``--choose-images`` unseen images (never test images) and then compared with uniform W4A4 on
   the test split, paired image by image (bootstrap 95 % interval);
3. beside it, the searched pick's own test comparison at 4/4 from a search result, if given.

A form whose room is small, and where neither the mixes nor the search take a resolvable part of
it, is a form where the search cannot be shown to beat uniform at 4 bits on this recipe.

Run: python benchmarks/bench_headroom.py artifacts/mbv2-fmnist/supernet \\
         --search-result mbv2-search-4bit-verify10k --result mbv2-headroom
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, with_malloc_settings, write_result

from eqtools.search.mixes import raise_cheap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("supernet", type=Path)
    parser.add_argument("--forms", default="all", help="comma-separated forms, or all")
    parser.add_argument("--high", default="5,6,8", help="bit-widths the cheapest layers are raised to")
    parser.add_argument("--low", type=int, default=3, help="bits the costliest layers go to (default 3)")
    parser.add_argument("--choose-images", type=int, default=10000, help="unseen images the best mix is chosen on")
    parser.add_argument("--search-result", default=None, metavar="NAME",
                        help="benchmarks/results/NAME.json of bench_predictor.py search, for its 4/4 picks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--result", default=None, metavar="NAME", help="write benchmarks/results/NAME.json")
    args = parser.parse_args(argv)
    with_malloc_settings()
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.search.costs import CostModel
    from eqtools.search.verify import VerifyBench
    from eqtools.stats import paired_bootstrap

    torch.set_num_threads(args.threads)
    art = read_artifact(args.supernet, "supernet")
    bench = VerifyBench.load(art)
    space = art.space
    costs = CostModel.for_space(space)
    test, unseen = bench.meter("test"), bench.meter("unseen", args.choose_images)
    highs = [int(h) for h in args.high.split(",")]
    searched: dict[str, Any] = {}
    if args.search_result:
        data = json.loads((ROOT / "benchmarks" / "results" / f"{args.search_result}.json").read_text())
        searched = {s["form"]: s["vs_uniform"] for s in data["figures"]["searches"] if s["budget"] == "4/4"}
    forms = ["/".join(f) for f in space.conditions] if args.forms == "all" else args.forms.split(",")
    four = np.full(costs.n_layers, 4, dtype=np.int64)
    mixes = {}
    for high in highs:
        w = raise_cheap(costs.params, high, args.low, 4)
        a = raise_cheap(costs.act_elems, high, args.low, 4)
        mixes.update({f"W cheap→{high}": (w, four), f"A cheap→{high}": (four, a), f"both cheap→{high}": (w, a)})

    def pts(x: float) -> str:
        return f"{100 * x:+.2f}"

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for form in forms:
        g, ws, as_ = form.split("/")
        uniform = {f"W{w}A{a}": test.measure(space.uniform(w, a, g, ws, as_), per_image=True)
                   for w, a in ((4, 4), (4, 8), (8, 4), (8, 8))}
        base_unseen = unseen.measure(space.uniform(4, 4, g, ws, as_))["top1"]
        on_unseen = {}
        for name, (w, a) in mixes.items():
            on_unseen[name] = unseen.measure(costs.config(w, a, g, ws, as_))["top1"] - base_unseen
        best = max(on_unseen, key=on_unseen.get)
        w, a = mixes[best]
        pick = test.measure(costs.config(w, a, g, ws, as_), per_image=True)
        vs = paired_bootstrap(pick["correct"], uniform["W4A4"]["correct"], seed=0)
        top1 = {k: v["top1"] for k, v in uniform.items()}
        rows.append({"form": form, "uniform_top1": top1, "mixes_on_unseen": on_unseen, "best_mix": best,
                     "best_mix_costs": costs.describe(w, a), "best_mix_vs_w4a4_test": vs,
                     "search_vs_w4a4_test": searched.get(form)})
        print(form, f"room {pts(top1['W8A8'] - top1['W4A4'])}", best, pts(vs["difference"]),
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    lines = [f"`{args.supernet}`, top-1 on the {test.evaluation.images} test images. Room: uniform W8A8, W4A8 and W8A4 "
             f"minus uniform W4A4. Mixes: the cheapest layers at {'/'.join(map(str, highs))} bits, paid for by the "
             f"costliest at {args.low}, averages ≤ 4 ({len(mixes)} mixes; the best chosen on {unseen.evaluation.images} "
             "unseen images), and the search's 4/4 pick; both minus W4A4, paired on test [95 % CI]. "
             f"{len(forms) * (len(mixes) + 6)} subnets measured in {time.perf_counter() - start:.0f} s.", "",
             "| form | W4A4 | room: W8A8 | W4A8 | W8A4 | best mix | its gain | search pick's gain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, v, s = r["uniform_top1"], r["best_mix_vs_w4a4_test"], r["search_vs_w4a4_test"]
        gain = f"{pts(v['difference'])} [{pts(v['ci_low'])}, {pts(v['ci_high'])}]"
        found = "n/a" if s is None else f"{pts(s['difference'])} [{pts(s['ci_low'])}, {pts(s['ci_high'])}]"
        lines.append(f"| {r['form']} | {100 * t['W4A4']:.2f} | {pts(t['W8A8'] - t['W4A4'])} | "
                     f"{pts(t['W4A8'] - t['W4A4'])} | {pts(t['W8A4'] - t['W4A4'])} | {r['best_mix']} | {gain} | {found} |")
    body = "\n".join(lines)
    print(body)
    if args.result:
        write_result(args.result, "how much of the 4-to-8-bit room can a 4-bit mix take, form by form?",
                     {"supernet": str(args.supernet), "high": highs, "low": args.low,
                      "choose_images": unseen.evaluation.images, "search_result": args.search_result,
                      "mixes": {k: [w.tolist(), a.tolist()] for k, (w, a) in mixes.items()}, "forms": rows},
                     body, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
