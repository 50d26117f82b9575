"""Mixed-precision search: budgets and their exact feasibility, the DEAP genetic algorithm, NSGA-II
for whole fronts, deployment presets, and verification of the top configs on the supernet.

Nothing here imports torch at module level: an MLP predictor does when it predicts, ``--verify`` when
it calibrates.
"""

from __future__ import annotations

from eqtools.presets import PRESETS, Preset, resolve_conditions
from eqtools.search.constraints import Budget, Feasibility, SumSampler, check_budget
from eqtools.search.costs import CostModel
from eqtools.search.ga import GAResult, run_ga
from eqtools.search.pareto import ParetoResult, pareto_front, run_nsga2
from eqtools.search.run import COSTS, SearchOptions, SearchOutcome, run_search, search_tag, write_search

__all__ = [
    "COSTS",
    "PRESETS",
    "Budget",
    "CostModel",
    "Feasibility",
    "GAResult",
    "ParetoResult",
    "Preset",
    "SearchOptions",
    "SearchOutcome",
    "SumSampler",
    "check_budget",
    "pareto_front",
    "resolve_conditions",
    "run_ga",
    "run_nsga2",
    "run_search",
    "search_tag",
    "write_search",
]
