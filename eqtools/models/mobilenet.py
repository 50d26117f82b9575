"""torchvision's MobileNetV2 at half and quarter width for small single-channel images.

torchvision's ``mobilenet_v2`` takes 3 input channels only, and the spec's ``model`` section passes
no constructor arguments, so the CPU-scaled depthwise recipes (``specs/mbv2-fmnist.json``,
``specs/mbv2-025-fmnist.json``) need a registered name that fixes the width and the input channels. This builds torchvision's own
``MobileNetV2`` class — the same ``InvertedResidual`` blocks, stage table and strides, expansion 6,
ReLU6, linear bottlenecks, depthwise 3 × 3 convs, the 1280-channel head — and only swaps the stem's
first conv for one taking ``in_channels``. At 32 px it ends on 1 × 1 pixel, as torchvision's own
CIFAR-size use does. The usual CIFAR adaptation (stem and second stage at stride 1) made a training
step several times slower on two CPU cores, which the recipe's time budget could not pay.
"""

from __future__ import annotations

from torch import nn

from eqtools.models import register_model


def _mobilenet_v2(num_classes: int, in_channels: int, width_mult: float) -> nn.Module:
    from torchvision.models.mobilenetv2 import MobileNetV2
    from torchvision.ops.misc import Conv2dNormActivation

    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult)
    stem = model.features[0][0]
    model.features[0] = Conv2dNormActivation(
        in_channels, stem.out_channels, kernel_size=3, stride=2, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6
    )
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


@register_model
def mobilenet_v2_050(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 with ``width_mult=0.5`` and an ``in_channels`` stem."""
    return _mobilenet_v2(num_classes, in_channels, 0.5)


@register_model
def mobilenet_v2_025(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 with ``width_mult=0.25`` and an ``in_channels`` stem."""
    return _mobilenet_v2(num_classes, in_channels, 0.25)
