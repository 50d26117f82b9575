"""``quantize_model``: turn any torch.nn.Module into an elastic quantization supernet.

The model is traced once on an example input to learn each Conv2d/Linear's execution order,
input-activation size and MACs (the space needs them for average bits, size and BOPs), then every
such layer not kept in floating point is swapped for its quantized drop-in. Batch norm stays
unfolded during training; export folds it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from eqtools.errors import ConfigError, SpecError
from eqtools.quant.attention import PackedInProjection, QPackedInProjection, RoutedMultiheadAttention, route_attention
from eqtools.quant.coverage import CONV_TYPES, LAYER_TYPES, Coverage, FloatWeightsWarning, weight_coverage
from eqtools.quant.layers import QConv2d, QLinear, QuantLayer
from eqtools.quant.quantizer import ActQuantizer, WeightQuantizer
from eqtools.space import ElasticSpace, LayerInfo, SubnetConfig

__all__ = ["Supernet", "quantize_model", "trace_layers"]


_FUNCTIONAL = {F.linear: "linear", F.conv2d: "conv"}


@dataclass
class _Trace:
    """What one example forward showed: the layers, and which of them were reached only through a
    functional call (``F.linear(x, self.qkv.weight)``) made in another module's forward."""

    layers: list[LayerInfo]
    callers: dict[str, str] = field(default_factory=dict)  # layer name -> calling module's name


def _weight_of(args: tuple, kwargs: Mapping[str, Any]) -> Any:
    return args[1] if len(args) > 1 else kwargs.get("weight")


class _CallRecorder(TorchFunctionMode):
    """Sees every F.linear / F.conv2d a forward makes, including those inside plain functions that
    modules call with their layers' weights (Swin's ``shifted_window_attention``). Calls made inside
    another ``__torch_function__``-dispatching function stay invisible (the mode is off while that
    function runs), so such weights are reported as not reached rather than guessed at."""

    def __init__(self, on_call: Callable[[str, Tensor, Tensor, Tensor], None]) -> None:
        super().__init__()
        self._on_call = on_call

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = _FUNCTIONAL.get(func)
        if kind is not None:
            self._on_call(kind, args[0] if args else kwargs["input"], _weight_of(args, kwargs), out)
        return out


def _facts(name: str, kind: str, weight: Tensor, x: Tensor, out: Tensor, batch_dim: int = 0) -> LayerInfo:
    batch = x.shape[batch_dim] if x.dim() > 1 else 1
    return LayerInfo(
        name=name,
        kind=kind,
        weight_params=weight.numel(),
        out_channels=weight.shape[0],
        act_elems=x.numel() // batch,
        # weight[0] is one output's inputs: in_features, or in_channels/groups x kernel
        macs=out.numel() // batch * weight[0].numel(),
    )


def _trace(model: nn.Module, example_input: Tensor) -> _Trace:
    names = {module: name for name, module in model.named_modules()}
    owners = {id(m.weight): (n, m) for n, m in model.named_modules() if type(m) in LAYER_TYPES}
    order: dict[str, int] = {}
    seen: dict[str, LayerInfo] = {}
    parts: dict[str, set[int]] = {}
    callers: dict[str, str] = {}
    stack: list[nn.Module] = []

    def pre(module: nn.Module, inputs: tuple) -> None:
        stack.append(module)
        if type(module) in LAYER_TYPES:
            order.setdefault(names[module], len(order))

    def post(module: nn.Module, inputs: tuple, output: Any) -> None:
        stack.pop()
        if type(module) not in LAYER_TYPES:
            return
        name = names[module]
        kind = "conv" if type(module) in CONV_TYPES else "linear"
        part = inputs[1] if len(inputs) > 1 else None
        if isinstance(module, PackedInProjection) and part is not None:
            # cross-attention projects query, key and value separately: one layer, three calls
            done = parts.setdefault(name, set())
            if part in done:
                return
            done.add(part)
            e = module.in_features
            info = _facts(name, kind, module.weight[part * e:(part + 1) * e], inputs[0], output, _batch_dim(stack))
            if name in seen:
                prev = seen[name]
                info = LayerInfo(name, kind, module.weight.numel(), module.out_features,
                                 prev.act_elems + info.act_elems, prev.macs + info.macs)
            else:
                info = LayerInfo(name, kind, module.weight.numel(), module.out_features, info.act_elems, info.macs)
            seen[name] = info
            return
        if name in seen:
            return  # a module reused in one forward keeps the facts of its first call
        batch_dim = _batch_dim(stack)
        seen[name] = _facts(name, kind, module.weight, inputs[0], output, batch_dim)

    def functional(kind: str, x: Tensor, weight: Any, out: Tensor) -> None:
        owner = owners.get(id(weight))
        if owner is None:
            return
        name, module = owner
        if stack and stack[-1] is module:
            return  # the layer's own forward: the hooks record it
        if name in seen:
            return
        if (kind == "conv") != (type(module) in CONV_TYPES):
            return  # a weight reused by another kind of op is not this layer's matmul
        order.setdefault(name, len(order))
        seen[name] = _facts(name, kind, weight, x, out)
        callers[name] = names[stack[-1]] if stack else ""

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _CallRecorder(functional):
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = sorted(seen.values(), key=lambda info: order[info.name])
    return _Trace(layers, callers)


