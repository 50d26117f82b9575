"""The elastic quantization space and the subnet config, the unit every stage passes around.

Nothing here imports torch: the sampler, the predictor encoders, the genetic search and the CLI all
work on these values, and they must stay cheap to import and to hash.

Vocabulary
----------
- A *layer* is a Conv2d or Linear of the model, in execution order.
- A *quantized* layer has an input-activation quantizer and a weight quantizer. A layer can instead
  be kept in floating point (``keep_float``), which removes it from every config.
- A *fixed* layer is quantized at pinned bits (first and last layer at 8/8 by default, as in the
  paper's reference setup); an *elastic* layer takes any candidate bit-width.
- The *conditions* (granularity of the weight steps, symmetry of the weights, symmetry of the
  activations: together the subnet's *form*, see :mod:`eqtools.vocab`) are global per config, as in
  the paper's CQAP; the JSON format keeps them at the top so a per-layer form can be added later
  without breaking old files. Weight and activation symmetry are chosen independently (paper Eq. 9:
  S_w and S_a), so a space with both of each holds 8 forms.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import random as _random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from eqtools.errors import ConfigError, SpecError
from eqtools.vocab import BIT_CHOICES, FLOAT_BITS, GRANULARITIES, SYMMETRIES, form_key, form_label, form_tag

__all__ = [
    "BIT_CHOICES",
    "GRANULARITIES",
    "SYMMETRIES",
    "ElasticSpace",
    "LayerInfo",
    "LayerPin",
    "SubnetConfig",
]



def _check_bits(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in BIT_CHOICES:
        raise ConfigError(f"{what} is {value!r}; bit-widths must be integers in {list(BIT_CHOICES)}")
    return value


def _check_choice(value: Any, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{what} is {value!r}; must be one of {list(allowed)}")
    return value


@dataclass(frozen=True)
class SubnetConfig:
    """One point of the elastic space: per-layer bit-widths plus the global form.

    ``layers``, ``w_bits`` and ``a_bits`` are aligned tuples over the space's quantized layers
    (fixed layers included, at their pinned bits), so a config file is readable on its own and a
    config from another model is caught by name, not by accident of length. The form is
    ``granularity`` (of the weight steps), ``w_symmetry`` and ``a_symmetry``.
    """

    layers: tuple[str, ...]
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    granularity: str
    w_symmetry: str
    a_symmetry: str

    def __post_init__(self) -> None:
        for name in ("layers", "w_bits", "a_bits"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if not (len(self.layers) == len(self.w_bits) == len(self.a_bits)):
            raise ConfigError(
                f"config has {len(self.layers)} layer names, {len(self.w_bits)} weight bit-widths and "
                f"{len(self.a_bits)} activation bit-widths; all three must have the same length"
            )
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError("config names a layer more than once")
        for layer, w, a in zip(self.layers, self.w_bits, self.a_bits):
            _check_bits(w, f"w_bits of layer {layer!r}")
            _check_bits(a, f"a_bits of layer {layer!r}")
        _check_choice(self.granularity, GRANULARITIES, "granularity")
        _check_choice(self.w_symmetry, SYMMETRIES, "w_symmetry")
        _check_choice(self.a_symmetry, SYMMETRIES, "a_symmetry")

    @property
    def form(self) -> tuple[str, str, str]:
        """``(granularity, w_symmetry, a_symmetry)``."""
        return self.granularity, self.w_symmetry, self.a_symmetry

    @property
    def condition(self) -> str:
        """The form as a machine key, e.g. ``per-tensor/sym/asym`` (see :func:`eqtools.vocab.form_key`)."""
        return form_key(*self.form)

    @property
    def label(self) -> str:
        """The form for people, e.g. ``per-tensor W-sym A-asym``."""
        return form_label(*self.form)

    @property
    def tag(self) -> str:
        """The form for paths, e.g. ``per-tensor-Wsym-Aasym``."""
        return form_tag(*self.form)

    def replace(self, **changes: Any) -> SubnetConfig:
        values = {
            "layers": self.layers,
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
            "granularity": self.granularity,
            "w_symmetry": self.w_symmetry,
            "a_symmetry": self.a_symmetry,
        }
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"SubnetConfig has no fields {sorted(unknown)}")
        values.update(changes)
        return SubnetConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity,
            "w_symmetry": self.w_symmetry,
            "a_symmetry": self.a_symmetry,
            "layers": [
                {"name": n, "w_bits": w, "a_bits": a}
                for n, w, a in zip(self.layers, self.w_bits, self.a_bits)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetConfig:
        """Read a config; the version-1 form ``{"symmetry": S}`` means S for weights and activations.

        Version 1 of the format tied the two symmetries, so reading its one ``symmetry`` as both is
        exact, not a guess; a file that mixes the two spellings is refused.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a subnet config must be a JSON object, got {type(data).__name__}")
        keys = set(data)
        v2 = {"granularity", "w_symmetry", "a_symmetry", "layers"}
        v1 = {"granularity", "symmetry", "layers"}
        if "symmetry" in keys and keys & {"w_symmetry", "a_symmetry"}:
            raise ConfigError(
                "subnet config has both 'symmetry' (format 1: weights and activations alike) and "
                "'w_symmetry'/'a_symmetry'; give either the one or the two"
            )
        allowed = v1 if "symmetry" in keys else v2
        unknown = keys - allowed
        if unknown:
            raise ConfigError(
                f"subnet config has unknown keys {sorted(unknown)}; "
                "allowed: granularity, w_symmetry, a_symmetry, layers"
            )
        missing = allowed - keys
        if missing:
            raise ConfigError(f"subnet config is missing {sorted(missing)}")
        rows = data["layers"]
        if not isinstance(rows, list) or not rows:
            raise ConfigError("subnet config 'layers' must be a non-empty list of {name, w_bits, a_bits}")
        names, ws, as_ = [], [], []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or set(row) != {"name", "w_bits", "a_bits"}:
                raise ConfigError(
                    f"subnet config layers[{i}] is {row!r}; each entry must be an object with exactly "
                    "the keys name, w_bits, a_bits"
                )
            names.append(str(row["name"]))
            ws.append(row["w_bits"])
            as_.append(row["a_bits"])
        w_sym = data["symmetry"] if "symmetry" in keys else data["w_symmetry"]
        a_sym = data["symmetry"] if "symmetry" in keys else data["a_symmetry"]
        return cls(tuple(names), tuple(ws), tuple(as_), data["granularity"], w_sym, a_sym)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"subnet config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> SubnetConfig:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"subnet config {str(path)!r} is a directory, not a JSON config file")
        if path.exists() and not path.is_file():
            raise ConfigError(f"subnet config {str(path)!r} is not a regular file (a JSON config file is expected)")
        if not path.is_file():
            raise ConfigError(f"subnet config file {str(path)!r} does not exist")
        try:
            return cls.from_json(path.read_text())
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"subnet config {path} is not a UTF-8 text file (a JSON config is expected)") from None


