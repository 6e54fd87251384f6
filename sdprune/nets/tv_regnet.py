"""torchvision's RegNets (every regnet_x_* and regnet_y_*) as an sdprune family.

Every ``ResBottleneckBlock`` is gated: relu(proj(x) + g * f(x)), the branch being its
bottleneck transform ``f`` (1x1, grouped 3x3, squeeze-excitation in RegNetY, 1x1 ending in
a BatchNorm, where a survival folds), the shortcut its projection where it has one (the
first block of each stage). torchvision trains them without stochastic depth: every prior
survival is 1.

torchvision's builders compute the stage widths with tensor arithmetic, which the meta
device (shapes only) cannot read back; so each variant is built here from torchvision's own
design parameters (``BlockParams.from_init_params``, computed on the CPU) and its
``RegNet`` class, exactly as its builder does. A custom configuration: ``block_params``, the
arguments of ``BlockParams`` (depths, widths, group_widths, bottleneck_multipliers,
strides, se_ratio) or of ``BlockParams.from_init_params`` (depth, w_0, w_a, w_m,
group_width, ...), and any ``RegNet`` argument.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.regnet import BlockParams, RegNet, ResBottleneckBlock

from sdprune.depth.block import GatedBlock
from sdprune.errors import SdpruneError
from sdprune.nets.torchvision_nets import Family, register_family
from sdprune.nets.wrap import BlockWrapper, register_block


def gate_regnet_block(block: ResBottleneckBlock) -> GatedBlock:
    """A RegNet block as act(proj(x) + g * f(x)) with the same layers (its activation not in
    place: a dropped block applies it to its input itself)."""
    act = copy.copy(block.activation)
    if hasattr(act, "inplace"):
        act.inplace = False
    return GatedBlock(block.f, block.proj, act)


register_block(BlockWrapper(ResBottleneckBlock, gate_regnet_block))

# torchvision's name -> its builder's design parameters (torchvision/models/regnet.py)
_Y, _X = dict(se_ratio=0.25), {}
_ARCHS: dict[str, dict[str, Any]] = {
    "regnet_y_400mf": dict(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, **_Y),
    "regnet_y_800mf": dict(depth=14, w_0=56, w_a=38.84, w_m=2.4, group_width=16, **_Y),
    "regnet_y_1_6gf": dict(depth=27, w_0=48, w_a=20.71, w_m=2.65, group_width=24, **_Y),
    "regnet_y_3_2gf": dict(depth=21, w_0=80, w_a=42.63, w_m=2.66, group_width=24, **_Y),
    "regnet_y_8gf": dict(depth=17, w_0=192, w_a=76.82, w_m=2.19, group_width=56, **_Y),
    "regnet_y_16gf": dict(depth=18, w_0=200, w_a=106.23, w_m=2.48, group_width=112, **_Y),
    "regnet_y_32gf": dict(depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232, **_Y),
    "regnet_y_128gf": dict(depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264, **_Y),
    "regnet_x_400mf": dict(depth=22, w_0=24, w_a=24.48, w_m=2.54, group_width=16, **_X),
    "regnet_x_800mf": dict(depth=16, w_0=56, w_a=35.73, w_m=2.28, group_width=16, **_X),
    "regnet_x_1_6gf": dict(depth=18, w_0=80, w_a=34.01, w_m=2.25, group_width=24, **_X),
    "regnet_x_3_2gf": dict(depth=25, w_0=88, w_a=26.31, w_m=2.25, group_width=48, **_X),
    "regnet_x_8gf": dict(depth=23, w_0=80, w_a=49.56, w_m=2.88, group_width=120, **_X),
    "regnet_x_16gf": dict(depth=22, w_0=216, w_a=55.59, w_m=2.1, group_width=128, **_X),
    "regnet_x_32gf": dict(depth=23, w_0=320, w_a=69.86, w_m=2.0, group_width=168, **_X),
}
_EXPLICIT = ("depths", "widths", "group_widths", "bottleneck_multipliers", "strides")


def _params(settings: Mapping[str, Any]) -> BlockParams:
    """torchvision's ``BlockParams`` from its own arguments or from_init_params's, computed on
    the CPU whatever the default device (the meta device cannot read its widths back)."""
    settings = dict(settings)
    try:
        with torch.device("cpu"):
            if set(_EXPLICIT) <= set(settings):
                return BlockParams(**settings)
            return BlockParams.from_init_params(**settings)
    except (TypeError, ValueError) as err:
        raise SdpruneError(f"RegNet block_params {settings!r}: {err}") from None


def build(arch: str, num_classes: int, block_params: Mapping[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch`` (its design parameters, its ``RegNet``, its BatchNorm), or with
    ``block_params`` a custom RegNet through the same constructor."""
    params = _params(block_params if block_params is not None else _ARCHS[arch])
    kwargs.setdefault("norm_layer", partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1))  # torchvision's _regnet
    return RegNet(params, num_classes=num_classes, **kwargs)


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The RegNets these keys look like: X or Y (squeeze-excitation or not), ordered by how
    close their first stage's width is (a cheap hint: the layout decides)."""
    if "trunk_output.block1.block1-0.f.a.0.weight" not in state_dict or "fc.weight" not in state_dict:
        return []
    kind = "y" if any(".f.se." in k for k in state_dict) else "x"
    first = state_dict["trunk_output.block1.block1-0.f.c.0.weight"]
    width = int(first.shape[0]) if isinstance(first, Tensor) else 0
    names = [a for a in _ARCHS if a.startswith(f"regnet_{kind}_")]
    return [f"tv_{a}" for a in sorted(names, key=lambda a: _WIDTHS.get(a, 0) != width)]


# the first stage's width of each variant: what tells them apart cheaply (stage depths repeat)
_WIDTHS = {"regnet_y_400mf": 48, "regnet_y_800mf": 64, "regnet_y_1_6gf": 48, "regnet_y_3_2gf": 72,
           "regnet_y_8gf": 224, "regnet_y_16gf": 224, "regnet_y_32gf": 232, "regnet_y_128gf": 528,
           "regnet_x_400mf": 32, "regnet_x_800mf": 64, "regnet_x_1_6gf": 72, "regnet_x_3_2gf": 96,
           "regnet_x_8gf": 80, "regnet_x_16gf": 256, "regnet_x_32gf": 336}

FAMILY = register_family(Family(
    "RegNet", {f"tv_{arch}": arch for arch in _ARCHS}, guess,
    lambda arch: f"torchvision {arch}; every residual bottleneck block gated", build=build))