def _batch_dim(stack: list[nn.Module]) -> int:
    """Where the batch is in the input of a layer called by the enclosing module: a rewritten
    attention hands its projections (length, batch, embed) tensors unless it is batch-first."""
    parent = stack[-1] if stack else None
    return 1 if isinstance(parent, RoutedMultiheadAttention) and not parent.batch_first else 0


def trace_layers(model: nn.Module, example_input: Tensor) -> list[LayerInfo]:
    """Facts about every Conv2d/Linear in execution order (per-sample sizes, unpinned).

    Layers count whether they are called as modules or only through ``F.linear``/``F.conv2d``
    with their weight in another module's forward. Attention modules are traced as they are: call
    :func:`eqtools.quant.attention.route_attention` first to count their projections.
    """
    return _trace(model, example_input).layers


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class _RouteCalls(TorchFunctionMode):
    """Inside one module's forward, sends ``F.linear``/``F.conv2d`` calls that use a quantized
    layer's weight through that layer's quantizers (input and weight), so a layer the module uses
    only functionally is quantized exactly as if it had been called."""

    def __init__(self, layers: Iterable[QuantLayer]) -> None:
        super().__init__()
        self._by_weight = {id(layer.weight): layer for layer in layers}  # type: ignore[attr-defined]

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _FUNCTIONAL:
            layer = self._by_weight.get(id(_weight_of(args, kwargs)))
            if layer is not None:
                # input and weight may come positionally or by keyword, as the trace accepts both
                args = list(args)
                for i, key, quant in ((0, "input", layer.act_quant), (1, "weight", layer.weight_quant)):
                    if len(args) > i:
                        args[i] = quant(args[i])
                    else:
                        kwargs[key] = quant(kwargs[key])
        return func(*args, **kwargs)


class FunctionalRouting:
    """Marker base of the classes :func:`_route_functional_calls` makes: a module whose forward
    runs under :class:`_RouteCalls` for the quantized layers in ``_eq_routes``."""

    _eq_routes: tuple[QuantLayer, ...]


_ROUTED: dict[type, type] = {}


def _routed_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _ROUTED:
        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            with _RouteCalls(self._eq_routes):
                return cls.forward(self, *args, **kwargs)

        _ROUTED[cls] = type(cls.__name__, (cls, FunctionalRouting), {"forward": forward, "__module__": cls.__module__})
    return _ROUTED[cls]


def _route_functional_calls(model: nn.Module, callers: Mapping[str, str]) -> None:
    """Give every module that calls a quantized layer's weight functionally a routed forward.

    The module keeps its identity, parameters and state_dict keys; only its class becomes a
    subclass whose forward is the original one under :class:`_RouteCalls`. Module swapping cannot
    do this: the layer's own forward is never run (torchvision's Swin passes ``self.qkv.weight`` to
    a function that ``torch.fx`` treats as a leaf).
    """
    by_caller: dict[str, list[QuantLayer]] = {}
    for layer_name, caller in callers.items():
        layer = model.get_submodule(layer_name)
        if isinstance(layer, QuantLayer):
            by_caller.setdefault(caller, []).append(layer)
    for caller, layers in by_caller.items():
        module = model.get_submodule(caller) if caller else model
        if not isinstance(module, FunctionalRouting):
            module.__class__ = _routed_class(type(module))
        module._eq_routes = tuple(layers)  # a tuple of modules is not registered: no duplicate keys


