"""Cheap-first mixes: budget-exact configs that raise the layers a budget charges least.

A budget averages weight bits over parameters and activation bits over input elements, so a
layer's bits cost in proportion to its size: MobileNetV2's depthwise and early layers are a
sliver of its parameters, its late layers a sliver of its activations. Raising *all* the cheap
layers at once, paid for by lowering the costliest ones a step, is the mix the mixed-precision
literature finds pays; it is also where the predictor is least reliable, because it learned from
random subnets whose bits are scattered over the layers, never concentrated like this.
``--verify`` therefore measures these mixes beside the predicted top-K (docs/search.md, "Cheap-first
mixes"): a mix the predictor underrates is still found, and one that does not pay is not picked.
"""

from __future__ import annotations

import numpy as np

from eqtools.errors import ConfigError
from eqtools.search.constraints import Feasibility
from eqtools.search.costs import CostModel

__all__ = ["cheap_first_mixes", "raise_cheap"]


def raise_cheap(weight: np.ndarray, high: int, low: int, base: int) -> np.ndarray:
    """Bits per layer averaging at most ``base`` under ``weight``: the cheapest layers at ``high``, as
    many as lowering the costliest layers to ``low`` pays for, every other layer at ``base``."""
    share = np.asarray(weight, dtype=float) / float(np.sum(weight))
    bits = np.full(len(share), base, dtype=np.int64)
    cheap = list(np.argsort(share, kind="stable"))
    costly = cheap[::-1]
    for i in cheap:
        trial = bits.copy()
        trial[i] = high
        for j in costly:
            if trial @ share <= base + 1e-12:
                break
            if j != i and trial[j] == base:
                trial[j] = low
        if trial @ share > base + 1e-12:
            break
        bits = trial
    return bits


def cheap_first_mixes(costs: CostModel, feas: Feasibility, w_base: int, a_bits: int,
                      form: tuple[str, str, str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cheap-first mixes around uniform ``w_base``/``a_bits`` that meet the budget: for each of up
    to three higher bit-widths (one and two steps up, and the space's highest), the weights alone,
    the activations alone and both raised; the costliest layers go one step below the base. An
    axis whose base is the space's lowest bits has no step below, so only the other axis is raised."""
    space = costs.space
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seen: set[bytes] = set()
    axes = []
    for bits, base, weight in ((space.w_bits, w_base, costs.params), (space.a_bits, a_bits, costs.act_elems)):
        lower = [b for b in bits if b < base]
        higher = [b for b in bits if b > base]
        highs = list(dict.fromkeys(higher[:2] + higher[-1:]))
        flat = np.full(costs.n_layers, base, dtype=np.int64)
        axes.append((flat, {h: raise_cheap(weight, h, lower[-1], base) for h in highs} if lower else {}))
    (w_flat, w_mixes), (a_flat, a_mixes) = axes
    for high in dict.fromkeys([*w_mixes, *a_mixes]):
        for w, a in ((w_mixes.get(high), a_flat), (w_flat, a_mixes.get(high)), (w_mixes.get(high), a_mixes.get(high))):
            if w is None or a is None:
                continue
            key = w.tobytes() + a.tobytes()
            if key in seen or not feas.mask(w[None, :], a[None, :])[0]:
                continue
            try:
                costs.config(w, a, *form)  # every layer's bits must be one of its choices
            except ConfigError:
                continue
            seen.add(key)
            out.append((w, a))
    return out
