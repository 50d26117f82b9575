"""How well does the accuracy predictor rank subnets? Measured against low-noise held-out labels.

Two cached sets of measured subnets, both from one supernet artifact:

- ``heldout``: every form's uniform subnets (W=A at --uniform-bits) plus a stratified draw with
  its own seed (--heldout-n, spread evenly over the forms), each calibrated like the sampler
  does (the same 512-image BN calibration) and evaluated on the full *test* split (10k images
  on Fashion-MNIST), with each image's correctness kept. The sampler labels its rows on the
  *val* split, so no held-out label comes from an image a training label used.
- ``heldout-spare``: the same held-out subnets on the *spare* training images: those a spec's
  ``train_subset`` leaves out and ``val`` does not hold (35k on r20-fmnist), so never trained on
  and never a training label's (``--images N``: a class-balanced N of them, fewer minutes).
  ``evaluate --spare`` scores against labels on test + spare (up to 45k images a subnet on
  r20-fmnist, which would cut the held-out labels' own noise 4.5-fold).
- ``pool``: what ``eqtools sample -n N`` measures (the same draw, calibration, val subset and
  batch size), with each image's correctness and loss kept, so labels from fewer images per
  subnet come from the same runs.

Both live under ``artifacts/bench-predictor/<supernet manifest sha256[:12]>/<set>/`` as one small
``.npz`` per subnet (a benchmark cache, not an eqtools artifact): a rerun skips what is there,
and a killed build resumes.

``evaluate`` then reports
  1. the noise ceiling: Kendall τ (and Pearson r) between the held-out subnets' top-1 on two
     disjoint random halves of the held-out images, pooled, within each form and within each
     budget window (average weight bits in 1-bit windows);
  2. each predictor variant fitted on the pool and scored on the held-out set: pooled τ and r,
     mean τ within a form, mean τ within a budget window, per form;
  3. learning curves of the default predictor: τ against the number of training subnets and
     against the images each training label was measured on.

Usage
  python benchmarks/bench_predictor.py build artifacts/repro/eqnet --set heldout
  python benchmarks/bench_predictor.py build artifacts/repro/eqnet --set pool -n 800
  python benchmarks/bench_predictor.py build artifacts/repro/eqnet --set heldout-spare [--images 15000]
  python benchmarks/bench_predictor.py evaluate artifacts/repro/eqnet [--spare [--spare-images 15000]] [--record]

The script re-executes itself with the glibc malloc settings of reference/NOTES.md and runs torch
on --threads threads (default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import MALLOC_ENV, ROOT, command_line, machine_line, record, write_result

from eqtools.vocab import VERIFY_SPLITS

HELDOUT_SEED = 20261201  # the held-out draw's seed: not the spec's seed, so no config is shared by accident
HALF_SEED = 7  # the random split of the held-out images into two halves
IMAGE_ORDER_SEED = 11  # the random order of a training label's images (for labels from fewer images)
MIN_CELL = 4  # subnets a (form, window) cell needs for its τ to count
SPARE_SEED_OFFSET = 13  # the draw of a spare-image subset (heldout-spare --images), apart from the pool's val draw
WINDOWS = ((2.0, 3.0), (3.0, 4.0), (4.0, 5.0), (5.0, 6.0), (6.0, 8.01))


def _cache_dir(supernet_path: Path, which: str, images: int | None = None, draw_seed: int | None = None) -> Path:
    """``heldout``, ``pool`` (the sampler's val subset per subnet), ``pool-<images>`` (more val images),
    each with ``-s<seed>`` for a pool drawn with another seed than the spec's (a second draw to add)."""
    from eqtools.artifacts import read_artifact

    art = read_artifact(supernet_path, "supernet")
    name = (f"{which}-{images}" if images else which) + (f"-s{draw_seed}" if draw_seed is not None else "")
    return ROOT / "artifacts" / "bench-predictor" / art.manifest_sha256[:12] / name


# ---------------------------------------------------------------------------------- building the sets
def _configs(space: Any, which: str, n: int, seed: int, uniform_bits: list[int]) -> list[Any]:
    from eqtools.sample import draw_configs

    if which == "pool":
        return draw_configs(space, n, seed=seed)
    uniform = [space.uniform(b, b, g, ws, as_) for b in uniform_bits for g, ws, as_ in _forms(space)]
    return uniform + draw_configs(space, n, seed=HELDOUT_SEED)


def _forms(space: Any) -> list[tuple[str, str, str]]:
    from eqtools.vocab import form_key

    return [tuple(form_key(*c).split("/")) for c in space.conditions]  # type: ignore[misc]


def build(args: argparse.Namespace) -> int:
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, SubnetMeter, calibration_source
    from eqtools.sample import EVAL_SEED_OFFSET

    torch.set_num_threads(args.threads)
    art = read_artifact(args.supernet, "supernet")
    spec = artifact_spec(art)
    s = spec.sample
    space = art.space
    if args.set == "pool":
        images = args.images if args.images not in (None, s.subset) else None
    elif args.set == "heldout-spare":  # a class-balanced subset of the spare images (default all of them)
        images = args.images
    else:
        images = None
    draw_seed = args.draw_seed if args.set == "pool" and args.draw_seed not in (None, spec.seed) else None
    out = _cache_dir(args.supernet, args.set, images, draw_seed)
    out.mkdir(parents=True, exist_ok=True)
    uniform_bits = [int(b) for b in args.uniform_bits.split(",")]
    n = args.n if args.n is not None else (s.n if args.set == "pool" else args.heldout_n)
    configs = _configs(space, args.set, n, spec.seed if draw_seed is None else draw_seed, uniform_bits)
    (out / "configs.json").write_text(json.dumps([c.to_dict() for c in configs]) + "\n")
    todo = [i for i in range(len(configs)) if not (out / f"{i:05d}.npz").is_file()]
    print(f"{args.set}: {len(configs)} subnets, {len(configs) - len(todo)} cached in {out}", flush=True)
    if args.shard:  # K/N: this process measures every N-th missing subnet (run N processes side by side)
        k, n_shards = (int(v) for v in args.shard.split("/"))
        if not 1 <= k <= n_shards:
            raise SystemExit(f"--shard {args.shard}: K counts from 1 to N (shards 1/{n_shards} .. {n_shards}/{n_shards})")
        todo = [i for i in todo if i % n_shards == k - 1]
    if not todo:
        return 0
    supernet = load_supernet(art).use_channels_last()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    calib = calibration_source(splits, s.calib_images, s.batch_size, spec.seed)
    if args.set == "pool":
        target = splits.val.balanced(images or s.subset, spec.seed + EVAL_SEED_OFFSET)
    elif args.set == "heldout-spare":  # the training images neither trained on nor in val (the pool's labels)
        target = splits.unseen.subset(torch.arange(len(splits.val), len(splits.unseen)), "spare")
        if not len(target):
            raise SystemExit("the spec has no data.train_subset, so no training image is spare")
        if images:
            if images >= len(target):
                raise SystemExit(f"--images {images}: the spec leaves {len(target)} spare images; ask for fewer")
            target = target.balanced(images, spec.seed + SPARE_SEED_OFFSET, "spare")
    else:
        target = splits.test
    evaluation = BatchSource(target, s.batch_size)
    meter = SubnetMeter(supernet, calib, evaluation, compile=args.compile)
    (out / "meta.json").write_text(json.dumps({
        "split": {"pool": "val", "heldout": "test", "heldout-spare": "spare"}[args.set], "images": evaluation.images, "calib_images": calib.images,
        "batch_size": s.batch_size, "compiled": args.compile, "supernet": str(art.path)}) + "\n")
    start = time.perf_counter()
    for done, i in enumerate(todo, start=1):
        t = time.perf_counter()
        r = meter.measure(configs[i], per_image=True)
        np.savez(out / f".{i:05d}.tmp.npz", correct=r["correct"], loss=r["image_loss"].astype(np.float32),
                 time_s=np.float64(time.perf_counter() - t))
        os.replace(out / f".{i:05d}.tmp.npz", out / f"{i:05d}.npz")
        if done % 10 == 0 or done == len(todo):
            rate = 60 * done / (time.perf_counter() - start)
            print(f"{done}/{len(todo)} ({rate:.1f} subnets/min, recompiles {meter.recompiles})", flush=True)
    return 0


def _load_pools(supernet: Path, images: int | None, extra_seeds: list[int]) -> tuple[list[Any], np.ndarray, np.ndarray, dict[str, Any]]:
    """The pool, plus the pools drawn with ``extra_seeds`` (a config measured twice is kept once)."""
    cfg, correct, loss, meta = _load(supernet, "pool", images)
    for seed in extra_seeds:
        c2, k2, l2, _ = _load(supernet, "pool", images, seed)
        seen = {c.to_json(indent=None) for c in cfg}
        new = [i for i, c in enumerate(c2) if c.to_json(indent=None) not in seen]
        cfg += [c2[i] for i in new]
        correct, loss = np.concatenate([correct, k2[new]]), np.concatenate([loss, l2[new]])
    return cfg, correct, loss, meta


def _load(supernet: Path, which: str, images: int | None = None,
          draw_seed: int | None = None) -> tuple[list[Any], np.ndarray, np.ndarray, dict[str, Any]]:
    from eqtools.space import SubnetConfig

    d = _cache_dir(supernet, which, images, draw_seed)
    configs = [SubnetConfig.from_dict(c) for c in json.loads((d / "configs.json").read_text())]
    have = [i for i in range(len(configs)) if (d / f"{i:05d}.npz").is_file()]
    correct = []
    loss = []
    for i in have:
        with np.load(d / f"{i:05d}.npz") as z:
            correct.append(z["correct"])
            loss.append(z["loss"])
    meta = json.loads((d / "meta.json").read_text())
    return [configs[i] for i in have], np.stack(correct), np.stack(loss), meta


# ---------------------------------------------------------------------------------- scoring
def _tau(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy import stats

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.kendalltau(a, b).statistic)


def _r(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy import stats

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.pearsonr(a, b).statistic)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def ranking_scores(measured: np.ndarray, predicted: np.ndarray, forms: np.ndarray, avg_w: np.ndarray) -> dict[str, Any]:
    """Pooled τ and r, τ within each form and each average-weight-bit window (and their means)."""
    per_form = {f: _tau(measured[forms == f], predicted[forms == f]) for f in sorted(set(forms.tolist()))}
    per_window = {}
    for lo, hi in WINDOWS:
        mask = (avg_w >= lo) & (avg_w < hi)
        per_window[f"{lo:g}-{min(hi, 8):g}"] = _tau(measured[mask], predicted[mask]) if mask.sum() >= 3 else None
    cells = []  # within one form and one window: what one search compares
    for f in per_form:
        for lo, hi in WINDOWS:
            mask = (forms == f) & (avg_w >= lo) & (avg_w < hi)
            if mask.sum() >= MIN_CELL:
                cells.append(_tau(measured[mask], predicted[mask]))
    return {"tau": _tau(measured, predicted), "r": _r(measured, predicted), "per_form": per_form,
            "tau_form_mean": _mean(list(per_form.values())), "per_window": per_window,
            "tau_window_mean": _mean(list(per_window.values())), "tau_cell_mean": _mean(cells),
            "cells": len([c for c in cells if c is not None])}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def evaluate(args: argparse.Namespace) -> int:
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.predictor.compare import VARIANTS, fit_variant

    torch.set_num_threads(args.threads)
    art = read_artifact(args.supernet, "supernet")
    space = art.space
    h_cfg, h_correct, _, h_meta = _load(args.supernet, "heldout")
    if args.spare:  # the same subnets on the spare training images too: labels on test + spare
        s_cfg, s_correct, _, s_meta = _load(args.supernet, "heldout-spare", args.spare_images)
        if [c.to_json(indent=None) for c in s_cfg] != [c.to_json(indent=None) for c in h_cfg]:
            raise SystemExit("heldout-spare does not hold the held-out subnets (build both sets completely)")
        parts = {f"test ({h_meta['images']})": h_correct.mean(axis=1), f"spare ({s_meta['images']})": s_correct.mean(axis=1)}
        h_correct = np.concatenate([h_correct, s_correct], axis=1)
        h_meta = {**h_meta, "images": h_meta["images"] + s_meta["images"], "split": "test + spare"}
    else:
        parts = {}
    label_images = f"{h_meta['split']} images"
    p_cfg, p_correct, p_loss, p_meta = _load_pools(args.supernet, args.pool_images, args.extra_pools)
    h_acc = h_correct.mean(axis=1)
    h_forms = np.asarray([c.condition for c in h_cfg])
    h_avg_w = np.asarray([space.avg_bits(c)[0] for c in h_cfg])
    held_keys = {c.to_json(indent=None) for c in h_cfg}
    keep = np.asarray([c.to_json(indent=None) not in held_keys for c in p_cfg])
    overlap = int((~keep).sum())
    p_cfg = [c for c, k in zip(p_cfg, keep) if k]
    p_correct, p_loss = p_correct[keep], p_loss[keep]
    lines = [
        f"held-out: {len(h_cfg)} subnets ({sum(1 for c in h_cfg if _is_uniform(space, c))} uniform) × "
        f"{h_meta['images']} {h_meta['split']} images each; training pool: {len(p_cfg)} subnets × "
        f"{p_meta['images']} {p_meta['split']} images (sampler protocol; {overlap} config(s) also in the held-out set "
        "dropped)",
        "",
    ]

    # 1. noise ceiling: two disjoint halves of the held-out images
    rng = np.random.default_rng(HALF_SEED)
    order = rng.permutation(h_correct.shape[1])
    half_a = h_correct[:, order[: len(order) // 2]].mean(axis=1)
    half_b = h_correct[:, order[len(order) // 2:]].mean(axis=1)
    ceiling = ranking_scores(half_a, half_b, h_forms, h_avg_w)
    lines += [
        f"Noise ceiling (top-1 on one random half of the {label_images} against the other half, same subnets):",
        "",
        "| pooled τ | pooled r | mean τ within a form | mean τ within a budget window | mean τ within form × window |",
        "|---|---|---|---|---|",
        f"| {_fmt(ceiling['tau'])} | {_fmt(ceiling['r'])} | {_fmt(ceiling['tau_form_mean'])} | "
        f"{_fmt(ceiling['tau_window_mean'])} | {_fmt(ceiling['tau_cell_mean'])} ({ceiling['cells']} cells) |",
        "",
        "Within each form: " + ", ".join(f"{f} {_fmt(t)}" for f, t in ceiling["per_form"].items()),
        "",
        "Within each window of average weight bits (all forms): "
        + ", ".join(f"{w} {_fmt(t)}" for w, t in ceiling["per_window"].items()),
        "",
    ]

    # 2. predictor variants, all on the same pool and held-out set
    p_acc = p_correct.mean(axis=1)
    p_mean_loss = p_loss.mean(axis=1)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    lines += [
        f"Predictors fitted on {len(p_cfg)} pool subnets, scored on the {len(h_cfg)} held-out subnets' labels "
        f"({h_meta['images']} {label_images}):",
        "",
        "| variant | pooled τ | pooled r | mean τ in a form | mean τ in a window | mean τ in form × window | "
        f"pooled τ against a {h_correct.shape[1] // 2}-image half (ceiling {_fmt(ceiling['tau'])}) | fit time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results: dict[str, Any] = {}
    by_part: dict[str, list[str]] = {}
    for name in variants:
        t = time.perf_counter()
        pred = fit_variant(name, space, p_cfg, p_acc, p_mean_loss, seed=0).predict(h_cfg)
        fit_s = time.perf_counter() - t
        sc = ranking_scores(h_acc, pred, h_forms, h_avg_w)
        results[name] = sc
        by_part[name] = [f"{_fmt(_tau(acc, pred))} / {_fmt(_r(acc, pred))}" for acc in parts.values()]
        vs_half = _mean([_tau(half_a, pred), _tau(half_b, pred)])  # the same label noise as the ceiling's
        lines.append(f"| {name} | {_fmt(sc['tau'])} | {_fmt(sc['r'])} | {_fmt(sc['tau_form_mean'])} | "
                     f"{_fmt(sc['tau_window_mean'])} | {_fmt(sc['tau_cell_mean'])} | {_fmt(vs_half)} | {fit_s:.1f} s |")
        print(lines[-1], flush=True)
    if parts:  # the same predictions against each part of the labels on its own
        lines += ["", "Pooled τ / r of each variant against the labels of each split alone (images per subnet):", "",
                  "| variant | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in by_part.items()]
    lines += ["", "τ within each form, per variant:", "",
              "| variant | " + " | ".join(sorted(set(h_forms.tolist()))) + " |",
              "|---|" + "---|" * len(set(h_forms.tolist()))]
    for name, sc in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in sc["per_form"].values()) + " |")
    lines += ["", "τ within each window of average weight bits, per variant:", "",
              "| variant | " + " | ".join(results[variants[0]]["per_window"]) + " |",
              "|---|" + "---|" * len(WINDOWS)]
    for name, sc in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in sc["per_window"].values()) + " |")

    # 3. learning curves of one variant
    curve = args.curve_variant
    rng = np.random.default_rng(IMAGE_ORDER_SEED)
    img_order = rng.permutation(p_correct.shape[1])
    lines += ["", f"Learning curve of `{curve}` (pooled τ / mean τ within a form on the held-out set):", "",
              "| training subnets \\ images per label | " + " | ".join(str(k) for k in args.curve_images) + " |",
              "|---|" + "---|" * len(args.curve_images)]
    for n in args.curve_n:
        if n > len(p_cfg):
            continue
        cells = []
        for k in args.curve_images:
            cols = img_order[:k]
            acc = p_correct[:n][:, cols].mean(axis=1)
            loss = p_loss[:n][:, cols].mean(axis=1)
            pred = fit_variant(curve, space, p_cfg[:n], acc, loss, seed=0).predict(h_cfg)
            sc = ranking_scores(h_acc, pred, h_forms, h_avg_w)
            cells.append(f"{_fmt(sc['tau'])} / {_fmt(sc['tau_form_mean'])}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    if args.result:
        write_result(args.result, f"predictor ranking against held-out labels on {h_meta['images']} {h_meta['split']} "
                     f"images (`{art.path}`)",
                     {"supernet": str(art.path), "heldout_subnets": len(h_cfg), "label_images": h_meta["images"],
                      "label_split": h_meta["split"], "pool_subnets": len(p_cfg), "pool_images": p_meta["images"],
                      "ceiling": ceiling, "variants": results}, "\n".join(lines), threads=args.threads)
    return _finish(args, f"predictor ranking against low-noise held-out labels: `{art.path}`", lines)


def search(args: argparse.Namespace) -> int:
    """Search at each budget and form with a predictor fitted on the pool, --verify, and the paired
    test-split difference of the pick against uniform (bootstrap 95 % CI)."""
    import torch

    from eqtools.artifacts import read_artifact
    from eqtools.predictor.compare import VARIANTS, fit_variant
    from eqtools.predictor.model import Predictor
    from eqtools.search import SearchOptions, run_search
    from eqtools.search.verify import VerifyBench, selection_pair, verify_outcome
    from eqtools.space import SubnetConfig
    from eqtools.stats import paired_bootstrap

    torch.set_num_threads(args.threads)
    art = read_artifact(args.supernet, "supernet")
    space = art.space
    p_cfg, p_correct, p_loss, _ = _load_pools(args.supernet, args.pool_images, args.extra_pools)
    fitted = fit_variant(args.variant, space, p_cfg, p_correct.mean(axis=1), p_loss.mean(axis=1), seed=0)
    settings, _ = VARIANTS[args.variant]
    predictor = Predictor(settings["model"], fitted.encoding, fitted.regressor, space)
    lines = [f"Search with `{args.variant}` fitted on {len(p_cfg)} pool subnets; GA population {args.population} × "
             f"{args.generations} generations, top-{args.top_k} + uniform verified on the {args.verify_split} split, then pick and "
             "uniform measured on the full test split (paired bootstrap, 2000 resamples)."
             + (" With --choice-ci the pick and uniform are also measured image by image on unseen, whose first "
                "images are val's, and the same interval is taken on each: how well the split --verify chose on "
                "resolves the difference it chose by." if args.choice_ci else ""), "",
             "| form | budget W/A | pick | pick top-1 (test) | uniform top-1 (test) | pick − uniform [95 % CI] (points) |"
             + (" on val | on unseen |" if args.choice_ci else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if args.choice_ci else "")]
    bench = VerifyBench.load(art)  # one load of the supernet and its data for every search below
    _cache_measurements(bench, _cache_dir(args.supernet, "measured"))
    unseen = bench.meter("unseen") if args.choice_ci and args.verify_split != "unseen" else None

    def interval(a: np.ndarray, b: np.ndarray) -> str:
        v = paired_bootstrap(a, b, seed=0)
        return f"{100 * v['difference']:+.2f} [{100 * v['ci_low']:+.2f}, {100 * v['ci_high']:+.2f}]"

    from eqtools.search.costs import CostModel

    costs = CostModel.for_space(space)
    forms = ["/".join(f) for f in space.conditions] if args.forms == "all" else args.forms.split(",")
    figures: list[dict[str, Any]] = []
    for form in forms:
        g, ws, as_ = form.split("/")
        budgets = [(f"{bits:g}/{bits:g}", f"{bits:g}", {"w_bits": bits}) for bits in args.bits]
        for bits in args.size_of_uniform:  # weights under uniform W<bits>'s packed size, activations in (bits - 0.5, bits]
            size = costs.describe(*costs.bits_of(space.uniform(bits, bits, g, ws, as_)))["size_bytes"]
            budgets.append((f"size ≤ W{bits} ({size / 1e6:.4f} MB)/{bits}", f"size-w{bits}",
                            {"max_size_mb": size / 1e6, "a_bits": bits}))
        for name, slug, budget in budgets:
            t = time.perf_counter()
            outcome = run_search(predictor, SearchOptions(**budget, granularity=g, w_symmetry=ws, a_symmetry=as_,
                                                          population=args.population, generations=args.generations,
                                                          top_k=args.top_k))
            verify_outcome(outcome, art, split=args.verify_split, eval_images=args.verify_images, bench=bench)
            v = outcome.vs_uniform
            what = "uniform" if v["pick_is_uniform"] else f"mixed {outcome.best_costs['avg_w_bits']:.2f}/" \
                f"{outcome.best_costs['avg_a_bits']:.2f}"
            figures.append({"form": form, "budget": name, "options": budget, "pick_is_uniform": v["pick_is_uniform"],
                            "pick_avg_w_bits": outcome.best_costs["avg_w_bits"], "pick_avg_a_bits": outcome.best_costs["avg_a_bits"],
                            "pick_size_bytes": outcome.best_costs["size_bytes"],
                            "uniform_bits": outcome.uniform_baseline["uniform_bits"],
                            "pick_config": outcome.best.to_dict(), "vs_uniform": v,
                            "selection": outcome.vs_uniform_selection,
                            "verified": [{k: r[k] for k in ("predicted_rank", "predicted_accuracy", "measured_top1",
                                                            "eval_images", "split", "source") if k in r}
                                         for r in outcome.verified]})
            lines.append(f"| {form} | {name} | {what} | {100 * v['pick_top1']:.2f}% | "
                         f"{100 * v['uniform_top1']:.2f}% | {100 * v['difference']:+.2f} [{100 * v['ci_low']:+.2f}, "
                         f"{100 * v['ci_high']:+.2f}] |")
            if args.choice_ci and v["pick_is_uniform"]:
                lines[-1] += " 0 | 0 |"
            elif args.choice_ci:
                if args.verify_split == "unseen":  # the verification's own per-image results, unseen's order
                    a, b, _ = selection_pair(outcome)
                else:
                    uniform = SubnetConfig.from_dict(outcome.uniform_baseline["config"])
                    a = unseen.measure(outcome.best, per_image=True)["correct"]
                    b = unseen.measure(uniform, per_image=True)["correct"]
                n_val = len(bench.splits.val)
                lines[-1] += f" {interval(a[:n_val], b[:n_val])} | {interval(a, b)} |"
            print(lines[-1], f"({time.perf_counter() - t:.0f} s)", flush=True)
            if args.save_picks is not None:
                args.save_picks.mkdir(parents=True, exist_ok=True)
                (args.save_picks / f"{g}-{ws}-{as_}-{slug}.json").write_text(outcome.best.to_json() + "\n")
    if not args.choice_ci:
        lines = _by_form(lines[0], figures)
    wins = [f for f in figures if f["vs_uniform"]["ci_low"] > 0 and f["vs_uniform"]["difference"] >= 0.005]
    lines += ["", f"Pick beats uniform by ≥ 0.5 points with a 95 % interval above zero in {len(wins)} of {len(figures)} "
              "searches: " + (", ".join(f"{f['form']} {f['budget']}" for f in wins) or "none") + "."]
    if args.result:
        write_result(args.result, f"search vs uniform at fixed budgets, paired on test images (`{art.path}`)",
                     {"supernet": str(art.path), "variant": args.variant, "pool_subnets": len(p_cfg),
                      "verify_split": args.verify_split, "verify_images": args.verify_images, "top_k": args.top_k,
                      "population": args.population, "generations": args.generations, "searches": figures},
                     "\n".join(lines), threads=args.threads)
    return _finish(args, f"search vs uniform, paired on test images: `{art.path}`", lines)


def _by_form(intro: str, figures: list[dict[str, Any]]) -> list[str]:
    """The searches as one row per form and one column per budget, each cell pick minus uniform on the
    test split [95 % CI]: a third of the lines of a row per search, so the whole table fits in
    BENCHMARKS.md; each pick's bits and both top-1 figures stay in the result's figures."""
    budgets = list(dict.fromkeys(f["budget"] for f in figures))
    cells: dict[str, dict[str, str]] = {}
    for f in figures:
        v = f["vs_uniform"]
        cells.setdefault(f["form"], {})[f["budget"]] = "uniform kept" if v["pick_is_uniform"] else \
            f"{100 * v['difference']:+.2f} [{100 * v['ci_low']:+.2f}, {100 * v['ci_high']:+.2f}]"
    return [intro + " Each cell: pick − uniform on the test split, points [95 % CI]; \"uniform kept\": --verify "
            "measured no candidate above the uniform subnet.", "",
            "| form | " + " | ".join(budgets) + " |", "|---|" + "---|" * len(budgets),
            *(f"| {form} | " + " | ".join(row.get(b, "n/a") for b in budgets) + " |" for form, row in cells.items())]


def _cache_measurements(bench: Any, cache: Path) -> None:
    """Make every meter of ``bench`` keep each subnet's per-image results under ``cache`` and reuse them.

    A search measures the uniform config of its budget on the test split, and the same uniform
    config recurs across budgets (W4A4 at 4 bits and at uniform W4's size); searches split over
    several processes (``--forms``) then merged into one result by a run over all forms meet the
    same subnets again. The key is the config, the split, the image count and the calibration
    images, so a hit is the same measurement.
    """
    import hashlib

    make = bench.meter

    def meter(split: str, eval_images: int | None = None) -> Any:
        m = make(split, eval_images)
        measure = m.measure

        def cached(config: Any, per_image: bool = False) -> dict[str, Any]:
            key = f"{config.to_json(indent=None)}|{split}|{eval_images}|{bench.calib.images}"
            path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
            if path.is_file():
                with np.load(path) as z:
                    return {"top1": float(z["top1"]), "loss": float(z["loss"]), "images": int(z["images"]),
                            "correct": z["correct"], "image_loss": z["image_loss"]}
            r = measure(config, per_image=True)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, top1=r["top1"], loss=r["loss"], images=r["images"], correct=r["correct"], image_loss=r["image_loss"])
            os.replace(tmp, path)
            return r

        m.measure = cached
        return m

    bench.meter = meter


def _finish(args: argparse.Namespace, title: str, lines: list[str]) -> int:
    """Print the result and, with --record, append it to BENCHMARKS.md under ``title``."""
    body = "\n".join(lines) + "\n"
    print(body)
    if args.record:
        record(title, command_line(), machine_line(args.threads, "; shared with other jobs"), body,
               name="search_vs_uniform" if title.startswith("search vs uniform") else "predictor")
    return 0


def _is_uniform(space: Any, config: Any) -> bool:
    elastic = [i for i, layer in enumerate(space.quantized_layers) if not layer.fixed]
    return len({config.w_bits[i] for i in elastic}) == 1 and len({config.a_bits[i] for i in elastic}) == 1


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    """Which training pool evaluate and search fit on."""
    parser.add_argument("--pool-images", type=int, default=None, help="the pool built with --images N (default: the spec's)")
    parser.add_argument("--extra-pools", type=lambda v: [int(x) for x in v.split(",")], default=[],
                        help="comma-separated --draw-seed values of pools to add to the training pool")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="measure (and cache) the held-out set or the training pool")
    b.add_argument("supernet", type=Path)
    b.add_argument("--set", choices=["heldout", "heldout-spare", "pool"], required=True,
                   help="heldout-spare: the held-out subnets again, on the training images the supernet never "
                        "trained on and the pool's labels do not use (labels on test + spare with evaluate "
                        "--spare)")
    b.add_argument("-n", type=int, default=None, help="pool: subnets (default the spec's sample.n); heldout: drawn subnets")
    b.add_argument("--heldout-n", type=int, default=80, help="held-out stratified draws besides the uniform ones (default 80)")
    b.add_argument("--uniform-bits", default="2,3,4,6,8", help="held-out uniform W=A bit-widths, every form (default 2,3,4,6,8)")
    b.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="compiled evaluation (default on)")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--images", type=int, default=None,
                   help="pool: val images per subnet (default the spec's sample.subset); heldout-spare: a class-balanced "
                        "subset of this many spare images (default all)")
    b.add_argument("--draw-seed", type=int, default=None, help="pool: draw with this seed (a second pool to add with --extra-pools)")
    b.add_argument("--shard", default=None, help="K/N, K = 1..N: measure every N-th missing subnet (N processes side by side)")
    e = sub.add_parser("evaluate", help="noise ceiling, predictor variants, learning curves")
    e.add_argument("supernet", type=Path)
    _pool_arguments(e)
    e.add_argument("--variants", default=None, help="comma-separated variants (default: all)")
    e.add_argument("--spare", action="store_true",
                   help="held-out labels on test + the spare training images (build --set heldout-spare first)")
    e.add_argument("--spare-images", type=int, default=None,
                   help="with --spare: the heldout-spare set built with --images N (default: all spare images)")
    e.add_argument("--curve-variant", default="mlp")
    e.add_argument("--curve-n", type=lambda s: [int(v) for v in s.split(",")], default=[100, 200, 400, 800])
    e.add_argument("--curve-images", type=lambda s: [int(v) for v in s.split(",")], default=[250, 500, 1000, 2000])
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    e.add_argument("--result", default=None, metavar="NAME", help="write benchmarks/results/NAME.json")
    s = sub.add_parser("search", help="searched vs uniform at a budget, paired on test images")
    s.add_argument("supernet", type=Path)
    _pool_arguments(s)
    s.add_argument("--variant", default="ensemble")
    s.add_argument("--forms", default="per-channel/sym/sym", help="comma-separated forms, or all")
    s.add_argument("--bits", type=lambda v: [float(b) for b in v.split(",")], default=[3.0, 4.0])
    s.add_argument("--size-of-uniform", type=lambda v: [int(b) for b in v.split(",")], default=[],
                   help="also search under the packed weight size of uniform W<B> (--max-size-mb) with activations at B bits")
    s.add_argument("--verify-images", type=int, default=None,
                   help="--verify on a class-balanced subset of this many --verify-split images (default all)")
    s.add_argument("--result", default=None, metavar="NAME", help="write benchmarks/results/NAME.json")
    s.add_argument("--population", type=int, default=100)
    s.add_argument("--generations", type=int, default=500)
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--verify-split", choices=list(VERIFY_SPLITS), default="unseen", help="what --verify chooses on (default unseen)")
    s.add_argument("--choice-ci", action="store_true",
                   help="also the pick − uniform interval on val and on unseen (two more evaluations on unseen a search)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--save-picks", type=Path, default=None, metavar="DIR",
                   help="write each pick as DIR/<form>-<bits>.json (a SubnetConfig, e.g. for bench_deploy --config)")
    s.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    return {"build": build, "evaluate": evaluate, "search": search}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
