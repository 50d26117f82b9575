"""eqtools' own registered models: what they promise against the reference they are built from."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import MobileNetV2

from eqtools.models import get_model


@pytest.mark.parametrize(("name", "width", "stem"), [("mobilenet_v2_050", 0.5, 16), ("mobilenet_v2_025", 0.25, 8)])
def test_mobilenet_v2_at_a_width_is_torchvisions_model_with_a_stem_for_any_channels(name, width, stem):
    ours = get_model(name, num_classes=10, in_channels=1)
    ref = MobileNetV2(num_classes=10, width_mult=width)
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys()
    differ = [k for k in mine if mine[k].shape != theirs[k].shape]
    assert differ == ["features.0.0.weight"]  # only the stem's input channels
    assert mine["features.0.0.weight"].shape == (stem, 1, 3, 3) and ours.features[0][0].stride == (2, 2)
    depthwise = [m for m in ours.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 17
    ours.eval()
    assert ours(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
