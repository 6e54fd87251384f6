"""torchvision's families, registered as sdprune networks with every residual block gated.

Each family is one adapter module (``tv_resnet``, ``tv_mobilenet``, ``tv_convnext``, ...)
that registers its block classes with ``sdprune.nets.wrap.register_block`` and its
variants with ``register_family`` here. The torchvision modules are reused as they are
(same layers, same initialisation); only each residual block is re-wrapped as
act(shortcut(x) + g * branch(x)) with the block's own layers, and the first convolution
accepts any number of input channels. Keyword arguments go to torchvision's builder
(``zero_init_residual``, ``width_mult``, ``stochastic_depth_prob``, ...). The weight
converter (``sdprune.nets.convert``) builds its key mapping from these same two steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torchvision import models as tvm

from sdprune.nets.registry import register
from sdprune.nets.wrap import gate_residual_blocks

# sdprune's name -> torchvision's: every architecture whose torchvision weights sdprune
# adopts, filled by ``register_family`` as the adapter modules are imported.
TORCHVISION_ARCHS: dict[str, str] = {}


def torchvision_builder(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """torchvision's own builder for ``arch``, fresh weights (nothing is downloaded)."""
    return getattr(tvm, arch)(weights=None, num_classes=num_classes, **kwargs)


def kaiming_fan_out(conv: nn.Conv2d) -> None:
    """How torchvision's ResNets and MobileNets initialise a convolution."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@dataclass(frozen=True, eq=False)  # one object per family: compared and hashed by identity
class Family:
    """One torchvision family as an adapter module registers it.

    ``archs``: sdprune's name -> torchvision's (tv_convnext_tiny -> convnext_tiny).
    ``guess``: the sdprune names a state dict looks like (a cheap hint for detection from
    keys and shapes; the layout decides). ``build``: torchvision's network, fresh weights
    (default: torchvision's builder; kwargs pass through). ``init_conv``: how a new first
    convolution (another number of input channels) is initialised, as torchvision would.
    ``describe``: the `sdprune models` description of one variant.
    """

    name: str
    archs: Mapping[str, str]
    guess: Callable[[Mapping[str, Tensor]], list[str]]
    describe: Callable[[str], str]
    build: Callable[..., nn.Module] = torchvision_builder
    init_conv: Callable[[nn.Conv2d], None] = kaiming_fan_out
    default_input: tuple[int, int, int] = (3, 224, 224)


_FAMILIES: dict[str, Family] = {}  # torchvision's name -> its family


def register_family(family: Family) -> Family:
    """Register every variant of ``family`` as an sdprune network (``tv_<torchvision name>``)."""
    for name, arch in family.archs.items():
        _register(name, arch, family)
        TORCHVISION_ARCHS[name] = arch
        _FAMILIES[arch] = family
    return family


def _register(name: str, arch: str, family: Family) -> None:
    @register(name, family.default_input, family.describe(arch))
    def build(num_classes: int, in_channels: int, **kwargs) -> nn.Module:
        return gate_residual_blocks(torchvision_model(arch, num_classes, in_channels, **kwargs))


def families() -> list[Family]:
    """The registered torchvision families, in registration order."""
    return list(dict.fromkeys(_FAMILIES.values()))


def torchvision_model(arch: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch`` (its own name, e.g. "resnet18"), not gated, with fresh weights
    and a first convolution for ``in_channels``, initialised as torchvision initialises it."""
    family = _FAMILIES[arch]
    model = family.build(arch, num_classes, **kwargs)
    if in_channels != 3:
        name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        conv = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                         first.dilation, first.groups, first.bias is not None, first.padding_mode)
        family.init_conv(conv)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, conv)
    return model


def guess_torchvision(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The torchvision architectures these weights look like, likeliest first (a cheap hint
    from each family's ``guess``: the layout decides)."""
    guessed = [name for family in families() for name in family.guess(state_dict)]
    return [name for name in guessed if name in TORCHVISION_ARCHS]