@dataclass(frozen=True)
class LayerPin:
    """What a layer is pinned to: fixed bit-widths, or kept in floating point."""

    w_bits: int | None = None
    a_bits: int | None = None
    keep_float: bool = False

    def __post_init__(self) -> None:
        if self.keep_float:
            if self.w_bits is not None or self.a_bits is not None:
                raise SpecError("a layer kept in floating point cannot also have pinned bits")
        else:
            if self.w_bits is None or self.a_bits is None:
                raise SpecError("a pinned layer needs both w_bits and a_bits (or 'fp')")
            _check_pin_bits(self.w_bits, "w_bits")
            _check_pin_bits(self.a_bits, "a_bits")

    @classmethod
    def parse(cls, value: Any, where: str) -> LayerPin | None:
        """Read a pin from a spec value: ``"fp"``, ``"elastic"``/None, or ``{w_bits, a_bits}``."""
        if value is None or value == "elastic":
            return None
        if value == "fp":
            return cls(keep_float=True)
        if isinstance(value, Mapping) and set(value) == {"w_bits", "a_bits"}:
            try:
                return cls(w_bits=value["w_bits"], a_bits=value["a_bits"])
            except SpecError as exc:
                raise SpecError(f"{where}: {exc}") from None
        raise SpecError(
            f"{where} is {value!r}; allowed: \"fp\" (keep in floating point), \"elastic\", "
            'or {"w_bits": B, "a_bits": B} with B in 2..8'
        )

    def to_json(self) -> Any:
        return "fp" if self.keep_float else {"w_bits": self.w_bits, "a_bits": self.a_bits}


