"""One search from options to a ``search`` artifact: resolve conditions, check the budget, run the
GA (or NSGA-II, or take the uniform config), collect the front and the top configs, write files.

The artifact's ``best_config.json`` is exactly :meth:`SubnetConfig.to_json` of the chosen config,
so ``eqtools calibrate --config`` and ``eqtools export`` read it like any config file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqtools.artifacts import Artifact, write_artifact
from eqtools.artifacts import Search as SearchArtifact
from eqtools.errors import ConfigError, InfeasibleError
from eqtools.predictor.model import Predictor
from eqtools.presets import resolve_conditions
from eqtools.search.constraints import Budget, Feasibility, check_budget
from eqtools.search.costs import CostModel
from eqtools.search.ga import run_ga
from eqtools.search.mixes import cheap_first_mixes
from eqtools.search.pareto import pareto_front, plot_front, run_nsga2
from eqtools.space import SubnetConfig
from eqtools.vocab import form_key, form_label, form_tag

Form = tuple[str, str, str]  # (granularity, w_symmetry, a_symmetry)

__all__ = ["COSTS", "SearchOptions", "SearchOutcome", "run_search", "search_tag", "write_search"]

COSTS: dict[str, str] = {"bits": "average bits ((weights + activations) / 2)",
                         "size": "packed weight size (MB)", "bops": "BOPs per sample (G)"}
BEST_CONFIG_FILE = SearchArtifact.BEST_CONFIG
PLOT_POINTS = 3000  # grey "evaluated" points drawn behind the front


@dataclass(frozen=True)
class SearchOptions:
    """A search request; ``a_bits`` defaults to ``w_bits``, conditions may come from ``preset``."""

    w_bits: float | None = None
    a_bits: float | None = None
    granularity: str | None = None
    symmetry: str | None = None  # shorthand for both; see eqtools.vocab.resolve_symmetry_flags
    w_symmetry: str | None = None
    a_symmetry: str | None = None
    preset: str | None = None
    max_size_mb: float | None = None
    max_bops: float | None = None
    population: int = 100
    generations: int = 500
    mutation_prob: float = 0.1
    parent_fraction: float = 0.25
    seed: int = 0
    uniform: bool = False
    pareto: bool = False
    cost: str = "bits"
    top_k: int = 5
    explore: float = 1.0  # with an ensemble predictor: top-K by predicted + explore × spread
    cheap_first: bool = True  # --verify also measures the budget's cheap-first mixes (eqtools.search.mixes)

    def __post_init__(self) -> None:
        if self.population < 4:
            raise ConfigError(f"--population is {self.population}; it must be at least 4")
        if self.generations < 0:
            raise ConfigError(f"--generations is {self.generations}; it must be 0 or more")
        if self.top_k < 1:
            raise ConfigError(f"--top-k is {self.top_k}; it must be at least 1")
        if self.cost not in COSTS:
            raise ConfigError(f"--cost {self.cost!r} is unknown; allowed: {', '.join(COSTS)}")
        if self.uniform and self.pareto:
            raise ConfigError("--uniform and --pareto exclude each other: --uniform returns one fixed config")
        if self.explore < 0:
            raise ConfigError(f"--explore is {self.explore}; it must be >= 0")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError(f"mutation probability is {self.mutation_prob}; it must lie in [0, 1]")


@dataclass
class SearchOutcome:
    """What a search found, before it is written (see :func:`write_search` for the files)."""

    mode: str
    condition: str
    preset: str | None
    budget: Budget
    best: SubnetConfig
    best_predicted: float
    best_costs: dict[str, float | int]
    front_x: str
    front: list[dict[str, Any]]
    top: list[dict[str, Any]]
    history: list[dict[str, Any]]
    evaluations: int
    time_s: float
    options: SearchOptions
    uniform_baseline: dict[str, Any] | None = None
    verified: list[dict[str, Any]] | None = None
    vs_uniform: dict[str, Any] | None = None  # --verify: pick minus uniform, paired on test images
    search_best_predicted: float | None = None  # the GA's own best, kept when --verify picks another
    vs_uniform_selection: dict[str, Any] | None = None  # --verify: the same on the split it chose on (biased up)
    verified_correct: list[np.ndarray] | None = field(default=None, repr=False)  # per image, aligned with verified; not written
    cheap_first: list[dict[str, Any]] = field(default_factory=list)  # the budget's cheap-first mixes, for --verify
    cloud: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.zeros(0), np.zeros(0)))


def search_tag(options: SearchOptions, condition: str) -> str:
    """Directory label: ``w3a3-per-tensor-Wasym-Aasym``, ``w4.5a4-...``, ``pareto-...``, ``uniform-w3a3-...``."""
    cond = form_tag(*condition.split("/"))
    if options.pareto:
        return f"pareto-{options.cost}-{cond}"

    def num(x: float | None) -> str:
        return "x" if x is None else (str(int(x)) if float(x).is_integer() else f"{x:g}")

    a = options.a_bits if options.a_bits is not None else options.w_bits
    prefix = "uniform-" if options.uniform else ""
    return f"{prefix}w{num(options.w_bits)}a{num(a)}-{cond}"


def _point(costs: CostModel, w: np.ndarray, a: np.ndarray, acc: float, form: Form,
           predictor: Predictor | None = None) -> dict[str, Any]:
    c = costs.describe(w, a)
    config = costs.config(w, a, *form)
    point = {"predicted_accuracy": float(acc), **c, "avg_bits": (c["avg_w_bits"] + c["avg_a_bits"]) / 2,
             "config": config.to_dict()}
    if predictor is not None and predictor.has_spread:
        point["predicted_spread"] = float(predictor.predict_with_spread([config])[1][0])
    return point


def _cost_fn(costs: CostModel, feas: Feasibility, cost: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def fn(w_idx: np.ndarray, a_idx: np.ndarray) -> np.ndarray:
        w, a = feas.w_table[w_idx], feas.a_table[a_idx]
        if cost == "bits":
            return (costs.avg_w_bits(w) + costs.avg_a_bits(a)) / 2
        if cost == "size":
            return costs.size_bytes(w) / 1e6
        return costs.bops(w, a) / 1e9

    return fn


def run_search(
    predictor: Predictor,
    options: SearchOptions,
    progress: Callable[..., None] | None = None,
    on_generation: Callable[..., None] | None = None,
) -> SearchOutcome:
    """Check the budget, search, and return the outcome (nothing is written).

    Raises :class:`InfeasibleError` before any search when no config meets the budget.
    """
    space = predictor.space
    *form, preset = resolve_conditions(space, options.granularity, options.symmetry, options.preset,
                                       w_symmetry=options.w_symmetry, a_symmetry=options.a_symmetry)
    form = tuple(form)
    if options.w_bits is None and not options.pareto and options.max_size_mb is None and options.max_bops is None:
        raise ConfigError("--w-bits is required (the average weight-bit budget X: the search keeps the average in "
                          "(X - 0.5, X]) unless --max-size-mb or --max-bops bounds the weights; or use --pareto to "
                          "see every budget at once")
    a_target = options.a_bits if options.a_bits is not None else options.w_bits
    budget = Budget(
        w_bits=options.w_bits,
        a_bits=a_target,
        max_size_bytes=None if options.max_size_mb is None else math.floor(options.max_size_mb * 1e6),
        max_bops=None if options.max_bops is None else math.floor(options.max_bops),
        upper_only=options.pareto,
    )
    costs = CostModel.for_space(space)

    def fitness(w_idx: np.ndarray, a_idx: np.ndarray) -> np.ndarray:
        return predictor.predict_indices(w_idx, a_idx, *form)

    if options.uniform:
        return _uniform(predictor, costs, budget, options, form, preset.name if preset else None)
    feas = check_budget(costs, budget)
    with predictor.inference():
        return _search(predictor, options, costs, feas, budget, form, preset.name if preset else None,
                       fitness, progress, on_generation)


def _search(predictor: Predictor, options: SearchOptions, costs: CostModel, feas: Feasibility, budget: Budget,
            form: Form, preset: str | None, fitness: Callable[[np.ndarray, np.ndarray], np.ndarray],
            progress: Callable[..., None] | None, on_generation: Callable[..., None] | None) -> SearchOutcome:
    n = costs.n_layers
    bits_cost = _cost_fn(costs, feas, "bits")
    baseline = _uniform_baseline(predictor, costs, feas, options, form)
    if options.pareto:
        cost_fn = _cost_fn(costs, feas, options.cost)
        res = run_nsga2(fitness, cost_fn, feas, population=options.population, generations=options.generations,
                        mutation_prob=options.mutation_prob, seed=options.seed, seeds=_uniform_seeds(costs),
                        on_generation=on_generation, progress=progress)
        front_genes, front_acc = res.front, res.front_accuracy
        best_i = int(np.argmax(front_acc))
        best_genes, best_acc = front_genes[best_i], float(front_acc[best_i])
        # top-K of a Pareto search: the most accurate points of the front
        order = np.argsort(-front_acc, kind="stable")[: options.top_k]
        top_genes, top_acc = front_genes[order], front_acc[order]
        history, evaluations, time_s, archive = res.history, res.evaluations, res.time_s, res.archive
        front_x = options.cost
    else:
        res_ga = run_ga(fitness, feas, population=options.population, generations=options.generations,
                        mutation_prob=options.mutation_prob, parent_fraction=options.parent_fraction,
                        seed=options.seed, on_generation=on_generation, progress=progress,
                        seeds=[] if baseline is None or not baseline["in_budget"]
                        else [costs.bits_of(SubnetConfig.from_dict(baseline["config"]))])
        best_genes, best_acc = res_ga.best, res_ga.best_fitness
        archive = res_ga.archive
        all_genes, all_acc = archive.genes(2 * n), archive.fitness()
        order = _top_order(predictor, form, all_genes, all_acc, n, feas, options)
        top_genes, top_acc = all_genes[order], all_acc[order]
        idx = pareto_front(all_acc, bits_cost(all_genes[:, :n], all_genes[:, n:]))
        front_genes, front_acc = all_genes[idx], all_acc[idx]
        history, evaluations, time_s = res_ga.history, res_ga.evaluations, res_ga.time_s
        front_x = "bits"

    def bits_of(genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return feas.w_table[genes[:n]], feas.a_table[genes[n:]]

    best_w, best_a = bits_of(best_genes)
    best = costs.config(best_w, best_a, *form)
    cheap_first = []
    if options.cheap_first and not options.pareto and baseline is not None and baseline["in_budget"]:
        mixes = cheap_first_mixes(costs, feas, *baseline["uniform_bits"], form)
        if mixes:
            acc = predictor.predict([costs.config(w, a, *form) for w, a in mixes])
            cheap_first = [_point(costs, w, a, float(p), form, predictor) for (w, a), p in zip(mixes, acc)]
    all_genes = archive.genes(2 * n)
    pick = np.random.default_rng(0).permutation(len(all_genes))[:PLOT_POINTS]
    cloud_cost = _cost_fn(costs, feas, front_x)(all_genes[pick, :n], all_genes[pick, n:]) if len(pick) else np.zeros(0)
    return SearchOutcome(
        mode="pareto" if options.pareto else "ga",
        condition=form_key(*form),
        preset=preset,
        budget=budget,
        best=best,
        best_predicted=best_acc,
        best_costs=costs.describe(best_w, best_a),
        front_x=front_x,
        front=[_point(costs, *bits_of(row), acc, form) for row, acc in zip(front_genes, front_acc)],
        top=[_point(costs, *bits_of(row), acc, form, predictor) for row, acc in zip(top_genes, top_acc)],
        history=history,
        evaluations=evaluations,
        time_s=time_s,
        options=options,
        uniform_baseline=baseline,
        cheap_first=cheap_first,
        cloud=(np.asarray(cloud_cost), archive.fitness()[pick] if len(pick) else np.zeros(0)),
    )


SPREAD_POOL = 200  # archive points (best predicted first) whose spread is computed for the top-K


def _top_order(predictor: Predictor, form: Form, genes: np.ndarray, acc: np.ndarray, n: int, feas: Feasibility,
               options: SearchOptions) -> np.ndarray:
    """Indices of the top-K archive points: by predicted accuracy, or for an ensemble by
    ``predicted + explore × spread`` among the best :data:`SPREAD_POOL` predictions.

    An ensemble's members disagree where the samples say little; a candidate slightly below the
    best mean but with a wide spread may well measure better, and ``--verify`` measures the top-K,
    so spending some of its K on such candidates is where the uncertainty pays (an upper
    confidence bound, as in bandit and Bayesian-optimisation searches).
    """
    by_mean = np.argsort(-acc, kind="stable")
    if not predictor.has_spread or options.explore == 0:
        return by_mean[: options.top_k]
    pool = by_mean[:SPREAD_POOL]
    w_idx, a_idx = genes[pool, :n], genes[pool, n:]
    _, spread = predictor.predict_indices_with_spread(w_idx, a_idx, *form)
    score = acc[pool] + options.explore * spread
    return pool[np.argsort(-score, kind="stable")[: options.top_k]]


def _uniform_seeds(costs: CostModel) -> list[tuple[np.ndarray, np.ndarray]]:
    """Uniform configs from the lowest to the highest bits (weights and activations stepping together)."""
    space = costs.space
    n = costs.n_layers
    steps = max(len(space.w_bits), len(space.a_bits))
    return [(np.full(n, space.w_bits[min(i, len(space.w_bits) - 1)], dtype=np.int64),
             np.full(n, space.a_bits[min(i, len(space.a_bits) - 1)], dtype=np.int64)) for i in range(steps)]


def _uniform_baseline(predictor: Predictor, costs: CostModel, feas: Feasibility, options: SearchOptions,
                      form: Form) -> dict[str, Any] | None:
    """The uniform config the search must beat, which ``--verify`` measures beside the candidates and
    falls back to: the uniform config with the most bits (weights and activations summed, then
    weights) among those that meet the whole budget. For ``--w-bits X --a-bits Y`` with X and Y in
    the space that is uniform X/Y; for a size or BOPs cap alone it is the largest uniform config
    under the cap. When no uniform config lies in the budget's windows (fractional budgets such as
    ``--w-bits 3.5``), it is the largest one under the budget's upper bounds, marked
    ``in_budget: False`` (a user asking for 3.5 bits would still take a uniform 3-bit subnet that
    beats every candidate). None for ``--pareto``, or when no uniform config fits even the upper
    bounds.
    """
    if options.pareto:
        return None
    space = costs.space
    grid = [(w, a) for w in space.w_bits for a in space.a_bits]
    bits = [costs.bits_of(space.uniform(w, a, *form)) for w, a in grid]
    w_arr = np.stack([b[0] for b in bits])
    a_arr = np.stack([b[1] for b in bits])
    in_budget = True
    ok = feas.mask(w_arr, a_arr)
    if not ok.any():
        in_budget = False
        try:
            caps = check_budget(costs, Budget(w_bits=feas.budget.w_bits, a_bits=feas.budget.a_bits,
                                              max_size_bytes=feas.budget.max_size_bytes,
                                              max_bops=feas.budget.max_bops, upper_only=True))
        except InfeasibleError:
            return None
        ok = caps.mask(w_arr, a_arr)
        if not ok.any():
            return None
    best = max((i for i in range(len(grid)) if ok[i]), key=lambda i: (grid[i][0] + grid[i][1], grid[i][0]))
    config = space.uniform(*grid[best], *form)
    point = _point(costs, w_arr[best], a_arr[best], float(predictor.predict([config])[0]), form, predictor)
    return {**point, "uniform_bits": list(grid[best]), "in_budget": in_budget}


def _uniform(predictor: Predictor, costs: CostModel, budget: Budget, options: SearchOptions, form: Form,
             preset: str | None) -> SearchOutcome:
    space = costs.space
    w, a = budget.w_bits, budget.a_bits
    for flag, value, allowed in (("--w-bits", w, space.w_bits), ("--a-bits", a, space.a_bits)):
        if value is None or not float(value).is_integer() or int(value) not in allowed:
            raise ConfigError(f"--uniform needs {flag} to be one of the space's bit-widths {list(allowed)}, got {value}")
    config = space.uniform(int(w), int(a), *form)  # type: ignore[arg-type]
    wb, ab = costs.bits_of(config)
    point = costs.describe(wb, ab)
    if budget.max_size_bytes is not None and point["size_bytes"] > budget.max_size_bytes:
        raise InfeasibleError(f"the uniform {int(w)}-bit config takes {point['size_bytes'] / 1e6:.6g} MB, over "
                              f"--max-size-mb {budget.max_size_bytes / 1e6:.6g}; raise the cap or drop --uniform")
    if budget.max_bops is not None and point["bops"] > budget.max_bops:
        raise InfeasibleError(f"the uniform {int(w)}/{int(a)}-bit config needs {point['bops']:.4g} BOPs, over "
                              f"--max-bops {budget.max_bops:.4g}; raise the cap or drop --uniform")
    acc = float(predictor.predict([config])[0])
    p = _point(costs, wb, ab, acc, form)
    return SearchOutcome(mode="uniform", condition=form_key(*form), preset=preset, budget=budget, best=config,
                         best_predicted=acc, best_costs=point, front_x="bits", front=[p], top=[p], history=[],
                         evaluations=1, time_s=0.0, options=options, uniform_baseline=p)


def write_search(
    outcome: SearchOutcome,
    out: Path | str,
    predictor: Predictor,
    parents: Sequence[Artifact] = (),
) -> Artifact:
    """Write the ``search`` artifact: best_config.json, pareto.json/png, history.json, top_k.json."""
    o = outcome
    xlabels = {"bits": "average bits ((weights + activations) / 2)", "size": "packed weight size (MB)",
               "bops": "BOPs per sample (G)"}
    x_of = {"bits": lambda p: p["avg_bits"], "size": lambda p: p["size_bytes"] / 1e6, "bops": lambda p: p["bops"] / 1e9}
    fx = x_of[o.front_x]
    best_point = {"predicted_accuracy": o.best_predicted, **o.best_costs,
                  "avg_bits": (o.best_costs["avg_w_bits"] + o.best_costs["avg_a_bits"]) / 2}
    metrics: dict[str, Any] = {
        "mode": o.mode,
        "condition": o.condition,
        "preset": o.preset,
        "predicted_accuracy": o.best_predicted,
        **o.best_costs,
        "size_mb": o.best_costs["size_bytes"] / 1e6,
        "constraints": o.budget.to_dict(),
        "population": o.options.population if o.mode != "uniform" else None,
        "generations": o.options.generations if o.mode != "uniform" else None,
        "seed": o.options.seed,
        "evaluations": o.evaluations,
        "search_time_s": round(o.time_s, 3),
        "front_size": len(o.front),
        "uniform_predicted_accuracy": None if o.uniform_baseline is None else o.uniform_baseline["predicted_accuracy"],
        "predictor": {"path": str(predictor.artifact.path) if predictor.artifact else None, "model": predictor.model,
                      "kendall_tau": predictor.artifact.metrics.get("kendall_tau") if predictor.artifact else None},
    }
    if o.verified is not None:
        metrics["verified"] = [{k: v for k, v in row.items() if k != "config"} for row in o.verified]
        metrics["measured_top1"] = o.verified[0]["measured_top1"] if o.verified else None
    if o.vs_uniform is not None:
        metrics["vs_uniform"] = o.vs_uniform
    if o.vs_uniform_selection is not None:
        metrics["vs_uniform_selection"] = o.vs_uniform_selection
    label = form_label(*o.condition.split("/"))
    if o.verified:
        # the final pick was chosen by measurement, so the title says both numbers for what they are,
        # and the GA's own best prediction beside them (the front reaches it)
        measured = o.verified[0]["measured_top1"]
        title = (f"{label}, {o.mode}: final pick measured {100 * measured:.2f}% (predicted "
                 f"{100 * o.best_predicted:.2f}%) after --verify")
        if o.search_best_predicted is not None:
            title += f"; best predicted on the front {100 * o.search_best_predicted:.2f}%"
        best_label = f"final pick (measured {100 * measured:.2f}%)"
    else:
        title = f"{label}, {o.mode}: best predicted {100 * o.best_predicted:.2f}%"
        best_label = "best predicted config"
    if o.budget.w_bits is not None and o.budget.upper_only:
        title += f" (W ≤ {o.budget.w_bits:g}, A ≤ {o.budget.a_bits:g} bits)"
    elif o.budget.w_bits is not None:
        title += (f" (W in ({o.budget.w_bits - 0.5:g}, {o.budget.w_bits:g}], "
                  f"A in ({o.budget.a_bits - 0.5:g}, {o.budget.a_bits:g}])")

    def write(tmp: Path) -> None:
        (tmp / BEST_CONFIG_FILE).write_text(o.best.to_json())
        (tmp / SearchArtifact.PARETO).write_text(json.dumps({
            "x": o.front_x, "x_label": xlabels[o.front_x], "y": "predicted_accuracy", "condition": o.condition,
            "title": title, "points": o.front}, indent=1) + "\n")
        (tmp / SearchArtifact.HISTORY).write_text(json.dumps({"mode": o.mode, "generations": o.history}) + "\n")
        (tmp / SearchArtifact.TOP_K).write_text(json.dumps({"top": o.top, "verified": o.verified}, indent=1) + "\n")
        plot_front(tmp / SearchArtifact.PARETO_PLOT, np.array([fx(p) for p in o.front]),
                   np.array([p["predicted_accuracy"] for p in o.front]), xlabels[o.front_x], title,
                   best=(fx(best_point), o.best_predicted), others=o.cloud, best_label=best_label)

    art = predictor.artifact
    return write_artifact(
        out, "search", write, spec=art.spec if art else None, space=predictor.space,
        parents=([art] if art else []) + list(parents), metrics=metrics,
        extra={"best_config": o.best.to_dict(), "options": asdict(o.options)},
    )
