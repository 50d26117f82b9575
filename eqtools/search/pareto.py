"""The accuracy-vs-cost front: NSGA-II (DEAP) for ``--pareto``, and front extraction and plotting.

NSGA-II keeps a population spread along the whole front (non-dominated sorting plus crowding
distance, DEAP's ``selNSGA2``), so one run shows every budget at once. Offspring are made with the
same gene-wise operators as the single-objective search and filtered by the same exact constraint mask; the
initial population is drawn in narrow random sub-windows of the bit range so both ends of the front
are populated from the start.

The reported front is taken over *every* config scored during the run (the archive), not only the
last population: a point found early and later crowded out is still a valid trade-off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from deap import base, tools

from eqtools.search.constraints import Feasibility
from eqtools.search.ga import MAX_ROUNDS, OVERSAMPLE, Archive, FitnessFn, crossover, evaluate, mutate

__all__ = ["ParetoResult", "pareto_front", "plot_front", "run_nsga2"]


class _TwoObjectives(base.Fitness):
    weights = (1.0, -1.0)  # maximise predicted accuracy, minimise cost


class _Individual(list):
    """A genome row with a DEAP fitness, built without ``creator``'s global classes."""

    def __init__(self, genes: object, accuracy: float, cost: float) -> None:
        super().__init__(genes)  # type: ignore[arg-type]
        self.fitness = _TwoObjectives((accuracy, cost))


CostFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (w_idx, a_idx) -> cost [N]


