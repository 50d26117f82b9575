"""The words every stage shares: bit-widths, granularities, symmetries, splits, export formats, BN-fold modes.

Defined once here and nowhere else: the spec schema's literals, the CLI's choices, the space's
validation and the export stage all derive from these tuples, so adding a value is one edit.
Nothing here imports torch (the CLI imports it to build ``--help``).

A *form* is the global quantization scheme of a subnet: weight granularity, weight symmetry and
activation symmetry (activations are always per-tensor). The paper's Eq. 9 lets weights and
activations choose their symmetry independently (S_w and S_a), so a space with both granularities
and both symmetries holds 2 × 2 × 2 = 8 forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from eqtools.errors import ConfigError

__all__ = [
    "BIT_CHOICES",
    "BN_FOLD_MODES",
    "DEPLOY_CPUS",
    "DEPLOY_CPU_CHOICES",
    "EXPORT_FORMATS",
    "FLOAT_BITS",
    "GRANULARITIES",
    "ONNX_FORMS",
    "SPLITS",
    "SYMMETRIES",
    "VERIFY_SPLITS",
    "Granularity",
    "Symmetry",
    "form_key",
    "form_label",
    "form_tag",
    "parse_forms",
    "resolve_symmetry_flags",
]

BIT_CHOICES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
GRANULARITIES: tuple[str, ...] = ("per-channel", "per-tensor")
SYMMETRIES: tuple[str, ...] = ("sym", "asym")
# train: the images the supernet fits; val: held-out training images; test: the dataset's test set;
# unseen: val, then every training image the training subset left out (eqtools.data.Splits)
SPLITS: tuple[str, ...] = ("train", "val", "test", "unseen")
VERIFY_SPLITS: tuple[str, ...] = ("unseen", "val")  # search --verify chooses on held-out images, never test
EXPORT_FORMATS: tuple[str, ...] = ("int", "onnx", "all")
ONNX_FORMS: tuple[str, ...] = ("deploy", "exact")  # integer kernels (default) | bit-exact QDQ reference
BN_FOLD_MODES: tuple[str, ...] = ("scale", "requantize", "none")
# where the integer ONNX form is exact: any x86 CPU | only those whose u8 x s8 kernels sum in int32 (VNNI)
DEPLOY_CPUS: tuple[str, ...] = ("any", "vnni")
# what `export --cpu` accepts: a file's CPU, or "auto" (the export machine's u8 x s8 probe picks one)
DEPLOY_CPU_CHOICES: tuple[str, ...] = ("auto", *DEPLOY_CPUS)
FLOAT_BITS = 32  # what a layer kept in floating point costs per weight/activation

# typing views of the same tuples, for pydantic and typer (kept equal by tests/test_vocab.py)
Granularity = Literal["per-channel", "per-tensor"]
Symmetry = Literal["sym", "asym"]


def form_key(granularity: str, w_symmetry: str, a_symmetry: str) -> str:
    """Machine key of a form, as JSON metrics and ``--conditions`` spell it: ``per-channel/sym/asym``."""
    return f"{granularity}/{w_symmetry}/{a_symmetry}"


def form_label(granularity: str, w_symmetry: str, a_symmetry: str) -> str:
    """Human label of a form, for tables and plots: ``per-channel W-sym A-asym``."""
    return f"{granularity} W-{w_symmetry} A-{a_symmetry}"


def form_tag(granularity: str, w_symmetry: str, a_symmetry: str) -> str:
    """Path-safe tag of a form, for artifact directory names: ``per-channel-Wsym-Aasym``.

    The capitals keep the two symmetries apart at a glance (a lower-case ``-wsym-asym`` reads as "asym").
    """
    return f"{granularity}-W{w_symmetry}-A{a_symmetry}"


def parse_forms(value: str | Sequence[str] | None, allowed: Sequence[str], flag: str = "--conditions") -> tuple[str, ...]:
    """``all`` (or None) or comma-separated forms, each one of ``allowed`` (machine keys).

    A form is ``granularity/w_symmetry/a_symmetry`` (``per-channel/sym/asym``) or the shorthand
    ``granularity/symmetry`` for both symmetries alike (``per-tensor/asym``). Returns machine keys
    (:func:`form_key`) in the order given (``all``: the order of ``allowed``).
    """
    allowed = list(allowed)
    if value is None:
        return tuple(allowed)
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    items = [v for v in items if v]
    if items == ["all"]:
        return tuple(allowed)
    if not items:
        raise ConfigError(f"{flag} is empty; give 'all' or some of {allowed}")
    seen: list[str] = []
    for item in items:
        parts = item.split("/")
        key = form_key(parts[0], parts[1], parts[1]) if len(parts) == 2 else item
        if key not in allowed:
            raise ConfigError(
                f"{flag}: condition {item!r} is not in this supernet's space; allowed: 'all' or {allowed} "
                "(granularity/w_symmetry/a_symmetry, or granularity/symmetry for both)"
            )
        if key in seen:
            raise ConfigError(f"{flag}: condition {item!r} is listed twice")
        seen.append(key)
    return tuple(seen)


def resolve_symmetry_flags(
    symmetry: str | None, w_symmetry: str | None, a_symmetry: str | None
) -> tuple[str | None, str | None]:
    """``--symmetry`` (both) and ``--w-symmetry``/``--a-symmetry`` (one each) -> (weight, activation).

    ``--symmetry`` is the documented shorthand for both, so ``--symmetry asym --w-symmetry sym``
    is a contradiction, not an override: refusing it beats guessing which flag the user meant.
    """
    for flag, value in (("--symmetry", symmetry), ("--w-symmetry", w_symmetry), ("--a-symmetry", a_symmetry)):
        if value is not None and value not in SYMMETRIES:
            raise ConfigError(f"{flag} is {value!r}; allowed: {', '.join(SYMMETRIES)}")
    if symmetry is not None:
        for flag, value in (("--w-symmetry", w_symmetry), ("--a-symmetry", a_symmetry)):
            if value is not None and value != symmetry:
                raise ConfigError(
                    f"--symmetry {symmetry} sets weights and activations both, which contradicts {flag} {value}; "
                    "give --symmetry alone, or --w-symmetry and --a-symmetry"
                )
        return symmetry, symmetry
    return w_symmetry, a_symmetry
