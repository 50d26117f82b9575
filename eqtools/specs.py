"""Spec files: what to train, on which data, over which space, with which recipe.

Validated once on load with pydantic (a schema, not hand-written ``if``s): unknown keys, wrong
types and out-of-range values are rejected with the field path, the bad value and what is
allowed. Everything downstream receives the frozen :class:`Spec` and trusts it. Defaults follow
the paper's recipe and the reference implementation's facts (see ``docs/specs.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eqtools.errors import SpecError
from eqtools.vocab import BIT_CHOICES, GRANULARITIES, SYMMETRIES, Granularity, Symmetry

__all__ = ["Spec", "load_spec", "parse_space_settings", "parse_spec"]

Bits = Annotated[int, Field(ge=BIT_CHOICES[0], le=BIT_CHOICES[-1], strict=True)]


class _Strict(BaseModel):
    # every float finite: JSON's parser in Python accepts NaN and Infinity, and one of them in a
    # learning rate or a WDR target trains to a "successful" artifact of NaN weights
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PinnedBits(_Strict):
    w_bits: Bits
    a_bits: Bits


Pin = PinnedBits | Literal["fp", "elastic"]


class ModelSpec(_Strict):
    name: str = Field(description="eqtools model (resnet20, tiny_cnn, ...) or any torchvision classifier")
    num_classes: Annotated[int, Field(ge=2)] | None = Field(default=None, description="default: the dataset's")
    pretrained: str | None = Field(
        default=None,
        description="local float weights: a .safetensors file or a torch state_dict (.pt/.pth, read with weights_only=True)",
    )


class DataSpec(_Strict):
    name: Literal["fashion-mnist", "mnist", "cifar10", "imagefolder", "digits"]
    root: str | None = Field(default=None, description="dataset directory; default: $EQTOOLS_DATA or the standard location")
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = Field(
        default=None, description="side of the square network input; default: the dataset's native size"
    )
    train_subset: Annotated[int, Field(ge=10)] | None = Field(
        default=None, description="train on a class-balanced subset of this many training images (scaled recipes)"
    )
    val_size: Annotated[int, Field(ge=10)] = Field(
        default=5000, description="training images held out (class-balanced, by seed) for sampling and BN calibration checks"
    )
    test_subset: Annotated[int, Field(ge=10)] | None = Field(default=None, description="evaluate on a class-balanced subset of the test split")
    augment: bool = True
    workers: Annotated[int, Field(ge=0, le=64)] | None = Field(
        default=None,
        description="processes decoding and augmenting ImageFolder images (0: the main process); default: this "
        "machine's cores, at most 8. In-memory datasets ignore it",
    )


class SpaceSpec(_Strict):
    w_bits: Annotated[list[Bits], Field(min_length=1)] = list(BIT_CHOICES)
    a_bits: Annotated[list[Bits], Field(min_length=1)] = list(BIT_CHOICES)
    granularities: Annotated[list[Granularity], Field(min_length=1)] = list(GRANULARITIES)
    symmetries: Annotated[list[Symmetry], Field(min_length=1)] = Field(
        default=list(SYMMETRIES), description="shorthand for both w_symmetries and a_symmetries"
    )
    w_symmetries: Annotated[list[Symmetry], Field(min_length=1)] | None = Field(
        default=None, description="weight symmetries, narrowing `symmetries`; default: `symmetries`"
    )
    a_symmetries: Annotated[list[Symmetry], Field(min_length=1)] | None = Field(
        default=None, description="activation symmetries, narrowing `symmetries`; default: `symmetries`"
    )
    first_layer: Pin = PinnedBits(w_bits=8, a_bits=8)
    last_layer: Pin = PinnedBits(w_bits=8, a_bits=8)
    overrides: dict[str, Pin] = Field(default_factory=dict, description="module name or glob -> {w_bits, a_bits} | 'fp'")

    @field_validator("w_bits", "a_bits", "granularities", "symmetries", "w_symmetries", "a_symmetries")
    @classmethod
    def _unique(cls, value: list | None) -> list | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"lists a value twice: {value}")
        return value

    @model_validator(mode="after")
    def _narrowing(self) -> SpaceSpec:
        for name in ("w_symmetries", "a_symmetries"):
            value = getattr(self, name)
            if value is not None and not set(value) <= set(self.symmetries):
                raise ValueError(
                    f"{name} {value} must narrow symmetries {self.symmetries} (it may only drop values); "
                    "widen symmetries or leave it out"
                )
        return self

    @property
    def resolved_w_symmetries(self) -> tuple[str, ...]:
        return tuple(self.w_symmetries or self.symmetries)

    @property
    def resolved_a_symmetries(self) -> tuple[str, ...]:
        return tuple(self.a_symmetries or self.symmetries)

    def settings(self) -> dict[str, Any]:
        """The mapping :func:`eqtools.quant.quantize_model` takes."""

        def pin(p: Any) -> Any:
            return p.model_dump() if isinstance(p, PinnedBits) else p

        return {
            "w_bits": tuple(self.w_bits),
            "a_bits": tuple(self.a_bits),
            "granularities": tuple(self.granularities),
            "w_symmetries": self.resolved_w_symmetries,
            "a_symmetries": self.resolved_a_symmetries,
            "first_layer": pin(self.first_layer),
            "last_layer": pin(self.last_layer),
            "overrides": {k: pin(v) for k, v in self.overrides.items()},
        }


class SandwichSpec(_Strict):
    num_random: Annotated[int, Field(ge=0, le=16)] = 1
    kd_lambda: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    distill: bool = Field(default=True, description="group progressive guidance (KL chain); false = CE only, for ablations")


class WDRSpec(_Strict):
    kurtosis: Annotated[float, Field(ge=0.0)] = 0.015
    skewness: Annotated[float, Field(ge=0.0)] = 1.0
    kurtosis_target: float = 1.8
    exclude_first: bool = True


class StaticSpec(_Strict):
    w_bits: Bits
    a_bits: Bits
    granularity: Granularity = "per-channel"
    symmetry: Symmetry = Field(default="sym", description="shorthand for both w_symmetry and a_symmetry")
    w_symmetry: Symmetry | None = Field(default=None, description="default: `symmetry`")
    a_symmetry: Symmetry | None = Field(default=None, description="default: `symmetry`")

    @property
    def form(self) -> tuple[str, str, str]:
        """``(granularity, w_symmetry, a_symmetry)`` with the shorthand resolved."""
        return self.granularity, self.w_symmetry or self.symmetry, self.a_symmetry or self.symmetry


class TrainSpec(_Strict):
    mode: Literal["supernet", "static"] = "supernet"
    epochs: Annotated[int, Field(ge=1)] = 120
    steps_per_epoch: Annotated[int, Field(ge=1)] | None = Field(default=None, description="cap on optimiser steps per epoch")
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 256
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0, le=100.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0.0)] | None = 1.0
    sandwich: SandwichSpec = SandwichSpec()
    wdr: WDRSpec = WDRSpec()
    static: StaticSpec | None = None
    init_images: Annotated[int, Field(ge=1)] = 256
    init_p: Annotated[float, Field(ge=1.0, le=4.0)] = 2.4
    compile: Literal["auto", "on", "off"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="autocast dtype of the forward passes (fp16 adds a gradient scaler); quantizer steps, offsets "
        "and rounding stay in fp32, so a subnet's integer codes do not depend on it",
    )
    fp_epochs: Annotated[int, Field(ge=0)] = Field(
        default=0, description="float pre-training epochs before QAT when no pretrained weights are given"
    )

    @model_validator(mode="after")
    def _static_needs_config(self) -> TrainSpec:
        if self.mode == "static" and self.static is None:
            raise ValueError("mode 'static' needs a 'static' section: {w_bits, a_bits, granularity, symmetry}")
        return self


class CalibrateSpec(_Strict):
    images: Annotated[int, Field(ge=1)] = 65536
    batch_size: Annotated[int, Field(ge=1)] = 256


class SampleSpec(_Strict):
    n: Annotated[int, Field(ge=1, le=100_000)] = 8000  # eqtools.sample.MAX_SUBNETS
    subset: Annotated[int, Field(ge=10)] = 10000
    calib_images: Annotated[int, Field(ge=1)] = 2048
    batch_size: Annotated[int, Field(ge=1)] = 256


class PredictorSpec(_Strict):
    # defaults: the winner of the comparison in docs/fit-predictor.md (r20-fmnist, 2026-12-01)
    model: Literal["mlp", "xgb", "ensemble"] = "ensemble"
    encoding: Literal["onehot", "ordinal", "onehot-costs"] = "onehot-costs"
    epochs: Annotated[int, Field(ge=1)] = 100
    hidden: Annotated[int, Field(ge=1)] = 200
    layers: Annotated[int, Field(ge=1)] = 7
    lr: Annotated[float, Field(gt=0.0, le=100.0)] = 4e-4
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-5
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    rank_weight: Annotated[float, Field(ge=0.0)] = 1.0
    members: Annotated[int, Field(ge=1)] = 3
    target: Literal["accuracy", "loss"] = "loss"


class SearchSpec(_Strict):
    population: Annotated[int, Field(ge=4, le=100_000)] = 100
    generations: Annotated[int, Field(ge=1, le=1_000_000)] = 500
    mutation_prob: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    parent_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25


class Spec(_Strict):
    # the name is a directory name in the workspace: bounded well below the 255 bytes of a file name
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    description: str = ""
    # seeds reach random.Random, torch.manual_seed and numpy (32-bit), plus small per-stage offsets
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    model: ModelSpec
    data: DataSpec
    space: SpaceSpec = SpaceSpec()
    train: TrainSpec = TrainSpec()
    calibrate: CalibrateSpec = CalibrateSpec()
    sample: SampleSpec = SampleSpec()
    predictor: PredictorSpec = PredictorSpec()
    search: SearchSpec = SearchSpec()

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (every default filled in), as stored in manifests."""
        return self.model_dump(mode="json")


