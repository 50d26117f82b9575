"""ElasticSpace and SubnetConfig: validation, JSON round-trips, costs against hand computation."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eqtools.errors import ConfigError, SpecError
from eqtools.space import ElasticSpace, LayerInfo, SubnetConfig

LAYERS = [
    LayerInfo("stem", "conv", weight_params=432, out_channels=16, act_elems=3 * 32 * 32, macs=442368),
    LayerInfo("block.conv1", "conv", weight_params=2304, out_channels=16, act_elems=16 * 32 * 32, macs=2359296),
    LayerInfo("block.conv2", "conv", weight_params=4608, out_channels=32, act_elems=16 * 32 * 32, macs=1179648),
    LayerInfo("block.dw", "conv", weight_params=288, out_channels=32, act_elems=32 * 16 * 16, macs=73728),
    LayerInfo("head", "linear", weight_params=320, out_channels=10, act_elems=32, macs=320),
]


def make_space(**kw) -> ElasticSpace:
    settings_ = {"w_bits": (2, 3, 4, 8), "a_bits": (2, 4, 8), "first_layer": {"w_bits": 8, "a_bits": 8},
                 "last_layer": {"w_bits": 8, "a_bits": 8}}
    settings_.update(kw)
    return ElasticSpace.build(LAYERS, **settings_)


SPACE = make_space()


def test_pins_first_and_last_layer():
    assert [layer.fixed for layer in SPACE.quantized_layers] == [True, False, False, False, True]
    assert [layer.name for layer in SPACE.elastic_layers] == ["block.conv1", "block.conv2", "block.dw"]
    cfg = SPACE.uniform(2)
    assert cfg.w_bits == (8, 2, 2, 2, 8) and cfg.a_bits == (8, 2, 2, 2, 8)


def test_overrides_glob_pins_and_float():
    space = make_space(overrides={"block.conv*": {"w_bits": 4, "a_bits": 4}, "head": "fp"})
    assert "head" not in space.layer_names
    assert space.layer("block.conv2").pin.w_bits == 4
    assert space.w_choices(space.layer("block.dw")) == (2, 3, 4, 8)
    assert space.uniform(2).w_bits == (8, 4, 4, 2)


def test_later_override_wins():
    space = make_space(overrides={"block.*": {"w_bits": 4, "a_bits": 4}, "block.dw": "elastic"})
    assert space.layer("block.dw").pin is None and space.layer("block.conv1").pin.w_bits == 4


def test_unmatched_override_is_an_error_naming_layers():
    with pytest.raises(SpecError, match=r"'blok\.\*' matches no layer.*stem"):
        make_space(overrides={"blok.*": "fp"})


@pytest.mark.parametrize("bad", [{"w_bits": 9, "a_bits": 8}, {"w_bits": 8}, "float", 8])
def test_bad_pin_rejected(bad):
    with pytest.raises(SpecError):
        make_space(first_layer=bad)


@pytest.mark.parametrize("field,value", [("w_bits", ()), ("a_bits", (1, 2)), ("w_bits", (2, 2)),
                                         ("granularities", ("per-row",)), ("w_symmetries", ()),
                                         ("a_symmetries", ("affine",))])
def test_bad_candidates_rejected(field, value):
    with pytest.raises(SpecError, match=field):
        make_space(**{field: value})


def test_avg_bits_weighted_by_params_and_activations_excluding_fixed():
    cfg = SubnetConfig(SPACE.layer_names, (8, 2, 4, 8, 8), (8, 2, 8, 4, 8), "per-channel", "sym", "sym")
    w, a = SPACE.avg_bits(cfg)
    assert w == pytest.approx((2304 * 2 + 4608 * 4 + 288 * 8) / (2304 + 4608 + 288))
    acts = [16 * 32 * 32, 16 * 32 * 32, 32 * 16 * 16]
    assert a == pytest.approx((acts[0] * 2 + acts[1] * 8 + acts[2] * 4) / sum(acts))


def test_size_and_bops_against_hand_computation():
    cfg = SubnetConfig(SPACE.layer_names, (8, 2, 4, 8, 8), (8, 2, 8, 4, 8), "per-tensor", "asym", "asym")
    expected_size = sum(math.ceil(p * b / 8) for p, b in zip([432, 2304, 4608, 288, 320], cfg.w_bits))
    assert SPACE.size_bytes(cfg) == expected_size
    macs = [442368, 2359296, 1179648, 73728, 320]
    assert SPACE.bops(cfg) == sum(m * w * a for m, w, a in zip(macs, cfg.w_bits, cfg.a_bits))


def test_float_layer_counts_32_bits_in_size_and_bops():
    space = make_space(last_layer="fp")
    cfg = space.uniform(2)
    assert space.size_bytes(cfg) - space.size_bytes(space.uniform(2)) == 0
    assert space.bops(cfg) >= 320 * 32 * 32


def test_validate_names_layer_value_and_allowed():
    cfg = SPACE.uniform(4, 4).replace(w_bits=(8, 5, 4, 4, 8))
    with pytest.raises(ConfigError, match=r"layer 'block.conv1': w_bits 5 is not allowed; allowed: \[2, 3, 4, 8\]"):
        SPACE.validate(cfg)
    with pytest.raises(ConfigError, match=r"layer 'stem': a_bits 4 is not allowed; allowed: \[8\]"):
        SPACE.validate(SPACE.uniform(4).replace(a_bits=(4, 4, 4, 4, 8)))


def test_validate_rejects_other_layers_and_conditions():
    other = SubnetConfig(("a", "b"), (4, 4), (4, 4), "per-channel", "sym", "sym")
    with pytest.raises(ConfigError, match="missing"):
        SPACE.validate(other)
    space = make_space(granularities=("per-tensor",))
    with pytest.raises(ConfigError, match="granularity 'per-channel' is not in this space"):
        space.validate(SPACE.uniform(4, granularity="per-channel"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"w_bits": (4, 4)}, "same length"),
        ({"w_bits": (4, 4, 9)}, r"w_bits of layer 'c' is 9; bit-widths must be integers in \[2, 3, 4, 5, 6, 7, 8\]"),
        ({"a_bits": (4, 4, True)}, "a_bits of layer 'c'"),
        ({"granularity": "per-row"}, r"granularity is 'per-row'; must be one of \['per-channel', 'per-tensor'\]"),
        ({"w_symmetry": "affine"}, "w_symmetry is 'affine'"),
        ({"a_symmetry": "skew"}, "a_symmetry is 'skew'"),
    ],
)
def test_config_construction_validates(kwargs, match):
    base = {"layers": ("a", "b", "c"), "w_bits": (4, 4, 4), "a_bits": (4, 4, 4), "granularity": "per-channel",
            "w_symmetry": "sym", "a_symmetry": "sym"}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        SubnetConfig(**base)


@pytest.mark.parametrize(
    "data,match",
    [
        ([], "must be a JSON object"),
        ({"granularity": "per-channel", "symmetry": "sym"}, "missing"),
        ({"granularity": "per-channel", "symmetry": "sym", "layers": [], "x": 1}, "unknown keys"),
        ({"granularity": "per-channel", "symmetry": "sym", "layers": [{"name": "a", "w_bits": 4}]}, r"layers\[0\]"),
    ],
)
def test_config_from_dict_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        SubnetConfig.from_dict(data)


def test_config_load_reports_path(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"c\.json.*not valid JSON"):
        SubnetConfig.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        SubnetConfig.load(tmp_path / "missing.json")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), gran=st.sampled_from([None, "per-channel", "per-tensor"]),
       sym=st.sampled_from([None, "sym", "asym"]))
def test_random_configs_are_valid_hashable_and_round_trip(seed, gran, sym):
    cfg = SPACE.random(random.Random(seed), gran, sym)
    assert SPACE.contains(cfg)
    again = SubnetConfig.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg)
    assert json.loads(cfg.to_json(indent=None))["layers"][0] == {"name": "stem", "w_bits": 8, "a_bits": 8}
    w, a = SPACE.avg_bits(cfg)
    assert 2 <= w <= 8 and 2 <= a <= 8
    assert SPACE.bops(SPACE.min()) <= SPACE.bops(cfg) <= SPACE.bops(SPACE.max())
    assert SPACE.size_bytes(SPACE.min()) <= SPACE.size_bytes(cfg) <= SPACE.size_bytes(SPACE.max())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([2, 3, 4, 5, 6, 7, 8]), min_size=1, max_size=7, unique=True))
def test_uniform_average_is_exact(bits):
    space = make_space(w_bits=tuple(bits), a_bits=tuple(bits))
    for b in bits:
        assert space.avg_bits(space.uniform(b)) == (pytest.approx(b), pytest.approx(b))


def test_space_dict_round_trip_and_fingerprint():
    again = ElasticSpace.from_dict(json.loads(json.dumps(SPACE.to_dict())))
    assert again == SPACE and again.fingerprint == SPACE.fingerprint
    other = make_space(a_bits=(2, 8))
    assert other.fingerprint != SPACE.fingerprint
    assert "a_bits" in other.describe_difference(SPACE)


def test_config_is_frozen():
    cfg = SPACE.max()
    with pytest.raises(AttributeError):
        cfg.granularity = "per-tensor"  # type: ignore[misc]
