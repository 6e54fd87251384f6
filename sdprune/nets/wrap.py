"""Gate the residual blocks of a network someone built themselves.

``gate_residual_blocks`` re-wraps each torchvision residual block, in place, as a
``GatedBlock`` made of the block's own layers: act(shortcut(x) + g * branch(x)). The layers
(and so the weights) are the same objects, so the wrapped network computes the same
function in eval and sdprune can then train it with stochastic depth, score its blocks
(``sdprune.depth.structure.gated_blocks``), remove them (``remove_blocks``) and export it.

Which blocks it knows is a registry: each family's adapter module (``tv_resnet``,
``tv_mobilenet``, ``tv_convnext``, ...) declares, with ``register_block``, the torchvision
block class it wraps and how (``BlockWrapper``). A block trained by torchvision with its own
``StochasticDepth`` (row mode, inverted scaling: branch / s in training, the branch whole
in eval) loses that module, since the gate replaces it (batch mode skips the branch's
compute; torchvision's row mode always computes it), and keeps torchvision's function:
its survival buffer becomes its prior survival s = 1 - p and its branch's output scale is
divided by s, so eval computes s * branch / s = torchvision's branch, and training with
the gate open computes branch / s, torchvision's inverted training, exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from sdprune.depth.block import GatedBlock
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError

_SCALE_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.Linear, nn.Conv2d)


def output_scale(gated: GatedBlock) -> tuple[str, ...]:
    """The default fold: the weight and bias of the branch's last layer (a BatchNorm, a
    Linear or a convolution with a bias), whose product with a constant scales the branch's
    output by it. Names are relative to the gated block ("branch.4.weight", ...)."""
    name, last = list(gated.branch.named_modules())[-1]
    if not isinstance(last, _SCALE_LAYERS) or last.bias is None:
        raise TypeError(f"the branch ends in a {type(last).__name__}: its adapter must name its fold")
    return (f"branch.{name}.weight", f"branch.{name}.bias")


def drop_rate_prior(block: nn.Module) -> float:
    """The default prior: 1 - p of the block's torchvision ``StochasticDepth`` (1.0 without
    one); several with different rates need the adapter to say which one the gate replaces."""
    rates = {m.p for m in block.modules() if isinstance(m, StochasticDepth)}
    if len(rates) > 1:
        raise TypeError(f"{type(block).__name__} has StochasticDepth rates {sorted(rates)}: its adapter must choose")
    return 1.0 - rates.pop() if rates else 1.0


@dataclass(frozen=True)
class BlockWrapper:
    """How sdprune gates one torchvision block class (what an adapter registers).

    ``gate``: the GatedBlock made of the block's own layers (its StochasticDepth left
    out), or None where the block has no residual connection. ``prior``: the survival
    torchvision trained it with, read off the built block. ``fold``: the gated block's keys
    (relative to it) that scale the branch's output, where 1 / prior is folded.
    """

    cls: type[nn.Module]
    gate: Callable[[nn.Module], GatedBlock | None]
    prior: Callable[[nn.Module], float] = drop_rate_prior
    fold: Callable[[GatedBlock], tuple[str, ...]] = output_scale


@dataclass(frozen=True)
class Wrapped:
    """One block ``wrap_blocks`` gated: the survival it was given and the keys it folded."""

    prior: float
    fold: tuple[str, ...]


_WRAPPERS: dict[type[nn.Module], BlockWrapper] = {}


def register_block(wrapper: BlockWrapper) -> BlockWrapper:
    """Add a block class to those ``gate_residual_blocks`` gates (an adapter module's job)."""
    if wrapper.cls in _WRAPPERS:
        raise ValueError(f"{wrapper.cls.__name__} registered twice")
    _WRAPPERS[wrapper.cls] = wrapper
    return wrapper


def block_wrapper(block: nn.Module) -> BlockWrapper | None:
    """The wrapper for ``block`` (its class or the nearest registered base), None if none.

    A subclass that overrides forward computes something else, and wrapping it would
    silently change it: refused."""
    base = next((cls for cls in type(block).__mro__ if cls in _WRAPPERS), None)
    if base is None:
        return None
    if type(block).forward is not base.forward:
        raise SdpruneError(f"{type(block).__name__} subclasses torchvision's {base.__name__} but "
                           "overrides forward: sdprune cannot tell what it computes")
    return _WRAPPERS[base]


def gate_block(block: nn.Module) -> tuple[GatedBlock, Wrapped] | None:
    """The GatedBlock computing what ``block`` computes, with its prior survival set and
    1 / prior folded into its branch's output scale (in place: the layers are shared), or
    None when it has no residual connection to gate."""
    wrapper = block_wrapper(block)
    if wrapper is None:
        return None
    prior = wrapper.prior(block)
    gated = wrapper.gate(block)
    if gated is None:
        return None
    fold = wrapper.fold(gated)
    if prior != 1.0:  # survival 1: nothing to fold, the tensors stay exactly as they are
        if not 0.0 < prior <= 1.0:
            raise SdpruneError(f"a {type(block).__name__} with prior survival {prior:g}: it never ran in training")
        with torch.no_grad():
            gated.survival.fill_(prior)
            scale = float(torch.tensor(prior, device="cpu"))  # the float32 survival eval multiplies by
            tensors = dict(gated.state_dict(keep_vars=True))
            for key in fold:
                tensors[key].div_(scale)
    return gated, Wrapped(prior, fold)


def wrap_blocks(model: nn.Module) -> dict[str, Wrapped]:
    """Gate every registered block of ``model``, in place; the blocks gated now, by name."""
    wrapped: dict[str, Wrapped] = {}
    for prefix, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            result = gate_block(child)
            if result is not None:
                setattr(module, child_name, result[0])
                wrapped[f"{prefix}.{child_name}" if prefix else child_name] = result[1]
    return wrapped


def gate_residual_blocks(model: nn.Module) -> nn.Module:
    """Wrap every residual block of a torchvision-style model as a GatedBlock, in place.

    Recognised: the block classes the adapters register (``register_block``): torchvision's
    ResNet ``BasicBlock`` and ``Bottleneck`` (so ResNets, ResNeXts and wide ResNets),
    MobileNetV2/V3 inverted residuals with a skip connection, ConvNeXt's ``CNBlock``. The
    model keeps its layers and, in eval, its outputs. Blocks already gated are left as
    they are (calling this twice is harmless); a model with no residual block at all is
    an error. Returns the model.
    """
    if not wrap_blocks(model) and not gated_blocks(model):
        known = ", ".join(sorted(cls.__name__ for cls in _WRAPPERS))
        raise SdpruneError(f"no residual block to gate in this {type(model).__name__}: sdprune "
                           f"recognises torchvision's {known}")
    return model
