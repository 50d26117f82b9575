"""What a conversion quantized and what it left in floating point, by weight count and reason.

Average bits, sizes and BOPs describe only the layers in the elastic space, so a model whose
attention stayed float would otherwise be reported as if the quantized part were the whole. This
report is the plain statement next to those numbers: every weight matmul of the model (Conv and
Linear weights of any kind, MultiheadAttention's projections) is listed as elastic, fixed or float,
a float one with the reason, and every other parameter (norms, biases, embeddings, position
tables) is summarised as float by design.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from eqtools.errors import ModelError
from eqtools.quant.attention import PackedInProjection, RoutedMultiheadAttention
from eqtools.quant.layers import QuantLayer
from eqtools.quant.quantizer import ActQuantizer, WeightQuantizer
from eqtools.space import ElasticSpace

__all__ = ["Coverage", "CoverageError", "FloatWeightsWarning", "WeightEntry", "weight_coverage"]

PINNED = "kept in floating point by the spec (space.overrides / first_layer / last_layer: \"fp\")"
NOT_REACHED = (
    "not reached by the traced forward pass (not executed in evaluation, e.g. a training-only "
    "auxiliary head, or used inside an operator eqtools cannot see into)"
)


class CoverageError(ModelError):
    """Strict conversion found weight matmuls left in floating point that nobody pinned."""


class FloatWeightsWarning(UserWarning):
    """A conversion (not strict) left weight matmuls in floating point that nobody pinned."""


@dataclass(frozen=True)
class WeightEntry:
    """One weight matmul: ``status`` is ``elastic``, ``fixed`` or ``float`` (then ``reason``)."""

    name: str
    params: int
    status: str
    reason: str = ""


@dataclass(frozen=True)
class Coverage:
    """The conversion's account of every parameter.

    ``matmul`` lists each weight matmul in module order; ``other`` maps a reason to
    ``(tensors, params)`` for the parameters that are not matmul weights and stay float.
    """

    matmul: tuple[WeightEntry, ...]
    other: tuple[tuple[str, int, int], ...]

    @property
    def matmul_params(self) -> int:
        return sum(e.params for e in self.matmul)

    @property
    def quantized_params(self) -> int:
        return sum(e.params for e in self.matmul if e.status != "float")

    @property
    def elastic_params(self) -> int:
        return sum(e.params for e in self.matmul if e.status == "elastic")

    @property
    def share(self) -> float:
        """Quantized share of the matmul weights (by parameter count)."""
        return self.quantized_params / self.matmul_params if self.matmul_params else 1.0

    @property
    def elastic_share(self) -> float:
        return self.elastic_params / self.matmul_params if self.matmul_params else 1.0

    @property
    def float_matmul(self) -> tuple[WeightEntry, ...]:
        return tuple(e for e in self.matmul if e.status == "float")

    @property
    def unpinned_float(self) -> tuple[WeightEntry, ...]:
        """Float weight matmuls the user did not ask for."""
        return tuple(e for e in self.float_matmul if e.reason != PINNED)

    def unpinned_message(self, limit: int = 5) -> str:
        bad = self.unpinned_float
        shown = "; ".join(f"{e.name} ({e.params:,} weights): {e.reason}" for e in bad[:limit])
        more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
        share = sum(e.params for e in bad) / self.matmul_params if self.matmul_params else 0.0
        return (f"{len(bad)} weight matmul(s), {100 * share:.1f}% of the matmul weights, stay in floating point "
                f"without being pinned: {shown}{more}")

    def check_strict(self) -> None:
        """Raise :class:`CoverageError` if a weight matmul stayed float without being pinned."""
        if not self.unpinned_float:
            return
        raise CoverageError(
            f"strict conversion: {self.unpinned_message()}. Allowed: pin them explicitly with space.overrides "
            "{NAME: \"fp\"} (layers eqtools traces), replace modules eqtools cannot quantize, or convert without "
            "strict to accept them as float (they are then counted at 32 bits only where they are in the space, and "
            "listed in this report)"
        )

    def lines(self) -> list[str]:
        """A short human summary: totals, then each float weight matmul and the other floats."""
        out = [
            f"quantized {self.quantized_params:,} of {self.matmul_params:,} matmul weights "
            f"({100 * self.share:.2f}%; elastic {100 * self.elastic_share:.2f}%) in "
            f"{sum(e.status != 'float' for e in self.matmul)} of {len(self.matmul)} layers"
        ]
        for e in self.float_matmul:
            out.append(f"  float {e.name}: {e.params:,} weights, {e.reason}")
        for reason, tensors, params in self.other:
            out.append(f"  float, not a matmul weight: {reason} ({tensors} tensors, {params:,} values)")
        out.append(
            "  sizes and BOPs count the quantized layers at their bits and layers pinned to float at 32 bits; "
            "they leave out activation-activation matmuls (attention's Q.K^T and A.V), norms, biases"
            + (" and the float layers above that are outside the space" if self.unpinned_float else "")
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "matmul_params": self.matmul_params,
            "quantized_params": self.quantized_params,
            "elastic_params": self.elastic_params,
            "share": self.share,
            "layers": len(self.matmul),
            "quantized_layers": sum(e.status != "float" for e in self.matmul),
            "float_matmul": [{"name": e.name, "params": e.params, "reason": e.reason} for e in self.float_matmul],
            "other_float": [{"reason": r, "tensors": t, "params": p} for r, t, p in self.other],
        }


# Module types whose forward is exactly a Linear/Conv2d of their input with their weight. Exact
# types, not isinstance: a subclass may change what forward computes (and QLinear/QConv2d are
# subclasses that must not be converted twice).
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, NonDynamicallyQuantizableLinear, PackedInProjection)
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d,)
LAYER_TYPES = LINEAR_TYPES + CONV_TYPES

_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _float_reason(name: str, module: nn.Module, space: ElasticSpace, notes: Mapping[str, str]) -> str:
    if name in notes:
        return notes[name]
    if any(layer.name == name and layer.keep_float for layer in space.layers):
        return PINNED
    if type(module) not in LAYER_TYPES:
        # exact types only: a subclass may compute something else in its forward
        return f"{type(module).__name__} is not a layer kind eqtools quantizes (Conv2d, Linear and attention projections are)"
    return f"{type(module).__name__} {NOT_REACHED}"


def weight_coverage(model: nn.Module, space: ElasticSpace, notes: Mapping[str, str] | None = None) -> Coverage:
    """Account for every parameter of a converted ``model``.

    ``notes`` maps a module name to the reason it was left as it is (e.g. an attention module that
    could not be rewritten); other float reasons are found from the space and the module type.
    """
    notes = dict(notes or {})
    counted: set[int] = set()
    matmul: list[WeightEntry] = []
    other: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer):
            weight = module.weight  # type: ignore[attr-defined]
            counted.add(id(weight))
            fixed = space.layer(name).fixed
            matmul.append(WeightEntry(name, weight.numel(), "fixed" if fixed else "elastic"))
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, PackedInProjection)):
            weight = module.weight
            if weight is None or id(weight) in counted:
                continue
            counted.add(id(weight))
            matmul.append(WeightEntry(name, weight.numel(), "float", _float_reason(name, module, space, notes)))
        elif isinstance(module, nn.MultiheadAttention) and not isinstance(module, RoutedMultiheadAttention):
            for attr in _PROJECTIONS:
                weight = getattr(module, attr, None)
                if weight is None or id(weight) in counted:
                    continue
                counted.add(id(weight))
                reason = notes.get(name, f"{type(module).__name__} {NOT_REACHED}")
                matmul.append(WeightEntry(f"{name}.{attr}", weight.numel(), "float", reason))
        elif isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
            # an LSTM/GRU/RNN's input and recurrent weights are matmuls too, run inside torch's fused
            # recurrent kernel, which no drop-in layer can reach: named here, so strict refuses them
            kind = type(module).__name__
            for pname, weight in module.named_parameters(recurse=False):
                if not pname.startswith("weight_") or id(weight) in counted:
                    continue
                counted.add(id(weight))
                matmul.append(WeightEntry(
                    f"{name}.{pname}", weight.numel(), "float",
                    f"{kind} weight matmuls run inside torch's fused {kind} kernel, which eqtools does not quantize "
                    "(replace the module by Linear layers to quantize them)"))
    for module in model.modules():
        if isinstance(module, (ActQuantizer, WeightQuantizer)):
            continue  # the quantization's own steps and offsets, not the model's parameters
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in counted:
                continue
            counted.add(id(p))
            if pname == "bias" or pname.endswith("_bias"):
                reason = "biases (added at high precision, as in integer inference)"
            else:
                reason = f"{type(module).__name__}.{pname}"
            other.setdefault(reason, [0, 0])
            other[reason][0] += 1
            other[reason][1] += p.numel()
    rows = tuple((r, t, n) for r, (t, n) in sorted(other.items(), key=lambda kv: -kv[1][1]))
    return Coverage(tuple(matmul), rows)
