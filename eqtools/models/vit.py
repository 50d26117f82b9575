"""A small Vision Transformer for the 2-core transformer recipe (``specs/vit-fmnist.json``).

It is torchvision's own ``VisionTransformer`` (so it exercises exactly the code path a user's
``vit_b_16`` takes: ``nn.MultiheadAttention``, LayerNorm, GELU, class token, position embedding),
made small enough to train in minutes on 28×28 images: patch 4 (7×7 = 49 tokens plus the class
token), 4 encoder blocks, width 64, 4 heads, MLP width 128. The patch embedding takes any number
of input channels, so grey-scale datasets need no channel copying.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from eqtools.models import register_model


def _vit(num_classes: int, in_channels: int, image_size: int, patch_size: int, num_layers: int,
         num_heads: int, hidden_dim: int, mlp_dim: int) -> VisionTransformer:
    model = VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes,
    )
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, hidden_dim, patch_size, patch_size)
        # the initialisation torchvision gives its own patch embedding
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(conv.bias)
        model.conv_proj = conv
    return model


@register_model
def tiny_vit(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return _vit(num_classes, in_channels, image_size, patch_size=4, num_layers=4, num_heads=4,
                hidden_dim=64, mlp_dim=128)
