"""Building models and supernets from a spec, and loading a trained supernet from its artifact.

Every stage goes through here, so "the supernet of this artifact" means exactly one thing: the
spec's model, converted over the spec's space, traced on the dataset's input shape, with the
artifact's tensors loaded strictly. The space it rebuilds must have the fingerprint recorded in the
manifest, otherwise the artifact is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eqtools.artifacts import Artifact, load_safetensors
from eqtools.artifacts import Supernet as SupernetArtifact
from eqtools.data import DatasetInfo, dataset_info
from eqtools.errors import ArtifactError, ModelError, SpecError
from eqtools.models import get_model
from eqtools.quant import Supernet, quantize_model
from eqtools.quant.coverage import FloatWeightsWarning
from eqtools.specs import Spec, parse_spec

__all__ = [
    "artifact_spec",
    "build_float_model",
    "build_supernet",
    "example_input",
    "load_pretrained",
    "load_supernet",
    "resolve_spec",
    "spec_info",
]


def resolve_spec(spec: Spec) -> Spec:
    """Fill the values later stages must not have to look up in the data (number of classes)."""
    if spec.model.num_classes is not None:
        return spec
    info = dataset_info(spec.data)
    data = spec.to_dict()
    data["model"]["num_classes"] = info.num_classes
    return parse_spec(data, f"'{spec.name}' (with model.num_classes from its dataset)")


def spec_info(spec: Spec) -> DatasetInfo:
    return dataset_info(spec.data, spec.model.num_classes)


def example_input(info: DatasetInfo) -> Tensor:
    return torch.zeros(1, info.channels, info.image_size, info.image_size)


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load float weights from a local file (safetensors, or a torch state_dict read safely)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"pretrained weights {str(path)!r} do not exist (model.pretrained in the spec)")
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(
                f"cannot read {path} as a torch state_dict with weights_only=True ({type(exc).__name__}: {exc}); "
                "save plain tensors (model.state_dict()) or convert the file to safetensors"
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    mismatch = _key_mismatch(own, state)
    if mismatch:
        raise ModelError(f"pretrained weights {path} do not fit the model: {mismatch}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ModelError(
            f"pretrained weights {path} do not fit the model: {k} has shape {tuple(state[k].shape)}, "
            f"the model expects {tuple(own[k].shape)} (is num_classes right?)"
        )
    model.load_state_dict(state, strict=True)


def build_float_model(spec: Spec, pretrained: bool = True) -> nn.Module:
    info = spec_info(spec)
    model = get_model(spec.model.name, num_classes=info.num_classes, in_channels=info.channels)
    if pretrained and spec.model.pretrained:
        load_pretrained(model, spec.model.pretrained)
    return model


def build_supernet(spec: Spec, model: nn.Module | None = None, pretrained: bool = True, *, strict: bool = False) -> Supernet:
    """The spec's model converted over the spec's space (quantizers not yet initialised).

    ``strict`` refuses a model whose weight matmuls would stay float without the spec pinning them
    (see ``supernet.coverage``).
    """
    if model is None:
        model = build_float_model(spec, pretrained)
    with warnings.catch_warnings():
        # the stages report the coverage themselves (train prints it, info shows it): no warning per load
        warnings.simplefilter("ignore", FloatWeightsWarning)
        return quantize_model(model, spec.space.settings(), example_input(spec_info(spec)), strict=strict)


def artifact_spec(artifact: Artifact) -> Spec:
    """The resolved spec an artifact records, validated by this eqtools."""
    try:
        return parse_spec(artifact.spec, f"in {artifact.path}/manifest.json")
    except SpecError as exc:
        raise ArtifactError(f"{artifact.path}: the manifest's spec is not valid for this eqtools: {exc}") from None


def load_supernet(artifact: Artifact, map_location: str | torch.device = "cpu") -> Supernet:
    """Rebuild the supernet an artifact (supernet or calibrated) was saved from and load its tensors."""
    spec = artifact_spec(artifact)
    supernet = build_supernet(spec, pretrained=False)
    recorded = artifact.manifest.get("space_fingerprint")
    if recorded != supernet.space.fingerprint:
        diff = artifact.space.describe_difference(supernet.space) if artifact.space else "no space recorded"
        raise ArtifactError(
            f"{artifact.path}: rebuilding model '{spec.model.name}' from its spec gives another elastic space than the "
            f"one recorded ({diff}); the artifact was made by an incompatible eqtools version or edited"
        )
    state = artifact.tensors(SupernetArtifact.WEIGHTS)
    load_state_strict(supernet, state, artifact.path)
    return supernet.to(map_location)


def _key_mismatch(own: dict[str, Any], state: dict[str, Any]) -> str:
    """'' when the keys agree, else which are missing and which unexpected (first five of each)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if not (missing or unexpected):
        return ""

    def show(keys: list[str]) -> str:
        return f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"

    return f"missing keys {show(missing)}, unexpected keys {show(unexpected)}"


def load_state_strict(module: nn.Module, state: dict[str, Any], where: Any) -> None:
    own = module.state_dict()
    mismatch = _key_mismatch(own, state)
    if mismatch:
        raise ArtifactError(f"{where}: weights do not match the model: {mismatch}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape) or v.dtype != own[k].dtype:
            raise ArtifactError(
                f"{where}: tensor {k} is {tuple(v.shape)} {v.dtype}, the model expects {tuple(own[k].shape)} {own[k].dtype}"
            )
    module.load_state_dict(state, strict=True)


def save_supernet(
    supernet: Supernet,
    out: str | Path,
    spec: Spec,
    *,
    kind: str = "supernet",
    parents: Any = (),
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    files: dict[str, Any] | None = None,
) -> Artifact:
    """Write a supernet-bearing artifact (``supernet`` or ``calibrated``) atomically.

    ``weights.safetensors`` holds the whole state_dict (weights, BN statistics, every quantizer's
    steps/offsets/signedness); ``files`` maps further file names to ``str`` (written as text) or
    ``bytes``.
    """
    from eqtools.artifacts import save_safetensors, write_artifact

    def write(tmp: Path) -> None:
        save_safetensors(tmp / SupernetArtifact.WEIGHTS, supernet.state_dict())
        for name, content in (files or {}).items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                (tmp / name).write_bytes(content)

    return write_artifact(out, kind, write, spec=spec.to_dict(), space=supernet.space, parents=parents,
                          metrics=metrics, extra=extra)
