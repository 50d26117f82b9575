"""``quantize_model``: turn any torch.nn.Module into an elastic quantization supernet.

The model is traced once on an example input to learn each Conv2d/Linear's execution order,
input-activation size and MACs (the space needs them for average bits, size and BOPs), then every
such layer not kept in floating point is swapped for its quantized drop-in. Batch norm stays
unfolded during training; export folds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from eqtools.errors import ConfigError, SpecError
from eqtools.quant.layers import QConv2d, QLinear, QuantLayer
from eqtools.quant.quantizer import ActQuantizer, WeightQuantizer
from eqtools.space import ElasticSpace, LayerInfo, SubnetConfig

__all__ = ["Supernet", "quantize_model", "trace_layers"]


def trace_layers(model: nn.Module, example_input: Tensor) -> list[LayerInfo]:
    """Facts about every Conv2d/Linear in execution order (per-sample sizes, unpinned)."""
    seen: dict[str, LayerInfo] = {}
    names = {module: name for name, module in model.named_modules()}
    handles = []

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        name = names[module]
        if name in seen:
            return  # a module reused in one forward keeps the facts of its first call
        x = inputs[0]
        batch = x.shape[0]
        if isinstance(module, nn.Conv2d):
            kind = "conv"
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            kind = "linear"
            per_output = module.in_features
        seen[name] = LayerInfo(
            name=name,
            kind=kind,
            weight_params=module.weight.numel(),
            out_channels=module.weight.shape[0],
            act_elems=x.numel() // batch,
            macs=output.numel() // batch * per_output,
        )

    for module in model.modules():
        if type(module) in (nn.Conv2d, nn.Linear):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return list(seen.values())


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def quantize_model(
    model: nn.Module,
    space: ElasticSpace | Mapping[str, Any],
    example_input: Tensor,
) -> Supernet:
    """Convert ``model`` in place into a :class:`Supernet` over ``space``.

    ``space`` is a built :class:`ElasticSpace` (its layers must be the model's) or a spec's space
    section as a mapping (``w_bits``, ``a_bits``, ``granularities``, ``symmetries`` or
    ``w_symmetries``/``a_symmetries``, ``first_layer``, ``last_layer``, ``overrides``). The mapping
    is validated by the spec schema itself, so its defaults are the spec's (first and last layer
    pinned at 8/8, as in the paper's reference setup) and a typo is refused the same way.
    ``example_input`` is one batch (batch size 1 is enough) of the shape the model will see. A
    whole spec is built with :func:`eqtools.build.build_supernet`.
    """
    from eqtools.specs import parse_space_settings

    traced = trace_layers(model, example_input)
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
    for info in built.quantized_layers:
        module = model.get_submodule(info.name)
        if isinstance(module, nn.Conv2d):
            _set_submodule(model, info.name, QConv2d.from_float(module, info, built))
        else:
            _set_submodule(model, info.name, QLinear.from_float(module, info, built))
    return Supernet(model, built)


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
        self.train(model.training)  # a wrapper must not flip an eval-mode model back to training
        self.apply(space.max())

    def forward(self, x: Tensor) -> Tensor:
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def use_channels_last(self) -> Supernet:
        """Keep conv weights and inputs in NHWC layout.

        oneDNN's convolutions are much faster in it on CPU (measured on ResNet-20 at 28x28, 2
        threads: quantized evaluation +57%, a sandwich training step -17%; see BENCHMARKS.md). The
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
        return all(q._ready for q in self.quantizers())

    @torch.no_grad()
    def init_from_data(self, batches: Iterable[Tensor], p: float = 2.4) -> int:
        """Initialise every form of every quantizer; returns the number of images seen.

        Weight steps come from an L_p clipping search on the weights; activation steps from the
        same search on the layer inputs of a float forward pass over ``batches`` (the reference
        uses 256 images). The model runs in eval mode so batch norm uses its running statistics.
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
            for x in batches:
                self.model(x)
                seen += x.shape[0]
        finally:
            self.train(was_training)
            for q in acts:
                q._observing = False
                q.enabled = True
        if seen == 0:
            raise ConfigError("init_from_data got no batches; give it at least one batch of inputs")
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
