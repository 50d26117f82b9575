"""Tiny models for fast tests and smoke runs: they exercise every layer kind the paper's models
have (plain, grouped and depthwise convs, residual adds, signed activations, linear heads)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from eqtools.models import register_model


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)) + x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyDWNet(nn.Module):
    """An inverted-residual block (expand, depthwise, linear project) like MobileNetV2's."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4 * width)
        self.depthwise = nn.Conv2d(4 * width, 4 * width, 3, 1, 1, groups=4 * width, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * width)
        self.project = nn.Conv2d(4 * width, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, 2 * width, 3, 2, 1, groups=2, bias=True)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self.bn0(self.stem(x)))
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.depthwise(y)))
        x = x + self.bn3(self.project(y))  # linear bottleneck: signed input to the next conv
        x = F.relu(self.grouped(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def tiny_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return TinyCNN(num_classes, in_channels)


@register_model
def tiny_dwnet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return TinyDWNet(num_classes, in_channels)
