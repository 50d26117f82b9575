"""Model registry: ``get_model(name, num_classes=..., in_channels=...)`` builds any known model.

eqtools' own models (CIFAR-style ResNet-20, tiny test nets) are registered with
:func:`register_model`; any other name is looked up among torchvision's classification models,
always built without weights (pretrained float weights come from a local file, never the network).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from eqtools.errors import ModelError

__all__ = ["get_model", "list_models", "register_model"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def _torchvision_names() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def list_models(include_torchvision: bool = True) -> list[str]:
    names = sorted(_REGISTRY)
    if include_torchvision:
        names += [n for n in _torchvision_names() if n not in _REGISTRY]
    return names


def get_model(name: str, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a model by name, with random weights."""
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    tv_names = _torchvision_names()
    if name not in tv_names:
        own = ", ".join(sorted(_REGISTRY))
        raise ModelError(
            f"unknown model {name!r}; eqtools models: {own}; or any torchvision classification model "
            f"such as resnet18, resnet50, mobilenet_v2, efficientnet_b0 ({len(tv_names)} in all; "
            "`eqtools models --all` lists them)"
        )
    if in_channels != 3:
        raise ModelError(
            f"torchvision model {name!r} takes 3 input channels, the spec asks for {in_channels}; "
            "use a 3-channel dataset or one of eqtools' own models"
        )
    from torchvision import models

    return models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


from eqtools.models import mobilenet, resnet_cifar, tiny, vit  # noqa: E402,F401  (registers the models)
