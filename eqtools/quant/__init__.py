"""Elastic quantizers, quantized layers and model conversion."""

from eqtools.quant.attention import PackedInProjection, QPackedInProjection, RoutedMultiheadAttention
from eqtools.quant.convert import Supernet, quantize_model, trace_layers
from eqtools.quant.coverage import Coverage, CoverageError, FloatWeightsWarning, WeightEntry
from eqtools.quant.layers import QConv2d, QLinear, QuantLayer
from eqtools.quant.quantizer import ActQuantizer, WeightQuantizer, fake_quantize, lp_search, quant_range

__all__ = [
    "ActQuantizer",
    "Coverage",
    "CoverageError",
    "FloatWeightsWarning",
    "PackedInProjection",
    "QConv2d",
    "QLinear",
    "QPackedInProjection",
    "QuantLayer",
    "RoutedMultiheadAttention",
    "Supernet",
    "WeightEntry",
    "WeightQuantizer",
    "fake_quantize",
    "lp_search",
    "quant_range",
    "quantize_model",
    "trace_layers",
]
