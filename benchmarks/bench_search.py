"""Benchmark `eqtools fit-predictor` and `eqtools search` on a samples artifact.

Measures
  1. predictor quality, MLP vs xgboost (each with the one-hot and the ordinal encoding unless
     --models/--encodings narrow it): Pearson r, Kendall τ and RMSE on the 20 % held-out split,
     overall and the mean of the per-condition τ (the ranking the search relies on), and fit time;
  2. the genetic search's wall time with the MLP predictor at the paper's size (population 100 x
     500 generations; target: under 15 s on 2 cores), best of --repeats runs;
  3. with --measure (needs the supernet the samples came from, or --supernet): the searched
     mixed-precision subnet at a --w-bits average vs the uniform subnet at the same bits, both
     BN-calibrated and evaluated on the test split.

Usage
  python benchmarks/bench_search.py artifacts/quick/samples                      # print the results
  python benchmarks/bench_search.py artifacts/quick/samples --measure --record    # and append to BENCHMARKS.md
  python benchmarks/bench_search.py --synthetic                                  # no samples: a synthetic law

Run it on a quiet machine: other processes on the same cores distort every time measured here.
The script re-executes itself with the glibc malloc settings of reference/NOTES.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import MALLOC_ENV, ROOT, append, cpu_name


def _machine() -> str:
    import numpy
    import torch
    import xgboost

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu_name()}, {cores} usable cores, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"xgboost {xgboost.__version__}, {platform.system()} {platform.release()}, Python {platform.python_version()}")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _mean_condition_tau(metrics: dict) -> float | None:
    taus = [row["kendall_tau"] for row in metrics.get("per_condition", {}).values() if row["kendall_tau"] is not None]
    return statistics.fmean(taus) if taus else None


def _samples(args: argparse.Namespace, tmp: Path):
    from eqtools.artifacts import read_artifact

    if not args.synthetic:
        return read_artifact(args.samples, "samples"), False
    from eqtools.build import build_supernet, resolve_spec
    from eqtools.predictor.synthetic import write_synthetic_samples
    from eqtools.sample import draw_configs
    from eqtools.specs import load_spec

    spec = resolve_spec(load_spec(args.spec))
    space = build_supernet(spec, pretrained=False).space
    configs = draw_configs(space, spec.sample.n, seed=spec.seed)
    art = write_synthetic_samples(tmp / "samples", space, spec.sample.n, seed=spec.seed, spec=spec.to_dict(),
                                  configs=configs)
    return art, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="?", type=Path, help="samples artifact directory")
    parser.add_argument("--synthetic", action="store_true",
                        help="no samples artifact: draw the spec's sample.n configs and score them with a synthetic law")
    parser.add_argument("--spec", type=Path, default=ROOT / "specs/quick.json", help="spec for --synthetic")
    parser.add_argument("--models", default="mlp,xgb")
    parser.add_argument("--encodings", default="onehot,ordinal")
    parser.add_argument("--w-bits", type=float, default=3.0, help="search budget (average weight and activation bits)")
    parser.add_argument("--granularity", default="per-tensor")
    parser.add_argument("--symmetry", default="asym")
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="GA timing runs (the best is reported)")
    parser.add_argument("--measure", action="store_true",
                        help="calibrate + evaluate the searched and the uniform subnet on the supernet (test split)")
    parser.add_argument("--supernet", type=Path, help="supernet for --measure (default: the samples' parent)")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.samples is None and not args.synthetic:
        parser.error("give a samples artifact directory, or --synthetic")
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

    from eqtools.predictor import FitOptions, fit_predictor, load_predictor
    from eqtools.search import SearchOptions, run_search

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        samples, synthetic = _samples(args, tmp)
        synthetic = synthetic or bool(samples.metrics.get("synthetic"))
        n_rows = samples.metrics.get("n") or sum(1 for _ in open(samples.path / "samples.jsonl"))
        rows = []
        fitted = {}
        for model in [m for m in args.models.split(",") if m]:
            for encoding in [e for e in args.encodings.split(",") if e]:
                options = FitOptions.from_spec(samples.spec, model=model, encoding=encoding)
                art = fit_predictor(samples, tmp / f"predictor-{model}-{encoding}", options)
                fitted[(model, encoding)] = art
                m = art.metrics
                rows.append(f"| {model} | {encoding} | {_fmt(m['pearson'])} | {_fmt(m['kendall_tau'])} | "
                            f"{_fmt(_mean_condition_tau(m))} | {100 * m['rmse']:.2f} | {m['fit_time_s']:.1f} s |")
                print(rows[-1], file=sys.stderr, flush=True)

        mlp = fitted.get(("mlp", "onehot")) or next((a for (mo, _), a in fitted.items() if mo == "mlp"), None)
        lines = [
            f"### fit-predictor + search: samples `{samples.path}`{' (synthetic accuracy law)' if synthetic else ''}, "
            f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            "",
            f"- command: `{command}`",
            f"- machine: {_machine()}",
            f"- samples: {n_rows} subnets, spec '{samples.spec.get('name')}' ({(samples.spec.get('model') or {}).get('name')}), "
            f"held-out 20 % by seed {samples.spec.get('seed', 0)}",
            "",
            "| predictor | encoding | Pearson r | Kendall τ | mean τ within a condition | RMSE (points) | fit time |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
        outcome = None
        if mlp is not None:
            predictor = load_predictor(mlp.path)
            opts = SearchOptions(w_bits=args.w_bits, granularity=args.granularity, symmetry=args.symmetry,
                                 population=args.population, generations=args.generations)
            times: list[float] = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                outcome = run_search(predictor, opts)
                times.append(time.perf_counter() - start)
            base = outcome.uniform_baseline
            uniform = "n/a" if base is None else f"{100 * base['predicted_accuracy']:.2f}%"
            lines += [
                "",
                f"GA with the MLP predictor (one-hot), population {args.population} x {args.generations} generations, "
                f"W/A budget {args.w_bits:g} bits at {args.granularity}/{args.symmetry} (target: < 15 s on 2 cores):",
                "",
                "| measure | value |",
                "|---|---|",
                f"| wall time, best of {args.repeats} (median) | {min(times):.2f} s ({statistics.median(times):.2f} s) |",
                f"| configs scored | {outcome.evaluations} |",
                f"| predicted top-1: searched / uniform | {100 * outcome.best_predicted:.2f}% / {uniform} |",
            ]
        if args.measure and outcome is not None and not synthetic:
            lines += _measure(args, samples, predictor, outcome)

    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        append(text)
    return 0


def _measure(args: argparse.Namespace, samples, predictor, outcome) -> list[str]:
    """Searched vs uniform subnet at the same budget, both calibrated, top-1 on the test split."""
    from eqtools.artifacts import read_artifact
    from eqtools.build import load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import measure_subnet as calibrate_subnet
    from eqtools.search.verify import find_supernet
    from eqtools.specs import parse_spec

    supernet_art = read_artifact(args.supernet, "supernet") if args.supernet else None
    if supernet_art is None:
        parent = next((p for p in samples.manifest.get("parents", []) if p.get("kind") == "supernet"), None)
        supernet_art = read_artifact(parent["path"], "supernet") if parent else find_supernet(predictor)
    spec = parse_spec(supernet_art.spec)
    supernet = load_supernet(supernet_art)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    out = ["", f"Measured after BN calibration (top-1 on the test split, supernet `{supernet_art.path}`):", "",
           "| subnet | avg W / A bits | predicted | measured |", "|---|---|---|---|"]
    candidates = [("searched (mixed)", outcome.best, outcome.best_predicted)]
    if outcome.uniform_baseline is not None:
        from eqtools.space import SubnetConfig

        u = outcome.uniform_baseline
        candidates.append(("uniform", SubnetConfig.from_dict(u["config"]), u["predicted_accuracy"]))
    for label, config, predicted in candidates:
        _, m = calibrate_subnet(supernet_art, config, split="test", supernet=supernet, splits=splits)
        w, a = supernet_art.space.avg_bits(config)
        out.append(f"| {label} | {w:.2f} / {a:.2f} | {100 * predicted:.2f}% | {100 * m['top1']:.2f}% |")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
