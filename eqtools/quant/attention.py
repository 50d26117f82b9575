"""Multi-head attention whose weight matmuls are ordinary, quantizable layers.

``nn.MultiheadAttention`` keeps its q/k/v projection as a bare ``in_proj_weight`` Parameter and
hands it, with ``out_proj.weight``, to ``F.multi_head_attention_forward`` (or to a fused kernel in
evaluation); neither projection is ever *called* as a layer, so module swapping cannot reach them
and a forward hook never sees them. :class:`RoutedMultiheadAttention` is the same module (same
class hierarchy, same state_dict keys ``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``,
``out_proj.bias``) with a forward that calls ``self.in_proj`` (a parameter-less view of the packed
weight) and ``self.out_proj``. Once rewritten, the trace counts both projections and the converter
swaps them for quantized layers like any other Linear. Q·Kᵀ, softmax and attention·V stay float.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqtools.quant.layers import QuantLayer
from eqtools.space import ElasticSpace, LayerInfo

__all__ = [
    "PackedInProjection",
    "QPackedInProjection",
    "RoutedMultiheadAttention",
    "RoutedTransformerEncoderLayer",
    "route_attention",
    "unroutable_reason",
]


class PackedInProjection(nn.Module):
    """The packed q/k/v projection of a MultiheadAttention, callable as a Linear.

    It owns no parameters: ``weight``/``bias`` are the attention's ``in_proj_weight``/
    ``in_proj_bias``, so the state_dict keeps torch's keys and checkpoints load unchanged.
    ``forward(x, part)`` with ``part`` 0, 1 or 2 applies only the q, k or v rows (cross-attention,
    where query, key and value differ); ``part=None`` applies all three at once.
    """

    def __init__(self, owner: nn.MultiheadAttention) -> None:
        super().__init__()
        # a tuple, not an attribute assignment: registering the owner would make it a submodule
        # of its own child (a cycle in named_modules and duplicate state_dict keys)
        object.__setattr__(self, "_owner", (owner,))
        self.in_features = owner.embed_dim
        self.out_features = 3 * owner.embed_dim

    @property
    def weight(self) -> Tensor:
        return self._owner[0].in_proj_weight

    @property
    def bias(self) -> Tensor | None:
        return self._owner[0].in_proj_bias

    def _rows(self, weight: Tensor, part: int | None) -> tuple[Tensor, Tensor | None]:
        bias = self.bias
        if part is None:
            return weight, bias
        e = self.in_features
        return weight[part * e:(part + 1) * e], None if bias is None else bias[part * e:(part + 1) * e]

    def forward(self, x: Tensor, part: int | None = None) -> Tensor:
        weight, bias = self._rows(self.weight, part)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} (view of in_proj_weight)"


class QPackedInProjection(PackedInProjection, QuantLayer):
    """The packed in-projection with quantized input and weight (one step set for all 3E rows;
    per-channel means per output row, exactly as for a QLinear of the same shape)."""

    @classmethod
    def from_float(cls, proj: PackedInProjection, info: LayerInfo, space: ElasticSpace) -> QPackedInProjection:
        q = cls(proj._owner[0])
        q.train(proj.training)
        q._make_quantizers(info, space, proj.weight)
        return q

    def forward(self, x: Tensor, part: int | None = None) -> Tensor:
        # the whole packed weight is quantized, then sliced: q, k and v rows share the step tables
        weight, bias = self._rows(self.weight_quant(self.weight), part)
        return F.linear(self.act_quant(x), weight, bias)


def unroutable_reason(mha: nn.MultiheadAttention) -> str | None:
    """Why an attention module cannot be rewritten (its projections then stay float), or None."""
    if not mha._qkv_same_embed_dim:
        return "MultiheadAttention with kdim/vdim different from embed_dim (separate q/k/v weights)"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "MultiheadAttention with add_bias_kv or add_zero_attn"
    if mha.in_proj_weight is None:
        return "MultiheadAttention without in_proj_weight"
    return None


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """torch's mask convention: a boolean True (or a float -inf) marks a position not attended."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class RoutedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` computed through ``self.in_proj`` and ``self.out_proj``.

    Same arguments, shapes and results as torch's (batch-first or not, unbatched inputs, key
    padding and attention masks, ``is_causal``, dropout, returned weights averaged or per head);
    it never takes the fused fast path, because that kernel would bypass the quantized layers.
    """

    in_proj: PackedInProjection

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        same = query is key and key is value
        # a batch-first module computes batch-first, (batch, n, embed), so its projections see the
        # tensors an export's batch-first graph feeds them; otherwise (n, batch, embed), as torch's own
        # implementation. An unbatched input becomes a batch of one in the module's layout.
        batch_first = self.batch_first
        if not batched:
            at = 0 if batch_first else 1
            query, key, value = query.unsqueeze(at), key.unsqueeze(at), value.unsqueeze(at)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if batch_first:
            batch, length, embed = query.shape
        else:
            length, batch, embed = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        if same:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            q, k, v = self.in_proj(query, 0), self.in_proj(key, 1), self.in_proj(value, 2)
        source = k.shape[1] if batch_first else k.shape[0]

        def split(t: Tensor, n: int) -> Tensor:  # -> (batch, heads, n, head_dim)
            if batch_first:
                return t.reshape(batch, n, heads, head_dim).permute(0, 2, 1, 3)
            return t.reshape(n, batch, heads, head_dim).permute(1, 2, 0, 3)

        q, k, v = split(q, length), split(k, source), split(v, source)
        mask = _float_mask(attn_mask, q.dtype)
        if mask is None and is_causal:
            mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
            mask = _float_mask(mask, q.dtype)
        if mask is not None:
            mask = mask.view(batch, heads, length, source) if mask.dim() == 3 else mask.view(1, 1, length, source)
        padding = _float_mask(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0
        # always the explicit Q·Kᵀ -> softmax -> ·V, never scaled_dot_product_attention: these are the
        # ops an export writes (eqtools.export._graph), so the exported files compute what this computes
        # in the same float order (with SDPA's fused kernel an 8-bit tiny ViT's integer file disagreed
        # with it on 1 image in 256; with this path on none)
        scores = (q * (1.0 / math.sqrt(head_dim))) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        out = F.dropout(weights, dropout, self.training) @ v if dropout > 0 else weights @ v
        if need_weights:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            weights = None
        if batch_first:
            out = out.permute(0, 2, 1, 3).reshape(batch, length, embed)
        else:
            out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0 if batch_first else 1)
        return out, weights


class RoutedTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` that always runs its layer-by-layer path.

    In evaluation without gradients torch runs the whole block as one fused kernel
    (``torch._transformer_encoder_layer_fwd``) that reads ``in_proj_weight``, ``out_proj.weight``,
    ``linear1.weight`` and ``linear2.weight`` directly: a converted model would silently evaluate in
    float. This forward is torch's own non-fused path (its ``_sa_block``/``_ff_block``), which calls
    the attention and the two Linear layers as modules.
    """

    def forward(  # type: ignore[override]
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


def route_attention(model: nn.Module) -> dict[str, str]:
    """Rewrite every routable ``nn.MultiheadAttention`` of ``model`` in place.

    The module keeps its identity and parameters (its class becomes
    :class:`RoutedMultiheadAttention` and it gains the parameter-less child ``in_proj``).
    ``nn.TransformerEncoderLayer`` becomes :class:`RoutedTransformerEncoderLayer`, so its fused
    evaluation kernel cannot bypass the layers. Returns the attention modules left as they are, by
    name, with the reason.
    """
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if type(module) is not nn.MultiheadAttention:
            continue
        reason = unroutable_reason(module)
        if reason is not None:
            skipped[name] = reason
            continue
        module.__class__ = RoutedMultiheadAttention
        module.in_proj = PackedInProjection(module)
    for module in model.modules():
        if type(module) is nn.TransformerEncoderLayer:
            module.__class__ = RoutedTransformerEncoderLayer
    return skipped
