"""The genetic search over configs at fixed conditions.

A genome is the elastic layers' bit-width *indices* (weights, then activations). Per generation
(EQ-Net's recipe with the reference code's proportions):

1. the best ``parent_fraction`` of the population are kept unchanged (elitism) and are the parents;
2. the rest is refilled half by mutants of random parents (each gene redrawn uniformly among its
   candidates with probability ``mutation_prob``), half by uniform crossovers of two random parents
   (each gene taken from either parent with probability 1/2);
3. children that break a constraint, or duplicate a parent or a sibling, are discarded and more
   are drawn, for at most ``MAX_ROUNDS`` rounds; any slot still empty is filled with a copy of a
   parent. So every individual of every generation is feasible and the loop always ends;
4. all new children are scored by one batched predictor call (configs already seen reuse their
   score).

Why numpy and not DEAP's operators here: the variation operators are exactly DEAP's
``tools.mutUniformInt`` and ``tools.cxUniform`` (gene-wise, inside each gene's range, so every
child is a config of the space), applied to the whole brood as array operations. DEAP's
per-individual versions cost tens of microseconds a child; with the constraint rejection a
generation draws a few hundred children, which alone would take the 100 × 500 search past its time
target (BENCHMARKS.md, "Search", times it).
DEAP does the work where it is the better tool: NSGA-II's non-dominated sorting and crowding
(:mod:`eqtools.search.pareto`). Randomness comes from one seeded ``numpy.random.Generator``, so a
seed fully determines the result and no global state is touched.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from eqtools.search.constraints import Feasibility

__all__ = ["Archive", "FitnessFn", "GAResult", "crossover", "mutate", "run_ga"]

MAX_ROUNDS = 10
OVERSAMPLE = 4  # children drawn per missing slot and round (most rejections are cheap array work)
FitnessFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (w_idx [N, L], a_idx [N, L]) -> accuracy [N]


@dataclass
class Archive:
    """Every distinct feasible genome scored during a run, in first-seen order."""

    scores: dict[bytes, float] = field(default_factory=dict)
    rows: list[np.ndarray] = field(default_factory=list)

    def genes(self, width: int) -> np.ndarray:
        return np.stack(self.rows) if self.rows else np.zeros((0, width), dtype=np.int64)

    def fitness(self) -> np.ndarray:
        return np.fromiter(self.scores.values(), dtype=np.float64, count=len(self.scores))


@dataclass
class GAResult:
    best: np.ndarray  # int64 [2L] gene indices of the best individual
    best_fitness: float
    population: np.ndarray  # int64 [N, 2L] final population
    population_fitness: np.ndarray
    history: list[dict[str, float | int]]
    archive: Archive
    evaluations: int
    initial_feasible: int
    time_s: float


def mutate(genes: np.ndarray, up: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """``deap.tools.mutUniformInt`` on every row: each gene → uniform in [0, up] with probability ``prob``."""
    redraw = rng.random(genes.shape) < prob
    fresh = (rng.random(genes.shape) * (up + 1)).astype(np.int64)
    return np.where(redraw, fresh, genes)


def crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, prob: float = 0.5) -> np.ndarray:
    """``deap.tools.cxUniform``'s first child on every pair of rows: each gene from ``b`` with probability ``prob``."""
    return np.where(rng.random(a.shape) < prob, b, a)


def evaluate(genes: np.ndarray, fitness_fn: FitnessFn, n_layers: int, archive: Archive) -> tuple[np.ndarray, int]:
    """Fitness of every row, with one batched call for the rows not yet in the archive."""
    keys = [row.tobytes() for row in genes]
    out = np.empty(len(genes), dtype=np.float64)
    fresh: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        score = archive.scores.get(key)
        if score is None:
            fresh.setdefault(key, []).append(i)
        else:
            out[i] = score
    if fresh:
        first = [rows[0] for rows in fresh.values()]
        todo = genes[first]
        scores = np.asarray(fitness_fn(todo[:, :n_layers], todo[:, n_layers:]), dtype=np.float64)
        for (key, rows), row, score in zip(fresh.items(), todo, scores):
            archive.scores[key] = float(score)
            archive.rows.append(row.copy())
            out[rows] = score
    return out, len(fresh)


