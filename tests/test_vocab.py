"""The one vocabulary: its typing views equal its tuples, and form lists parse the same everywhere."""

from __future__ import annotations

from typing import get_args

import pytest

from eqtools.errors import ConfigError
from eqtools.vocab import GRANULARITIES, SYMMETRIES, Granularity, Symmetry, form_key, parse_forms


def test_literal_views_equal_the_tuples():
    """pydantic (specs) and typer (CLI choices) read the Literal views; the space reads the tuples."""
    assert get_args(Granularity) == GRANULARITIES
    assert get_args(Symmetry) == SYMMETRIES


ALL = [form_key(g, w, a) for g in GRANULARITIES for w in SYMMETRIES for a in SYMMETRIES]


@pytest.mark.parametrize("text, expected", [
    (None, ALL), ("all", ALL), (" all ", ALL),
    ("per-tensor/asym", ["per-tensor/asym/asym"]),
    ("per-channel/sym/asym, per-tensor/sym", ["per-channel/sym/asym", "per-tensor/sym/sym"]),
    (["per-tensor/asym/sym"], ["per-tensor/asym/sym"]),
])
def test_parse_forms(text, expected):
    assert parse_forms(text, ALL) == tuple(expected)


@pytest.mark.parametrize("text, message", [
    ("per-layer/sym", "--forms: condition 'per-layer/sym' is not in this supernet's space"),
    ("per-tensor/asym,per-tensor/asym/asym", "listed twice"),
    (",", "--forms is empty"),
])
def test_parse_forms_refuses_with_the_flag_named(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_forms(text, ALL, "--forms")
