"""Building from specs: local pretrained float weights, and their failure modes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DIGITS_SPEC

from eqtools.artifacts import save_safetensors
from eqtools.build import build_float_model, build_supernet
from eqtools.errors import ModelError
from eqtools.specs import parse_spec


def _spec(pretrained: str):
    data = json.loads(json.dumps(DIGITS_SPEC))
    data["model"] = {"name": "tiny_cnn", "num_classes": 10, "pretrained": pretrained}
    return parse_spec(data)


@pytest.fixture
def reference():
    torch.manual_seed(3)
    return build_float_model(parse_spec({**DIGITS_SPEC, "model": {"name": "tiny_cnn", "num_classes": 10}}))


def test_safetensors_pretrained_weights_load(tmp_path, reference):
    save_safetensors(tmp_path / "w.safetensors", reference.state_dict())
    model = build_float_model(_spec(str(tmp_path / "w.safetensors")))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    supernet = build_supernet(_spec(str(tmp_path / "w.safetensors")))
    assert torch.equal(supernet.model.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s},
                                  lambda s: {f"module.{k}": v for k, v in s.items()}])
def test_torch_state_dicts_load_safely(tmp_path, reference, wrap):
    torch.save(wrap(reference.state_dict()), tmp_path / "w.pth")
    model = build_float_model(_spec(str(tmp_path / "w.pth")))
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_missing_and_unexpected_keys_are_listed(tmp_path, reference):
    state = reference.state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    save_safetensors(tmp_path / "w.safetensors", state)
    with pytest.raises(ModelError, match=r"missing keys \['fc.bias'\], unexpected keys \['extra.weight'\]"):
        build_float_model(_spec(str(tmp_path / "w.safetensors")))


def test_wrong_shapes_hint_at_num_classes(tmp_path, reference):
    state = reference.state_dict()
    state["fc.weight"] = torch.zeros(7, state["fc.weight"].shape[1])
    save_safetensors(tmp_path / "w.safetensors", state)
    with pytest.raises(ModelError, match=r"fc.weight has shape \(7, 16\).*num_classes"):
        build_float_model(_spec(str(tmp_path / "w.safetensors")))


def test_a_pickle_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="weights_only=True"):
        build_float_model(_spec(str(tmp_path / "evil.pth")))


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="do not exist"):
        build_float_model(_spec(str(tmp_path / "nope.safetensors")))
