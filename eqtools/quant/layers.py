"""Drop-in quantized Conv2d and Linear.

They subclass the torch layers, so ``weight`` and ``bias`` stay ordinary Parameters under their
usual state_dict keys (FP checkpoints load into a converted model unchanged), and every other
tool that inspects a Conv2d still works. Each layer owns two quantizer submodules: one for its
input activation and one for its weight.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from eqtools.quant.integer import int8_forward
from eqtools.quant.quantizer import ActQuantizer, WeightQuantizer
from eqtools.space import ElasticSpace, LayerInfo

__all__ = ["QConv2d", "QLinear", "QuantLayer"]


class QuantLayer:
    """Mixin: the quantizers and the switch between forms."""

    act_quant: ActQuantizer
    weight_quant: WeightQuantizer
    layer_name: str

    def _make_quantizers(self, info: LayerInfo, space: ElasticSpace, weight: Tensor) -> None:
        self.layer_name = info.name
        # weights and activations each hold only the symmetries the space allows them (paper Eq. 9)
        self.act_quant = ActQuantizer(info.act_elems, space.a_choices(info), space.a_symmetries).to(weight.device)
        self.weight_quant = WeightQuantizer(
            weight.shape[0], weight.numel(), space.w_choices(info), space.granularities, space.w_symmetries
        ).to(weight.device)

    def activate(self, w_bits: int, a_bits: int, granularity: str, w_symmetry: str, a_symmetry: str) -> None:
        self.weight_quant.activate(w_bits, granularity, w_symmetry)
        self.act_quant.activate(a_bits, a_symmetry)


class QConv2d(nn.Conv2d, QuantLayer):
    """Conv2d (grouped and depthwise included) with quantized input and weight.

    ``_int8`` holds the active form's weights packed for oneDNN's int8 kernel while a
    :class:`~eqtools.evaluation.SubnetMeter` measures one subnet (:mod:`eqtools.quant.integer`);
    otherwise None and the conv runs in float.
    """

    _int8: dict[str, Tensor] | None = None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, info: LayerInfo, space: ElasticSpace) -> QConv2d:
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )
        q.weight = conv.weight  # shared Parameter object: optimisers built earlier stay valid
        q.bias = conv.bias
        q.train(conv.training)
        q._make_quantizers(info, space, conv.weight)
        return q

    def forward(self, x: Tensor) -> Tensor:
        if self._int8 is not None:
            return int8_forward(self, x)
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)


class QLinear(nn.Linear, QuantLayer):
    """Linear with quantized input and weight."""

    @classmethod
    def from_float(cls, linear: nn.Linear, info: LayerInfo, space: ElasticSpace) -> QLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        q.weight = linear.weight
        q.bias = linear.bias
        q.train(linear.training)
        q._make_quantizers(info, space, linear.weight)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)