def _batch_inputs(batch: Any) -> Tensor:
    """The input tensor of one batch: the batch itself, or the first item of an (inputs, labels) pair."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, Tensor):
        return batch
    raise ConfigError(
        f"init_from_data takes batches of input tensors [B, C, H, W] or (inputs, labels) pairs, as a "
        f"torch.utils.data.DataLoader yields them; got a {type(batch).__name__}"
        + (f" of {[type(v).__name__ for v in batch][:3]}" if isinstance(batch, (tuple, list, dict)) else "")
    )


def quantize_model(
    model: nn.Module,
    space: ElasticSpace | Mapping[str, Any],
    example_input: Tensor,
    *,
    strict: bool = False,
) -> Supernet:
    """Convert ``model`` in place into a :class:`Supernet` over ``space``.

    ``space`` is a built :class:`ElasticSpace` (its layers must be the model's) or a spec's space
    section as a mapping (``w_bits``, ``a_bits``, ``granularities``, ``symmetries`` or
    ``w_symmetries``/``a_symmetries``, ``first_layer``, ``last_layer``, ``overrides``). The mapping
    is validated by the spec schema itself, so its defaults are the spec's (first and last layer
    pinned at 8/8, as in the paper's reference setup) and a typo is refused the same way.
    ``example_input`` is one batch (batch size 1 is enough) of the shape the model will see. A
    whole spec is built with :func:`eqtools.build.build_supernet`.

    Every weight matmul is reached: Conv2d/Linear modules are swapped for quantized drop-ins,
    ``nn.MultiheadAttention`` is rewritten so its packed q/k/v projection and its out-projection
    are layers (:mod:`eqtools.quant.attention`), and a Conv2d/Linear whose weight a module passes to
    ``F.linear``/``F.conv2d`` itself is quantized at that call. ``supernet.coverage`` says what is
    quantized and what stays float, and why; with ``strict=True`` a weight matmul left float that
    the space did not pin to ``"fp"`` is refused with :class:`CoverageError`.
    """
    from eqtools.specs import parse_space_settings

    notes = route_attention(model)
    trace = _trace(model, example_input)
    traced = trace.layers
    if isinstance(space, ElasticSpace):
        got = [layer.name for layer in traced]
        want = [layer.name for layer in space.layers]
        if got != want:
            raise SpecError(
                f"the space was built for another model: it lists {len(want)} layers, the model has "
                f"{len(got)} (first difference near {next((a for a, b in zip(want, got) if a != b), 'the end')!r})"
            )
        built = space
    elif isinstance(space, Mapping):
        built = ElasticSpace.build(traced, **parse_space_settings(space))
    else:
        raise TypeError(
            f"quantize_model takes an ElasticSpace or a space mapping, got {type(space).__name__}; "
            "build a whole spec with eqtools.build.build_supernet(spec)"
        )
    if not any(not layer.fixed for layer in built.quantized_layers):
        # every "subnet" would be the one pinned model: a 2-bit config would silently be 8-bit
        found = ", ".join(f"{layer.name} (pinned {layer.pin.w_bits}/{layer.pin.a_bits})" for layer in built.quantized_layers)
        raise SpecError(
            f"the elastic space has no elastic layer: the model's {len(built.layers)} Conv2d/Linear layer(s) are all "
            f"pinned or kept float ({found or 'none found'}), so every subnet would be the same model. Allowed: a "
            "model with Conv2d/Linear layers beyond the first and last, or first_layer/last_layer set to \"elastic\""
        )
    for info in built.quantized_layers:
        module = model.get_submodule(info.name)
        if isinstance(module, nn.Conv2d):
            _set_submodule(model, info.name, QConv2d.from_float(module, info, built))
        elif isinstance(module, PackedInProjection):
            _set_submodule(model, info.name, QPackedInProjection.from_float(module, info, built))
        else:
            _set_submodule(model, info.name, QLinear.from_float(module, info, built))
    _route_functional_calls(model, trace.callers)
    report = weight_coverage(model, built, notes)
    if strict:
        report.check_strict()
    elif report.unpinned_float:
        # the Python API's caller sees no report unless it asks: say it here, by name, type and reason
        warnings.warn(FloatWeightsWarning(report.unpinned_message()), stacklevel=2)
    supernet = Supernet(model, built)
    supernet.coverage = report
    return supernet


class _Activation:
    """Returned by :meth:`Supernet.apply`; as a context manager it restores the previous subnet."""

    def __init__(self, supernet: Supernet, previous: SubnetConfig | None) -> None:
        self._supernet = supernet
        self._previous = previous

    def __enter__(self) -> Supernet:
        return self._supernet

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            self._supernet.apply(self._previous)


class Supernet(nn.Module):
    """A converted model plus its elastic space; one subnet is active at a time.

    State dict keys are the wrapped model's keys under ``model.``: weights, biases, batch-norm
    statistics and every quantizer's steps, offsets, signedness and initialised flag. The active
    subnet is not part of the state.
    """

    def __init__(self, model: nn.Module, space: ElasticSpace) -> None:
        super().__init__()
        self.model = model
        self.space = space
        self._layers: dict[str, QuantLayer] = {
            name: module for name, module in model.named_modules() if isinstance(module, QuantLayer)
        }
        missing = [n for n in space.layer_names if n not in self._layers]
        if missing:
            raise SpecError(f"layers {missing[:5]} of the space are not quantized in the model")
        self._config: SubnetConfig | None = None
        self._channels_last = False
        # what is quantized and what stays float; quantize_model fills it in
        self.coverage: Coverage | None = None
        self.train(model.training)  # a wrapper must not flip an eval-mode model back to training
        self.apply(space.max())

    def forward(self, x: Tensor) -> Tensor:
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def use_channels_last(self) -> Supernet:
        """Keep conv weights and inputs in NHWC layout.

        oneDNN's convolutions are much faster in it on CPU, in quantized evaluation and in a sandwich
        training step alike (ResNet-20 at 28x28; BENCHMARKS.md, "Training step", times the step). The
        parameters stay the same objects, so optimisers built before or after both work; results
        differ from NCHW only by float summation order.
        """
        self.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self

    @property
    def config(self) -> SubnetConfig:
        """The active subnet."""
        assert self._config is not None
        return self._config

    def apply(self, config: SubnetConfig | Callable[[nn.Module], None]) -> Any:  # type: ignore[override]
        """Activate a subnet (``supernet.apply(config)``, or ``with supernet.apply(config):``).

        A callable is passed on to :meth:`torch.nn.Module.apply`, so module-initialisation code
        that calls ``model.apply(fn)`` keeps working on a supernet.
        """
        if not isinstance(config, SubnetConfig):
            return super().apply(config)
        self.space.validate(config)
        previous = self._config
        for name, w, a in zip(config.layers, config.w_bits, config.a_bits):
            self._layers[name].activate(w, a, config.granularity, config.w_symmetry, config.a_symmetry)
        self._config = config
        return _Activation(self, previous)

    def quant_layers(self) -> Iterator[tuple[str, QuantLayer]]:
        yield from self._layers.items()

    def quantizers(self) -> Iterator[ActQuantizer | WeightQuantizer]:
        for layer in self._layers.values():
            yield layer.act_quant
            yield layer.weight_quant

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """Steps and offsets (kept out of weight decay by the trainer)."""
        ids = set()
        params = []
        for q in self.quantizers():
            for p in q.parameters():
                if id(p) not in ids:
                    ids.add(id(p))
                    params.append(p)
        return params

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything that is not a quantizer parameter: shared weights, biases, BN affine."""
        quant = {id(p) for p in self.quantizer_parameters()}
        return [p for p in self.parameters() if id(p) not in quant]

    @property
    def initialized(self) -> bool:
        return all(q.ready for q in self.quantizers())

    @torch.no_grad()
    def init_from_data(self, batches: Iterable[Any], p: float = 2.4) -> int:
        """Initialise every form of every quantizer; returns the number of images seen.

        ``batches`` yields input tensors ``[B, C, H, W]`` (``[B, ...]`` for other models) or
        ``(inputs, labels)`` pairs, so a ``torch.utils.data.DataLoader`` over a labelled dataset
        works as it is; labels are ignored. Weight steps come from an L_p clipping search on the
        weights; activation steps from the same search on the layer inputs of a float forward pass
        over ``batches`` (the reference uses 256 images). The model runs in eval mode so batch norm
        uses its running statistics.
        """
        acts = [layer.act_quant for layer in self._layers.values()]
        for layer in self._layers.values():
            layer.weight_quant.init_from_weight(layer.weight, p)  # type: ignore[attr-defined]
        for q in acts:
            q.start_observing()
        was_training = self.training
        seen = 0
        try:
            self.eval()
            for batch in batches:
                x = _batch_inputs(batch)
                self.model(x)
                seen += x.shape[0]
            if seen == 0:
                raise ConfigError("init_from_data got no batches; give it at least one batch of inputs")
        except BaseException:
            for q in acts:  # an interrupted or empty initialisation leaves the quantizers as they were
                q.stop_observing()
            raise
        finally:
            self.train(was_training)
        for q in acts:
            q.finish_observing(p)
        self.apply(self.config)
        return seen

    @contextlib.contextmanager
    def float_mode(self) -> Iterator[Supernet]:
        """Run the underlying float model (every quantizer passes its input through)."""
        quantizers = list(self.quantizers())
        for q in quantizers:
            q.enabled = False
        try:
            yield self
        finally:
            for q in quantizers:
                q.enabled = True
