"""Budgets, the exact feasibility check, and a sampler that only draws feasible configs.

A budget asks for average weight bits in (X − 0.5, X] and average activation bits in (Y − 0.5, Y]
(EQ-Net's protocol), optionally a packed-size cap and a BOPs cap. The reference code drew random
configs until one fell inside the window and looped forever when none could. Here feasibility is
decided *before* the search, exactly:

- An average is Σ pᵢ·bᵢ / Σ pᵢ over the elastic layers. Dividing the layer weights pᵢ by their gcd
  turns the window into an integer interval of Σ (pᵢ/g)·bᵢ, and the set of sums every config can
  reach is a bitset built layer by layer (``reach = OR_b reach << (pᵢ/g)·b``, Python integers as
  bitsets). A window is feasible iff the bitset has a bit inside it; if not, the nearest reachable
  averages are the tightest feasible budgets, and the error says so.
- Keeping the suffix bitsets of every layer lets :class:`SumSampler` draw a config *inside* the
  window in one pass (choose each layer's bits among those from which the rest can still land in
  the window), so the Monte-Carlo initial population never rejects on the bit budgets.
- Packed size only depends on weight bits and is ≥ fixed + Σ pᵢ·bᵢ / 8, so a size cap tightens the
  weight window exactly (up to the per-layer round-up to whole bytes, which a final exact check
  handles). The smallest config meeting the weight budget is reported when the cap is too tight.
- BOPs couple weights and activations (Σ MACsᵢ·wᵢ·aᵢ), so no bitset decides them exactly. The check
  refuses caps below the absolute minimum (every layer at its lowest bits), then builds a greedy
  low-BOPs config inside the windows (lowest bits first on the layers with the most MACs per
  parameter/element) and, if even random draws find nothing under the cap, refuses with the
  fewest BOPs found. The search never loops: every draw loop has a fixed bound.

Very large models (more than 2²² reachable sums on an axis) use coarsened layer weights with a
window widened by the worst-case rounding error, so a refusal by the bitset is still a proof; a
window the coarse bitset calls possible is accepted only once an exact config inside it is drawn
(otherwise it is refused after ``COARSE_TRIES`` draws), and every drawn config is checked exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce

import numpy as np

from eqtools.errors import ConfigError, InfeasibleError
from eqtools.search.costs import CostModel

__all__ = ["Budget", "Feasibility", "SumSampler", "check_budget"]

TOLERANCE = Fraction(1, 2)  # the window below a bit target: (X − 0.5, X]
MAX_SUM_BITS = 1 << 22
COARSE_TRIES = 50  # exact draws that settle a window the coarse sums only call possible


def _frac(x: float) -> Fraction:
    # the decimal the user typed (3.3 means 33/10, not the nearest binary float)
    return Fraction(repr(float(x)))


@dataclass(frozen=True)
class Budget:
    """What the user asks for. ``None`` leaves a dimension free.

    ``w_bits``/``a_bits`` are targets X/Y with the window (X − 0.5, X]; with ``upper_only`` they are
    plain upper bounds (avg ≤ X), which the Pareto search uses to cover every budget below X.
    ``max_size_bytes`` and ``max_bops`` are inclusive caps.
    """

    w_bits: float | None = None
    a_bits: float | None = None
    max_size_bytes: int | None = None
    max_bops: int | None = None
    upper_only: bool = False

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ConfigError(f"--{name.replace('_', '-')} is {value}; it must be a positive number of bits")
        for name, flag in (("max_size_bytes", "--max-size-mb"), ("max_bops", "--max-bops")):
            value = getattr(self, name)
            if value is not None and value < 0:  # 0 (a cap below one byte or BOP) is an infeasible budget, reported as such
                raise ConfigError(f"{flag} must be positive, got {value}")

    def to_dict(self) -> dict[str, object]:
        window = "upper bound" if self.upper_only else "(X - 0.5, X]"
        return {"w_bits": self.w_bits, "a_bits": self.a_bits, "max_size_bytes": self.max_size_bytes,
                "max_bops": self.max_bops, "bits_window": window}


class SumSampler:
    """Reachable sums Σ uᵢ·bᵢ (uᵢ integer layer weights, bᵢ from ``choices``) and draws inside a window.

    ``order`` is the order layers are decided in when drawing; results are always returned in the
    original layer order.
    """

    def __init__(self, units: Sequence[int], choices: Sequence[int], order: Sequence[int] | None = None) -> None:
        self.units = [int(u) for u in units]
        self.choices = tuple(sorted(int(c) for c in choices))
        self.order = list(range(len(self.units))) if order is None else [int(i) for i in order]
        reach = [0] * (len(self.units) + 1)
        reach[-1] = 1  # the empty suffix reaches sum 0
        for j in range(len(self.order) - 1, -1, -1):
            u = self.units[self.order[j]]
            r = 0
            for b in self.choices:
                r |= reach[j + 1] << (u * b)
            reach[j] = r
        self._reach = reach

    @property
    def max_sum(self) -> int:
        return sum(self.units) * self.choices[-1]

    @staticmethod
    def _hit(bits: int, lo: int, hi: int) -> bool:
        if hi < 0 or hi < lo:
            return False
        lo = max(lo, 0)
        hi = min(hi, bits.bit_length())  # no sum lies above it; a huge budget must not build a huge mask
        if hi < lo:
            return False
        return ((bits >> lo) & ((1 << (hi - lo + 1)) - 1)) != 0

    def any_in(self, lo: int, hi: int) -> bool:
        return self._hit(self._reach[0], lo, hi)

    def lowest_at_least(self, x: int) -> int | None:
        r = self._reach[0] >> max(x, 0)
        return None if r == 0 else max(x, 0) + (r & -r).bit_length() - 1

    def highest_at_most(self, x: int) -> int | None:
        if x < 0:
            return None
        x = min(x, self._reach[0].bit_length())  # as in _hit: no sum lies above it
        r = self._reach[0] & ((1 << (x + 1)) - 1)
        return None if r == 0 else r.bit_length() - 1

    def draw(self, rng: random.Random, lo: int, hi: int, pick: str = "random") -> list[int] | None:
        """Bits per layer with lo ≤ Σ uᵢ·bᵢ ≤ hi; ``pick`` = random | low | high; None if impossible."""
        if not self.any_in(lo, hi):
            return None
        out = [0] * len(self.units)
        s = 0
        for j, i in enumerate(self.order):
            u = self.units[i]
            ok = [b for b in self.choices if self._hit(self._reach[j + 1], lo - s - u * b, hi - s - u * b)]
            b = ok[0] if pick == "low" else ok[-1] if pick == "high" else rng.choice(ok)
            out[i] = b
            s += u * b
        return out


@dataclass
class _Axis:
    """One average-bits dimension (weights or activations) in exact integer units."""

    name: str
    flag: str
    choices: tuple[int, ...]
    layer_weights: np.ndarray  # int64 [L]
    units: np.ndarray  # int64 [L] exact units (weights / gcd)
    unit: int  # gcd
    coarse: int  # coarsening factor for the sampler (1 = exact)
    sampler: SumSampler | None
    lo: int  # inclusive bounds on Σ units·bits
    hi: int

    @property
    def total(self) -> int:
        return int(self.layer_weights.sum())

    def avg_of_units(self, t: int) -> float:
        return t * self.unit / self.total

    def sampler_window(self, lo: int, hi: int) -> tuple[int, int]:
        if self.coarse == 1:
            return lo, hi
        # a coarse unit is off by less than one coarse step per layer and bit: widen by the worst case
        slack = len(self.units) * self.choices[-1] + 1
        return lo // self.coarse - slack, -(-hi // self.coarse) + slack


def _make_axis(name: str, flag: str, layer_weights: np.ndarray, choices: Sequence[int], order: Sequence[int] | None) -> _Axis:
    g = reduce(math.gcd, (int(x) for x in layer_weights), 0) or 1
    units = layer_weights // g
    coarse = 1
    total = int(units.sum()) * max(choices)
    if total > MAX_SUM_BITS:
        coarse = math.ceil(total / MAX_SUM_BITS)
    sampler_units = [max(1, round(int(u) / coarse)) for u in units] if coarse > 1 else units.tolist()
    sampler = SumSampler(sampler_units, choices, order) if len(units) else None
    return _Axis(name, flag, tuple(sorted(choices)), layer_weights, units, g, coarse, sampler, 0, int(units.sum()) * max(choices))


class Feasibility:
    """A budget compiled against a space: the exact feasibility mask and the feasible sampler.

    Build it with :func:`check_budget`, which raises :class:`InfeasibleError` for budgets nothing
    meets; an instance therefore always describes a non-empty feasible set.
    """

    def __init__(self, costs: CostModel, budget: Budget) -> None:
        self.costs = costs
        self.budget = budget
        space = costs.space
        by_w = np.argsort(-(costs.macs / np.maximum(costs.params, 1)), kind="stable")
        by_a = np.argsort(-(costs.macs / np.maximum(costs.act_elems, 1)), kind="stable")
        self.w = _make_axis("weight", "--w-bits", costs.params, space.w_bits, None)
        self.a = _make_axis("activation", "--a-bits", costs.act_elems, space.a_bits, None)
        # the same axes decided in low-BOPs order, for the greedy minimum-BOPs construction
        self._w_low = SumSampler(self.w.sampler.units, space.w_bits, by_w.tolist()) if self.w.sampler else None
        self._a_low = SumSampler(self.a.sampler.units, space.a_bits, by_a.tolist()) if self.a.sampler else None
        self.w_table = np.array(space.w_bits, dtype=np.int64)
        self.a_table = np.array(space.a_bits, dtype=np.int64)

    # ------------------------------------------------------------------ exact mask
    def mask(self, w: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Which configs (elastic bit arrays [N, L]) meet every constraint, exactly."""
        w = np.asarray(w, dtype=np.int64)
        a = np.asarray(a, dtype=np.int64)
        ok = np.ones(len(w), dtype=bool)
        if self.costs.n_layers:
            t = w @ self.w.units
            u = a @ self.a.units
            ok &= (t >= self.w.lo) & (t <= self.w.hi) & (u >= self.a.lo) & (u <= self.a.hi)
        if self.budget.max_size_bytes is not None:
            ok &= self.costs.size_bytes(w) <= self.budget.max_size_bytes
        if self.budget.max_bops is not None:
            ok &= self.costs.bops(w, a) <= self.budget.max_bops
        return ok

    def index_mask(self, w_idx: np.ndarray, a_idx: np.ndarray) -> np.ndarray:
        return self.mask(self.w_table[w_idx], self.a_table[a_idx])

    def to_indices(self, bits: np.ndarray, axis: str) -> np.ndarray:
        table = self.w_table if axis == "w" else self.a_table
        return np.searchsorted(table, bits)

    # ------------------------------------------------------------------ drawing
    def _draw_axis(self, axis: _Axis, rng: random.Random, lo: int, hi: int, pick: str = "random",
                   sampler: SumSampler | None = None) -> np.ndarray | None:
        sampler = sampler or axis.sampler
        if sampler is None:
            return np.zeros(0, dtype=np.int64)
        slo, shi = axis.sampler_window(lo, hi)
        for _ in range(1 if axis.coarse == 1 else 20):
            bits = sampler.draw(rng, slo, shi, pick)
            if bits is None:
                return None
            arr = np.array(bits, dtype=np.int64)
            t = int(arr @ axis.units)
            if lo <= t <= hi:
                return arr
            if pick != "random":
                break
        return None

    def draw(self, rng: random.Random, w_window: tuple[int, int] | None = None,
             a_window: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """One config inside the bit windows (sizes and BOPs not yet checked), or None."""
        wlo, whi = w_window or (self.w.lo, self.w.hi)
        alo, ahi = a_window or (self.a.lo, self.a.hi)
        w = self._draw_axis(self.w, rng, wlo, whi)
        a = self._draw_axis(self.a, rng, alo, ahi)
        if w is None or a is None:
            return None
        return w, a

    def low_bops_config(self, rng: random.Random) -> tuple[np.ndarray, np.ndarray] | None:
        """A greedy low-BOPs config inside the windows (lowest bits where MACs per weight are highest)."""
        w = self._draw_axis(self.w, rng, self.w.lo, self.w.hi, "low", self._w_low)
        a = self._draw_axis(self.a, rng, self.a.lo, self.a.hi, "low", self._a_low)
        if w is None or a is None:
            return None
        return w, a

    def population(self, n: int, rng: random.Random, max_draws: int | None = None, spread: bool = False,
                   seeds: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` feasible configs as index arrays [k, L], k ≥ 1, drawn Monte-Carlo style.

        ``seeds`` (elastic bit arrays, e.g. uniform configs) come first, those that are feasible.
        ``spread`` draws each config in a narrow random sub-window of the weight and activation
        ranges, so a Pareto search starts with every budget represented rather than a bell curve
        around the middle. Stops after ``max_draws`` (default 50·n) draws; raises
        :class:`InfeasibleError` if none of them met the size/BOPs caps.
        """
        max_draws = max_draws or 50 * n
        found_w: list[np.ndarray] = []
        found_a: list[np.ndarray] = []
        for w, a in seeds:
            if len(found_w) < n and self.mask(np.asarray(w)[None], np.asarray(a)[None])[0]:
                found_w.append(np.asarray(w, dtype=np.int64))
                found_a.append(np.asarray(a, dtype=np.int64))
        greedy = self.low_bops_config(rng) if self.budget.max_bops is not None else None
        if greedy is not None and self.mask(greedy[0][None], greedy[1][None])[0]:
            found_w.append(greedy[0])
            found_a.append(greedy[1])
        for _ in range(max_draws):
            if len(found_w) >= n:
                break
            if spread:
                drawn = self.draw(rng, self._sub_window(self.w, rng), self._sub_window(self.a, rng))
                drawn = drawn or self.draw(rng)
            else:
                drawn = self.draw(rng)
            if drawn is None:
                continue
            if self.mask(drawn[0][None], drawn[1][None])[0]:
                found_w.append(drawn[0])
                found_a.append(drawn[1])
        if not found_w:
            raise self._caps_error(rng, max_draws)
        w = np.stack(found_w)
        a = np.stack(found_a)
        return self.to_indices(w, "w"), self.to_indices(a, "a")

    def _sub_window(self, axis: _Axis, rng: random.Random) -> tuple[int, int]:
        total = int(axis.units.sum())
        lo = max(axis.lo, total * axis.choices[0])
        hi = min(axis.hi, total * axis.choices[-1])
        width = max(1, (hi - lo) // 20)
        start = rng.randint(lo, max(lo, hi - width))
        return start, min(hi, start + width)

    def _caps_error(self, rng: random.Random, draws: int) -> InfeasibleError:
        parts = []
        b = self.budget
        greedy = self.low_bops_config(rng)
        if b.max_bops is not None and greedy is not None:
            fewest = int(self.costs.bops(greedy[0][None], greedy[1][None])[0])
            parts.append(f"--max-bops {b.max_bops:.4g}: the fewest BOPs found among configs meeting the bit budgets "
                         f"is {fewest:.4g} (use --max-bops {fewest} or more, or lower --w-bits/--a-bits)")
        if b.max_size_bytes is not None:
            parts.append(f"--max-size-mb {b.max_size_bytes / 1e6:.6g}")
        return InfeasibleError(
            f"no config meeting the bit budgets also met the caps in {draws} random draws; " + "; ".join(parts)
        )


def _fmt_bits(x: float) -> str:
    return f"{x:.4g}"


def _window_units(target: float, axis: _Axis, upper_only: bool) -> tuple[int, int]:
    hi_exact = _frac(target) * axis.total / axis.unit
    hi = math.floor(hi_exact)
    if upper_only:
        return 0, hi
    lo_exact = (_frac(target) - TOLERANCE) * axis.total / axis.unit
    return math.floor(lo_exact) + 1, hi


def _check_axis(feas: Feasibility, axis: _Axis, target: float | None, upper_only: bool) -> None:
    if target is None or axis.sampler is None:
        return
    lo, hi = _window_units(target, axis, upper_only)
    axis.lo, axis.hi = max(lo, 0), hi
    slo, shi = axis.sampler_window(axis.lo, axis.hi)
    total = int(axis.units.sum())
    in_range = axis.hi >= total * axis.choices[0] and axis.lo <= total * axis.choices[-1]
    if in_range and axis.sampler.any_in(slo, shi):
        if axis.coarse == 1:
            return  # exact
        # coarse sums only say "possibly": an exact config inside the window settles it
        rng = random.Random(0)
        if any(feas._draw_axis(axis, rng, axis.lo, axis.hi) is not None for _ in range(COARSE_TRIES)):
            return
    lowest = min(axis.choices)
    highest = max(axis.choices)
    what = "average weight bits" if axis.name == "weight" else "average activation bits"
    window = f"≤ {_fmt_bits(target)}" if upper_only else f"in ({_fmt_bits(target - 0.5)}, {_fmt_bits(target)}]"
    if target < lowest:
        raise InfeasibleError(
            f"{axis.flag} {_fmt_bits(target)} is infeasible: {what} must be {window}, but the lowest "
            f"{what} any config has is {lowest} (every elastic layer at {lowest} bits, the smallest candidate "
            f"in the space's {list(axis.choices)}); the tightest feasible value is {axis.flag} {lowest}"
        )
    below = axis.sampler.highest_at_most(slo - 1)
    above = axis.sampler.lowest_at_least(shi + 1)
    near = [_fmt_bits(axis.avg_of_units(x * axis.coarse)) for x in (below, above) if x is not None]
    hint = f"the nearest feasible values are {axis.flag} {' or '.join(near)}" if near else f"use {axis.flag} between {lowest} and {highest}"
    raise InfeasibleError(
        f"{axis.flag} {_fmt_bits(target)} is infeasible: no config of this space has {what} {window} "
        f"(its layers' sizes only allow certain averages); {hint}"
    )


def check_budget(costs: CostModel, budget: Budget) -> Feasibility:
    """Decide before searching whether anything meets ``budget``; raise :class:`InfeasibleError` if not."""
    feas = Feasibility(costs, budget)
    if costs.n_layers == 0:
        _check_fixed_only(feas, budget)
        return feas
    _check_axis(feas, feas.w, budget.w_bits, budget.upper_only)
    _check_axis(feas, feas.a, budget.a_bits, budget.upper_only)
    rng = random.Random(0)
    if budget.max_size_bytes is not None:
        _check_size(feas, budget.max_size_bytes, rng)
    if budget.max_bops is not None:
        _check_bops(feas, budget.max_bops, rng)
    return feas


def _check_fixed_only(feas: Feasibility, budget: Budget) -> None:
    empty = np.zeros((1, 0), dtype=np.int64)
    if not feas.mask(empty, empty)[0] or _outside(feas.costs.fixed_avg_w, budget.w_bits, budget.upper_only) or \
            _outside(feas.costs.fixed_avg_a, budget.a_bits, budget.upper_only):
        c = feas.costs.describe(empty[0], empty[0])
        raise InfeasibleError(
            f"this space has no elastic layer, so its only config has {c['avg_w_bits']:.4g} average weight bits, "
            f"{c['avg_a_bits']:.4g} average activation bits, {c['size_bytes']} bytes and {c['bops']:.4g} BOPs; "
            "the budget excludes it"
        )


def _outside(value: float | None, target: float | None, upper_only: bool) -> bool:
    if value is None or target is None:
        return False
    if upper_only:
        return value > target
    return not (target - 0.5 < value <= target)


def _check_size(feas: Feasibility, cap: int, rng: random.Random) -> None:
    axis = feas.w
    costs = feas.costs
    # size >= fixed + Σ p·b / 8, so the cap bounds Σ units·bits from above
    cap_units = math.floor((cap - costs.fixed_size_bytes) * 8 / axis.unit)
    lowest = axis.sampler.lowest_at_least(axis.lo) if axis.coarse == 1 else None
    if cap_units < axis.lo or (lowest is not None and lowest > cap_units):
        t = lowest if lowest is not None else axis.lo
        smallest = None
        drawn = feas._draw_axis(axis, rng, t, t) if axis.coarse == 1 else feas._draw_axis(axis, rng, axis.lo, axis.hi, "low")
        if drawn is not None:
            smallest = int(costs.size_bytes(drawn[None])[0])
        what = "meeting the weight-bit budget " if feas.budget.w_bits is not None else ""
        size_txt = f"{smallest / 1e6:.6g} MB ({smallest} bytes)" if smallest is not None else "larger"
        raise InfeasibleError(
            f"--max-size-mb {cap / 1e6:.6g} is infeasible: the smallest config {what}takes {size_txt} "
            f"(packed weights, fixed layers included); use --max-size-mb {math.ceil((smallest or cap) / 1e3) / 1e3:.6g} "
            "or more, or a lower --w-bits"
        )
    axis.hi = min(axis.hi, cap_units)


def _check_bops(feas: Feasibility, cap: int, rng: random.Random) -> None:
    costs = feas.costs
    floor_bops = int(costs.fixed_bops + (costs.macs * min(feas.w.choices) * min(feas.a.choices)).sum())
    if cap < floor_bops:
        raise InfeasibleError(
            f"--max-bops {cap:.4g} is infeasible: even with every elastic layer at the lowest bits "
            f"({min(feas.w.choices)}/{min(feas.a.choices)}) the model needs {floor_bops:.4g} BOPs per sample "
            f"(fixed layers included); the tightest feasible value is --max-bops {floor_bops}"
        )
