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

A block with several residual branches in sequence (a transformer block: x + attn(x), then
+ mlp) becomes one GatedBlock per branch, held by a container in the block's place: the
gated units are then the branches (``gate`` returns the container; see ``tv_vit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from sdprune.depth.block import GatedBlock, output_scale
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError


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
    out), or a module holding one GatedBlock per residual branch (in forward order), or
    None where the block has no residual connection. ``prior``: the survival torchvision
    trained it with, read off the built block (one value for every gated unit, or one per
    unit). ``fold``: a gated unit's keys (relative to it) that scale its branch's output,
    where 1 / prior is folded.
    """

    cls: type[nn.Module]
    gate: Callable[[nn.Module], nn.Module | None]
    prior: Callable[[nn.Module], float | Sequence[float]] = drop_rate_prior
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


def gate_block(block: nn.Module) -> tuple[nn.Module, dict[str, Wrapped]] | None:
    """The module computing what ``block`` computes with its residual branches gated (a
    GatedBlock, or a container of them), and each gated unit by its name relative to that
    module ("" for the module itself): its prior survival set and 1 / prior folded into its
    branch's output scale (in place: the layers are shared). None when it has no residual
    connection to gate."""
    wrapper = block_wrapper(block)
    if wrapper is None:
        return None
    prior = wrapper.prior(block)
    gated = wrapper.gate(block)
    if gated is None:
        return None
    units = [("", gated)] if isinstance(gated, GatedBlock) else gated_blocks(gated)
    priors = [float(prior)] * len(units) if isinstance(prior, (int, float)) else [float(p) for p in prior]
    if len(priors) != len(units):  # a bug in an adapter, not user input
        raise TypeError(f"{type(block).__name__}: {len(priors)} priors for {len(units)} gated units")
    wrapped = {}
    for (name, unit), p in zip(units, priors):
        wrapped[name] = Wrapped(p, wrapper.fold(unit))
        unit.fold = wrapped[name].fold  # where a later change of survival is folded (set_survival(keep_function=True))
        _fold(unit, p, wrapped[name].fold, type(block).__name__)
    return gated, wrapped


def _fold(unit: GatedBlock, prior: float, keys: tuple[str, ...], kind: str) -> None:
    """Set ``unit``'s survival to ``prior`` and divide its ``keys`` by it (nothing at prior 1:
    the tensors stay exactly as they are)."""
    if prior == 1.0:
        return
    if not 0.0 < prior <= 1.0:
        raise SdpruneError(f"a {kind} with prior survival {prior:g}: it never ran in training")
    with torch.no_grad():
        unit.survival.fill_(prior)
        scale = float(torch.tensor(prior, device="cpu"))  # the float32 survival eval multiplies by
        tensors = dict(unit.state_dict(keep_vars=True))
        for key in keys:
            tensors[key].div_(scale)


def wrap_blocks(model: nn.Module) -> dict[str, Wrapped]:
    """Gate every registered block of ``model``, in place; the units gated now, by name."""
    wrapped: dict[str, Wrapped] = {}
    for prefix, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            result = gate_block(child)
            if result is not None:
                setattr(module, child_name, result[0])
                name = f"{prefix}.{child_name}" if prefix else child_name
                wrapped.update({f"{name}.{unit}" if unit else name: w for unit, w in result[1].items()})
    return wrapped


def gate_residual_blocks(model: nn.Module) -> nn.Module:
    """Wrap every residual block of a torchvision-style model as a GatedBlock, in place.

    Recognised: the block classes the adapters register (``register_block``): torchvision's
    ResNet ``BasicBlock`` and ``Bottleneck`` (so ResNets, ResNeXts and wide ResNets),
    MobileNetV2/V3 inverted residuals and EfficientNet's ``MBConv``/``FusedMBConv`` with a
    skip connection, RegNet's ``ResBottleneckBlock``, ConvNeXt's ``CNBlock``, and the
    transformers' blocks (ViT, Swin, MaxViT: one gated unit per residual branch). The
    model keeps its layers and, in eval, its outputs. Blocks already gated are left as
    they are (calling this twice is harmless); a model with no residual block at all is
    an error. Returns the model.
    """
    if not wrap_blocks(model) and not gated_blocks(model):
        known = ", ".join(sorted(cls.__name__ for cls in _WRAPPERS))
        raise SdpruneError(f"no residual block to gate in this {type(model).__name__}: sdprune "
                           f"recognises torchvision's {known}")
    return model
