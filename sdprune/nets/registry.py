"""The model registry: one name -> one builder, plus what `sdprune models` shows.

``_REGISTRY`` is filled by ``@register`` when the model modules are imported
(``sdprune.nets``): timm's pattern, the one module-level state in the package.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.measure import count_flops, count_params


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    default_input: tuple[int, int, int]  # (channels, height, width) it is designed for
    description: str


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, default_input: tuple[int, int, int], description: str):
    """Decorator: register a builder ``fn(num_classes, in_channels, **kwargs) -> nn.Module``."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, default_input, description)
        return fn
    return wrap


def list_models() -> list[str]:
    """Registered architecture names, families together and by size (resnet20 before resnet110,
    tv_convnext_tiny before tv_convnext_large, tv_vit_b_16 before tv_vit_l_16 before tv_vit_h_14)."""
    return sorted(_REGISTRY, key=_sort_key)


_SIZES = {"t", "s", "m", "b", "l", "h", "tiny", "small", "base", "large", "huge"}


def _sort_key(name: str) -> tuple[str, int]:
    # a family: the name up to its first digit, less a trailing size (tv_vit_b_16 -> tv_vit,
    # tv_swin_t -> tv_swin, tv_efficientnet_v2_s -> tv_efficientnet_v); within it, the order the
    # family registered its variants (smallest first)
    stem = re.split(r"_?\d", name)[0]
    head, _, last = stem.rpartition("_")
    return (head if head and last in _SIZES else stem, list(_REGISTRY).index(name))


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name is an error suggesting close ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SdpruneError(f"unknown model {name!r}{hint}; `sdprune models` lists them")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered architecture with fresh weights."""
    if num_classes < 1 or in_channels < 1:
        raise SdpruneError("num_classes and in_channels must be positive")
    return model_info(name).builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


def describe_model(name: str, num_classes: int = 10) -> dict:
    """Blocks, parameters and FLOPs of a registered model at its default input.

    Counted on PyTorch's ``meta`` device: shapes only, no memory and no weight
    initialisation, so the whole table takes a moment whatever the number of classes.
    """
    import torch

    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=info.default_input[0])
    return {
        "name": name,
        "blocks": len(gated_blocks(model)),
        "params": count_params(model),
        "flops": count_flops(model, info.default_input),
        "input": list(info.default_input),
        "description": info.description,
    }