def _check_pin_bits(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in BIT_CHOICES:
        raise SpecError(f"pinned {what} is {value!r}; must be an integer in {list(BIT_CHOICES)}")


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one Conv2d/Linear, measured once by tracing the model.

    ``act_elems`` and ``macs`` are per input sample: the number of elements of the layer's input
    activation, and the multiply-accumulates of the layer.
    """

    name: str
    kind: str  # "conv" or "linear"
    weight_params: int
    out_channels: int
    act_elems: int
    macs: int
    pin: LayerPin | None = None

    @property
    def keep_float(self) -> bool:
        return self.pin is not None and self.pin.keep_float

    @property
    def fixed(self) -> bool:
        return self.pin is not None and not self.pin.keep_float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "weight_params": self.weight_params,
            "out_channels": self.out_channels,
            "act_elems": self.act_elems,
            "macs": self.macs,
            "pin": None if self.pin is None else self.pin.to_json(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerInfo:
        return cls(
            name=data["name"],
            kind=data["kind"],
            weight_params=int(data["weight_params"]),
            out_channels=int(data["out_channels"]),
            act_elems=int(data["act_elems"]),
            macs=int(data["macs"]),
            pin=LayerPin.parse(data.get("pin"), f"layer {data['name']!r} pin"),
        )


@dataclass(frozen=True)
class ElasticSpace:
    """Candidate bit-widths and conditions, plus the model's layers and their pins.

    Build one with :meth:`build` from traced layer facts and the spec's space section; it is then a
    frozen value that is stored in every artifact's manifest, so a stage can refuse an artifact
    from another space (compare :attr:`fingerprint`).
    """

    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    granularities: tuple[str, ...]
    w_symmetries: tuple[str, ...]
    a_symmetries: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "granularities", "w_symmetries", "a_symmetries", "layers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("w_bits", "a_bits"):
            values = getattr(self, name)
            if not values:
                raise SpecError(f"space.{name} is empty; give at least one bit-width in 2..8")
            for b in values:
                if isinstance(b, bool) or not isinstance(b, int) or b not in BIT_CHOICES:
                    raise SpecError(f"space.{name} contains {b!r}; bit-widths must be integers in 2..8")
            if len(set(values)) != len(values):
                raise SpecError(f"space.{name} lists a bit-width twice: {list(values)}")
            object.__setattr__(self, name, tuple(sorted(values)))
        for name, allowed in (
            ("granularities", GRANULARITIES), ("w_symmetries", SYMMETRIES), ("a_symmetries", SYMMETRIES)
        ):
            values = getattr(self, name)
            if not values:
                raise SpecError(f"space.{name} is empty; allowed values: {list(allowed)}")
            for v in values:
                if v not in allowed:
                    raise SpecError(f"space.{name} contains {v!r}; allowed values: {list(allowed)}")
            if len(set(values)) != len(values):
                raise SpecError(f"space.{name} lists a value twice: {list(values)}")
        if not any(not layer.keep_float for layer in self.layers):
            raise SpecError("every layer is kept in floating point; nothing is left to quantize")
        index = {layer.name: i for i, layer in enumerate(self.quantized_layers)}
        object.__setattr__(self, "_index", index)

    # ----------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        layers: Sequence[LayerInfo],
        *,
        w_bits: Sequence[int],
        a_bits: Sequence[int],
        granularities: Sequence[str] = GRANULARITIES,
        w_symmetries: Sequence[str] = SYMMETRIES,
        a_symmetries: Sequence[str] = SYMMETRIES,
        first_layer: Any = None,
        last_layer: Any = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ElasticSpace:
        """Attach pins to traced layers and validate the candidate lists.

        ``first_layer``/``last_layer`` apply to the first and last layer in execution order.
        ``overrides`` maps a module name or glob to a pin; entries are applied in order, so a later
        entry wins over an earlier one and over the first/last defaults. A glob that matches no
        layer is an error, because it is almost always a typo.
        """
        if not layers:
            raise SpecError("the model has no Conv2d or Linear layer to quantize")
        pins: dict[str, LayerPin | None] = {layer.name: None for layer in layers}
        first = LayerPin.parse(first_layer, "space.first_layer")
        last = LayerPin.parse(last_layer, "space.last_layer")
        pins[layers[0].name] = first
        if len(layers) > 1:  # a one-layer model is its own first layer
            pins[layers[-1].name] = last
        for pattern, value in (overrides or {}).items():
            matched = [name for name in pins if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                sample = ", ".join(list(pins)[:6])
                raise SpecError(
                    f"space.overrides key {pattern!r} matches no layer; layer names look like: {sample}, ..."
                )
            pin = LayerPin.parse(value, f"space.overrides[{pattern!r}]")
            for name in matched:
                pins[name] = pin
        pinned = tuple(
            LayerInfo(
                name=layer.name,
                kind=layer.kind,
                weight_params=layer.weight_params,
                out_channels=layer.out_channels,
                act_elems=layer.act_elems,
                macs=layer.macs,
                pin=pins[layer.name],
            )
            for layer in layers
        )
        return cls(
            tuple(w_bits), tuple(a_bits), tuple(granularities), tuple(w_symmetries), tuple(a_symmetries), pinned
        )

    # ----------------------------------------------------------------- views
    @cached_property
    def quantized_layers(self) -> tuple[LayerInfo, ...]:
        """Layers that carry quantizers (fixed and elastic), in execution order."""
        return tuple(layer for layer in self.layers if not layer.keep_float)

    @cached_property
    def elastic_layers(self) -> tuple[LayerInfo, ...]:
        return tuple(layer for layer in self.quantized_layers if not layer.fixed)

    @cached_property
    def layer_names(self) -> tuple[str, ...]:
        """Names a config must list, in order."""
        return tuple(layer.name for layer in self.quantized_layers)

    @cached_property
    def conditions(self) -> tuple[tuple[str, str, str], ...]:
        """Every form ``(granularity, w_symmetry, a_symmetry)`` of the space: 8 when all are allowed."""
        return tuple(
            (g, ws, as_) for g in self.granularities for ws in self.w_symmetries for as_ in self.a_symmetries
        )

    def layer(self, name: str) -> LayerInfo:
        return self.quantized_layers[self._index[name]]

    def w_choices(self, layer: LayerInfo) -> tuple[int, ...]:
        """Bit-widths this layer's weights may take."""
        return (layer.pin.w_bits,) if layer.fixed else self.w_bits  # type: ignore[union-attr]

    def a_choices(self, layer: LayerInfo) -> tuple[int, ...]:
        return (layer.pin.a_bits,) if layer.fixed else self.a_bits  # type: ignore[union-attr]

    # ----------------------------------------------------------------- configs
    def _make(
        self, w: Sequence[int], a: Sequence[int], granularity: str | None, w_symmetry: str | None,
        a_symmetry: str | None,
    ) -> SubnetConfig:
        g = self.granularities[0] if granularity is None else granularity
        ws = self.w_symmetries[0] if w_symmetry is None else w_symmetry
        as_ = self.a_symmetries[0] if a_symmetry is None else a_symmetry
        config = SubnetConfig(self.layer_names, tuple(w), tuple(a), g, ws, as_)
        self.validate(config)
        return config

    def uniform(
        self,
        w_bits: int,
        a_bits: int | None = None,
        granularity: str | None = None,
        w_symmetry: str | None = None,
        a_symmetry: str | None = None,
    ) -> SubnetConfig:
        """Every elastic layer at the same bits; fixed layers keep their pins.

        The form defaults to the first value of each of the space's lists.
        """
        a_bits = w_bits if a_bits is None else a_bits
        if w_bits not in self.w_bits:
            raise ConfigError(f"w_bits {w_bits} is not in this space; candidates: {list(self.w_bits)}")
        if a_bits not in self.a_bits:
            raise ConfigError(f"a_bits {a_bits} is not in this space; candidates: {list(self.a_bits)}")
        w = [layer.pin.w_bits if layer.fixed else w_bits for layer in self.quantized_layers]  # type: ignore[union-attr]
        a = [layer.pin.a_bits if layer.fixed else a_bits for layer in self.quantized_layers]  # type: ignore[union-attr]
        return self._make(w, a, granularity, w_symmetry, a_symmetry)

    def max(
        self, granularity: str | None = None, w_symmetry: str | None = None, a_symmetry: str | None = None
    ) -> SubnetConfig:
        return self.uniform(self.w_bits[-1], self.a_bits[-1], granularity, w_symmetry, a_symmetry)

    def min(
        self, granularity: str | None = None, w_symmetry: str | None = None, a_symmetry: str | None = None
    ) -> SubnetConfig:
        return self.uniform(self.w_bits[0], self.a_bits[0], granularity, w_symmetry, a_symmetry)

    def random_form(self, rng: _random.Random) -> tuple[str, str, str]:
        """A form drawn uniformly: granularity, weight and activation symmetry each independently."""
        return rng.choice(self.granularities), rng.choice(self.w_symmetries), rng.choice(self.a_symmetries)

    def random(
        self,
        rng: _random.Random,
        granularity: str | None = None,
        w_symmetry: str | None = None,
        a_symmetry: str | None = None,
    ) -> SubnetConfig:
        """Bits drawn independently and uniformly per elastic layer; the form drawn too unless given."""
        g, ws, as_ = self.random_form(rng)
        g = g if granularity is None else granularity
        ws = ws if w_symmetry is None else w_symmetry
        as_ = as_ if a_symmetry is None else a_symmetry
        w = [rng.choice(self.w_choices(layer)) for layer in self.quantized_layers]
        a = [rng.choice(self.a_choices(layer)) for layer in self.quantized_layers]
        return self._make(w, a, g, ws, as_)

    def check_form(self, granularity: str, w_symmetry: str, a_symmetry: str) -> None:
        """Raise :class:`ConfigError` naming the part of a form this space was not trained for."""
        for what, value, allowed in (
            ("granularity", granularity, self.granularities),
            ("weight symmetry", w_symmetry, self.w_symmetries),
            ("activation symmetry", a_symmetry, self.a_symmetries),
        ):
            if value not in allowed:
                raise ConfigError(f"{what} {value!r} is not in this space; allowed: {list(allowed)}")

    def validate(self, config: SubnetConfig) -> SubnetConfig:
        """Raise :class:`ConfigError` naming the first layer or condition outside the space."""
        if config.layers != self.layer_names:
            expected, got = self.layer_names, config.layers
            missing = [n for n in expected if n not in got]
            extra = [n for n in got if n not in expected]
            if missing or extra:
                raise ConfigError(
                    f"config layers do not match the space: missing {missing[:5]}, unknown {extra[:5]}; "
                    f"the space has {len(expected)} quantized layers starting {list(expected[:3])}"
                )
            raise ConfigError("config lists the space's layers in another order")
        self.check_form(*config.form)
        for layer, w, a in zip(self.quantized_layers, config.w_bits, config.a_bits):
            if w not in self.w_choices(layer):
                raise ConfigError(
                    f"layer {layer.name!r}: w_bits {w} is not allowed; allowed: {list(self.w_choices(layer))}"
                )
            if a not in self.a_choices(layer):
                raise ConfigError(
                    f"layer {layer.name!r}: a_bits {a} is not allowed; allowed: {list(self.a_choices(layer))}"
                )
        return config

    def contains(self, config: SubnetConfig) -> bool:
        try:
            self.validate(config)
        except ConfigError:
            return False
        return True

    # ----------------------------------------------------------------- costs
    def avg_bits(self, config: SubnetConfig) -> tuple[float, float]:
        """Average (weight, activation) bits over the *elastic* layers.

        Weights are weighted by parameter count and activations by input-activation elements per
        sample. Fixed layers (first/last at 8/8 by default) and float layers are excluded: they are
        the same in every config, so including them would only blur the budget the user sets. A
        space with no elastic layer averages over its fixed layers instead.
        """
        rows = [
            (layer, w, a)
            for layer, w, a in zip(self.quantized_layers, config.w_bits, config.a_bits)
            if not layer.fixed
        ] or list(zip(self.quantized_layers, config.w_bits, config.a_bits))
        wp = sum(layer.weight_params for layer, _, _ in rows)
        ap = sum(layer.act_elems for layer, _, _ in rows)
        avg_w = sum(layer.weight_params * w for layer, w, _ in rows) / wp
        avg_a = sum(layer.act_elems * a for layer, _, a in rows) / ap
        return avg_w, avg_a

    def size_bytes(self, config: SubnetConfig) -> int:
        """Bytes of Conv/Linear weights packed at their bit-widths (float layers at 4 bytes each).

        Biases, batch-norm and quantizer scales are not counted: they are the same small overhead in
        every config and would only shift all sizes by a constant.
        """
        bits = dict(zip(config.layers, config.w_bits))
        total = 0
        for layer in self.layers:
            b = FLOAT_BITS if layer.keep_float else bits[layer.name]
            total += math.ceil(layer.weight_params * b / 8)
        return total

    def bops(self, config: SubnetConfig) -> int:
        """Bit operations per sample: sum of MACs × weight bits × activation bits (float = 32 bits)."""
        wb = dict(zip(config.layers, config.w_bits))
        ab = dict(zip(config.layers, config.a_bits))
        total = 0
        for layer in self.layers:
            if layer.keep_float:
                total += layer.macs * FLOAT_BITS * FLOAT_BITS
            else:
                total += layer.macs * wb[layer.name] * ab[layer.name]
        return total

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "w_bits": list(self.w_bits),
            "a_bits": list(self.a_bits),
            "granularities": list(self.granularities),
            "w_symmetries": list(self.w_symmetries),
            "a_symmetries": list(self.a_symmetries),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ElasticSpace:
        """Read a space; version 1's one ``symmetries`` list held for weights and activations alike."""
        w_sym = data["w_symmetries"] if "w_symmetries" in data else data["symmetries"]
        a_sym = data["a_symmetries"] if "a_symmetries" in data else data["symmetries"]
        return cls(
            tuple(data["w_bits"]),
            tuple(data["a_bits"]),
            tuple(data["granularities"]),
            tuple(w_sym),
            tuple(a_sym),
            tuple(LayerInfo.from_dict(row) for row in data["layers"]),
        )

    @property
    def fingerprint(self) -> str:
        """A short hash of the whole space: artifacts built on different spaces never mix."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe_difference(self, other: ElasticSpace) -> str:
        """A one-line reason why two spaces differ, for error messages."""
        for name in ("w_bits", "a_bits", "granularities", "w_symmetries", "a_symmetries"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} {list(getattr(self, name))} vs {list(getattr(other, name))}"
        if len(self.layers) != len(other.layers):
            return f"{len(self.layers)} layers vs {len(other.layers)} layers"
        for a, b in zip(self.layers, other.layers):
            if a != b:
                return f"layer {a.name!r} differs ({a.to_dict()} vs {b.to_dict()})"
        return "no difference"
