"""Spec validation: every bundled spec loads; bad input names the field, the value, what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqtools.errors import SpecError
from eqtools.specs import load_spec, parse_spec

SPECS = sorted(Path("specs").glob("*.json"))
GOOD = {"name": "x", "model": {"name": "resnet20"}, "data": {"name": "cifar10"}}


def test_bundled_specs_exist_and_validate():
    names = {p.stem for p in SPECS}
    assert {"quick", "r20", "r18", "r50", "mbv2", "effb0"} <= names
    for path in SPECS:
        spec = load_spec(path)
        assert spec.name == path.stem


def test_paper_spaces_and_recipe():
    for name in ("r18", "r50", "r20"):
        assert load_spec(f"specs/{name}.json").space.w_bits == [2, 3, 4, 5, 6, 7, 8]
    for name in ("mbv2", "effb0"):
        assert load_spec(f"specs/{name}.json").space.w_bits == [3, 4, 5, 6, 7, 8]
    r18 = load_spec("specs/r18.json")
    assert (r18.train.optimizer, r18.train.lr, r18.train.epochs, r18.train.schedule) == ("adam", 1e-3, 120, "cosine")


@pytest.mark.parametrize(
    "patch,fragment",
    [
        ({"colour": 1}, "field `colour` = 1: unknown key"),
        ({"train": {"epochs": "ten"}}, "field `train.epochs` = \"ten\""),
        ({"space": {"w_bits": [2, 9]}}, "field `space.w_bits.1` = 9: Input should be less than or equal to 8"),
        ({"space": {"a_bits": [1]}}, "field `space.a_bits.0` = 1"),
        ({"space": {"w_bits": []}}, "field `space.w_bits`"),
        ({"space": {"symmetries": ["skew"]}}, "must be one of"),
        ({"data": {"name": "imagenet21k"}}, "field `data.name`"),
        ({"train": {"mode": "static"}}, "mode 'static' needs a 'static' section"),
        ({"space": {"first_layer": {"w_bits": 8}}}, "space.first_layer"),
    ],
)
def test_errors_name_field_value_and_allowed(patch, fragment):
    data = json.loads(json.dumps(GOOD))
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    with pytest.raises(SpecError) as info:
        parse_spec(data, "t.json")
    assert fragment in str(info.value), str(info.value)
    assert str(info.value).startswith("invalid spec t.json:")


def test_missing_file_lists_bundled_specs(tmp_path):
    with pytest.raises(SpecError, match=r"does not exist; bundled specs: .*quick.json"):
        load_spec(tmp_path / "nope.json")


def test_malformed_json_gives_line_and_column(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"name": "x",\n  "model": }')
    with pytest.raises(SpecError, match="not valid JSON: Expecting value at line 2"):
        load_spec(p)


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my-spec.json"
    p.write_text(json.dumps({k: v for k, v in GOOD.items() if k != "name"}))
    assert load_spec(p).name == "my-spec"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=st.sampled_from(["model", "data", "space", "train", "sample", "search", "predictor", "seed", "name"]),
       key=st.sampled_from(["name", "w_bits", "epochs", "lr", "first_layer", "n", "model", "zzz", "overrides"]),
       value=_json)
def test_fuzzed_specs_either_validate_or_raise_spec_error(section, key, value):
    data = json.loads(json.dumps(GOOD))
    if isinstance(data.get(section), dict):
        data[section] = {**data[section], key: value}
    else:
        data[section] = value
    try:
        spec = parse_spec(data)
    except SpecError as exc:
        assert "invalid spec" in str(exc)
    else:
        assert spec.to_dict()["name"]