def _format_error(source: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:6]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-after", "literal[")))
        loc = loc or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/specs.md for the allowed keys)"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        value = err.get("input")
        shown = json.dumps(value) if isinstance(value, (int, float, str, bool, list)) and len(str(value)) < 80 else None
        parts.append(f"field `{loc}`" + (f" = {shown}" if shown is not None and err["type"] != "missing" else "") + f": {msg}")
    more = "" if len(exc.errors()) <= 6 else f" (and {len(exc.errors()) - 6} more problems)"
    return f"invalid spec {source}: " + "; ".join(parts) + more + "."


def parse_space_settings(data: Any, source: str = "space settings") -> dict[str, Any]:
    """A spec's space section (a mapping) validated by the spec schema -> ``ElasticSpace.build`` keywords.

    :func:`eqtools.quant.quantize_model` goes through here, so a model converted from Python gets
    the same defaults (first and last layer at 8/8) and the same error messages as a spec file.
    """
    if not isinstance(data, dict):
        data = dict(data)
    try:
        return SpaceSpec.model_validate(data).settings()
    except ValidationError as exc:
        raise SpecError(_format_error(source, exc)) from None


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"invalid spec {source}: the top level must be a JSON object, got {type(data).__name__}")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_error(source, exc)) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; ``name`` defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        specs = Path("specs")
        if specs.is_dir():
            hint = "; bundled specs: " + ", ".join(str(p) for p in sorted(specs.glob("*.json")))
        raise SpecError(f"spec file {str(path)!r} does not exist{hint}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec {path} is not a UTF-8 text file") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return parse_spec(data, str(path))
