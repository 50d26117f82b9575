"""Cheap-first mixes (``eqtools.search.mixes``): budget-exact, and raising only the cheapest layers.

A mix that broke the budget's average would measure a gain the search may not take; one that
raised other layers than the cheapest would not be the mix ``--verify`` and ``bench_headroom.py``
say they measure.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from eqtools.search.mixes import raise_cheap

weights = st.lists(st.integers(1, 10_000), min_size=1, max_size=60).map(lambda w: np.array(w, dtype=float))


@settings(max_examples=200, deadline=None)
@given(weights, st.integers(5, 8), st.integers(2, 3))
def test_a_mix_stays_in_budget_and_raises_only_the_cheapest_layers(weight, high, low):
    bits = raise_cheap(weight, high, low, 4)
    share = weight / weight.sum()
    assert bits @ share <= 4 + 1e-9
    assert set(bits.tolist()) <= {low, 4, high}
    raised = np.flatnonzero(bits == high)
    order = list(np.argsort(share, kind="stable"))
    assert sorted(order.index(i) for i in raised) == list(range(len(raised)))  # a prefix of the cheap order
    lowered = np.flatnonzero(bits == low)
    if len(raised) and len(lowered):
        assert share[raised].max() <= share[lowered].min()


def test_the_room_is_spent_as_far_as_lowering_the_costliest_layers_pays_for_it():
    # two layers hold 40 of 48 units: at 3 bits they pay for all eight cheap ones at 8 (average 3.83)
    assert raise_cheap(np.array([1.0] * 8 + [10.0, 30.0]), 8, 3, 4).tolist() == [8] * 8 + [3, 3]
    # one layer holds half: at 3 it pays for two cheap layers at 8; the third is paid for by three
    # more cheap layers at 3, and the average lands on 4 exactly; a fourth would need more than is left
    assert raise_cheap(np.array([1.0] * 9 + [9.0]), 8, 3, 4).tolist() == [8, 8, 8, 4, 4, 4, 3, 3, 3, 3]