def breed(parents: np.ndarray, n_mutants: int, n_crossovers: int, feas: Feasibility, up: np.ndarray,
          mutation_prob: float, rng: np.random.Generator) -> np.ndarray:
    """Feasible, distinct mutants and crossovers of ``parents``; short slots are filled with parent copies."""
    n_layers = feas.costs.n_layers
    seen = {row.tobytes() for row in parents}
    kept: dict[str, list[np.ndarray]] = {"m": [], "c": []}
    want = {"m": n_mutants, "c": n_crossovers}
    for _ in range(MAX_ROUNDS):
        need = {k: want[k] - len(kept[k]) for k in want}
        if need["m"] <= 0 and need["c"] <= 0:
            break
        parts = []
        if need["m"] > 0:
            pick = rng.integers(0, len(parents), OVERSAMPLE * need["m"])
            parts.append(("m", mutate(parents[pick], up, mutation_prob, rng)))
        if need["c"] > 0:
            i = rng.integers(0, len(parents), OVERSAMPLE * need["c"])
            j = rng.integers(0, len(parents), OVERSAMPLE * need["c"])
            parts.append(("c", crossover(parents[i], parents[j], rng)))
        for kind, cand in parts:
            ok = feas.index_mask(cand[:, :n_layers], cand[:, n_layers:])
            for row in cand[ok]:
                if len(kept[kind]) >= want[kind]:
                    break
                key = row.tobytes()
                if key not in seen:
                    seen.add(key)
                    kept[kind].append(row)
    children = kept["m"] + kept["c"]
    short = n_mutants + n_crossovers - len(children)
    if short > 0:
        children += list(parents[rng.integers(0, len(parents), short)])
    return np.stack(children) if children else np.zeros((0, parents.shape[1]), dtype=np.int64)


def run_ga(
    fitness_fn: FitnessFn,
    feas: Feasibility,
    *,
    population: int = 100,
    generations: int = 500,
    mutation_prob: float = 0.1,
    parent_fraction: float = 0.25,
    seed: int = 0,
    seeds: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    on_generation: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    progress: Callable[..., None] | None = None,
) -> GAResult:
    """Maximise ``fitness_fn`` over the feasible configs of ``feas``.

    ``seeds`` (elastic bit arrays) join the initial population when feasible: the search passes
    the uniform config at the budget, so its result is never predicted worse than the baseline.
    ``on_generation(gen, genes [N, 2L], fitness [N])`` sees every population, the initial one as
    generation 0; ``progress(best=..., mean=...)`` is called once per generation.
    """
    start = time.perf_counter()
    n_layers = feas.costs.n_layers
    up = np.array([len(feas.w_table) - 1] * n_layers + [len(feas.a_table) - 1] * n_layers, dtype=np.int64)
    rng = np.random.default_rng(seed)
    w_idx, a_idx = feas.population(population, random.Random(seed), seeds=seeds)
    initial = len(w_idx)
    genes = np.concatenate([w_idx, a_idx], axis=1)[np.arange(population) % initial]
    archive = Archive()
    fit, evaluations = evaluate(genes, fitness_fn, n_layers, archive)
    history = [_record(0, fit, evaluations)]
    if on_generation is not None:
        on_generation(0, genes, fit)
    n_parents = max(1, min(population - 1, round(parent_fraction * population)))
    n_mutants = (population - n_parents) // 2
    n_cross = population - n_parents - n_mutants
    for gen in range(1, generations + 1):
        elite = np.argsort(-fit, kind="stable")[:n_parents]
        parents, parent_fit = genes[elite], fit[elite]
        children = breed(parents, n_mutants, n_cross, feas, up, mutation_prob, rng)
        child_fit, new = evaluate(children, fitness_fn, n_layers, archive)
        evaluations += new
        genes = np.concatenate([parents, children])
        fit = np.concatenate([parent_fit, child_fit])
        history.append(_record(gen, fit, new))
        if on_generation is not None:
            on_generation(gen, genes, fit)
        if progress is not None:
            progress(best=history[-1]["best"], mean=history[-1]["mean"])
    best = int(np.argmax(fit))
    return GAResult(
        best=genes[best].copy(),
        best_fitness=float(fit[best]),
        population=genes,
        population_fitness=fit,
        history=history,
        archive=archive,
        evaluations=evaluations,
        initial_feasible=initial,
        time_s=time.perf_counter() - start,
    )


def _record(gen: int, fit: np.ndarray, evaluated: int) -> dict[str, float | int]:
    return {"generation": gen, "best": float(fit.max()), "mean": float(fit.mean()), "std": float(fit.std()),
            "evaluated": int(evaluated)}
