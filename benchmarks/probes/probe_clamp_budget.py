"""What a low-bit integer file would gain, and lose, without its range clamps and second sums.

Below 8 bits the deploy form runs two kinds of node that ``quantize_static``'s 8-bit model does not:
a ``Clip`` per b-bit value (onnxruntime's integer kernels saturate only at the ends of uint8, and a
b-bit code needs its top too) and a second ``QLinearAdd`` per residual sum (the sum rounded once
to the next conv's b-bit grid, beside its 8-bit copy for the shortcut). Both are the fake-quant
model's own arithmetic. This probe measures the price of leaving them out, on one exported file:

- how often each ``Clip`` changes a code (on test images);
- variants made by graph surgery: the clamps that bind on at most ``--bound`` of the codes
  dropped, or every clamp; and, where a conv's clamp is gone, its residual sum computed once on
  that conv's grid (codes up to 255), so the shortcut reads the sum at the conv's coarse step;
- for each: top-1 on the whole test split, agreement with the unchanged file, and latency against
  onnxruntime's ``quantize_static`` W8 model (``benchmarks/ort_static.py``), paired within rounds.

None of the variants is a product: they are timing and accuracy probes of a form eqtools does not
ship (see BENCHMARKS.md, "Issue 13, eighth pass").

Usage
  python benchmarks/probes/probe_clamp_budget.py artifacts/repro/eqnet EXPORT/model.onnx \
      --baseline /tmp/baselines/ort-w8.onnx [--bound 0.001] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # _record and bench_deploy live one level up

from _record import command_line, machine_line, paired_ratio, record, timing_arguments, with_malloc_settings
from bench_deploy import _latency, _logits, _session


def clip_rates(model: Any, batches: list[Any]) -> dict[str, float]:
    """Share of the codes each ``Clip`` changes, keyed by the Clip's output name."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    init = {i.name: numpy_helper.to_array(i) for i in probe.graph.initializer}
    clips = [n for n in probe.graph.node if n.op_type == "Clip"]
    for n in clips:
        probe.graph.output.append(helper.make_tensor_value_info(n.input[0], onnx.TensorProto.UINT8, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Clip input
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    changed = np.zeros(len(clips))
    total = 0
    for x in batches:
        outs = session.run(None, {"input": x.numpy()})[1:]
        for k, (n, codes) in enumerate(zip(clips, outs, strict=True)):
            lo, hi = int(init[n.input[1]]), int(init[n.input[2]])
            changed[k] += int(((codes < lo) | (codes > hi)).sum()) / codes.size
        total += 1
    return {n.output[0]: float(c / total) for n, c in zip(clips, changed, strict=True)}


def drop_clips(model: Any, names: set[str]) -> Any:
    """``model`` without the named ``Clip`` nodes (their readers read the unclamped codes)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    rename = {n.output[0]: n.input[0] for n in out.graph.node if n.op_type == "Clip" and n.output[0] in names}
    keep = [n for n in out.graph.node if n.output[0] not in rename]
    for n in keep:
        for i, value in enumerate(n.input):
            while value in rename:
                value = rename[value]
            n.input[i] = value
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def share_sums(model: Any) -> tuple[Any, int]:
    """Each second ``QLinearAdd`` (a sum recomputed on its conv's grid, named ``*.input.sum``) whose
    clamp is gone merged into the first: the first sum is produced on the conv's grid, and every reader
    of it (the shortcut's add, the pooling) reads it there. Returns the model and the sums merged."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    init = {i.name: i for i in g.initializer}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for value in n.input:
            readers.setdefault(value, []).append(n)
    adds = [n for n in g.node if n.op_type == "QLinearAdd"]
    rename: dict[str, str] = {}
    for second in adds:
        if not second.output[0].endswith(".input.sum") or any(r.op_type == "Clip" for r in readers.get(second.output[0], [])):
            continue
        first = next((f for f in adds if f is not second and f.input[0] == second.input[0]
                      and f.input[3] == second.input[3]), None)
        if first is None:
            continue
        scale, zero = (numpy_helper.to_array(init[second.input[k]]) for k in (6, 7))
        values, frontier = {first.output[0]}, [first.output[0]]
        while frontier:  # the first sum and what passes it on unchanged
            for r in readers.get(frontier.pop(), []):
                if r.op_type == "Identity" and r.output[0] not in values:
                    values.add(r.output[0])
                    frontier.append(r.output[0])
        sname, zname = f"{first.output[0]}.shared.scale", f"{first.output[0]}.shared.zero"
        g.initializer.extend([numpy_helper.from_array(scale, sname), numpy_helper.from_array(zero, zname)])
        first.input[6], first.input[7] = sname, zname
        for n in g.node:
            slots = {"QLinearAdd": ((0, 1, 2), (3, 4, 5)), "QLinearConv": ((0, 1, 2),),
                     "QLinearGlobalAveragePool": ((0, 1, 2),)}.get(n.op_type, ())
            for x, s, z in slots:
                if n is not first and n.input[x] in values:
                    n.input[s], n.input[z] = sname, zname
        rename[second.output[0]] = first.output[0]
    keep = [n for n in g.node if n.output[0] not in rename]
    for n in keep:
        for i, value in enumerate(n.input):
            n.input[i] = rename.get(value, value)
    del g.node[:]
    g.node.extend(keep)
    return out, len(rename)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the 'supernet' artifact the file was exported from (its test split)")
    parser.add_argument("model", type=Path, help="an exported deploy-form model.onnx")
    parser.add_argument("--baseline", type=Path, required=True,
                        help="onnxruntime's quantize_static W8 file (benchmarks/ort_static.py)")
    parser.add_argument("--bound", type=float, default=1e-3,
                        help="drop the clamps that change at most this share of their codes (default 0.001)")
    parser.add_argument("--rate-images", type=int, default=1000, help="test images for the clamp rates (default 1000)")
    timing_arguments(parser, rounds=12, min_runs=10, min_time=0.5)
    args = parser.parse_args(argv)
    with_malloc_settings()

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    ort.set_default_logger_severity(3)  # surgery leaves unused initializers; their warnings would bury the table
    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource

    spec = artifact_spec(read_artifact(args.source, "supernet"))
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    test = BatchSource(splits.test, 250)
    xs = [x for x, _ in test]
    labels = torch.cat([y for _, y in test]).numpy()
    rate_batches = [x for x, _ in BatchSource(splits.test.balanced(args.rate_images, spec.seed, "test"), 250)]

    base = onnx.load(str(args.model))
    rates = clip_rates(base, rate_batches)
    rare = {n for n, r in rates.items() if r <= args.bound}
    variants: list[tuple[str, Any]] = [("unchanged", base)]
    if 0 < len(rare) < len(rates):  # otherwise the same graphs as the unchanged file or the all-dropped ones
        variants.append((f"{len(rare)} of {len(rates)} clamps dropped (those changing <= {100 * args.bound:g} % of codes)",
                         drop_clips(base, rare)))
        shared, merged = share_sums(variants[-1][1])
        variants.append((f"{len(rare)} clamps dropped, {merged} sums on the conv's grid", shared))
    variants.append((f"every clamp dropped ({len(rates)})", drop_clips(base, set(rates))))
    shared, merged = share_sums(variants[-1][1])
    variants.append((f"every clamp dropped, {merged} sums on the conv's grid", shared))

    rows: list[dict[str, Any]] = []
    reference = None
    for label, model in variants:
        data = model.SerializeToString()
        session = _session(data, args.threads)
        pred = _logits(session, xs).argmax(1).numpy()
        reference = pred if reference is None else reference
        rows.append({"label": label, "session": session, "nodes": len(model.graph.node),
                     "top1": float((pred == labels).mean()), "agreement": float((pred == reference).mean())})
    baseline = _session(str(args.baseline), args.threads)
    sizes = (1, 64)
    times: dict[tuple[int, int], list[float]] = {}
    for r in range(args.rounds):
        for b in sizes:
            x = xs[0][:b] if b <= xs[0].shape[0] else xs[0].repeat(-(-b // xs[0].shape[0]), 1, 1, 1)[:b]
            order = [-1, *range(len(rows))]
            for k in order if r % 2 == 0 else order[::-1]:
                session = baseline if k == -1 else rows[k]["session"]
                times.setdefault((k, b), []).append(_latency(session, x, args.min_runs, args.min_time))
    load = os.getloadavg()

    lines = [
        f"File `{args.model}`; the {len(labels)} test images of `{args.source}`; clamp rates on {args.rate_images} "
        f"of them. Latency against `{args.baseline}` (`quantize_static` W8): onnxruntime {ort.__version__}, CPU, "
        f"ORT_ENABLE_ALL, {args.threads} intra-op threads, {args.rounds} rounds with the order reversed every other "
        f"round, median of the within-round ratios [IQR] (load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}). Variants are graph surgery on the file, not an eqtools form.",
        "",
        "| variant | nodes | top-1 % | agreement with the unchanged file % | quantize_static / file at batch 1 | at batch 64 |",
        "|---|---|---|---|---|---|",
    ]
    for k, row in enumerate(rows):
        lines.append(f"| {row['label']} | {row['nodes']} | {100 * row['top1']:.2f} | {100 * row['agreement']:.2f} | "
                     f"{paired_ratio(times[-1, 1], times[k, 1])} | {paired_ratio(times[-1, 64], times[k, 64])} |")
    shares = np.array(list(rates.values()))
    lines += ["", f"Codes each clamp changes: {100 * shares.min():.2f}-{100 * shares.max():.2f} % "
              f"(median {100 * float(np.median(shares)):.2f} %); "
              + ", ".join(f"`{n}` {100 * r:.2f} %" for n, r in rates.items())]
    body = "\n".join(lines)
    print(body)
    if args.record:
        record(f"probe: a low-bit file without its clamps and second sums: {args.model.parent.name}", command_line(),
               machine_line(args.threads, f", onnxruntime {ort.__version__}"), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