def pareto_front(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (higher accuracy, lower cost), sorted by cost.

    Among points with equal cost and accuracy only the first is kept.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    order = np.lexsort((-accuracy, cost))  # by cost, then best accuracy first
    keep = []
    best = -np.inf
    for i in order:
        if accuracy[i] > best:
            keep.append(int(i))
            best = accuracy[i]
    return np.array(keep, dtype=np.int64)


@dataclass
class ParetoResult:
    front: np.ndarray  # int64 [K, 2L] gene indices of the front, by increasing cost
    front_accuracy: np.ndarray
    front_cost: np.ndarray
    history: list[dict[str, float | int]]
    archive: Archive
    evaluations: int
    initial_feasible: int
    time_s: float


def run_nsga2(
    fitness_fn: FitnessFn,
    cost_fn: CostFn,
    feas: Feasibility,
    *,
    population: int = 100,
    generations: int = 500,
    mutation_prob: float = 0.1,
    seed: int = 0,
    seeds: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    on_generation: Callable[[int, np.ndarray], None] | None = None,
    progress: Callable[..., None] | None = None,
) -> ParetoResult:
    """NSGA-II (μ + λ, DEAP's ``selNSGA2``) over the feasible configs: maximise ``fitness_fn``, minimise ``cost_fn``.

    ``seeds`` (elastic bit arrays) join the initial population when feasible; the search passes the
    uniform configs from lowest to highest bits, which anchor both ends of the front (random draws
    almost never reach the all-8-bit corner, and NSGA-II drops points the predictor ranks below a
    cheaper one).
    Offspring: uniform crossover of two random members, then gene-wise mutation, filtered by the
    exact constraint mask and de-duplicated against the population. Selection is deterministic
    given the scores, so a seed fully determines the result.
    """
    start = time.perf_counter()
    n = feas.costs.n_layers
    up = np.array([len(feas.w_table) - 1] * n + [len(feas.a_table) - 1] * n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    archive = Archive()
    w_idx, a_idx = feas.population(population, random.Random(seed), spread=True, seeds=seeds)
    initial = len(w_idx)
    genes = np.concatenate([w_idx, a_idx], axis=1)[np.arange(population) % initial]
    acc, evaluations = evaluate(genes, fitness_fn, n, archive)
    cost = np.asarray(cost_fn(genes[:, :n], genes[:, n:]), dtype=np.float64)
    genes, acc, cost = _select(genes, acc, cost, population)
    history = [_record(0, acc, cost, evaluations)]
    if on_generation is not None:
        on_generation(0, genes)
    for gen in range(1, generations + 1):
        kids = _offspring(genes, population, feas, up, mutation_prob, rng)
        kid_acc, new = evaluate(kids, fitness_fn, n, archive)
        evaluations += new
        kid_cost = np.asarray(cost_fn(kids[:, :n], kids[:, n:]), dtype=np.float64) if len(kids) else np.zeros(0)
        genes, acc, cost = _select(np.concatenate([genes, kids]), np.concatenate([acc, kid_acc]),
                                   np.concatenate([cost, kid_cost]), population)
        history.append(_record(gen, acc, cost, new))
        if on_generation is not None:
            on_generation(gen, genes)
        if progress is not None:
            progress(front=history[-1]["front_size"], best=history[-1]["best"])
    all_genes = archive.genes(2 * n)
    all_acc = archive.fitness()
    all_cost = np.asarray(cost_fn(all_genes[:, :n], all_genes[:, n:])) if len(all_genes) else np.zeros(0)
    idx = pareto_front(all_acc, all_cost)
    return ParetoResult(all_genes[idx], all_acc[idx], all_cost[idx], history, archive, evaluations, initial,
                        time.perf_counter() - start)


def _select(genes: np.ndarray, acc: np.ndarray, cost: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inds = [_Individual([i], float(a), float(c)) for i, (a, c) in enumerate(zip(acc, cost))]
    chosen = np.array([ind[0] for ind in tools.selNSGA2(inds, min(k, len(inds)), nd="log")], dtype=np.int64)
    return genes[chosen], acc[chosen], cost[chosen]


def _offspring(pop: np.ndarray, count: int, feas: Feasibility, up: np.ndarray, mutation_prob: float,
               rng: np.random.Generator) -> np.ndarray:
    n = feas.costs.n_layers
    kids: list[np.ndarray] = []
    seen = {row.tobytes() for row in pop}
    for _ in range(MAX_ROUNDS):
        need = count - len(kids)
        if need <= 0:
            break
        i = rng.integers(0, len(pop), OVERSAMPLE * need)
        j = rng.integers(0, len(pop), OVERSAMPLE * need)
        cand = mutate(crossover(pop[i], pop[j], rng), up, mutation_prob, rng)
        ok = feas.index_mask(cand[:, :n], cand[:, n:])
        for row in cand[ok]:
            key = row.tobytes()
            if key not in seen and len(kids) < count:
                seen.add(key)
                kids.append(row)
    return np.stack(kids) if kids else np.zeros((0, pop.shape[1]), dtype=np.int64)


def _record(gen: int, acc: np.ndarray, cost: np.ndarray, evaluated: int) -> dict[str, float | int]:
    return {"generation": gen, "best": float(acc.max()), "mean": float(acc.mean()),
            "front_size": len(pareto_front(acc, cost)), "evaluated": int(evaluated)}


def plot_front(path: Path, cost: np.ndarray, accuracy: np.ndarray, xlabel: str, title: str,
               best: tuple[float, float] | None = None, others: tuple[np.ndarray, np.ndarray] | None = None,
               best_label: str = "best config") -> None:
    """Predicted accuracy (%) vs cost, the front as a step line; ``best`` marked, ``others`` grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=110)
    try:
        if others is not None and len(others[0]):
            ax.scatter(others[0], 100 * np.asarray(others[1]), s=4, color="lightgrey", label="evaluated")
        ax.step(cost, 100 * np.asarray(accuracy), where="post", color="tab:blue", linewidth=1)
        ax.scatter(cost, 100 * np.asarray(accuracy), s=14, color="tab:blue", label="Pareto front", zorder=3)
        if best is not None:
            ax.scatter([best[0]], [100 * best[1]], s=60, marker="*", color="tab:red", label=best_label, zorder=4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("predicted top-1 accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
